"""Row neighbourhoods: every other placement of one component, the rest made to fit around it.

On placement problems the criteria are often decided by where one component's
instances go (a batch step's trainer decides the overruns and most of the
variance; the gateway decides the request time), while the other components
only have to fit around it. A point whose decisive row is rare — a heavy
component's three instances split 2 + 1 over two machines, which fits only
once the lighter components have moved off those machines — is then several
one-instance moves from anything a search reaches, and every intermediate
step is worse on the criteria that matter: neither the GA's moves nor a
one-move local search (:func:`optimizer.multifidelity.neighbours`) get there.

:func:`row_neighbours` changes one component's row at a time to each of its
other feasible rows (every count and spread within the cell bounds), keeps
the other components' instances where they fit and moves the rest to the
machine with the most CPU left (a deterministic first-fit repair that never
touches the pinned row). On a 5 × 4 instance that is ~50 allocations per
parent, a large-neighbourhood step that a screened end game can afford
(:func:`optimizer.multifidelity.polish_extremes` with ``hood=row_neighbours``).
"""

from __future__ import annotations

import itertools
from functools import cache

import numpy as np

from optimizer.genome import EPS, Genome


def component_rows(genome: Genome, k: int) -> list[np.ndarray]:
    """Every row of component ``k``: per-machine counts within the cell bounds, 1..max_replicas
    instances in all."""
    return list(_rows(genome, k))


def _rows(genome: Genome, k: int) -> tuple[np.ndarray, ...]:
    return _rows_cached(tuple(int(u) for u in genome.cell_bounds()[k]), int(genome.max_replicas[k]))


@cache
def _rows_cached(ub: tuple[int, ...], top: int) -> tuple[np.ndarray, ...]:
    return tuple(
        np.array(r, dtype=np.int64)
        for r in itertools.product(*[range(u + 1) for u in ub])
        if 1 <= sum(r) <= top
    )


def pinned_row(genome: Genome, m0: np.ndarray, k: int, row: np.ndarray) -> np.ndarray | None:
    """``m0`` with component ``k``'s row replaced by ``row`` and the others made to fit.

    The other components (largest CPU, then RAM, first) keep one instance on a
    machine they were on if it still fits, else go to the fitting machine
    with the most free CPU; then their other instances return to their cells
    where they fit (those that do not are dropped). None when ``row`` alone
    overloads a machine or some component fits nowhere.
    """
    S = m0.shape[1]
    ub = genome.cell_bounds()
    free_cpu = genome.cap_cpu.astype(float) - genome.cpu[k] * row
    free_ram = genome.cap_ram.astype(float) - genome.ram[k] * row
    if (free_cpu < -EPS).any() or (free_ram < -EPS).any():
        return None
    m = np.zeros_like(m0)
    m[k] = row
    others = [int(i) for i in np.lexsort((-genome.ram, -genome.cpu)) if i != k]

    def fits(i: int, j: int) -> bool:
        return bool(
            m[i, j] < ub[i, j]
            and free_cpu[j] + EPS >= genome.cpu[i]
            and free_ram[j] + EPS >= genome.ram[i]
        )

    def put(i: int, j: int) -> None:
        m[i, j] += 1
        free_cpu[j] -= genome.cpu[i]
        free_ram[j] -= genome.ram[i]

    for i in others:
        here = [j for j in range(S) if m0[i, j] > 0 and fits(i, j)]
        room = here or [int(j) for j in np.argsort(-free_cpu, kind="stable") if fits(i, int(j))]
        if not room:
            return None
        put(i, room[0])
    for i in others:
        for j in range(S):
            while m[i, j] < m0[i, j] and m[i].sum() < genome.max_replicas[i] and fits(i, j):
                put(i, j)
    return m


def row_neighbours(genome: Genome, x: np.ndarray) -> list[np.ndarray]:
    """Every distinct feasible allocation that :func:`pinned_row` makes of ``x`` by giving one
    component another row; a DecisionGenome's alignment and constant-run genes are kept."""
    from optimizer.matrices import allocation_view

    m0, alloc, vector = allocation_view(genome, x)

    out: dict[bytes, np.ndarray] = {}
    for k in range(m0.shape[0]):
        for row in _rows(alloc, k):
            if np.array_equal(row, m0[k]):
                continue
            m = pinned_row(alloc, m0, k, row)
            if m is not None and alloc.is_feasible(m.reshape(-1)):
                v = vector(m)
                out.setdefault(genome.key(v), v)
    out.pop(genome.key(x), None)
    return list(out.values())


__all__ = ["component_rows", "pinned_row", "row_neighbours"]
