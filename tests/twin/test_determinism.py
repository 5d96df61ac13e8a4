"""Same seed ⇒ identical records; other seeds differ; candidates share arrivals (CRN)."""

from __future__ import annotations

import pandas as pd
import pytest

from twin.deployment import allocation_matrix, with_matrix
from twin.evaluate import evaluate
from twin.sim import simulate_replication


def test_same_seed_gives_identical_records(edge_cloud) -> None:
    sc, dep = edge_cloud
    a = simulate_replication(sc, dep, sc.workload("fluctuating"), 900, seed=5)
    b = simulate_replication(sc, dep, sc.workload("fluctuating"), 900, seed=5)
    pd.testing.assert_frame_equal(a.visits, b.visits)
    pd.testing.assert_frame_equal(a.requests, b.requests)
    assert a.events == b.events
    assert len(a.visits) > 1000


def test_different_seeds_differ(edge_cloud) -> None:
    sc, dep = edge_cloud
    a = simulate_replication(sc, dep, None, 600, seed=1)
    b = simulate_replication(sc, dep, None, 600, seed=2)
    assert not a.requests["t_arrive"].equals(b.requests["t_arrive"])


def test_replications_are_independent_and_evaluation_is_reproducible(edge_cloud) -> None:
    sc, dep = edge_cloud
    e1 = evaluate(sc, dep, "steady-low", 600, replications=3, seed=9)
    e2 = evaluate(sc, dep, "steady-low", 600, replications=3, seed=9)
    pd.testing.assert_frame_equal(e1.per_replication, e2.per_replication)
    assert e1.per_replication["time_mean_s"].nunique() == 3


def test_candidates_share_arrivals_common_random_numbers(edge_cloud) -> None:
    sc, dep = edge_cloud
    x = allocation_matrix(sc, dep)
    x[sc.components.index(sc.component("encoder"))] = 0
    x[sc.components.index(sc.component("encoder")), sc.server_instances().index("onprem-1")] = 2
    other = with_matrix(sc, x, dep)
    a = simulate_replication(sc, dep, None, 600, seed=3)
    b = simulate_replication(sc, other, None, 600, seed=3)
    pd.testing.assert_series_equal(a.requests["t_arrive"], b.requests["t_arrive"])
    assert not a.requests["t_end"].equals(b.requests["t_end"])


def test_evaluation_pickles(edge_cloud) -> None:
    import pickle

    sc, dep = edge_cloud
    e = evaluate(sc, dep, None, 300, replications=2, seed=1)
    back = pickle.loads(pickle.dumps(e))
    assert back.criteria() == pytest.approx(e.criteria(), nan_ok=True)
    assert pickle.loads(pickle.dumps(sc)) == sc


def test_parallel_replications_give_identical_numbers(edge_cloud, monkeypatch) -> None:
    import twin.evaluate as twin_evaluate

    pools: list[int] = []

    class CountingPool(twin_evaluate.ProcessPoolExecutor):
        def __init__(self, max_workers: int, **kw: object) -> None:
            pools.append(max_workers)
            super().__init__(max_workers=max_workers, **kw)

    monkeypatch.setattr(twin_evaluate, "ProcessPoolExecutor", CountingPool)
    sc, dep = edge_cloud
    inline = evaluate(sc, dep, "fluctuating", 600, replications=4, seed=3, keep_records=True)
    assert pools == []
    pooled = evaluate(
        sc, dep, "fluctuating", 600, replications=4, seed=3, keep_records=True, workers=2
    )
    assert pools == [2], "workers=2 did not run the replications in a process pool"
    pd.testing.assert_frame_equal(inline.per_replication, pooled.per_replication)
    pd.testing.assert_frame_equal(inline.visits, pooled.visits)
    assert inline.events == pooled.events
