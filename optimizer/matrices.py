"""The three decision matrices in one genome: allocation, computation alignment, constant run.

The placement paper's decision variables are the K×S allocation matrix, the
computation alignment (how many instances each process step may be split
across) and the constant run decision (which components stay up all the
time; the others start on demand, ``Component.startup_s`` later, and cost only
while they run). The flat vector is

    [ allocation, row-major (K·S) | alignment (one gene per step with
      max_parallel > 1, in 1..max_parallel) | constant run (one bit per
      component not ``always_on_required``) ]

Constraints, as the paper states them: every machine's CPU and RAM hold what
is placed on it — a constant-run instance reserves its keep-alive load, an
on-demand one does not, so feasibility of the allocation depends on the
constant-run bits — and every component has at least one instance; the
alignment of a step lies in 1..max_parallel. The twin never splits a step
over more instances than exist, so the deployment (and the key that
identifies it in the evaluation cache) uses the canonical alignment
``min(gene, instances of the step's component)``; the gene itself keeps its
value, latent until the component gets more instances.

The allocation operators of :mod:`optimizer.operators` are reused as they
are: :func:`lift` wraps a set of them so they act on the allocation part
(with the loosest per-instance demand, every open component on demand),
while the extra genes get their own uniform crossover and single-gene
mutation, and repair fixes the whole vector under each individual's own
constant-run bits.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pymoo.core.crossover import Crossover
from pymoo.core.mutation import Mutation
from pymoo.core.repair import Repair
from pymoo.core.sampling import Sampling
from pymoo.core.variable import get

from optimizer.baselines import count_candidates, enumerate_feasible
from optimizer.genome import Genome
from twin.deployment import is_always_on, with_matrix
from twin.spec import Deployment, Scenario


@dataclass(frozen=True)
class AlignmentGene:
    """One step whose work may be split: ``process.step``, its component's row, its maximum."""

    key: str
    component: int
    max_parallel: int


