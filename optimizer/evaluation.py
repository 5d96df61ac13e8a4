"""Scoring allocations with the twin: a pure per-candidate function and a caching evaluator.

Every candidate is simulated with the same seed, so replication r of every
candidate sees the same arrivals and service draws (common random numbers):
differences between candidates are not seed noise. The evaluator keeps a
cache keyed by the allocation matrix, so an individual that reappears (the
GA revisits good allocations often) is never simulated twice, and a log of
every distinct allocation it simulated (for audits and baselines).

Evaluations run inline, or on Dask workers when a ``distributed.Client`` is
given. Results are gathered in submission order and the cache is filled in
that order, so the same seed gives the same numbers in every mode.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from optimizer.genome import Genome
from twin.criteria import CRITERIA
from twin.evaluate import evaluate
from twin.spec import Deployment, Scenario


@dataclass(frozen=True)
class Fidelity:
    """How a candidate is simulated: workload, horizon (s), replications, seed."""

    workload: str | None = None
    horizon_s: float = 3600.0
    replications: int = 10
    seed: int = 1

    def describe(self) -> str:
        """One line for reports."""
        w = self.workload or "processes' own arrivals"
        return (
            f"{self.horizon_s:g} s × {self.replications} replication(s), seed {self.seed}, "
            f"workload {w}"
        )


@dataclass(frozen=True)
class Score:
    """Criteria means and 95% CI half-widths (``CRITERIA`` order) of one allocation."""

    mean: tuple[float, ...]
    ci: tuple[float, ...]
    wall_s: float
    cpu_s: float = 0.0  # CPU time of the simulation in the process that ran it


def evaluate_matrix(
    scenario: Scenario, base: Deployment, matrix: np.ndarray, fidelity: Fidelity
) -> Score:
    """Simulate one allocation (pure and picklable: runs in a Dask worker as well).

    The twin checks every constraint first and raises InfeasibleDeployment
    otherwise, so nothing infeasible is ever scored.
    """
    genome = Genome(scenario, base)
    return evaluate_deployment(scenario, genome.deployment(genome.encode(matrix)), fidelity)


def evaluate_deployment(scenario: Scenario, dep: Deployment, fidelity: Fidelity) -> Score:
    """Simulate one deployment, any genome's (pure and picklable, as :func:`evaluate_matrix`)."""
    cpu0 = time.process_time()
    ev = evaluate(
        scenario, dep, fidelity.workload, fidelity.horizon_s, fidelity.replications, fidelity.seed
    )
    summary = ev.summary
    mean = tuple(_round(summary.loc[c, "mean"]) for c in CRITERIA)
    ci = tuple(_round(np.nan_to_num(summary.loc[c, "ci"])) for c in CRITERIA)
    return Score(mean=mean, ci=ci, wall_s=ev.wall_s, cpu_s=time.process_time() - cpu0)


def _round(v: float) -> float:
    """``v`` to 12 significant digits.

    Worker processes have their own string-hash seeds, so sums over sets
    (e.g. machine prices) can add in another order and differ in the last
    bit; rounding keeps a comparison in selection from flipping on that.
    """
    return float(f"{float(v):.12g}")


class Evaluator:
    """Scores batches of allocations with a cache keyed by the matrix.

    ``client`` (a ``distributed.Client``) sends cache misses to Dask workers;
    None runs them inline. The client is not pickled with the evaluator
    (checkpoints hold the cache, not the connection): reattach it with
    :meth:`attach`.
    """

    def __init__(self, genome: Genome, fidelity: Fidelity, client: Any | None = None) -> None:
        self.genome = genome
        self.fidelity = fidelity
        self.client = client
        self.cache: dict[bytes, Score] = {}
        self.order: list[bytes] = []  # keys in order of first simulation
        self.lookups = 0
        self.sim_wall_s = 0.0
        self.sim_cpu_s = 0.0

    @property
    def simulations(self) -> int:
        """Distinct allocations simulated so far (the real cost of a search)."""
        return len(self.order)

    def attach(self, client: Any | None) -> None:
        """Use ``client`` (or inline evaluation when None) from now on."""
        self.client = client

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["client"] = None
        return state

    def evaluate(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Criteria means and CIs (n×4 each) of the n flat vectors in ``X``."""
        X = np.atleast_2d(np.asarray(X))
        keys = [self.genome.key(x) for x in X]
        self.lookups += len(keys)
        missing: list[bytes] = []
        seen: set[bytes] = set()
        for k in keys:
            if k not in self.cache and k not in seen:
                missing.append(k)
                seen.add(k)
        if missing:
            vectors = [np.frombuffer(k, dtype=np.int64) for k in missing]
            for k, score in zip(missing, self._run(vectors), strict=True):
                self.cache[k] = score
                self.order.append(k)
                self.sim_wall_s += score.wall_s
                self.sim_cpu_s += score.cpu_s
        F = np.array([self.cache[k].mean for k in keys], dtype=float)
        CI = np.array([self.cache[k].ci for k in keys], dtype=float)
        return F, CI

    def _run(self, vectors: list[np.ndarray]) -> list[Score]:
        """DES scores of genome vectors (or K×S allocation matrices of a plain genome)."""
        scenario, fid = self.genome.scenario, self.fidelity
        deps = [self.genome.deployment(np.asarray(v).reshape(-1)) for v in vectors]
        if self.client is None:
            return [evaluate_deployment(scenario, d, fid) for d in deps]
        # The scenario travels with each task (a few kB). Scattering it instead
        # re-uses one content-hashed key across batches, and a released batch
        # then cancels the next one's tasks ("lost dependencies").
        futures = [
            self.client.submit(evaluate_deployment, scenario, d, fid, pure=False) for d in deps
        ]
        return self.client.gather(futures)

    def evaluated(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every distinct genome vector simulated (n×n_var), with criteria means and CIs."""
        if not self.order:
            n = self.genome.n_var
            return np.empty((0, n), dtype=np.int64), np.empty((0, 4)), np.empty((0, 4))
        X = np.array([np.frombuffer(k, dtype=np.int64) for k in self.order])
        F = np.array([self.cache[k].mean for k in self.order], dtype=float)
        CI = np.array([self.cache[k].ci for k in self.order], dtype=float)
        return X, F, CI
