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
    genome: Genome,
    rng: np.random.Generator,
    max_instances: int | None = None,
    machines: np.ndarray | None = None,
) -> np.ndarray:
    """One random K×S allocation, not necessarily feasible.

    Each component gets n ~ U{1..min(max_replicas, max_instances)} instances,
    each put on a machine drawn uniformly among those that can hold one
    (and, when ``machines`` — a boolean mask over machines — is given, are in it).
    """
    ub = genome.cell_bounds()
    if machines is not None:
        ub = ub * np.asarray(machines, dtype=bool)[None, :]
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


def packed_allocation(
    genome: Genome,
    rng: np.random.Generator,
    max_instances: int | None = None,
    machines: np.ndarray | None = None,
    counts: np.ndarray | None = None,
) -> np.ndarray | None:
    """One random allocation built to fit: each instance goes to a machine with room for it.

    Each component gets a target of ``counts[k]`` instances, or (None) of
    n ~ U{1..min(max_replicas, max_instances)} as in :func:`random_allocation`;
    the instances are then placed one at a time, each on a machine drawn uniformly among those (in
    ``machines``, a boolean mask) whose free CPU and RAM still hold it.
    Components are placed largest demand first in half of the draws (so the
    big ones find room) and in random order in the others. A target that no
    longer fits is cut short; None when a component gets no instance at all.

    Rejection sampling (draw anywhere, keep the feasible) thins out exactly the
    allocations with several instances of a heavy component: most such draws
    overload a machine, and repairing them evicts the heavy instances first.
    Built this way they are as likely as their target counts.
    """
    ub = genome.cell_bounds()
    if machines is not None:
        ub = ub * np.asarray(machines, dtype=bool)[None, :]
    K, S = genome.shape
    m = np.zeros((K, S), dtype=np.int64)
    free_cpu, free_ram = genome.cap_cpu.astype(float), genome.cap_ram.astype(float)
    share = np.maximum(
        genome.cpu / max(float(genome.cap_cpu.max()), 1e-12),
        genome.ram / max(float(genome.cap_ram.max()), 1e-12),
    )
    order = np.argsort(-share, kind="stable") if rng.random() < 0.5 else rng.permutation(K)
    for k in order:
        top = int(genome.max_replicas[k])
        if max_instances is not None:
            top = min(top, max_instances)
        n = int(rng.integers(1, max(top, 1) + 1)) if counts is None else int(counts[k])
        for _ in range(min(n, max(top, 1))):
            room = np.flatnonzero(
                (m[k] < ub[k])
                & (free_cpu + 1e-9 >= genome.cpu[k])
                & (free_ram + 1e-9 >= genome.ram[k])
            )
            if room.size == 0:
                break
            j = int(rng.choice(room))
            m[k, j] += 1
            free_cpu[j] -= genome.cpu[k]
            free_ram[j] -= genome.ram[k]
        if m[k].sum() == 0:
            return None
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


