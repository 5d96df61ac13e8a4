"""The stage server's hand-off, measured from visits and fitted per offered rate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from calibrate.backlog import twin_backlogged_interval
from calibrate.handoff import (
    MIN_GAPS,
    fit_handoff,
    fit_pace_handoff,
    handoff_gaps,
    with_cpu_handoff,
    with_handoff,
)
from tests.calibrate.test_enforce import _twin
from tests.twin.conftest import one_stage
from twin.sim import simulate_replication
from twin.spec import Deployment


def _visits(rows: list[tuple[float, float, float]]) -> pd.DataFrame:
    """(t_arrive, t_start, t_end) ms of one stage's jobs on one machine."""
    a = np.array(rows) / 1e3
    return pd.DataFrame(
        {
            "component": "enc",
            "machine": "m",
            "t_arrive": a[:, 0],
            "t_start": a[:, 1],
            "t_end": a[:, 2],
        }
    )


def test_gaps_count_only_jobs_that_waited() -> None:
    v = _visits(
        [
            (0.0, 0.0, 4.0),
            (1.0, 4.5, 8.0),  # waited: 0.5 ms after the last ended
            (20.0, 20.0, 24.0),  # came to an idle stage: no gap
            (22.0, 24.25, 27.0),  # waited: 0.25
            (23.0, 26.0, 30.0),  # waited; started "before" the last ended (the testbed's clocks)
        ]
    )
    assert np.allclose(handoff_gaps(v, "enc"), [0.5, 0.25, -1.0])
    assert len(handoff_gaps(v, "other")) == 0


def test_fit_reads_the_mean_off_a_line_in_the_rate() -> None:
    rng = np.random.default_rng(1)
    runs = [(r, rng.exponential(0.3 + 0.005 * r, 4000)) for r in (20.0, 60.0, 100.0)]
    fit = fit_handoff(runs, 120.0)
    assert fit is not None
    assert abs(fit.mean_ms - 0.9) < 0.05
    assert abs(fit.slope_ms_per_rps - 0.005) < 0.001
    one = fit_handoff(runs[:1], 120.0)  # one rate: its mean
    assert one is not None and abs(one.mean_ms - runs[0][1].mean()) < 1e-12
    assert fit_handoff([(50.0, np.full(MIN_GAPS - 1, 0.5))], 50.0) is None


def test_twin_gives_back_the_handoff_it_was_fitted_with() -> None:
    sc = one_stage(
        variants=[
            {
                "name": "only",
                "accuracy": 0.9,
                "cpu_cores": 1,
                "service_time": {"kind": "constant", "ms": 3.0},
            }
        ]
    )
    proc = sc.processes[0]
    arrivals = proc.arrivals.model_copy(update={"rate_per_s": 250})
    sc = sc.model_copy(update={"processes": [proc.model_copy(update={"arrivals": arrivals})]})
    dep = Deployment.model_validate(
        {"allocation": {"stage": {"m": 1}}, "stages": {"stage": {"variant": "only", "batch": 1}}}
    )
    bare = simulate_replication(sc, dep, None, 30.0, seed=2).visits
    assert np.allclose(handoff_gaps(bare, "stage"), 0.0)
    fit = fit_handoff([(250.0, np.full(1000, 0.6))], 250.0)
    assert fit is not None
    v = simulate_replication(with_handoff(sc, "stage", fit), dep, None, 30.0, seed=2).visits
    gaps = handoff_gaps(v.dropna(subset=["t_end"]), "stage")
    assert len(gaps) > 1000 and np.allclose(gaps, 0.6)
    with pytest.raises(ValueError, match="no component"):
        with_handoff(sc, "nope", fit)


def test_pace_fit_gives_the_twin_the_testbeds_pace_between_jobs(tmp_path: Path) -> None:
    """A testbed whose long busy periods run 8 % slower than the quota twin's: the
    fitted CPU hand-off brings the twin's pace to it (without it, 8 % off), and leaves
    the service of each job as it was."""
    twin, dep = _twin(tmp_path)
    runs = [(240.0, 6.0, 1500)]
    base = twin_backlogged_interval(twin, dep, "encoder", runs)
    target = 1.08 * base
    fit = fit_pace_handoff(twin, dep, "encoder", [(240.0, 6.0, target, 1500)])
    assert fit is not None and fit.cpu_ms > 0
    slower = with_cpu_handoff(twin, "encoder", fit.cpu_ms)
    after = twin_backlogged_interval(slower, dep, "encoder", runs)
    assert abs(after / target - 1) < 0.02
    assert abs(base / target - 1) > 0.06
    # a twin already slower than the runs: a hand-off cannot help
    assert fit_pace_handoff(slower, dep, "encoder", [(240.0, 6.0, base, 1500)]) is None
    # too few backlogged items: no fit
    assert fit_pace_handoff(twin, dep, "encoder", [(240.0, 6.0, target, 900)]) is None
