"""Variation operators on allocation matrices, one small class each, per pymoo's contracts.

Each overrides ``_do`` only and draws from the ``random_state`` pymoo hands
it, so a run is a pure function of its seed. Offspring may break capacity:
pymoo applies :class:`PlacementRepair` to every offspring before evaluation,
so only feasible allocations are ever simulated.

The stock control (:func:`stock_operators`) is pymoo's documented integer
recipe: real-coded SBX and polynomial mutation rounded to integers.
"""

from __future__ import annotations

import numpy as np
from pymoo.core.crossover import Crossover
from pymoo.core.mutation import Mutation
from pymoo.core.repair import Repair
from pymoo.core.sampling import Sampling
from pymoo.operators.crossover.sbx import SBX
from pymoo.operators.mutation.pm import PM
from pymoo.operators.repair.rounding import RoundingRepair

from optimizer.genome import Genome


def _genome(problem: object) -> Genome:
    genome = getattr(problem, "genome", None)
    if not isinstance(genome, Genome):
        raise TypeError("placement operators need a problem with a .genome (PlacementProblem)")
    return genome


def random_allocation(
    genome: Genome, rng: np.random.Generator, max_instances: int | None = None
) -> np.ndarray:
    """One random K×S allocation, not necessarily feasible.

    Each component gets n ~ U{1..min(max_replicas, max_instances)} instances,
    each put on a machine drawn uniformly among those that can hold one.
    """
    ub = genome.cell_bounds()
    m = np.zeros(genome.shape, dtype=np.int64)
    for k in range(genome.shape[0]):
        allowed = np.flatnonzero(ub[k] > 0)
        if allowed.size == 0:
            continue  # stays infeasible; the caller rejects it
        top = int(genome.max_replicas[k])
        if max_instances is not None:
            top = min(top, max_instances)
        n = int(rng.integers(1, max(top, 1) + 1))
        np.add.at(m[k], rng.choice(allowed, size=n), 1)
    return m


class FeasibleSampling(Sampling):
    """Random allocations, rejected and redrawn until the population is full of feasible ones.

    Duplicates are rejected too (pymoo would drop them and leave the population
    short). ``max_instances`` caps how many instances a component is drawn
    with (the concept's input parameter); None uses ``max_replicas``. After
    ``max_tries`` draws per individual the twin's repair completes the
    population rather than looping forever.
    """

    def __init__(self, max_instances: int | None = None, max_tries: int = 200) -> None:
        super().__init__()
        self.max_instances = max_instances
        self.max_tries = max_tries
        self.rejected = 0

    def _do(self, problem, n_samples, *args, random_state=None, **kwargs):
        genome = _genome(problem)
        out: list[np.ndarray] = []
        seen: set[bytes] = set()
        tries = 0
        while len(out) < n_samples:
            tries += 1
            m = random_allocation(genome, random_state, self.max_instances)
            x = m.reshape(-1)
            if not genome.is_feasible(x):
                self.rejected += 1
                if tries < self.max_tries * n_samples:
                    continue
                x = genome.repair(x, random_state)
            key = x.tobytes()
            if key in seen and tries < self.max_tries * n_samples:
                continue
            seen.add(key)
            out.append(x)
        return np.array(out, dtype=np.int64)


class MatrixCrossover(Crossover):
    """Exchange parts of two parents' matrices: whole rows (components) or a block.

    Row mode: each component's row comes from either parent (p = ½), so an
    offspring inherits complete placements of components. Block mode: a
    random rectangle of rows × machines is swapped, keeping co-located groups.
    """

    def __init__(self, block_prob: float = 0.5, prob: float = 0.9) -> None:
        super().__init__(n_parents=2, n_offsprings=2, prob=prob)
        self.block_prob = block_prob

    def _do(self, problem, X, *args, random_state=None, **kwargs):
        genome = _genome(problem)
        K, S = genome.shape
        _, n_matings, n_var = X.shape
        Y = np.array(X, copy=True)
        for i in range(n_matings):
            a, b = X[0, i].reshape(K, S), X[1, i].reshape(K, S)
            if random_state.random() < self.block_prob:
                mask = np.zeros((K, S), dtype=bool)
                r0, r1 = np.sort(random_state.integers(0, K + 1, size=2))
                c0, c1 = np.sort(random_state.integers(0, S + 1, size=2))
                mask[r0 : max(r1, r0 + 1), c0 : max(c1, c0 + 1)] = True
            else:
                rows = random_state.random(K) < 0.5
                mask = np.repeat(rows[:, None], S, axis=1)
            Y[0, i] = np.where(mask, b, a).reshape(n_var)
            Y[1, i] = np.where(mask, a, b).reshape(n_var)
        return Y