class SubsetSampling(FeasibleSampling):
    """Random feasible allocations spread evenly over the *sets of machines* they use.

    Cost is paid per machine in use, so it only takes as many values as there
    are machine sets, and a consolidated allocation (everything on one or two
    machines) is both the cheapest and free of network hops. Drawing each
    instance's machine uniformly almost never produces one: with K components
    on S machines, P(all on one machine) ≈ S·(1/S)^K. So each individual
    first draws the machines it may use — every non-empty set once, in random
    order, while the population has room for all of them; otherwise a set
    size uniform in 1..S and a uniform set of that size — then a random
    allocation on those machines (rejected and redrawn until feasible and
    new; a set with no feasible allocation within ``max_tries`` draws is skipped).

    ``single_share`` of the individuals get one instance per component.
    ``packed``: allocations are built to fit (:func:`packed_allocation`) and
    the instance counts are *stratified*: over the population, each
    component's count takes every value 1..max about equally often (in random
    order), so the many-instance end of the front — the low time and variance
    extremes — is in the first generation even when the population is small.
    """

    def __init__(
        self,
        max_instances: int | None = None,
        max_tries: int = 200,
        single_share: float = 0.0,
        packed: bool = False,
    ) -> None:
        super().__init__(max_instances, max_tries)
        self.single_share = single_share
        self.packed = packed

    def _do(self, problem, n_samples, *args, random_state=None, **kwargs):
        genome = _genome(problem)
        S = genome.shape[1]
        rng = random_state
        masks: list[np.ndarray] = []
        if n_samples >= 2**S - 1:
            codes = rng.permutation(np.arange(1, 2**S))
            masks = [((c >> np.arange(S)) & 1).astype(bool) for c in codes]
        counts = self._counts(genome, rng, n_samples + len(masks))
        out: list[np.ndarray] = []
        seen: set[bytes] = set()
        for mask in masks:
            x = self._draw(genome, rng, mask, seen, counts[len(out)])
            if x is not None:
                out.append(x)
        misses = 0
        while len(out) < n_samples:
            mask = np.zeros(S, dtype=bool)
            mask[rng.choice(S, size=int(rng.integers(1, S + 1)), replace=False)] = True
            x = self._draw(genome, rng, mask, seen, counts[len(out)])
            if x is not None:
                out.append(x)
                continue
            misses += 1
            if misses > self.max_tries:
                # No new feasible allocation is being found this way: fall back.
                rest = FeasibleSampling(self.max_instances, self.max_tries)._do(
                    problem, n_samples - len(out), random_state=rng
                )
                out += list(rest)
        return np.array(out[:n_samples], dtype=np.int64)

    def _counts(self, genome: Genome, rng: np.random.Generator, n: int) -> list[np.ndarray | None]:
        """Per individual: target instances per component (packed), or None (drawn later)."""
        if not self.packed:
            return [None] * n
        top = genome.max_replicas.astype(np.int64)
        if self.max_instances is not None:
            top = np.minimum(top, self.max_instances)
        top = np.maximum(top, 1)
        cols = [rng.permutation(np.resize(np.arange(1, t + 1), n)) for t in top]
        rows = np.array(cols, dtype=np.int64).T.reshape(n, len(top))
        single = rng.random(n) < self.single_share
        rows[single] = 1
        return list(rows)

    def _draw(
        self,
        genome: Genome,
        rng: np.random.Generator,
        mask: np.ndarray,
        seen: set[bytes],
        counts: np.ndarray | None = None,
    ) -> np.ndarray | None:
        top = 1 if rng.random() < self.single_share else self.max_instances
        for attempt in range(self.max_tries):
            if self.packed:
                # The stratified counts first; if they never give a new allocation, random ones.
                want = counts if attempt < self.max_tries // 2 else None
                m = packed_allocation(genome, rng, self.max_instances, mask, want)
                x = None if m is None else m.reshape(-1)
            else:
                x = random_allocation(genome, rng, top, mask).reshape(-1)
            if x is None or not genome.is_feasible(x):
                self.rejected += 1
                continue
            if x.tobytes() in seen:
                continue
            seen.add(x.tobytes())
            return x
        return None


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
    """Small moves: move an instance to another machine, add one, remove one, or empty a machine.

    ``n_moves`` moves per mutated individual (at least one), each picked with
    probabilities ``weights`` = (move, add, remove[, evacuate]). Removal never
    takes a component's last instance; adds respect the cell bounds.
    *Evacuate* empties one machine in use: each of its instances moves to
    another machine already in use that has room, or is dropped when the
    component has an instance elsewhere; when neither works the move is
    void. Cost is charged per machine in use, so it is flat under single
    moves until a machine's last instance leaves; evacuation crosses that
    plateau in one step.

    ``fit_aware``: an add or a move goes to a cell whose machine has room for
    one more instance of that component (CPU and RAM), when there is one.
    Without it most adds on a tight instance overload a machine, and the
    repair then evicts the largest CPU demand first — usually the instance
    just added — so allocations with several instances of the heaviest
    component (the low-variance end of many fronts) are rarely reached.
    """

    def __init__(
        self,
        weights: tuple[float, ...] = (0.5, 0.25, 0.25),
        n_moves: int = 1,
        prob: float = 1.0,
        fit_aware: bool = False,
    ) -> None:
        super().__init__(prob=prob)
        self.fit_aware = fit_aware
        w = np.asarray(weights, dtype=float)
        if 3 <= len(w) < 5:
            w = np.append(w, np.zeros(5 - len(w)))
        if w.shape != (5,) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(
                "weights must be 3 to 5 non-negative numbers "
                f"(move, add, remove[, evacuate[, relocate]]), got {weights}"
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
                self._one(m, ub, random_state, genome)
            Y[i] = m.reshape(-1)
        return Y

    def _one(
        self, m: np.ndarray, ub: np.ndarray, rng: np.random.Generator, genome: Genome | None = None
    ) -> None:
        kind = rng.choice(5, p=self.weights)
        if kind >= 3:
            if genome is not None:
                _evacuate(m, genome, rng, anywhere=kind == 4)
            return
        room = self._room(m, genome) if self.fit_aware and genome is not None else None
        if kind == 1:  # add
            cells = np.argwhere(m < ub)
            if room is not None:
                fit = cells[room[1][cells[:, 0], cells[:, 1]]] if len(cells) else cells
                cells = fit if len(fit) else cells
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
            if room is not None:
                fit = targets[room[0][k, targets]]
                targets = fit if fit.size else targets
            if targets.size == 0:
                return
            m[k, rng.choice(targets)] += 1
        m[k, j] -= 1

    @staticmethod
    def _room(m: np.ndarray, genome: Genome) -> tuple[np.ndarray, np.ndarray]:
        """Two K×S bools: component k's instance fits on machine j's free CPU and RAM (a
        move), and also within the component's replica cap (an add)."""
        free_cpu = genome.cap_cpu - genome.cpu @ m
        free_ram = genome.cap_ram - genome.ram @ m
        fits = (genome.cpu[:, None] <= free_cpu[None, :] + 1e-9) & (
            genome.ram[:, None] <= free_ram[None, :] + 1e-9
        )
        return fits, fits & (m.sum(axis=1) < genome.max_replicas)[:, None]


def _evacuate(
    m: np.ndarray, genome: Genome, rng: np.random.Generator, anywhere: bool = False
) -> None:
    """Empty one machine in use of ``m`` in place (see :class:`PlacementMutation`).

    ``anywhere``: the instances may go to any other machine (relocation),
    else only to machines already in use (consolidation).
    """
    used = np.flatnonzero(m.sum(axis=0) > 0)
    if used.size < (1 if anywhere else 2):
        return
    j = int(rng.choice(used))
    pool = np.arange(m.shape[1]) if anywhere else used
    others = pool[pool != j]
    if anywhere:
        # The whole machine's content prefers one target, so co-located groups stay together.
        others = np.concatenate([[rng.choice(others)], others]) if others.size else others
    y = m.copy()
    free_cpu = genome.cap_cpu - genome.cpu @ y
    free_ram = genome.cap_ram - genome.ram @ y
    for k in rng.permutation(np.flatnonzero(y[:, j])):
        for _ in range(int(y[k, j])):
            fits = [
                t
                for t in rng.permutation(others)
                if free_cpu[t] + 1e-9 >= genome.cpu[k]
                and free_ram[t] + 1e-9 >= genome.ram[k]
                and y[k, t] < genome.max_replicas[k]
            ]
            y[k, j] -= 1
            if fits:
                t = fits[0]
                y[k, t] += 1
                free_cpu[t] -= genome.cpu[k]
                free_ram[t] -= genome.ram[k]
            elif y[k].sum() == 0:
                return  # its only instance fits nowhere else: leave m as it was
    m[:] = y


class PlacementRepair(Repair):
    """Round, clip to bounds, then repair capacity, ≥ 1 and max replicas.

    ``unbiased=False``: the twin's repair (evicts the largest CPU demand
    first); True: :meth:`Genome.repair_unbiased` (evicts a random instance).
    """

    def __init__(self, unbiased: bool = False) -> None:
        super().__init__()
        self.unbiased = unbiased

    def _do(self, problem, X, random_state=None, **kwargs):
        genome = _genome(problem)
        rng = random_state if random_state is not None else np.random.default_rng(0)
        xl, xu = genome.bounds()
        X = np.clip(np.rint(np.asarray(X, dtype=float)), xl, xu).astype(np.int64)
        fix = genome.repair_unbiased if self.unbiased else genome.repair
        return np.array([fix(x, rng) for x in X], dtype=np.int64)


def custom_operators(max_instances: int | None = None) -> dict[str, object]:
    """Sampling, crossover, mutation and repair made for allocation matrices (first round)."""
    return {
        "sampling": FeasibleSampling(max_instances),
        "crossover": MatrixCrossover(),
        "mutation": PlacementMutation(),
        "repair": PlacementRepair(),
    }


MUTATION_WEIGHTS = (0.3, 0.2, 0.2, 0.15, 0.15)  # move, add, remove, evacuate, relocate
SINGLE_SHARE = 0.5  # share of sampled individuals with one instance per component


def placement_operators(max_instances: int | None = None) -> dict[str, object]:
    """The default: matrix operators, machine-set sampling, evacuate/relocate moves.

    Measured on generated instances (benchmarks/optimizer_generated.py): the
    first-round set misses the cheap, consolidated end of the front, which
    uniform per-instance machine draws and single-instance moves rarely reach;
    rejection sampling also thins out the many-instance end (low time and
    variance), so the initial allocations are built to fit with stratified
    instance counts (:func:`packed_allocation`).
    """
    return {
        "sampling": SubsetSampling(max_instances, single_share=SINGLE_SHARE, packed=True),
        "crossover": MatrixCrossover(),
        "mutation": PlacementMutation(MUTATION_WEIGHTS),
        "repair": PlacementRepair(),
    }


def stock_operators(max_instances: int | None = None) -> dict[str, object]:
    """pymoo's integer recipe (rounded SBX + PM) as the control.

    Sampling and repair are shared with the first-round custom set, so the
    comparison isolates the variation operators.
    """
    return {
        "sampling": FeasibleSampling(max_instances),
        "crossover": SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
        "mutation": PM(eta=20, vtype=float, repair=RoundingRepair()),
        "repair": PlacementRepair(),
    }


def _with(base, **parts):
    def make(max_instances: int | None = None) -> dict[str, object]:
        ops = base(max_instances)
        ops.update({k: v(max_instances) for k, v in parts.items()})
        return ops

    return make


OPERATOR_SETS = {
    "placement": placement_operators,
    "custom": custom_operators,
    "stock": stock_operators,
    # Ablations, one change at a time (benchmarks/optimizer_generated.py).
    "custom+subset": _with(custom_operators, sampling=SubsetSampling),
    "custom+evacuate": _with(
        custom_operators, mutation=lambda _: PlacementMutation(MUTATION_WEIGHTS)
    ),
    "stock+subset": _with(stock_operators, sampling=SubsetSampling),
    "placement+fit": _with(
        placement_operators, mutation=lambda _: PlacementMutation(MUTATION_WEIGHTS, fit_aware=True)
    ),
    "placement+unbiased-repair": _with(
        placement_operators, repair=lambda _: PlacementRepair(unbiased=True)
    ),
    "placement+rejection-sampling": _with(
        placement_operators,
        sampling=lambda mi: SubsetSampling(mi, single_share=SINGLE_SHARE),
    ),
}