class DecisionGenome(Genome):
    """Allocation, alignment and constant-run decisions of one scenario as one integer vector.

    Allocation-level attributes inherited from :class:`Genome` (``cpu``,
    ``ram``, ``cell_bounds``, ``shape`` …) describe the base deployment's
    constant-run decisions; :meth:`allocation_genome` gives them for others.
    """

    def __init__(self, scenario: Scenario, base: Deployment | None = None) -> None:
        super().__init__(scenario, base)
        index = {c.name: k for k, c in enumerate(scenario.components)}
        self.align = [
            AlignmentGene(f"{p.name}.{s.name}", index[s.component], s.max_parallel)
            for p in scenario.processes
            for s in p.steps
            if s.max_parallel > 1
        ]
        self.open = [k for k, c in enumerate(scenario.components) if not c.always_on_required]
        self.n_alloc = self.shape[0] * self.shape[1]
        self.n_var = self.n_alloc + len(self.align) + len(self.open)
        self._genomes: dict[tuple[int, ...], Genome] = {}
        # The loosest demand (every open component on demand): bounds and the
        # allocation operators' moves use it; repair then applies each
        # individual's own bits.
        self.loose = self.allocation_genome((0,) * len(self.open))

    # ------------------------------------------------------------------ parts

    def split(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Flat vector → (K×S allocation, alignment genes, constant-run bits), all int64."""
        v = np.rint(np.asarray(x, dtype=float)).astype(np.int64).reshape(-1)
        if v.size != self.n_var:
            raise ValueError(
                f"vector has {v.size} entries, expected {self.n_var} "
                f"(K·S = {self.n_alloc}, {len(self.align)} alignment, "
                f"{len(self.open)} constant-run)"
            )
        a0, r0 = self.n_alloc, self.n_alloc + len(self.align)
        return v[:a0].reshape(self.shape), v[a0:r0], v[r0:]

    def join(self, matrix: np.ndarray, align: np.ndarray, run: np.ndarray) -> np.ndarray:
        """The flat vector of (allocation matrix, alignment genes, constant-run bits)."""
        return np.concatenate(
            [np.asarray(matrix, np.int64).reshape(-1), np.asarray(align, np.int64), run]
        ).astype(np.int64)

    def base_decisions(self) -> tuple[np.ndarray, np.ndarray]:
        """The base deployment's alignment genes and constant-run bits."""
        align = np.array(
            [min(self.base.parallelism.get(g.key, 1), g.max_parallel) for g in self.align],
            dtype=np.int64,
        )
        comps = self.scenario.components
        run = np.array([int(is_always_on(comps[k], self.base)) for k in self.open], np.int64)
        return align, run

    def with_run(self, run: np.ndarray | tuple[int, ...]) -> Deployment:
        """The base deployment with these constant-run bits."""
        on = dict(self.base.always_on)
        on.update({self.components[k]: bool(b) for k, b in zip(self.open, run, strict=True)})
        return self.base.model_copy(update={"always_on": on})

    def allocation_genome(self, run: np.ndarray | tuple[int, ...]) -> Genome:
        """The allocation-only genome under these constant-run bits (cached)."""
        key = tuple(int(b) for b in run)
        g = self._genomes.get(key)
        if g is None:
            g = Genome(self.scenario, self.with_run(key))
            self._genomes[key] = g
        return g

    # ------------------------------------------------------------------ codec

    def encode(self, matrix: np.ndarray) -> np.ndarray:
        """A K×S allocation (the base's alignment and constant run) or a full vector → vector."""
        m = np.asarray(matrix)
        if m.size == self.n_var and m.shape != self.shape:
            return m.astype(np.int64).reshape(-1)
        align, run = self.base_decisions()
        return self.join(super().encode(m), align, run)

    def decode(self, x: np.ndarray) -> np.ndarray:
        """The K×S allocation matrix of a full vector."""
        return self.split(x)[0]

    def decode_many(self, X: np.ndarray) -> np.ndarray:
        """n full vectors → n×K×S allocation matrices."""
        return np.array([self.decode(x) for x in np.atleast_2d(X)])

    def key(self, x: np.ndarray) -> bytes:
        """Hashable identity of the deployment: the canonical vector (alignment ≤ instances)."""
        m, a, r = self.split(x)
        return self.join(m, self.canonical_align(m, a), r).tobytes()

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Allocation cells 0..(most one machine holds), alignment 1..max_parallel, bits 0..1."""
        xu = np.concatenate(
            [
                self.loose.cell_bounds().reshape(-1),
                [g.max_parallel for g in self.align],
                np.ones(len(self.open), dtype=np.int64),
            ]
        ).astype(np.int64)
        xl = np.concatenate(
            [np.zeros(self.n_alloc), np.ones(len(self.align)), np.zeros(len(self.open))]
        ).astype(np.int64)
        return xl, xu

    # ------------------------------------------------------------ feasibility

    def canonical_align(self, matrix: np.ndarray, align: np.ndarray) -> np.ndarray:
        """Alignment clipped to 1..min(max_parallel, instances of the step's component)."""
        inst = np.asarray(matrix).sum(axis=1)
        return np.array(
            [
                max(1, min(int(a), g.max_parallel, int(inst[g.component])))
                for a, g in zip(align, self.align, strict=True)
            ],
            dtype=np.int64,
        )

    def is_feasible(self, x: np.ndarray) -> bool:
        """Capacity (under the vector's constant-run bits), ≥ 1 instance, gene ranges."""
        m, a, r = self.split(x)
        if np.any((r < 0) | (r > 1)):
            return False
        if any(not 1 <= v <= g.max_parallel for v, g in zip(a, self.align, strict=True)):
            return False
        return self.allocation_genome(r).is_feasible(m.reshape(-1))

    def repair(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Feasible vector near ``x`` (the allocation by the twin's repair, genes in range)."""
        return self._repair(x, rng, unbiased=False)

    def repair_unbiased(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """As :meth:`repair`, the allocation by :meth:`Genome.repair_unbiased`."""
        return self._repair(x, rng, unbiased=True)

    def _repair(self, x: np.ndarray, rng: np.random.Generator, unbiased: bool) -> np.ndarray:
        m, a, r = self.split(x)
        r = np.clip(r, 0, 1)
        g = self.allocation_genome(r)
        fix = g.repair_unbiased if unbiased else g.repair
        m = fix(np.clip(m, 0, g.cell_bounds()).reshape(-1), rng).reshape(self.shape)
        top = np.array([s.max_parallel for s in self.align], dtype=np.int64)
        # The alignment gene stays as drawn (1..max_parallel): above the step's
        # instances it is latent — the deployment and the key use the canonical
        # value — so adding an instance later splits the step without a second move.
        return self.join(m, np.clip(a, 1, top), r)

    # ---------------------------------------------------------------- output

    def deployment(self, x: np.ndarray, name: str = "candidate") -> Deployment:
        """The deployment of all three decisions (the base's stage settings kept)."""
        m, a, r = self.split(x)
        a = self.canonical_align(m, a)
        base = self.with_run(r)
        parallelism = dict(base.parallelism)
        parallelism.update({g.key: int(v) for g, v in zip(self.align, a, strict=True)})
        dep = with_matrix(self.scenario, m, base)
        return dep.model_copy(update={"name": name, "parallelism": parallelism})

    def describe(self, x: np.ndarray) -> dict[str, Any]:
        """The three decisions as plain data (allocation, canonical alignment, always_on)."""
        m, a, r = self.split(x)
        a = self.canonical_align(m, a)
        return {
            "allocation": self.allocation(x),
            "parallelism": {g.key: int(v) for g, v in zip(self.align, a, strict=True)},
            "always_on": {self.components[k]: bool(b) for k, b in zip(self.open, r, strict=True)},
        }

    def allocation(self, x: np.ndarray) -> dict[str, dict[str, int]]:
        """The allocation part as ``{component: {machine: instances}}`` (non-zero cells)."""
        m = self.decode(x)
        return {
            c: {self.machines[j]: int(m[i, j]) for j in np.flatnonzero(m[i])}
            for i, c in enumerate(self.components)
        }


def allocation_view(
    genome: Genome, x: np.ndarray
) -> tuple[np.ndarray, Genome, Callable[[np.ndarray], np.ndarray]]:
    """``x``'s allocation matrix, the genome that checks allocations, and the map from an
    allocation matrix back to a vector of ``genome``: a DecisionGenome keeps ``x``'s alignment and
    constant-run genes, a plain allocation genome flattens the matrix. Neighbourhood searches
    change the allocation only."""
    if isinstance(genome, DecisionGenome):
        m0, align, run = genome.split(x)

        def joined(m: np.ndarray) -> np.ndarray:
            return genome.join(m, align, run)

        return m0, genome.allocation_genome(run), joined

    def flat(m: np.ndarray) -> np.ndarray:
        return m.reshape(-1)

    return genome.decode(x), genome, flat


def make_genome(scenario: Scenario, base: Deployment | None, decisions: str = "all") -> Genome:
    """The genome for ``decisions``: 'all' (the three matrices) or 'allocation' (matrix only)."""
    if decisions == "all":
        return DecisionGenome(scenario, base)
    if decisions == "allocation":
        return Genome(scenario, base)
    raise ValueError(f"decisions must be 'all' or 'allocation', got {decisions!r}")


# ----------------------------------------------------------------- operators


class _Proxy:
    """What an allocation operator sees of the problem: a plain allocation genome."""

    def __init__(self, problem: Any, genome: Genome) -> None:
        self.genome = genome
        self.n_var = genome.n_var
        self.xl, self.xu = genome.bounds()
        self.vtype = getattr(problem, "vtype", int)

    def has_bounds(self) -> bool:
        return True

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.xl, self.xu


def _decision_genome(problem: Any) -> DecisionGenome:
    genome = getattr(problem, "genome", None)
    if not isinstance(genome, DecisionGenome):
        raise TypeError("lifted operators need a problem whose .genome is a DecisionGenome")
    return genome


def _random_extras(g: DecisionGenome, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    align = np.array([rng.integers(1, s.max_parallel + 1) for s in g.align], dtype=np.int64)
    run = rng.integers(0, 2, size=len(g.open)).astype(np.int64)
    return align, run


class LiftedSampling(Sampling):
    """Allocations from ``inner`` (on the loose genome), uniform alignment and constant-run
    genes, repaired under each individual's bits; duplicates are redrawn."""

    def __init__(self, inner: Sampling, max_tries: int = 50) -> None:
        super().__init__()
        self.inner = inner
        self.max_tries = max_tries

    def _do(self, problem, n_samples, *args, random_state=None, **kwargs):
        g = _decision_genome(problem)
        rng = random_state
        proxy = _Proxy(problem, g.loose)
        out: list[np.ndarray] = []
        seen: set[bytes] = set()
        for _ in range(self.max_tries):
            M = self.inner._do(proxy, n_samples, random_state=rng)
            for mx in np.atleast_2d(M):
                align, run = _random_extras(g, rng)
                x = g.repair(g.join(mx, align, run), rng)
                if g.key(x) not in seen:  # equivalent deployments count once
                    seen.add(g.key(x))
                    out.append(x)
                if len(out) == n_samples:
                    return np.array(out, dtype=np.int64)
        return np.array(out, dtype=np.int64)  # a tiny space: fewer distinct individuals exist


class LiftedCrossover(Crossover):
    """``inner`` on the allocation parts; alignment and constant-run genes from either parent."""

    def __init__(self, inner: Crossover) -> None:
        super().__init__(inner.n_parents, inner.n_offsprings, prob=float(get(inner.prob)))
        self.inner = inner

    def _do(self, problem, X, *args, random_state=None, **kwargs):
        g = _decision_genome(problem)
        n = g.n_alloc
        X_alloc = np.asarray(X)[:, :, :n]
        if getattr(self.inner, "vtype", None) is not None:
            X_alloc = X_alloc.astype(self.inner.vtype)
        Y_alloc = self.inner._do(_Proxy(problem, g.loose), X_alloc, random_state=random_state)
        Y = np.empty((Y_alloc.shape[0], X.shape[1], g.n_var), dtype=float)
        Y[:, :, :n] = Y_alloc
        extra = np.asarray(X, dtype=float)[:, :, n:]
        if extra.shape[2]:
            for i in range(X.shape[1]):
                pick = random_state.integers(0, X.shape[0], size=extra.shape[2])
                for o in range(Y.shape[0]):
                    # Offspring o takes parent (pick + o) mod n_parents: complementary children.
                    src = (pick + o) % X.shape[0]
                    Y[o, i, n:] = extra[src, i, np.arange(extra.shape[2])]
        return Y


class LiftedMutation(Mutation):
    """With probability ``extra_prob`` change one alignment or constant-run gene, else ``inner``.

    An alignment gene moves ±1 (or to a uniform value, half the time); a
    constant-run bit flips. Without such genes ``inner`` always acts.
    """

    def __init__(self, inner: Mutation, extra_prob: float = 0.3) -> None:
        super().__init__(prob=1.0)
        self.inner = inner
        self.extra_prob = extra_prob

    def _do(self, problem, X, *args, random_state=None, **kwargs):
        g = _decision_genome(problem)
        rng = random_state
        n, n_extra = g.n_alloc, g.n_var - g.n_alloc
        Y = np.array(X, dtype=float, copy=True)
        extra = (rng.random(len(Y)) < self.extra_prob) if n_extra else np.zeros(len(Y), bool)
        rest = np.flatnonzero(~extra)
        if rest.size:
            Y[rest, :n] = self.inner._do(
                _Proxy(problem, g.loose), Y[rest, :n].astype(np.int64), random_state=rng
            )
        for i in np.flatnonzero(extra):
            j = int(rng.integers(n_extra))
            if j < len(g.align):
                top = g.align[j].max_parallel
                cur = int(Y[i, n + j])
                new = (
                    int(rng.integers(1, top + 1))
                    if rng.random() < 0.5
                    else cur + rng.choice([-1, 1])
                )
                Y[i, n + j] = min(max(new, 1), top)
            else:
                Y[i, n + j] = 1 - int(Y[i, n + j])
        return Y


class LiftedRepair(Repair):
    """Round, clip to bounds, repair the allocation under the vector's own constant-run bits,
    alignment genes in 1..max_parallel; ``unbiased`` as in ``PlacementRepair``."""

    def __init__(self, unbiased: bool = False) -> None:
        super().__init__()
        self.unbiased = unbiased

    def _do(self, problem, X, random_state=None, **kwargs):
        g = _decision_genome(problem)
        rng = random_state if random_state is not None else np.random.default_rng(0)
        xl, xu = g.bounds()
        X = np.clip(np.rint(np.asarray(X, dtype=float)), xl, xu).astype(np.int64)
        fix = g.repair_unbiased if self.unbiased else g.repair
        return np.array([fix(x, rng) for x in X], dtype=np.int64)


def lift(ops: dict[str, object], extra_prob: float = 0.3) -> dict[str, object]:
    """An allocation operator set (sampling, crossover, mutation, repair) for the full genome."""
    return {
        "sampling": LiftedSampling(ops["sampling"]),  # type: ignore[arg-type]
        "crossover": LiftedCrossover(ops["crossover"]),  # type: ignore[arg-type]
        "mutation": LiftedMutation(ops["mutation"], extra_prob),  # type: ignore[arg-type]
        "repair": LiftedRepair(getattr(ops["repair"], "unbiased", False)),
    }


# ----------------------------------------------------------------- exhaustive


def count_decisions(genome: DecisionGenome) -> int:
    """Upper bound of what :func:`enumerate_decisions` checks: allocations within bounds
    for every constant-run choice, times every alignment."""
    n_align = math.prod(g.max_parallel for g in genome.align)
    combos = itertools.product((0, 1), repeat=len(genome.open))
    return sum(count_candidates(genome.allocation_genome(r)) for r in combos) * n_align


def enumerate_decisions(genome: DecisionGenome, limit: int = 2_000_000) -> np.ndarray:
    """Every feasible, canonical vector of the three decisions (n×n_var).

    For each constant-run choice, every feasible allocation under it
    (:func:`optimizer.baselines.enumerate_feasible`), times every canonical
    alignment (1..min(max_parallel, instances of the step's component)).
    Refuses when more than ``limit`` candidates would be checked.
    """
    n = count_decisions(genome)
    if n > limit:
        raise ValueError(
            f"exhaustive enumeration would check {n:,} candidates (> {limit:,}); "
            "use it on small instances only"
        )
    out: list[np.ndarray] = []
    for r in itertools.product((0, 1), repeat=len(genome.open)):
        run = np.array(r, dtype=np.int64)
        for x in enumerate_feasible(genome.allocation_genome(run), limit):
            m = x.reshape(genome.shape)
            inst = m.sum(axis=1)
            ranges = [
                range(1, min(g.max_parallel, int(inst[g.component])) + 1) for g in genome.align
            ]
            for a in itertools.product(*ranges):
                out.append(genome.join(m, np.array(a, dtype=np.int64), run))
    if not out:
        return np.empty((0, genome.n_var), dtype=np.int64)
    return np.array(out, dtype=np.int64)
