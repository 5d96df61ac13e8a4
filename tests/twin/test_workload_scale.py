"""Workload scaling: a pure twin transform that multiplies the rate curve."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from twin.load import load_scenario
from twin.workload import rate_at, scale_workload

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "examples" / "digits-pipeline.yaml"


@pytest.fixture(scope="module")
def scenario():
    return load_scenario(SCENARIO)


@pytest.mark.parametrize("name", ["steady-low", "fluctuating", "steady-high", "trace"])
def test_scaling_multiplies_the_curve_at_every_second(scenario, name):
    w = scenario.workload(name)
    scaled = scale_workload(w, 0.37)
    t = np.arange(0, 300, 0.5)
    assert np.allclose([rate_at(scaled, x) for x in t], [0.37 * rate_at(w, x) for x in t])


def test_scaling_a_step_workload_and_rejecting_bad_factors():
    from twin.spec import StepWorkload

    w = StepWorkload(kind="step", name="s", levels_per_s=[5, 10, 20], step_s=10)
    assert scale_workload(w, 2).levels_per_s == [10, 20, 40]
    assert scale_workload(w, 1.0) is w
    with pytest.raises(ValueError, match="rate scale"):
        scale_workload(w, 0)
