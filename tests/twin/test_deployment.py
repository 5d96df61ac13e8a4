"""Constraints name what is violated and by how much; repair restores feasibility."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twin.deployment import (
    InfeasibleDeployment,
    allocation_matrix,
    check,
    is_feasible_matrix,
    repair,
    require_feasible,
    with_matrix,
)
from twin.spec import StageConfig


def test_examples_are_feasible(edge_cloud, digits) -> None:
    for sc, dep in (edge_cloud, digits):
        assert check(sc, dep) == []


def test_matrix_round_trip(edge_cloud) -> None:
    sc, dep = edge_cloud
    x = allocation_matrix(sc, dep)
    assert x.shape == (len(sc.components), len(sc.server_instances()))
    assert np.array_equal(allocation_matrix(sc, with_matrix(sc, x, dep)), x)


def test_cpu_overload_names_machine_and_excess(edge_cloud) -> None:
    sc, dep = edge_cloud
    alloc = dict(dep.allocation) | {"data-prep": {"edge-1": 3}}  # 3 × 2 cores on a 4-core box
    bad = dep.model_copy(update={"allocation": alloc})
    with pytest.raises(InfeasibleDeployment) as info:
        require_feasible(sc, bad)
    v = next(v for v in info.value.violations if v.constraint == "server CPU")
    assert v.subject == "edge-1" and v.excess == pytest.approx(2.0)
    assert "over by 2 cores" in str(info.value)


def test_missing_component_and_replica_batch_and_budget_limits(digits) -> None:
    sc, dep = digits
    alloc = dict(dep.allocation) | {"encoder": {}, "denoise": {"node-1": 2, "node-2": 3}}
    stages = dict(dep.stages) | {"classifier": StageConfig(variant="c-mlp", batch=64)}
    bad = dep.model_copy(update={"allocation": alloc, "stages": stages})
    kinds = {v.constraint: v for v in check(sc, bad)}
    assert kinds["≥ 1 instance"].subject == "encoder"
    assert kinds["replicas ≤ max_replicas"].excess == 1  # 5 > 4
    assert kinds["batch ≤ max_batch"].excess == 32


def test_resource_budget_w_max(digits) -> None:
    sc, dep = digits
    big = {
        name: StageConfig(variant=c.variants[-1].name)
        for name, c in ((c.name, c) for c in sc.components)
    }
    alloc = {c.name: {"node-1": 1, "node-2": 1, "node-3": 1} for c in sc.components}
    bad = dep.model_copy(update={"allocation": alloc, "stages": big})
    budget = [v for v in check(sc, bad) if v.constraint == "Σ w·f ≤ W_max"]
    w = sum(c.variants[-1].cpu_cores * 3 for c in sc.components)
    assert budget and budget[0].excess == pytest.approx(w - 6)


def test_unknown_names_are_reported(edge_cloud) -> None:
    sc, dep = edge_cloud
    bad = dep.model_copy(update={"allocation": dict(dep.allocation) | {"ghost": {"edge-1": 1}}})
    (v,) = check(sc, bad)
    assert v.constraint == "names" and "ghost" in v.message
    bad = dep.model_copy(update={"stages": {"encoder": StageConfig(variant="huge")}})
    assert any("no variant 'huge'" in v.message for v in check(sc, bad))


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_repair_always_returns_a_feasible_matrix(edge_cloud, data) -> None:
    sc, dep = edge_cloud
    k, s = len(sc.components), len(sc.server_instances())
    cells = data.draw(st.lists(st.integers(0, 6), min_size=k * s, max_size=k * s))
    x = np.array(cells).reshape(k, s)
    seed = data.draw(st.integers(0, 2**16))
    fixed = repair(sc, x, dep, np.random.default_rng(seed))
    assert is_feasible_matrix(sc, fixed, dep)
    assert check(sc, with_matrix(sc, fixed, dep)) == []
    # Repair only removes instances, except to give a component left with none
    # its one instance back.
    grown = (fixed > x).any(axis=1)
    assert np.all(fixed[grown].sum(axis=1) == 1)


def test_effective_stage_resolves_every_default_once(digits) -> None:
    from twin.deployment import effective_stage

    sc, dep = digits
    stage = next(c for c in sc.components if c.is_stage)
    bare = dep.model_copy(update={"stages": {}})
    eff = effective_stage(sc, bare, stage)
    assert (eff.variant, eff.batch) == (stage.variants[0].name, 1)
    assert eff.batch_timeout_ms == sc.settings.batch_timeout_ms
    last = stage.variants[-1].name
    own = StageConfig(variant=last, batch=4, batch_timeout_ms=sc.settings.batch_timeout_ms + 3.0)
    eff = effective_stage(sc, bare.model_copy(update={"stages": {stage.name: own}}), stage)
    assert (eff.variant, eff.batch, eff.batch_timeout_ms) == (last, 4, own.batch_timeout_ms)
    platform = next((c for c in sc.components if not c.is_stage), None)
    if platform is not None:
        assert (
            effective_stage(sc, dep, platform).variant,
            effective_stage(sc, dep, platform).batch,
        ) == ("", 1)
