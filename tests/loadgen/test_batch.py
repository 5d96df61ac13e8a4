"""Batch processes triggered on the twin's schedule through a testbed hook."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest

from loadgen.batch import BatchTrigger, batch_schedule, command_hook
from twin.sim import STREAM_ARRIVALS, stream
from twin.spec import Scenario
from twin.workload import arrival_times

SCENARIO = {
    "name": "s",
    "servers": [{"name": "n", "count": 1, "cpu_cores": 4, "ram_gb": 8}],
    "components": [{"name": "c", "cpu_cores": 1}],
    "processes": [
        {
            "name": "retrain",
            "kind": "batch",
            "deadline_s": 5,
            "arrivals": {"kind": "periodic", "period_s": 10, "offset_s": 2},
            "steps": [{"name": "a", "component": "c", "cpu_work": {"kind": "constant", "ms": 1}}],
        },
        {
            "name": "prep",
            "kind": "batch",
            "arrivals": {"kind": "poisson", "rate_per_s": 0.5},
            "steps": [{"name": "a", "component": "c", "cpu_work": {"kind": "constant", "ms": 1}}],
        },
    ],
}


@pytest.fixture(scope="module")
def scenario():
    return Scenario.model_validate(SCENARIO)


def test_schedule_matches_the_twins_own_arrivals(scenario):
    plan = batch_schedule(scenario, 35, seed=4)
    retrain = [t for t, n in plan if n == "retrain"]
    assert retrain == [2.0, 12.0, 22.0, 32.0]
    prep = [t for t, n in plan if n == "prep"]
    rng = stream(4, 0, STREAM_ARRIVALS, "prep")
    twin = arrival_times(scenario.processes[1].arrivals, rng, 35)
    assert np.allclose(prep, twin)
    assert [t for t, _ in plan] == sorted(t for t, _ in plan)


def test_trigger_runs_the_hook_and_records_failures():
    calls = []

    def hook(name: str, pid: int) -> None:
        calls.append((name, pid))
        if pid == 1:
            raise RuntimeError("trainer crashed")

    t0 = time.time() - 100  # every execution is already due: no waiting in the test
    plan = [(1.0, "retrain"), (2.0, "retrain"), (3.0, "prep")]
    rows = BatchTrigger(plan, hook, t0, {"retrain": 5.0}).start().stop(wait_s=10)
    assert sorted(calls) == [("prep", 0), ("retrain", 0), ("retrain", 1)]
    rows = rows.sort_values(["process", "pid"]).reset_index(drop=True)
    assert rows["status"].tolist() == [200, 200, 0]
    assert np.isnan(rows.loc[2, "t_end"]) and "trainer crashed" in rows.loc[2, "error"]
    assert rows.loc[1, "deadline_s"] == 5.0 and np.isnan(rows.loc[0, "deadline_s"])
    assert (rows["t_response"] > rows["t_arrive"]).all()


def test_command_hook_raises_on_a_failing_command():
    command_hook([sys.executable, "-c", "pass"])("retrain", 0)
    with pytest.raises(Exception, match="returned non-zero"):
        command_hook([sys.executable, "-c", "raise SystemExit(3)"])("retrain", 0)
