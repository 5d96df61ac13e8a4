"""The caller's call layer (ServerOverhead.call_window_ms): items of one gateway loop turn
travel, and are answered, in one call."""

from __future__ import annotations

from pathlib import Path

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


def _digits(onward: bool) -> tuple[Scenario, Deployment]:
    from twin.load import load_deployment, load_scenario
    from twin.spec import ServerOverhead

    root = Path(__file__).resolve().parents[2] / "examples"
    sc = load_scenario(root / "digits-pipeline.yaml")
    over = ServerOverhead(answer_ms=0.5, answers_onward=onward)
    comps = [
        c.model_copy(update={"server_overhead": over}) if c.is_stage else c for c in sc.components
    ]
    # no network time between stages: the gap between them is the answers' alone
    net = sc.settings.network.model_copy(
        update={"intra_zone_latency_ms": 0.0, "inter_zone_latency_ms": 0.0}
    )
    settings = sc.settings.model_copy(update={"network": net})
    sc = sc.model_copy(update={"components": comps, "settings": settings})
    sc = Scenario.model_validate(sc.model_dump())
    return sc, load_deployment(root / "digits-pipeline.deployment.yaml")


def test_a_batchs_onward_items_leave_together_once_all_answers_are_read() -> None:
    sc, dep = _digits(onward=True)
    r = simulate_replication(sc, dep, sc.workload("steady-high"), 20.0, seed=3)
    v = r.visits.dropna(subset=["t_end"])
    den = v[v["component"] == "denoise"].set_index("pid")
    enc = v[v["component"] == "encoder"].set_index("pid")
    pids = den.index.intersection(enc.index)
    den, enc = den.loc[pids], enc.loc[pids]
    # every item of a denoise batch reaches the encoder (n − 1) answers after it ends
    # (beside the data's constant transfer time)
    gap = (enc["t_arrive"] - den["t_end"]).to_numpy() * 1e3
    assert (den["batch"] > 1).mean() > 0.2
    rest = gap - 0.5 * (den["batch"].to_numpy() - 1)
    assert np.ptp(rest) < 1e-6 and abs(rest[0]) < 0.01
    # the last stage still answers one by one: its k-th answer k × 0.5 ms after the batch
    cla = v[v["component"] == "classifier"].set_index("pid")
    req = r.requests.dropna(subset=["t_end"]).set_index("pid")
    cla = cla.loc[cla.index.intersection(req.index)]
    extra = (req.loc[cla.index, "t_end"] - cla["t_end"]).to_numpy() * 1e3
    slots = extra / 0.5
    assert np.allclose(slots, np.round(slots), atol=1e-6)
    assert (slots <= cla["batch"].to_numpy() - 1 + 1e-9).all()
    # without it, the k-th of a denoise batch reaches the encoder k answers after it ends
    sc0, _ = _digits(onward=False)
    r0 = simulate_replication(sc0, dep, sc0.workload("steady-high"), 20.0, seed=3).visits
    d0 = r0[r0["component"] == "denoise"].dropna(subset=["t_end"]).set_index("pid")
    e0 = r0[r0["component"] == "encoder"].dropna(subset=["t_end"]).set_index("pid")
    p0 = d0.index.intersection(e0.index)
    gap0 = (e0.loc[p0, "t_arrive"] - d0.loc[p0, "t_end"]).to_numpy() * 1e3
    assert gap0.mean() < gap.mean() - 0.05
