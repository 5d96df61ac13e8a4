"""Same seed ⇒ same front inline, on a local Dask cluster, and on an existing scheduler."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.distributed import evaluation_client
from optimizer.evaluation import Evaluator
from optimizer.ga import Search, SearchConfig
from optimizer.genome import Genome
from tests.optimizer.conftest import CHEAP

CONFIG = SearchConfig(pop_size=10, n_gen=3, seed=9)


def _front(genome: Genome, client) -> tuple[np.ndarray, np.ndarray, list[bytes]]:
    s = Search.start(CONFIG, Evaluator(genome, CHEAP, client)).run()
    X, F, _ = s.front()
    return X, F, s.evaluator.order


def test_inline_without_workers_yields_none() -> None:
    with evaluation_client(0, None) as client:
        assert client is None
    with pytest.raises(ValueError, match="not both"), evaluation_client(2, "tcp://x:1"):
        pass


@pytest.mark.slow
def test_same_front_inline_local_cluster_and_scheduler(genome: Genome) -> None:
    from distributed import LocalCluster

    inline = _front(genome, None)
    with evaluation_client(workers=2) as client:
        local = _front(genome, client)
    cluster = LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address="127.0.0.1:0")
    try:
        with evaluation_client(scheduler=cluster.scheduler_address) as client:
            remote = _front(genome, client)
    finally:
        cluster.close()
    for other in (local, remote):
        assert np.array_equal(inline[0], other[0])
        assert np.array_equal(inline[1], other[1])
        assert inline[2] == other[2]


def test_unreachable_scheduler_is_explained() -> None:
    with (
        pytest.raises(ValueError, match="cannot reach"),
        evaluation_client(scheduler="tcp://127.0.0.1:9"),
    ):
        pass
