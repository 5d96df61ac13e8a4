"""The caller's call layer (ServerOverhead.call_window_ms): items of one gateway loop turn
travel, and are answered, in one call."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.twin.conftest import one_stage
from twin.sim import simulate_replication
from twin.spec import Deployment, Scenario

DEP = Deployment.model_validate(
    {
        "allocation": {"stage": {"m": 1}},
        "stages": {"stage": {"variant": "only", "batch": 4, "batch_timeout_ms": 2.0}},
    }
)


def _stage(rate_per_s: float = 600.0, **overhead: float) -> Scenario:
    sc = one_stage(
        variants=[
            {
                "name": "only",
                "accuracy": 0.9,
                "cpu_cores": 1,
                "service_time": {"kind": "constant", "ms": 3.0},
            }
        ],
        server_overhead=overhead,
    )
    proc = sc.processes[0]
    arrivals = proc.arrivals.model_copy(update={"rate_per_s": rate_per_s})
    procs = [proc.model_copy(update={"arrivals": arrivals})]
    return Scenario.model_validate(sc.model_copy(update={"processes": procs}).model_dump())


def test_a_call_of_one_item_is_the_twin_without_calls() -> None:
    # a window too short for two Poisson arrivals: every item its own call, so each
    # record is the one the twin without a call layer gives, answers one by one included
    without = simulate_replication(_stage(answer_ms=0.5), DEP, None, 10.0, seed=4)
    calls = simulate_replication(
        _stage(answer_ms=0.5, call_window_ms=1e-9), DEP, None, 10.0, seed=4
    )
    pd.testing.assert_frame_equal(without.requests, calls.requests)
    pd.testing.assert_frame_equal(without.visits, calls.visits)
    assert without.calls == {}
    assert calls.calls["stage"] == len(calls.visits)


@pytest.mark.parametrize("window_ms", [0.2, 0.5])
def test_a_call_takes_the_items_sent_within_its_window(window_ms: float) -> None:
    # Poisson arrivals at 600/s: a call holds its first item and those of the next
    # window_ms, 1 + 600 × window on average (well below the batch of 4)
    r = simulate_replication(_stage(call_window_ms=window_ms), DEP, None, 30.0, seed=1)
    items_per_call = len(r.visits) / r.calls["stage"]
    assert items_per_call == pytest.approx(1 + 600 * window_ms / 1e3, rel=0.03)


def test_a_calls_items_are_answered_together_one_call_after_another() -> None:
    r = simulate_replication(_stage(answer_ms=0.5, call_window_ms=0.5), DEP, None, 10.0, seed=2)
    req = r.requests.dropna(subset=["t_end"])
    v = r.visits.dropna(subset=["t_end"]).set_index("pid").loc[req["pid"]]
    # one answer per call: the requests end at as many distinct times as there were calls
    # (less those still open at the end of the run)
    answers = len(np.unique(np.round(req["t_end"], 9)))
    assert r.calls["stage"] - 3 <= answers <= r.calls["stage"]
    assert r.calls["stage"] < 0.8 * len(req)
    # a call leaves answer_ms × the items answered before it after its batch ends (a
    # multiple of 0.5 ms), unless it was split over two batches: then it waited for the
    # later one, a whole 3-ms service (a few % of the items at this load)
    extra = (req.set_index("pid")["t_end"] - v["t_end"]).to_numpy() * 1e3
    split = extra >= 3.0 - 1e-6
    assert split.mean() < 0.1
    slots = extra[~split] / 0.5
    assert np.allclose(slots, np.round(slots), atol=1e-6)
    assert (slots > 0).mean() > 0.2


def test_a_call_split_over_two_batches_waits_for_its_last_item() -> None:
    # calls of up to 4 items, a batch of 4 and a slow model: a call that arrives while
    # a batch runs can be split by the next batch's cut; its first items then wait
    r = simulate_replication(_stage(rate_per_s=900.0, call_window_ms=2.0), DEP, None, 10.0, 3)
    req = r.requests.dropna(subset=["t_end"]).set_index("pid")
    v = r.visits.dropna(subset=["t_end"]).set_index("pid").loc[req.index]
    late = req["t_end"] - v["t_end"]
    assert (late > 1e-3).any()  # waited for a later batch (≥ one 3-ms service)
    # never before its own batch ended
    assert (late >= -1e-12).all()


def test_the_calls_cpu_is_spent_once_per_call() -> None:
    # a concurrent server CPU of 1 ms per call on a 1-core quota: with calls of ~1.6 items
    # the stage spends less of its quota per item, so its batches start sooner
    def mean_wait(window_ms: float) -> float:
        sc = _stage(
            rate_per_s=500.0,
            per_call_ms=1.0,
            concurrent=True,
            call_window_ms=window_ms,
        )
        servers = [sc.servers[0].model_copy(update={"cpu_quota_cores": 1.0})]
        sc = Scenario.model_validate(sc.model_copy(update={"servers": servers}).model_dump())
        r = simulate_replication(sc, DEP, None, 20.0, seed=5)
        v = r.visits.dropna(subset=["t_end"])
        return float((v["t_end"] - v["t_arrive"]).mean())

    assert mean_wait(1.2) < mean_wait(1e-9)
