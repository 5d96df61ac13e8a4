"""Baselines: exhaustive is complete, greedy packs feasibly, random honours its budget."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from optimizer.baselines import (
    count_candidates,
    enumerate_feasible,
    greedy,
    offered_load,
    random_search,
)
from optimizer.evaluation import Evaluator
from optimizer.genome import Genome
from tests.optimizer.conftest import CHEAP
from twin.deployment import check
from twin.spec import Scenario


def test_exhaustive_matches_brute_force(small: Scenario) -> None:
    # Restrict to two components so brute force over every cell value is quick.
    sc = small.model_copy(update={"components": small.components[:2]})
    sc = sc.model_copy(
        update={
            "processes": [
                small.processes[0].model_copy(update={"steps": small.processes[0].steps[:2]})
            ]
        }
    )
    g = Genome(sc)
    got = {x.tobytes() for x in enumerate_feasible(g)}
    want = set()
    for cells in itertools.product(range(4), repeat=g.n_var):
        x = np.array(cells, dtype=np.int64)
        if g.is_feasible(x):
            want.add(x.tobytes())
    assert got == want
    assert len(got) > 20


def test_exhaustive_count_and_limit(genome: Genome) -> None:
    n = count_candidates(genome)
    ub = genome.cell_bounds()
    want = 1
    for k in range(genome.shape[0]):
        rows = itertools.product(*[range(u + 1) for u in ub[k]])
        want *= sum(1 <= sum(r) <= genome.max_replicas[k] for r in rows)
    assert n == want
    with pytest.raises(ValueError, match="small instances"):
        enumerate_feasible(genome, limit=10)


@pytest.mark.parametrize("strategy", ["first_fit", "best_fit"])
def test_greedy_is_feasible(genome: Genome, edge: Scenario, strategy: str) -> None:
    for g in (genome, Genome(edge)):
        m = greedy(g, strategy)
        assert g.is_feasible(m.reshape(-1))
        assert check(g.scenario, g.deployment(m.reshape(-1))) == []


def test_greedy_puts_gpu_work_on_a_gpu(genome: Genome) -> None:
    m = greedy(genome, "first_fit")
    trainer = genome.components.index("trainer")
    assert m[trainer, genome.machines.index("cloud")] == 1


def test_offered_load(small: Scenario) -> None:
    load = offered_load(small)
    # model-server: 1 req/s × 120 ms = 0.12 erlangs
    assert load[2] == pytest.approx(0.12)
    # trainer: every 300 s, 30 s CPU + 60 s GPU
    assert load[3] == pytest.approx(90 / 300)


def test_greedy_rejects_unknown_strategy(genome: Genome) -> None:
    with pytest.raises(ValueError, match="first_fit"):
        greedy(genome, "worst_fit")


def test_random_search_budget(genome: Genome) -> None:
    ev = Evaluator(genome, CHEAP)
    X, F = random_search(ev, budget=15, seed=4)
    assert len(X) == 15 == ev.simulations
    assert len({x.tobytes() for x in X}) == 15
    assert all(genome.is_feasible(x) for x in X)
    assert F.shape == (15, 4) and np.isfinite(F).all()
    X2, _ = random_search(Evaluator(genome, CHEAP), budget=15, seed=4)
    assert np.array_equal(X, X2)
