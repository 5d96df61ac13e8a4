"""The alignment and constant-run decisions in the twin, and the paper's execution cost."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from twin.criteria import busy_from_visits, execution_cost, instance_price_per_s
from twin.deployment import check, demand_vectors, is_always_on
from twin.sim import simulate_replication
from twin.spec import Deployment, Scenario


def _scenario(startup_s: float = 0.0, required: bool = False, **settings: object) -> Scenario:
    """A periodic batch job (one 2 s step, split up to 2 ways) on a worker, plus a store."""
    return Scenario.model_validate(
        {
            "name": "matrices",
            "servers": [
                {"name": "a", "cpu_cores": 4, "ram_gb": 8, "price_per_hour": 3.6},
                {"name": "b", "cpu_cores": 2, "ram_gb": 8, "price_per_hour": 7.2},
            ],
            "components": [
                {
                    "name": "worker",
                    "cpu_cores": 1,
                    "keepalive_cpu_cores": 1,
                    "keepalive_ram_gb": 1,
                    "startup_s": startup_s,
                },
                {
                    "name": "store",
                    "cpu_cores": 1,
                    "keepalive_ram_gb": 4,
                    "always_on_required": required,
                },
            ],
            "processes": [
                {
                    "name": "job",
                    "kind": "batch",
                    "arrivals": {"kind": "periodic", "period_s": 10},
                    "steps": [
                        {
                            "name": "work",
                            "component": "worker",
                            "cpu_work": {"kind": "constant", "ms": 2000},
                            "max_parallel": 2,
                        },
                        {
                            "name": "save",
                            "component": "store",
                            "cpu_work": {"kind": "constant", "ms": 100},
                            "depends_on": ["work"],
                        },
                    ],
                }
            ],
            "settings": settings,
        }
    )


def _dep(on: bool, parallel: int = 1, worker_on: dict[str, int] | None = None) -> Deployment:
    return Deployment(
        allocation={"worker": worker_on or {"a": 2}, "store": {"b": 1}},
        parallelism={"job.work": parallel},
        always_on={"worker": on},
    )


def test_constant_run_decision_overrides_the_component_and_changes_demand() -> None:
    sc = _scenario()
    worker = sc.component("worker")
    assert is_always_on(worker, None) and not is_always_on(worker, _dep(False))
    cpu_on, _ = demand_vectors(sc, _dep(True))
    cpu_off, _ = demand_vectors(sc, _dep(False))
    assert cpu_on[0] == 2.0 and cpu_off[0] == 1.0  # keep-alive only when constant-run


def test_required_constant_run_is_a_constraint() -> None:
    sc = _scenario(required=True)
    dep = Deployment(allocation={"worker": {"a": 1}, "store": {"b": 1}}, always_on={"store": False})
    assert [v.constraint for v in check(sc, dep)] == ["constant run required"]
    bad = Deployment(allocation={"worker": {"a": 1}, "store": {"b": 1}}, always_on={"nope": True})
    assert [v.constraint for v in check(sc, bad)] == ["names"]
    with pytest.raises(ValueError, match="contradicts"):
        Scenario.model_validate(
            sc.model_dump()
            | {"components": [{"name": "x", "always_on": False, "always_on_required": True}]}
        )


def test_cold_start_delays_on_demand_work_and_is_metered() -> None:
    sc = _scenario(startup_s=0.5)
    warm = simulate_replication(sc, _dep(True), None, 35.0, seed=1)
    cold = simulate_replication(sc, _dep(False), None, 35.0, seed=1)
    t_warm = (warm.requests.t_end - warm.requests.t_arrive).to_numpy()
    t_cold = (cold.requests.t_end - cold.requests.t_arrive).to_numpy()
    assert t_warm == pytest.approx([2.1] * 4, abs=1e-3)
    assert t_cold == pytest.approx([2.6] * 4, abs=1e-3)  # every run finds the worker stopped
    assert warm.on_demand_busy_s[0].sum() == 0.0  # constant-run: not metered
    # 4 runs × (0.5 s start-up + 2 s work) on one instance of machine a.
    assert cold.on_demand_busy_s[0] == pytest.approx([10.0, 0.0])
    assert busy_from_visits(sc, cold.visits)[0] == pytest.approx(cold.on_demand_busy_s[0])


def test_alignment_splits_the_step_over_instances() -> None:
    sc = _scenario()
    one = simulate_replication(sc, _dep(True, 1), None, 15.0, seed=1)
    two = simulate_replication(sc, _dep(True, 2), None, 15.0, seed=1)
    assert (one.requests.t_end - one.requests.t_arrive).to_numpy() == pytest.approx(
        [2.1, 2.1], abs=1e-3
    )
    assert (two.requests.t_end - two.requests.t_arrive).to_numpy() == pytest.approx(
        [1.1, 1.1], abs=1e-3
    )


def test_execution_cost_by_hand() -> None:
    sc = _scenario()
    rate = instance_price_per_s(sc, _dep(True))
    # worker on a (4 cores, 8 GB): 2 of 4 cores (keep-alive + work) → half of 3.6/h;
    # store on b (2 cores, 8 GB): 4 GB + nothing → the larger share, ½ of 7.2/h.
    assert rate[0, 0] == pytest.approx(0.5 * 3.6 / 3600)
    assert rate[1, 1] == pytest.approx(0.5 * 7.2 / 3600)
    on = execution_cost(sc, _dep(True), 3600.0, np.zeros((2, 2)))
    assert on == pytest.approx(2 * 1.8 + 3.6)
    busy = np.array([[600.0, 0.0], [0.0, 0.0]])
    off = execution_cost(sc, _dep(False), 3600.0, busy)
    # On demand: 1 of 4 cores (no keep-alive) for 600 s, plus the store all hour.
    assert off == pytest.approx(0.25 * 3.6 * 600 / 3600 + 3.6)
    assert execution_cost(sc, _dep(False), 3600.0, None) == pytest.approx(2 * 0.9 + 3.6)


def test_busy_from_visits_counts_overlaps_once() -> None:
    sc = _scenario()
    visits = pd.DataFrame(
        {
            "component": ["worker", "worker", "worker", "worker"],
            "machine": ["a", "a", "a", "b"],
            "replica": [0, 0, 1, 2],
            "t_start": [0.0, 1.0, 0.0, 5.0],
            "t_end": [2.0, 3.0, 1.0, float("nan")],
        }
    )
    assert busy_from_visits(sc, visits)[0] == pytest.approx([4.0, 0.0])


def test_rental_criterion_stays_available() -> None:
    from twin.evaluate import evaluate

    execution = evaluate(_scenario(), _dep(False), None, 30.0, 1, 1).summary
    rental = evaluate(_scenario(cost_criterion="rental"), _dep(False), None, 30.0, 1, 1).summary
    assert rental.loc["cost", "mean"] == pytest.approx((3.6 + 7.2) * 30 / 3600)
    assert execution.loc["cost", "mean"] < rental.loc["cost", "mean"]
