"""Load profiles and the Locust shape: pure functions of run time, one curve with the twin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from loadgen.profile import LoadProfile
from twin.load import load_scenario
from twin.workload import rate_at

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "examples" / "digits-pipeline.yaml"


@pytest.fixture(scope="module")
def scenario():
    return load_scenario(SCENARIO)


def test_profile_rate_follows_twin_workload_and_stops_at_duration(scenario):
    w = scenario.workload("fluctuating")
    p = LoadProfile(w, duration_s=120, drain_s=5)
    for t in (0.0, 13.5, 70.2, 119.9):
        assert p.rate(t) == rate_at(w, t)
    assert p.rate(120.0) == 0.0 and p.rate(-1) == 0.0
    assert p.tick(124.9) is not None
    assert p.tick(125.0) is None


def test_pool_follows_the_rate_with_lookahead(scenario):
    from twin.spec import StepWorkload

    w = StepWorkload(kind="step", name="s", levels_per_s=[10, 100], step_s=20)
    p = LoadProfile(w, duration_s=40, concurrency_s=0.5, min_users=3, lookahead_s=5)
    assert p.users(0) == 3 + 5  # 10/s × 0.5 s
    assert p.users(16) == 3 + 50  # the step at 20 s is within the look-ahead
    assert p.users(30) == 53
    assert p.users(39.5) == 53 and p.users(45) == 53  # the drain keeps the last pool
    capped = LoadProfile(w, duration_s=40, concurrency_s=10, max_users=200)
    assert capped.users(25) == 200


def test_profile_rejects_bad_settings(scenario):
    with pytest.raises(ValueError):
        LoadProfile(scenario.workload("steady-low"), duration_s=0)
    with pytest.raises(ValueError):
        LoadProfile(scenario.workload("steady-low"), duration_s=10, concurrency_s=0)


_SHAPE_SCRIPT = """
import json, sys
from unittest import mock
from loadgen.profile import LoadProfile
from loadgen.worker import WorkloadShape
from twin.load import load_scenario
sc = load_scenario(sys.argv[1])
profile = LoadProfile(sc.workload("fluctuating"), duration_s=100, drain_s=5)
shape = WorkloadShape(profile, t0=0.0, share=0.5)
out = {}
for t in [0, 10, 33.3, 70, 99, 104.9, 105, 200]:
    with mock.patch.object(WorkloadShape, "get_run_time", return_value=t):
        out[str(t)] = shape.tick()
print(json.dumps(out))
"""


def test_locust_shape_tick_is_the_profile_at_patched_run_time(scenario):
    # Locust monkeypatches the interpreter on import, so the shape is exercised in a child.
    env = {**os.environ, "ORT_DISABLE_TELEMETRY": "1"}
    res = subprocess.run(
        [sys.executable, "-c", _SHAPE_SCRIPT, str(SCENARIO)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=True,
    )
    ticks = json.loads(res.stdout.strip().splitlines()[-1])
    profile = LoadProfile(scenario.workload("fluctuating"), duration_s=100, drain_s=5)
    for t, tick in ticks.items():
        expected = profile.tick(float(t))
        if expected is None:
            assert tick is None, t
        else:
            assert tick == [max(1, int(np.ceil(expected[0] * 0.5))), expected[1]], t
    assert ticks["105"] is None and ticks["104.9"] is not None


def test_the_orchestrating_side_never_imports_locust():
    code = (
        "import sys, loadgen, loadgen.cli, loadgen.run, lab.experiment\n"
        "bad = sorted(m for m in ('locust', 'gevent') if m in sys.modules)\n"
        "print(','.join(bad))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == ""  # gevent would monkeypatch the CLI/testbed process
