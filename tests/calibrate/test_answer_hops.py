"""The hop's growth with the batch: fitted per stage, out of the overhead, into the twin."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from calibrate import calibration as cal
from calibrate.fit import fit_samples
from calibrate.samples import answer_hops, request_overheads, twin_samples
from twin.load import load_deployment, load_scenario
from twin.sim import simulate_replication

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "examples" / "digits-pipeline.yaml"
DEPLOYMENT = ROOT / "examples" / "digits-pipeline.deployment.yaml"


def _visits(per_answer_ms: float, seed: int = 0) -> pd.DataFrame:
    """One stage's visits: batches of 1–4, the k-th answer of a batch k answers late."""
    rng = np.random.default_rng(seed)
    rows, pid = [], 0
    for _ in range(3000):
        n = int(rng.integers(1, 5))
        for k in range(n):
            hop_ms = 2.0 + per_answer_ms * k + rng.normal(0, 0.2)
            rows.append({"pid": pid, "component": "enc", "batch": n, "hop_s": hop_ms / 1e3})
            pid += 1
    return pd.DataFrame(rows).assign(queue_s=0.001, service_s=0.004)


def test_answer_hops_recovers_the_time_per_answer():
    got = answer_hops(_visits(0.6))
    assert got["enc"] == pytest.approx(0.6, abs=0.03)
    assert answer_hops(_visits(0.0))["enc"] == pytest.approx(0.0, abs=0.03)
    # a stage that never batched has nothing to fit
    assert answer_hops(_visits(0.6).assign(batch=1)) == {}


def test_the_overhead_loses_the_visits_expected_wait_for_answers():
    v = _visits(0.6)
    req = pd.DataFrame({"pid": v["pid"], "ok": True, "t_arrive": 0.0, "t_end": 0.020})
    before = request_overheads(req, v)["overhead_ms"].to_numpy()
    after = request_overheads(req, v, answer_ms={"enc": 0.6})["overhead_ms"].to_numpy()
    expected = 0.6 * (v["batch"].to_numpy() - 1) / 2
    assert np.allclose(before - after, expected)


def test_the_calibrated_scenario_and_its_quota_twin_carry_it():
    from calibrate.quota import StageCpu, quota_scenario

    sc, dep = load_scenario(SCENARIO), load_deployment(DEPLOYMENT)
    res = simulate_replication(sc, dep, sc.workload("steady-low"), 60.0, 5)
    samples = twin_samples(res.visits, sc, dep, cpu_share=0.5)
    stage = next(c.name for c in sc.components if c.is_stage)
    doc = cal.build(fit_samples(samples), sc, answer_ms={stage: 0.7})
    new, _ = cal.calibrated_scenario(sc, doc)
    assert new.component(stage).server_overhead.answer_ms == 0.7
    assert all(
        c.server_overhead is None or c.server_overhead.answer_ms == 0
        for c in new.components
        if c.name != stage
    )
    # the quota twin replaces the stage server's CPU, not its answers
    node = next(iter(dep.allocation[stage]))
    variant = dep.stages[stage].variant
    cpu = {stage: StageCpu(stage, variant, node, 3.0, 1.0, 0.5, 1.0, 0.0, 1.0, 3)}
    q = quota_scenario(sc, doc, dep, cpu, 1.0)
    assert q.component(stage).server_overhead.answer_ms == 0.7
    assert q.component(stage).server_overhead.concurrent


def test_within_runs_the_load_does_not_count_as_answer_time():
    # two runs: the busier one has bigger batches and a 3-ms slower hop throughout
    light = _visits(0.5, seed=1).query("batch <= 2").assign(run=0)
    busy = _visits(0.5, seed=2).assign(run=1)
    busy = busy.assign(hop_s=busy["hop_s"] + 0.003)
    both = pd.concat([light, busy], ignore_index=True)
    assert answer_hops(both)["enc"] == pytest.approx(0.5, abs=0.03)
    assert answer_hops(both.drop(columns="run"))["enc"] > 0.7  # pooled: the load's share too


def test_timer_lateness_is_the_timed_out_batches_start_beyond_the_timeout():
    from calibrate.samples import dispatch_lag, timer_lateness
    from twin.deployment import effective_stage

    sc, dep = load_scenario(SCENARIO), load_deployment(DEPLOYMENT)
    timeout_s = effective_stage(sc, dep, sc.component("denoise")).batch_timeout_ms / 1e3
    rows, t = [], 0.0
    for k in range(40):  # batches of 2 (of 4): the oldest waited the timeout + 0.3 ms
        start = t + timeout_s + 0.0003
        for wait in (start - t, start - t - 0.0005):
            rows.append(
                {
                    "component": "denoise",
                    "replica_name": "r0",
                    "batch": 2,
                    "service_s": 0.002 + k * 1e-5,
                    "t_start": start,
                    "queue_s": wait,
                }
            )
        t += 0.05
    v = pd.DataFrame(rows)
    assert timer_lateness(v, sc, dep)["denoise"] == pytest.approx(0.3, abs=1e-6)
    assert dispatch_lag(v, sc, dep).to_numpy() == pytest.approx(0.0003)
    # the twin's timer fires that late: nothing is left as lag
    assert dispatch_lag(v, sc, dep, {"denoise": 0.3}).to_numpy() == pytest.approx(0.0, abs=1e-9)