class PlacementMutation(Mutation):
    """Small moves: move an instance to another machine, add one, or remove one.

    ``n_moves`` moves per mutated individual (at least one), each picked with
    probabilities ``weights`` = (move, add, remove). Removal never takes a
    component's last instance; adds respect the cell bounds.
    """

    def __init__(
        self,
        weights: tuple[float, float, float] = (0.5, 0.25, 0.25),
        n_moves: int = 1,
        prob: float = 1.0,
    ) -> None:
        super().__init__(prob=prob)
        w = np.asarray(weights, dtype=float)
        if w.shape != (3,) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(
                f"weights must be 3 non-negative numbers (move, add, remove), got {weights}"
            )
        self.weights = w / w.sum()
        self.n_moves = n_moves

    def _do(self, problem, X, *args, random_state=None, **kwargs):
        genome = _genome(problem)
        ub = genome.cell_bounds()
        Y = np.array(X, copy=True)
        for i in range(len(Y)):
            m = genome.decode(Y[i])
            for _ in range(self.n_moves):
                self._one(m, ub, random_state)
            Y[i] = m.reshape(-1)
        return Y

    def _one(self, m: np.ndarray, ub: np.ndarray, rng: np.random.Generator) -> None:
        kind = rng.choice(3, p=self.weights)
        if kind == 1:  # add
            cells = np.argwhere(m < ub)
            if len(cells):
                k, j = cells[rng.integers(len(cells))]
                m[k, j] += 1
            return
        cells = np.argwhere(m > 0)
        if kind == 2:  # remove, never a component's last instance
            cells = np.array([c for c in cells if m[c[0]].sum() > 1])
        if len(cells) == 0:
            return
        k, j = cells[rng.integers(len(cells))]
        if kind == 0:  # move to another machine that can hold it
            targets = np.flatnonzero((m[k] < ub[k]) & (np.arange(m.shape[1]) != j))
            if targets.size == 0:
                return
            m[k, rng.choice(targets)] += 1
        m[k, j] -= 1


class PlacementRepair(Repair):
    """Round, clip to bounds, then the twin's repair (capacity, ≥ 1, max replicas)."""

    def _do(self, problem, X, random_state=None, **kwargs):
        genome = _genome(problem)
        rng = random_state if random_state is not None else np.random.default_rng(0)
        xl, xu = genome.bounds()
        X = np.clip(np.rint(np.asarray(X, dtype=float)), xl, xu).astype(np.int64)
        return np.array([genome.repair(x, rng) for x in X], dtype=np.int64)


def custom_operators(max_instances: int | None = None) -> dict[str, object]:
    """Sampling, crossover, mutation and repair made for allocation matrices."""
    return {
        "sampling": FeasibleSampling(max_instances),
        "crossover": MatrixCrossover(),
        "mutation": PlacementMutation(),
        "repair": PlacementRepair(),
    }


def stock_operators(max_instances: int | None = None) -> dict[str, object]:
    """pymoo's integer recipe (rounded SBX + PM) as the control.

    Sampling and repair are shared with the custom set, so the comparison
    isolates the variation operators.
    """
    return {
        "sampling": FeasibleSampling(max_instances),
        "crossover": SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
        "mutation": PM(eta=20, vtype=float, repair=RoundingRepair()),
        "repair": PlacementRepair(),
    }


OPERATOR_SETS = {"custom": custom_operators, "stock": stock_operators}
