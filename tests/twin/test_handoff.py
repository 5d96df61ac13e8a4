"""A stage server's hand-off between jobs holds the instance but not the CPU quota."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tests.twin.conftest import one_stage
from twin.sim import simulate_replication
from twin.spec import Deployment, Scenario

DEP = Deployment.model_validate(
    {"allocation": {"stage": {"m": 1}}, "stages": {"stage": {"variant": "only", "batch": 1}}}
)


def _stage(rate_per_s: float, quota_cores: float | None, handoff_ms: float | None) -> Scenario:
    over = {"per_item_ms": 0.0}
    if handoff_ms is not None:
        over["handoff"] = {"kind": "constant", "ms": handoff_ms}
    sc = one_stage(
        variants=[
            {
                "name": "only",
                "accuracy": 0.9,
                "cpu_cores": 1,
                "service_time": {"kind": "constant", "ms": 3.0},
            }
        ],
        server_overhead=over,
    )
    servers = [sc.servers[0].model_copy(update={"cpu_quota_cores": quota_cores})]
    proc = sc.processes[0]
    procs = [
        proc.model_copy(
            update={"arrivals": proc.arrivals.model_copy(update={"rate_per_s": rate_per_s})}
        )
    ]
    return Scenario.model_validate(
        sc.model_copy(update={"servers": servers, "processes": procs}).model_dump()
    )


def _spacing(visits: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Start-to-start (s) of jobs whose job was already waiting, and of the others."""
    v = visits.dropna(subset=["t_start", "t_end"]).sort_values("t_start")
    start, end, arrive = (v[c].to_numpy() for c in ("t_start", "t_end", "t_arrive"))
    waited = arrive[1:] < end[:-1]
    return (start[1:] - end[:-1])[waited], (start[1:] - arrive[1:])[~waited]


def test_handoff_spaces_waiting_jobs_only() -> None:
    # overloaded (500/s on a 3-ms model): every job waits, and starts 1 ms after the last
    v = simulate_replication(_stage(500, None, 1.0), DEP, None, 20.0, seed=4).visits
    gaps, idle = _spacing(v)
    assert len(gaps) > 5000 and np.allclose(gaps, 0.001)
    assert abs((v["t_end"] <= 20.0).sum() / 20.0 - 250) < 3  # one job per 4 ms
    # light (20/s): a job that finds the instance idle starts at once
    light = simulate_replication(_stage(20, None, 1.0), DEP, None, 60.0, seed=4).visits
    gaps, idle = _spacing(light)
    assert len(idle) > 1000 and np.allclose(idle, 0.0)
    assert np.allclose(gaps, 0.001)
    # no hand-off: the next job starts when the last ends
    gaps, _ = _spacing(simulate_replication(_stage(500, None, None), DEP, None, 20.0, 4).visits)
    assert np.allclose(gaps, 0.0)


def test_handoff_takes_no_quota() -> None:
    # a 0.85-core quota: 3 ms of model + 1 ms of hand-off uses at most 8 ms of any 10, so the
    # quota never binds: the model runs at full speed, 250 jobs/s
    v = simulate_replication(_stage(500, 0.85, 1.0), DEP, None, 20.0, seed=5).visits
    service = (v["t_end"] - v["t_start"]).to_numpy()
    assert np.allclose(service[np.isfinite(service)], 0.003)
    assert abs((v["t_end"] <= 20.0).sum() / 20.0 - 250) < 3
    # as CPU beside the model (ServerOverhead.per_item_ms, serial) the same 1 ms would
    # have to share the quota: 4 ms of CPU per job at 0.85 core, 212.5 jobs/s
    cpu = _stage(500, 0.85, None)
    comps = [
        cpu.components[0].model_copy(
            update={
                "server_overhead": cpu.components[0].server_overhead.model_copy(
                    update={"per_item_ms": 1.0}
                )
            }
        )
    ]
    cpu = cpu.model_copy(update={"components": comps})
    w = simulate_replication(cpu, DEP, None, 20.0, seed=5).visits
    assert abs((w["t_end"] <= 20.0).sum() / 20.0 - 212.5) < 3


def _cpu_handoff(sc: Scenario) -> Scenario:
    comps = [
        c.model_copy(
            update={"server_overhead": c.server_overhead.model_copy(update={"handoff_cpu": True})}
        )
        for c in sc.components
    ]
    return sc.model_copy(update={"components": comps})


def test_a_binding_quota_absorbs_an_idle_handoff_but_not_a_cpu_one() -> None:
    # 0.5-core quota, 3 ms of model per job: 6 ms per job once the quota binds. An idle
    # 1-ms hand-off fits in the stall the quota would impose anyway (still 1 job / 6 ms);
    # as CPU it adds 1 ms to each job's 3 (1 job / 8 ms), and its stalls fall between jobs
    idle = simulate_replication(_stage(500, 0.5, 1.0), DEP, None, 30.0, seed=6).visits
    cpu = simulate_replication(_cpu_handoff(_stage(500, 0.5, 1.0)), DEP, None, 30.0, seed=6)
    assert abs((idle["t_end"] <= 30.0).sum() / 30.0 - 1000 / 6) < 4
    assert abs((cpu.visits["t_end"] <= 30.0).sum() / 30.0 - 125) < 4
    gaps, _ = _spacing(cpu.visits)
    assert gaps.min() >= 0.001 - 1e-9 and gaps.max() > 0.004  # some hand-offs stalled
