"""Operators keep pymoo's shapes and contracts and respect the placement rules."""

from __future__ import annotations

import numpy as np
import pytest
from pymoo.core.population import Population

from optimizer.evaluation import Evaluator
from optimizer.genome import Genome
from optimizer.operators import (
    FeasibleSampling,
    MatrixCrossover,
    PlacementMutation,
    PlacementRepair,
    stock_operators,
)
from optimizer.problem import PlacementProblem
from tests.optimizer.conftest import CHEAP


@pytest.fixture()
def problem(genome: Genome) -> PlacementProblem:
    return PlacementProblem(Evaluator(genome, CHEAP))


def test_sampling_is_feasible_unique_and_seeded(problem: PlacementProblem) -> None:
    s = FeasibleSampling()
    pop = s.do(problem, 40, random_state=np.random.default_rng(1))
    X = pop.get("X")
    assert X.shape == (40, problem.n_var)
    assert all(problem.genome.is_feasible(x) for x in X)
    assert len({x.tobytes() for x in X}) == 40
    assert s.rejected > 0  # the instance has infeasible draws: rejection really happened
    again = FeasibleSampling().do(problem, 40, random_state=np.random.default_rng(1)).get("X")
    assert np.array_equal(X, again)


def test_sampling_respects_max_instances(problem: PlacementProblem) -> None:
    X = FeasibleSampling(max_instances=1).do(problem, 20, random_state=np.random.default_rng(2))
    M = problem.genome.decode_many(X.get("X"))
    assert np.all(M.sum(axis=2) == 1)


def _parents(problem: PlacementProblem, n: int, seed: int) -> np.ndarray:
    return FeasibleSampling().do(problem, n, random_state=np.random.default_rng(seed)).get("X")


def test_crossover_rows_come_from_a_parent(problem: PlacementProblem) -> None:
    g = problem.genome
    X = _parents(problem, 20, 3)
    pop = Population.new("X", X)
    parents = np.arange(20).reshape(10, 2)
    off = MatrixCrossover(block_prob=0.0, prob=1.0).do(
        problem, pop, parents, random_state=np.random.default_rng(4)
    )
    Y = off.get("X")
    assert Y.shape == (20, problem.n_var)
    changed = 0
    for i, (a, b) in enumerate(parents):
        pa, pb = g.decode(X[a]), g.decode(X[b])
        # pymoo stacks offspring by kind: first children of every mating, then second ones
        c1, c2 = g.decode(Y[i]), g.decode(Y[10 + i])
        for child in (c1, c2):
            for k in range(g.shape[0]):
                assert np.array_equal(child[k], pa[k]) or np.array_equal(child[k], pb[k])
            changed += not (np.array_equal(child, pa) or np.array_equal(child, pb))
        # the two children split the parents' rows between them
        assert np.array_equal(c1 + c2, pa + pb)
    assert changed > 0


def test_block_crossover_swaps_a_rectangle(problem: PlacementProblem) -> None:
    g = problem.genome
    X = _parents(problem, 2, 5)
    Y = MatrixCrossover(block_prob=1.0, prob=1.0)._do(
        problem, X[:, None, :], random_state=np.random.default_rng(6)
    )
    a, b = g.decode(X[0]), g.decode(X[1])
    c1, c2 = g.decode(Y[0, 0]), g.decode(Y[1, 0])
    swapped = c1 != a
    assert np.array_equal(c1[swapped], b[swapped]) and np.array_equal(c2[swapped], a[swapped])
    assert np.array_equal(c1 + c2, a + b)


def test_mutation_makes_one_small_move(problem: PlacementProblem) -> None:
    g = problem.genome
    X = _parents(problem, 60, 7)
    pop = Population.new("X", X.copy())
    Y = PlacementMutation().do(problem, pop, random_state=np.random.default_rng(8)).get("X")
    ub = g.cell_bounds()
    moved = 0
    for x, y in zip(X, Y, strict=True):
        a, b = g.decode(x), g.decode(y)
        d = b - a
        assert np.abs(d).sum() <= 2  # a move, add or remove touches at most two cells
        assert abs(int(d.sum())) <= 1
        assert np.all(b.sum(axis=1) >= 1)  # never removes a component's last instance
        assert np.all(b <= ub) and np.all(b >= 0)
        moved += bool(np.abs(d).sum())
    assert moved > 30


def test_repair_contract(problem: PlacementProblem) -> None:
    g = problem.genome
    rng = np.random.default_rng(9)
    raw = rng.uniform(-1, 4, size=(30, problem.n_var))  # real-valued, out of bounds, infeasible
    pop = Population.new("X", raw)
    Y = PlacementRepair().do(problem, pop, random_state=rng).get("X")
    assert Y.dtype.kind == "i"
    assert all(g.is_feasible(y) for y in Y)


def test_stock_operators_with_repair_stay_feasible(problem: PlacementProblem) -> None:
    ops = stock_operators()
    X = _parents(problem, 20, 10)
    rng = np.random.default_rng(11)
    # called as pymoo's mating calls them, so their built-in rounding repair runs
    off = ops["crossover"](
        problem, Population.new("X", X), np.arange(20).reshape(10, 2), random_state=rng
    )
    off = ops["mutation"](problem, off, random_state=rng)
    Y = off.get("X")
    assert np.allclose(Y, np.rint(Y))  # rounded
    Y = ops["repair"].do(problem, Population.new("X", Y), random_state=rng).get("X")
    assert all(problem.genome.is_feasible(y) for y in Y)
