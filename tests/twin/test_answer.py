"""A batch's answers leave one by one (ServerOverhead.answer_ms)."""

from __future__ import annotations

import numpy as np
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


def _stage(answer_ms: float) -> Scenario:
    sc = one_stage(
        variants=[
            {
                "name": "only",
                "accuracy": 0.9,
                "cpu_cores": 1,
                "service_time": {"kind": "constant", "ms": 3.0},
            }
        ],
        server_overhead={"answer_ms": answer_ms},
    )
    proc = sc.processes[0]
    arrivals = proc.arrivals.model_copy(update={"rate_per_s": 600.0})
    procs = [proc.model_copy(update={"arrivals": arrivals})]
    return Scenario.model_validate(sc.model_copy(update={"processes": procs}).model_dump())


def _extra_ms(answer_ms: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Per answered request: its end after its visit's batch ended (ms), its batch, and
    the visits' ends per second."""
    r = simulate_replication(_stage(answer_ms), DEP, None, 10.0, seed=3)
    v = r.visits.dropna(subset=["t_end"]).set_index("pid")
    req = r.requests.dropna(subset=["t_end"]).set_index("pid")
    pids = v.index.intersection(req.index)
    extra = (req.loc[pids, "t_end"] - v.loc[pids, "t_end"]).to_numpy() * 1e3
    return extra, v.loc[pids, "batch"].to_numpy(), float((v["t_end"] <= 10.0).sum() / 10.0)


def test_answers_leave_one_by_one_without_holding_the_instance() -> None:
    extra, batch, served = _extra_ms(0.5)
    assert (batch > 1).mean() > 0.5  # 600/s on a 3-ms model forms batches
    # the k-th answer of a batch (0-based) arrives k × 0.5 ms after the batch ends
    assert np.allclose(extra[batch == 1], 0.0)
    for n in (2, 3, 4):
        got = np.sort(np.unique(np.round(extra[batch == n], 6)))
        assert np.allclose(got, 0.5 * np.arange(n)), (n, got)
        assert abs(extra[batch == n].mean() - 0.5 * (n - 1) / 2) < 1e-6
    # the answers hold neither the instance nor its CPU: the same visits are served
    none, _, served0 = _extra_ms(0.0)
    assert np.allclose(none, 0.0)
    assert served == served0


def _late(timer_late_ms: float) -> np.ndarray:
    """The oldest item's wait (ms) of each batch that was not full."""
    sc = one_stage(
        variants=[
            {
                "name": "only",
                "accuracy": 0.9,
                "cpu_cores": 1,
                "service_time": {"kind": "constant", "ms": 3.0},
            }
        ],
        server_overhead={"timer_late_ms": timer_late_ms},
    )
    proc = sc.processes[0]
    procs = [
        proc.model_copy(update={"arrivals": proc.arrivals.model_copy(update={"rate_per_s": 50.0})})
    ]
    sc = Scenario.model_validate(sc.model_copy(update={"processes": procs}).model_dump())
    v = simulate_replication(sc, DEP, None, 30.0, seed=2).visits.dropna(subset=["t_start"])
    v = v[v["batch"] < 4]
    return ((v["t_start"] - v["t_arrive"]).groupby([v["t_start"]]).max() * 1e3).to_numpy()


def test_the_batch_timer_fires_late_by_timer_late_ms() -> None:
    on_time, late = _late(0.0), _late(0.7)
    # at 50/s the instance is mostly free: the oldest item waits the timeout, then the lateness
    assert np.median(on_time) == pytest.approx(2.0, abs=1e-6)
    assert np.median(late) == pytest.approx(2.7, abs=1e-6)
