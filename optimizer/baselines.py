"""Baselines the GA must beat: random feasible search, greedy packing, exhaustive enumeration.

- :func:`random_search` draws feasible allocations (the GA's own sampler)
  until it has simulated as many distinct ones as the budget allows.
- :func:`greedy` packs instances by decreasing load, first-fit or best-fit.
- :func:`enumerate_feasible` lists every feasible allocation of a small
  instance; scoring them all gives the true Pareto front.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from optimizer.evaluation import Evaluator
from optimizer.genome import EPS, Genome
from optimizer.operators import random_allocation
from twin.deployment import budget_rows
from twin.spec import PeriodicArrivals, PoissonArrivals, Scenario, ServiceTime

GREEDY_STRATEGIES = ("first_fit", "best_fit")
TARGET_UTILISATION = 0.7  # busy fraction per instance before greedy adds another


def random_search(
    evaluator: Evaluator,
    budget: int,
    seed: int,
    max_instances: int | None = None,
    max_draws: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Simulate ``budget`` distinct random feasible allocations; returns (X, F).

    Infeasible and repeated draws are rejected and redrawn (they cost no
    simulation). Stops early after ``max_draws`` draws (default 1000 × budget).
    """
    genome = evaluator.genome
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(7,)))
    start = evaluator.simulations
    draws = 0
    limit = max_draws if max_draws is not None else 1000 * budget
    seen: set[bytes] = set(evaluator.cache)
    batch: list[np.ndarray] = []
    X_all: list[np.ndarray] = []
    while evaluator.simulations - start + len(batch) < budget and draws < limit:
        draws += 1
        x = random_allocation(genome, rng, max_instances).reshape(-1)
        if not genome.is_feasible(x) or x.tobytes() in seen:
            continue
        seen.add(x.tobytes())
        batch.append(x)
        if len(batch) >= 50:
            evaluator.evaluate(np.array(batch))
            X_all += batch
            batch = []
    if batch:
        evaluator.evaluate(np.array(batch))
        X_all += batch
    X = np.array(X_all, dtype=np.int64).reshape(-1, genome.n_var)
    F, _ = evaluator.evaluate(X) if len(X) else (np.empty((0, 4)), None)
    return X, F


# --------------------------------------------------------------------- greedy


def _mean_s(st: ServiceTime | None) -> float:
    return st.batch_mean_ms(1) / 1000.0 if st is not None else 0.0


def offered_load(scenario: Scenario) -> np.ndarray:
    """Busy cores each component needs on average (erlangs at speed 1), in component order.

    Σ over steps of executions per second × mean work (s); a stage without
    ``cpu_work`` uses its first variant's single-item service time. Trace
    arrivals count as zero (their rate is not known without reading them).
    """
    load = np.zeros(len(scenario.components))
    index = {c.name: i for i, c in enumerate(scenario.components)}
    for p in scenario.processes:
        a = p.arrivals
        if isinstance(a, PoissonArrivals):
            rate = a.rate_per_s
        elif isinstance(a, PeriodicArrivals):
            rate = 1.0 / a.period_s
        else:
            rate = 0.0
        for s in p.steps:
            c = scenario.component(s.component)
            work = _mean_s(s.cpu_work) + _mean_s(s.gpu_work)
            if s.cpu_work is None and s.gpu_work is None and c.is_stage:
                work = _mean_s(c.variant(None).service_time)
            load[index[s.component]] += rate * work
    return load


def needs_gpu(scenario: Scenario) -> np.ndarray:
    """Per component: does any step it runs have GPU work."""
    names = {s.component for p in scenario.processes for s in p.steps if s.gpu_work is not None}
    return np.array([c.name in names for c in scenario.components])


