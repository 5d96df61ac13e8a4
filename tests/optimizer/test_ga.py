"""Searches: only feasible allocations are ever simulated, the cache works, resume is exact."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from optimizer.evaluation import Evaluator
from optimizer.ga import Search, SearchConfig, hypervolume, non_dominated
from optimizer.genome import Genome
from tests.optimizer.conftest import CHEAP
from twin.deployment import check


def _search(genome: Genome, tmp: Path | None = None, **cfg) -> Search:
    config = SearchConfig(**{"pop_size": 10, "n_gen": 4, "seed": 5, **cfg})
    ck = tmp / "ck.pkl" if tmp else None
    return Search.start(config, Evaluator(genome, CHEAP), checkpoint=ck)


@pytest.mark.parametrize("operators", ["custom", "stock"])
def test_every_evaluated_individual_is_feasible(genome: Genome, operators: str) -> None:
    s = _search(genome, operators=operators, n_gen=5).run()
    X, F, _ = s.evaluator.evaluated()
    assert len(X) == s.evaluator.simulations > 10
    for x in X:
        assert check(genome.scenario, genome.deployment(x)) == [], genome.allocation(x)
    assert np.isfinite(F).all()


def test_cache_never_simulates_twice(genome: Genome) -> None:
    ev = Evaluator(genome, CHEAP)
    X = np.array(
        [genome.repair(np.zeros(genome.n_var), np.random.default_rng(i)) for i in range(3)]
    )
    F1, _ = ev.evaluate(np.vstack([X, X]))
    assert ev.simulations == len({x.tobytes() for x in X})
    assert np.array_equal(F1[:3], F1[3:])
    F2, _ = ev.evaluate(X[::-1])
    assert ev.simulations == len({x.tobytes() for x in X})
    assert np.array_equal(F2, F1[:3][::-1])
    assert ev.lookups == 9


def test_common_random_numbers_give_stable_scores(genome: Genome) -> None:
    x = genome.repair(np.zeros(genome.n_var), np.random.default_rng(0))
    a, _ = Evaluator(genome, CHEAP).evaluate(x[None])
    b, _ = Evaluator(genome, CHEAP).evaluate(x[None])
    assert np.array_equal(a, b)


def test_history_and_front(genome: Genome) -> None:
    s = _search(genome).run()
    assert [h.gen for h in s.history] == [1, 2, 3, 4]
    sims = [h.simulations for h in s.history]
    assert sims == sorted(sims) and sims[0] == 10
    hv = [h.hv for h in s.history]
    assert all(b >= a - 1e-12 for a, b in itertools.pairwise(hv))  # best-so-far front
    _, F, _ = s.front()
    _, F_all, _ = s.evaluator.evaluated()
    assert len(non_dominated(F_all)) == len(F)
    # nothing simulated dominates a front point
    for f in F:
        assert not np.any(np.all(F_all <= f, axis=1) & np.any(F_all < f, axis=1))


def test_resume_gives_the_same_result(genome: Genome, tmp_path: Path) -> None:
    whole = _search(genome, n_gen=5).run()
    part = _search(genome, tmp_path, n_gen=2).run()
    assert (tmp_path / "ck.pkl").is_file()
    resumed = Search.resume(tmp_path / "ck.pkl")
    resumed.extend(n_gen=5)
    resumed.run()
    assert len(resumed.history) == 5
    a, b = whole.front(), resumed.front()
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert [h.hv for h in whole.history] == [h.hv for h in resumed.history]
    assert whole.evaluator.order == resumed.evaluator.order
    assert part.evaluator.simulations < whole.evaluator.simulations


@pytest.mark.parametrize("algorithm", ["nsga3", "smsemoa"])
def test_other_algorithms_run(genome: Genome, algorithm: str) -> None:
    s = _search(genome, algorithm=algorithm, n_gen=3).run()
    assert len(s.history) == 3
    assert s.evaluator.simulations > 10
    assert len(s.front()[0]) >= 1


def test_budget_by_evaluations(genome: Genome) -> None:
    s = _search(genome, n_gen=100, max_evals=25).run()
    assert 25 <= s.evaluator.simulations < 25 + 10
    assert len(s.history) < 100


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="nsga2"):
        SearchConfig(algorithm="moead")
    with pytest.raises(ValueError, match="custom"):
        SearchConfig(operators="fancy")


def test_hypervolume_of_known_points() -> None:
    lo, hi = np.zeros(2), np.ones(2)
    assert hypervolume(np.array([[0.0, 0.0]]), lo, hi) == pytest.approx(1.21)
    assert hypervolume(np.array([[0.5, 0.5]]), lo, hi) == pytest.approx(0.36)
    assert hypervolume(np.array([[0.0, 1.0], [1.0, 0.0]]), lo, hi) == pytest.approx(
        2 * 1.1 * 0.1 - 0.01
    )
