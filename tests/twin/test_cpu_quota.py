"""A CPU quota (CFS bandwidth control): full speed while the period's quota lasts, then a stall."""

from __future__ import annotations

import numpy as np

from tests.twin.conftest import one_stage
from twin.criteria import stage_capacity_rps
from twin.sim import _Quota, simulate_replication
from twin.spec import Deployment, Scenario, ServerOverhead


def test_work_stalls_to_the_next_period_when_the_quota_is_used() -> None:
    q = _Quota(cores=0.5, period_s=0.010)  # 5 ms of running per 10 ms
    assert abs(q.wall_s(0.0, 0.003) - 0.003) < 1e-12  # 3 ms fit in the first period
    # 2 ms left in period 0, then a stall to 10 ms, then 1 ms more
    assert abs(q.wall_s(0.003, 0.003) - 0.008) < 1e-12
    # period 1 has 4 ms left: 12 ms of work runs 4 + 5 + 3 ms over three periods
    assert abs(q.wall_s(0.011, 0.012) - (0.030 + 0.003 - 0.011)) < 1e-12


def _quota_stage(rate_per_s: float, quota_cores: float | None) -> Scenario:
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
    servers = [sc.servers[0].model_copy(update={"cpu_quota_cores": quota_cores})]
    proc = sc.processes[0]
    arrivals = proc.arrivals.model_copy(update={"rate_per_s": rate_per_s})
    procs = [proc.model_copy(update={"arrivals": arrivals})]
    return Scenario.model_validate(
        sc.model_copy(update={"servers": servers, "processes": procs}).model_dump()
    )


DEP = Deployment.model_validate(
    {"allocation": {"stage": {"m": 1}}, "stages": {"stage": {"variant": "only", "batch": 1}}}
)


def test_quota_sets_capacity_and_light_load_runs_at_full_speed() -> None:
    # 3 ms of work under a 0.5-core quota: capacity 0.5 / 3 ms ≈ 167/s, not 333/s
    assert abs(stage_capacity_rps(_quota_stage(20, 0.5), DEP, "stage") - 500 / 3) < 1e-9
    light = simulate_replication(_quota_stage(20, 0.5), DEP, None, 100.0, seed=2).visits
    service = (light["t_end"] - light["t_start"]).to_numpy()
    # at ρ 0.12 most jobs find quota left and take their 3 ms; a few straddle a stall
    assert abs(float(np.median(service)) - 0.003) < 1e-9
    assert service.mean() < 0.004
    over = simulate_replication(_quota_stage(250, 0.5), DEP, None, 40.0, seed=2).visits
    done = over[over["t_end"] <= 40.0]
    assert abs(len(done) / 40.0 - 500 / 3) < 5  # throughput is the quota's, not 1/3 ms
    free = simulate_replication(_quota_stage(250, None), DEP, None, 40.0, seed=2).visits
    assert abs(len(free[free["t_end"] <= 40.0]) / 40.0 - 250) < 10


def test_unused_quota_carries_into_the_next_period_up_to_the_carry() -> None:
    tight = _Quota(cores=0.5, period_s=0.010)
    assert abs(tight.wall_s(0.0, 0.006) - 0.011) < 1e-12  # 5 ms, stall to 10 ms, 1 ms
    q = _Quota(cores=0.5, period_s=0.010, carry_s=0.001)
    # after an idle spell the period has its 5 ms and 1 ms carried over: no stall
    assert abs(q.wall_s(0.0, 0.006) - 0.006) < 1e-12
    # period 0 used all 6 ms: nothing carries into period 1, and 6 ms stall again
    assert abs(q.wall_s(0.010, 0.006) - 0.011) < 1e-12
    # period 2 was left with 4 ms unused: period 3 may run 5 + 1 ms
    assert abs(q.wall_s(0.030, 0.006) - 0.006) < 1e-12


def test_a_running_thread_overruns_its_quota_until_the_tick_and_pays_it_back() -> None:
    q = _Quota(cores=0.5, period_s=0.010, tick_s=0.004)
    # 5 ms of quota used at 5 ms; the tick at 8 ms throttles it: 3 ms overrun, then the
    # stall to 10 ms; period 1 has 5 − 3 = 2 ms: the last 1 ms runs at once
    assert abs(q.wall_s(0.0, 0.009) - 0.011) < 1e-12
    # period 1 has 1 ms left: out of it at 12.5 ms, the job runs on to its end at
    # 14.5 ms, before the tick at 16 ms
    assert abs(q.wall_s(0.0115, 0.003) - 0.003) < 1e-12
    # the next job starts before that tick too: it runs to 16 ms, is throttled, and
    # period 2 has 5 − 3 ms (period 1 ran 5 ms of its 2): its last 1 ms runs from 20 ms
    assert abs(q.wall_s(0.015, 0.002) - 0.006) < 1e-12
    # a job that starts after the throttle in an overdrawn period waits for the next
    r = _Quota(cores=0.5, period_s=0.010, tick_s=0.004)
    assert abs(r.wall_s(0.0, 0.006) - 0.006) < 1e-12  # out at 5 ms, done by the 8-ms tick
    assert abs(r.wall_s(0.0065, 0.001) - 0.001) < 1e-12  # before the tick: runs on
    assert abs(r.wall_s(0.0085, 0.001) - 0.0025) < 1e-12  # after it: waits to 10 ms
    # over time the quota still holds: back-to-back work runs at 0.5 core
    b = _Quota(cores=0.5, period_s=0.010, tick_s=0.004)
    t = 0.0
    for _ in range(2000):
        t += b.wall_s(t, 0.003)
    assert abs(2000 * 0.003 / t - 0.5) < 0.005


def _beside(rate_per_s: float, concurrent: bool) -> Scenario:
    sc = _quota_stage(rate_per_s, 0.5)
    over = ServerOverhead(per_item_ms=1.0, concurrent=concurrent)
    comps = [sc.components[0].model_copy(update={"server_overhead": over})]
    return Scenario.model_validate(sc.model_copy(update={"components": comps}).model_dump())


def test_concurrent_server_work_shares_the_quota_but_not_the_models_time() -> None:
    # 3 ms of model + 1 ms of server work per visit, one 0.5-core quota: 125/s either way
    for concurrent in (True, False):
        assert abs(stage_capacity_rps(_beside(20, concurrent), DEP, "stage") - 125) < 1e-9
    serial = simulate_replication(_beside(250, False), DEP, None, 40.0, seed=3).requests
    assert abs((serial["t_end"] <= 40.0).sum() / 40.0 - 125) < 5
    # overloaded, the server still reads every call as it comes (250/s × 1 ms): the
    # model is left 0.25 core, 83/s — the server's work draws on the one quota
    beside = simulate_replication(_beside(250, True), DEP, None, 40.0, seed=3).requests
    assert abs((beside["t_end"] <= 40.0).sum() / 40.0 - 250 / 3) < 5
    light = simulate_replication(_beside(20, True), DEP, None, 60.0, seed=3)
    service = (light.visits["t_end"] - light.visits["t_start"]).to_numpy()
    latency = (light.requests["t_end"] - light.requests["t_arrive"]).to_numpy()
    assert abs(float(np.median(service)) - 0.003) < 1e-9  # the model alone holds the stage
    assert abs(float(np.median(latency)) - 0.004) < 1e-9  # the visit waited for its parse
    serial = simulate_replication(_beside(20, False), DEP, None, 60.0, seed=3).visits
    assert abs(float(np.median(serial["t_end"] - serial["t_start"])) - 0.004) < 1e-9