def greedy(genome: Genome, strategy: str = "first_fit") -> np.ndarray:
    """Pack instances by decreasing load; returns a feasible K×S matrix.

    Each component gets ``ceil(load / 0.7)`` instances (at least 1, at most
    ``max_replicas``). Instances are placed largest CPU demand first (ties:
    larger load first). ``first_fit`` puts each on the cheapest machine that
    has room (machines ordered by price, then file order); ``best_fit`` on
    the machine left with the least free CPU after placing it. An instance
    that fits nowhere is dropped unless it is the component's first.
    Components with GPU work try machines with GPUs first (any machine
    after that), so greedy does not strand training on CPUs when a GPU fits.
    """
    if strategy not in GREEDY_STRATEGIES:
        raise ValueError(
            f"strategy must be one of {', '.join(GREEDY_STRATEGIES)}, got {strategy!r}"
        )
    sc = genome.scenario
    load = offered_load(sc)
    want = np.clip(np.ceil(load / TARGET_UTILISATION), 1, genome.max_replicas).astype(int)
    items = [(k, n) for k in range(genome.shape[0]) for n in range(want[k])]
    # First instances of every component before any extra ones, so the ≥ 1 rule wins room.
    items.sort(key=lambda it: (it[1] > 0, -genome.cpu[it[0]], -load[it[0]], it[0]))
    servers = sc.server_of()
    price = np.array([servers[m].price_per_hour for m in genome.machines])
    by_price = np.argsort(price, kind="stable")
    has_gpu = np.array([servers[m].gpus > 0 for m in genome.machines])
    wants_gpu = needs_gpu(sc)
    free_cpu, free_ram = genome.cap_cpu.copy(), genome.cap_ram.copy()
    m = np.zeros(genome.shape, dtype=np.int64)
    for k, n in items:
        fits = [
            j
            for j in by_price
            if free_cpu[j] >= genome.cpu[k] - EPS and free_ram[j] >= genome.ram[k] - EPS
        ]
        if wants_gpu[k] and any(has_gpu[j] for j in fits):
            fits = [j for j in fits if has_gpu[j]]
        if not fits:
            if n == 0:
                raise ValueError(
                    f"greedy: no machine has room for component {genome.components[k]}"
                )
            continue
        j = fits[0] if strategy == "first_fit" else min(fits, key=lambda j: free_cpu[j])
        m[k, j] += 1
        free_cpu[j] -= genome.cpu[k]
        free_ram[j] -= genome.ram[k]
    return m


# ----------------------------------------------------------------- exhaustive


def _rows(limit: np.ndarray, max_total: int) -> list[tuple[int, ...]]:
    """Every row with 0 ≤ x_j ≤ limit_j and 1 ≤ Σ x ≤ max_total."""
    ranges = [range(int(u) + 1) for u in limit]
    return [r for r in itertools.product(*ranges) if 1 <= sum(r) <= max_total]


def count_candidates(genome: Genome) -> int:
    """How many matrices exhaustive enumeration would check (before capacity)."""
    ub = genome.cell_bounds()
    return math.prod(len(_rows(ub[k], int(genome.max_replicas[k]))) for k in range(genome.shape[0]))


def enumerate_feasible(genome: Genome, limit: int = 2_000_000) -> np.ndarray:
    """Every feasible allocation as flat vectors (n×K·S); refuses more than ``limit`` candidates."""
    n = count_candidates(genome)
    if n > limit:
        raise ValueError(
            f"exhaustive enumeration would check {n:,} matrices (> {limit:,}); "
            "use it on small instances only"
        )
    ub = genome.cell_bounds()
    rows = [np.array(_rows(ub[k], int(genome.max_replicas[k]))) for k in range(genome.shape[0])]
    sizes = [len(r) for r in rows]
    budgets = budget_rows(genome.scenario, genome.base)
    out = []
    # Vectorised in blocks, in itertools.product order (last component fastest):
    # a Python loop over is_feasible took minutes at a few hundred thousand matrices.
    for start in range(0, n, 100_000):
        idx = np.unravel_index(np.arange(start, min(start + 100_000, n)), sizes)
        M = np.stack([rows[k][i] for k, i in enumerate(idx)], axis=1)  # n × K × S
        replicas = M.sum(axis=2)
        ok = (
            np.all(np.einsum("k,nks->ns", genome.cpu, M) <= genome.cap_cpu + EPS, axis=1)
            & np.all(np.einsum("k,nks->ns", genome.ram, M) <= genome.cap_ram + EPS, axis=1)
            & np.all(replicas >= 1, axis=1)
            & np.all(replicas <= genome.max_replicas, axis=1)
        )
        for cap, w in budgets:
            ok &= replicas @ w <= cap + EPS
        out.append(M[ok].reshape(-1, genome.n_var))
    return np.concatenate(out).astype(np.int64) if out else np.empty((0, genome.n_var), np.int64)
