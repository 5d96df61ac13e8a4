"""A stage server's own CPU (HTTP, (de)serialisation, batching) counts against its capacity."""

from __future__ import annotations

import pandas as pd

from tests.twin.conftest import one_stage
from twin.criteria import stage_capacity_rps
from twin.sim import simulate_replication
from twin.spec import Deployment


def _variants(ms: float, per_item_ms: float) -> list[dict]:
    return [
        {
            "name": "only",
            "accuracy": 0.9,
            "cpu_cores": 1,
            "service_time": {"kind": "constant", "ms": ms, "per_item_ms": per_item_ms},
        },
    ]


def _deployment(batch: int) -> Deployment:
    return Deployment.model_validate(
        {
            "allocation": {"stage": {"m": 1}},
            "stages": {"stage": {"variant": "only", "batch": batch}},
        }
    )


def test_overhead_lengthens_service_like_model_time() -> None:
    # model 1.5 + 0.5(b−1) ms plus 0.5 ms of server CPU per item = 1 + b ms = a model of 2 + 1(b−1)
    with_overhead = one_stage(
        variants=_variants(1.5, 0.5), server_overhead={"per_item_ms": 0.5, "per_call_ms": 0.0}
    )
    folded = one_stage(variants=_variants(2.0, 1.0))
    for batch in (1, 4):
        dep = _deployment(batch)
        a = simulate_replication(with_overhead, dep, None, 20.0, seed=3).visits
        b = simulate_replication(folded, dep, None, 20.0, seed=3).visits
        assert len(a) > 300
        pd.testing.assert_frame_equal(a, b)


def test_overhead_lowers_stage_capacity() -> None:
    dep = _deployment(4)
    bare = one_stage(variants=_variants(4.0, 1.0))
    loaded = one_stage(
        variants=_variants(4.0, 1.0), server_overhead={"per_call_ms": 1.0, "per_item_ms": 0.5}
    )
    # batch 4: model 4 + 3 = 7 ms; server 1 + 4·0.5 = 3 ms → 4 items per 10 ms
    assert stage_capacity_rps(bare, dep, "stage") == 4 / 0.007
    assert abs(stage_capacity_rps(loaded, dep, "stage") - 400.0) < 1e-9


def test_overhead_grows_waits_at_high_load() -> None:
    # 20 req/s on a 10 ms model: ρ 0.2; with 30 ms of server CPU per item ρ 0.8
    dep = _deployment(1)
    bare = one_stage(variants=_variants(10.0, 0.0))
    loaded = one_stage(variants=_variants(10.0, 0.0), server_overhead={"per_item_ms": 30.0})
    w0 = simulate_replication(bare, dep, None, 200.0, seed=1).visits
    w1 = simulate_replication(loaded, dep, None, 200.0, seed=1).visits
    wait0 = float((w0["t_start"] - w0["t_arrive"]).mean())
    wait1 = float((w1["t_start"] - w1["t_arrive"]).mean())
    # M/D/1: W = ρ s / (2(1−ρ)): 1.25 ms at ρ 0.2, 80 ms at ρ 0.8
    assert wait0 < 0.004
    assert 0.06 < wait1 < 0.10
