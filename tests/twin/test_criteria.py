"""Criteria and pipeline metrics on tables small enough to work out by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from twin.criteria import (
    confidence_interval,
    deployment_cost,
    pipeline_capacity_rps,
    pipeline_metrics,
    placement_criteria,
    qos,
)
from twin.sim import VISIT_COLUMNS
from twin.spec import QoSWeights


def _requests(rows: list[tuple[str, float, float, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [(p, i, a, e, d) for i, (p, a, e, d) in enumerate(rows)],
        columns=["process", "pid", "t_arrive", "t_end", "deadline_s"],
    )


def test_placement_criteria_by_hand(edge_cloud) -> None:
    sc, dep = edge_cloud
    nan = float("nan")
    req = _requests(
        [
            ("inference", 0.0, 0.1, 0.25),
            ("inference", 1.0, 1.3, 0.25),  # overrun
            ("data-preparation", 0.0, 100.0, 240),
            ("data-preparation", 600.0, nan, 240),  # unfinished at 900 → 300 s, overrun
            ("drift-check", 0.0, 50.0, 120),  # weight 0.5
        ]
    )
    rental = sc.model_copy(
        update={"settings": sc.settings.model_copy(update={"cost_criterion": "rental"})}
    )
    c = placement_criteria(req, rental, dep, horizon_s=3600, end_s=900)
    means = {"inference": 0.2, "data-preparation": 200.0, "drift-check": 50.0}
    var = {
        "inference": np.var([0.1, 0.3], ddof=1),
        "data-preparation": 2 * 100.0**2,
        "drift-check": 0.0,
    }
    w = {"inference": 1.0, "data-preparation": 1.0, "drift-check": 0.5}
    assert c["time_mean_s"] == pytest.approx(sum(w[p] * means[p] for p in w) / 2.5)
    assert c["time_var_s2"] == pytest.approx(sum(w[p] * var[p] for p in w) / 2.5)
    assert c["overruns"] == 2 and c["unfinished"] == 1
    assert c["cost"] == pytest.approx(deployment_cost(sc, dep, 3600))


def test_cost_counts_each_used_machine_once(edge_cloud) -> None:
    sc, dep = edge_cloud
    used = {m for per in dep.allocation.values() for m, n in per.items() if n}
    price = {m: s.price_per_hour for m, s in sc.server_of().items()}
    assert deployment_cost(sc, dep, 7200) == pytest.approx(2 * sum(price[m] for m in used))


def test_confidence_interval_matches_student_t() -> None:
    x = [1.0, 2.0, 4.0, 7.0]
    mean, half = confidence_interval(x)
    assert mean == pytest.approx(3.5)
    lo, _hi = stats.t.interval(0.95, 3, loc=3.5, scale=stats.sem(x))
    assert half == pytest.approx(3.5 - lo)
    assert confidence_interval([5.0]) == (5.0, 0.0)


def test_qos_branches_follow_equation_3() -> None:
    w = QoSWeights(alpha=2, beta=0.5, gamma=3, delta=0.1, latency_weight=1)
    assert qos(2.0, 10.0, 0.5, 4.0, w) == pytest.approx(4 + 5 - 0.5 - 12)
    assert qos(2.0, 10.0, 0.5, -4.0, w) == pytest.approx(4 + 5 - 0.5 - 0.4)


def test_pipeline_metrics_by_hand(digits) -> None:
    sc, dep = digits
    rows = []
    for pid in range(10):  # 10 requests in a 10-s window, each stage 10 ms sojourn
        for k, step in enumerate(["denoise", "encode", "classify"]):
            t = pid + 0.01 * k
            rows.append(("digits", pid, step, step, "node-1", 0, 0, t, t, t + 0.01, 1))
    visits = pd.DataFrame(
        rows,
        columns=list(VISIT_COLUMNS),
    )
    m = pipeline_metrics(visits, sc, dep, "digits", 0.0, 10.0, offered_rps=50.0)
    variants = {c.name: c.variant(dep.stages[c.name].variant) for c in sc.components}
    assert m.V == pytest.approx(sum(v.accuracy for v in variants.values()))
    assert m.C == pytest.approx(sum(v.replica_cost for v in variants.values()))
    assert m.T == pytest.approx(1.0) and m.L == pytest.approx(0.03)
    assert m.E == pytest.approx(50.0 - pipeline_capacity_rps(sc, dep, "digits"))
    assert m.B == max(cfg.batch for cfg in dep.stages.values())
    w = sc.settings.qos
    assert m.Q == pytest.approx(qos(m.V, m.T, m.L, m.E, w))
    assert m.reward == pytest.approx(m.Q - w.reward_cost * m.C - w.reward_batch * m.B)
