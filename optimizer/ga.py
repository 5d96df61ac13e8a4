"""Genetic search: algorithm choice, termination, per-generation checkpoints, history.

A :class:`Search` owns a pymoo algorithm set up on a :class:`PlacementProblem`
and steps it one generation at a time. After every generation it records the
hypervolume of the best front found so far (every allocation ever simulated,
in the problem's normalised criteria, reference point 1.1 in each) and,
when a reference front is known, its IGD; then it pickles itself to the
checkpoint file. The algorithm's random generator, population, the
evaluation cache and the normaliser are all in the pickle, so a resumed
search continues exactly where an uninterrupted one would be; the pickle is
signed with a key outside the run folder and loaded only when the signature
verifies (:mod:`optimizer.checkpoint`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.algorithms.moo.nsga3 import NSGA3
from pymoo.algorithms.moo.sms import SMSEMOA
from pymoo.core.termination import Termination
from pymoo.indicators.hv import HV
from pymoo.indicators.igd import IGD
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting
from pymoo.util.ref_dirs import get_reference_directions

from optimizer import checkpoint as checkpoint_file
from optimizer.evaluation import Evaluator
from optimizer.matrices import DecisionGenome, lift
from optimizer.operators import OPERATOR_SETS
from optimizer.problem import PlacementProblem

ALGORITHMS = ("nsga2", "nsga3", "smsemoa")
STALL_GENERATIONS = 50  # generations without a new simulation before a search stops
REF_POINT = 1.1  # per normalised criterion; the initial population spans [0, 1]


@dataclass(frozen=True)
class SearchConfig:
    """What to run: algorithm, operators, population, budget, seed."""

    algorithm: str = "nsga2"
    operators: str = "placement"
    pop_size: int = 100
    n_gen: int = 50
    max_evals: int | None = None  # distinct simulations
    max_time_s: float | None = None
    seed: int = 1
    max_instances: int | None = None  # cap on instances per component when sampling

    def describe(self) -> str:
        """One line for reports."""
        budget = f", {self.max_evals} simulations" if self.max_evals is not None else ""
        return f"{self.algorithm}, operators {self.operators}, population {self.pop_size}{budget}"

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(
                f"algorithm must be one of {', '.join(ALGORITHMS)}, got {self.algorithm!r}"
            )
        if self.operators not in OPERATOR_SETS:
            raise ValueError(
                f"operators must be one of {', '.join(OPERATOR_SETS)}, got {self.operators!r}"
            )
        if self.pop_size < 4:
            raise ValueError(f"pop_size must be ≥ 4, got {self.pop_size}")
        if self.n_gen < 1:
            raise ValueError(f"n_gen must be ≥ 1, got {self.n_gen}")


def budget_pop(max_evals: int | None, fallback: int = 100) -> int:
    """Population size for a budget of ``max_evals`` simulations: about one eighth, 6–100.

    On generated instances at 5 % budgets (40–380 simulations) populations of
    4–30 gave the same median and tails (benchmarks/optimizer_generated.md);
    a small one leaves room for generations. Without a budget: ``fallback``.
    """
    if max_evals is None:
        return fallback
    return int(min(100, max(6, round(max_evals / 8))))


def default_config(max_evals: int | None = None, **changes: Any) -> SearchConfig:
    """What ``mlops-twin optimize`` runs unless told otherwise (see :func:`budget_pop`)."""
    return SearchConfig(
        **{
            "algorithm": "nsga2",
            "operators": "placement",
            "pop_size": budget_pop(max_evals),
            "max_evals": max_evals,
            **changes,
        }
    )


def make_algorithm(config: SearchConfig, n_obj: int, genome: Any = None) -> Any:
    """The pymoo algorithm object for ``config`` (operators lifted to a DecisionGenome's vector)."""
    ops = OPERATOR_SETS[config.operators](config.max_instances)
    if isinstance(genome, DecisionGenome):
        ops = lift(ops)
    if config.algorithm == "nsga2":
        return NSGA2(pop_size=config.pop_size, eliminate_duplicates=True, **ops)
    if config.algorithm == "nsga3":
        p = 1
        while _n_dirs(n_obj, p + 1) <= config.pop_size:
            p += 1
        ref_dirs = get_reference_directions("das-dennis", n_obj, n_partitions=p)
        return NSGA3(ref_dirs=ref_dirs, pop_size=config.pop_size, eliminate_duplicates=True, **ops)
    return SMSEMOA(pop_size=config.pop_size, eliminate_duplicates=True, **ops)


def _n_dirs(n_obj: int, p: int) -> int:
    from math import comb

    return comb(p + n_obj - 1, n_obj - 1)


class Budget(Termination):
    """Stop at ``n_gen`` generations, ``max_evals`` simulations or ``max_time_s`` seconds.

    Simulations (cache misses) are the cost that matters, so the evaluation
    budget counts those, not individuals. Time is the search's own elapsed
    time, accumulated over resumes.
    """

    def __init__(self, search: Search) -> None:
        super().__init__()
        self.search = search
        self._last_sims = -1
        self._stalled = 0

    def _update(self, algorithm: Any) -> float:
        cfg = self.search.config
        # Generations recorded by the search (pymoo's n_iter runs one ahead here).
        done = [len(self.search.history) / cfg.n_gen]
        if cfg.max_evals is not None:
            done.append(self.search.evaluator.simulations / cfg.max_evals)
        if cfg.max_time_s is not None:
            done.append(self.search.elapsed_s / cfg.max_time_s)
        # A search whose offspring only revisit simulated allocations spends no budget
        # and would step forever: stop after STALL_GENERATIONS such generations.
        sims = self.search.evaluator.simulations
        if sims != self._last_sims:
            self._last_sims, self._stalled = sims, 0
        else:
            self._stalled += 1
        if self._stalled >= STALL_GENERATIONS:
            done.append(1.0)
        return max(done)


@dataclass
class Generation:
    """One row of the history."""

    gen: int
    simulations: int
    individuals: int
    front_size: int
    hv: float
    igd: float
    time_s: float


@dataclass
class Search:
    """A resumable search. Build with :meth:`start` or :meth:`resume`."""

    config: SearchConfig
    evaluator: Evaluator
    reference_F: np.ndarray | None = None  # raw criteria of a known true front
    checkpoint: Path | None = None
    history: list[Generation] = field(default_factory=list)
    front_keys: list[bytes] = field(default_factory=list)
    n_seen: int = 0  # simulations already merged into front_keys
    elapsed_s: float = 0.0
    algorithm: Any = None
    problem: PlacementProblem | None = None

    @classmethod
    def start(
        cls,
        config: SearchConfig,
        evaluator: Evaluator,
        reference_F: np.ndarray | None = None,
        checkpoint: str | Path | None = None,
    ) -> Search:
        """A new search, set up but not yet stepped."""
        s = cls(config, evaluator, reference_F, Path(checkpoint) if checkpoint else None)
        s.problem = PlacementProblem(evaluator)
        s.algorithm = make_algorithm(config, s.problem.n_obj, evaluator.genome)
        s.algorithm.setup(s.problem, termination=Budget(s), seed=config.seed, verbose=False)
        return s

    @classmethod
    def resume(cls, checkpoint: str | Path, client: Any | None = None) -> Search:
        """The search saved in ``checkpoint``, evaluating on ``client`` (None: inline)."""
        s = checkpoint_file.load(checkpoint)
        if not isinstance(s, Search):
            raise ValueError(f"{checkpoint}: not an optimizer checkpoint")
        s.evaluator.attach(client)
        s.checkpoint = Path(checkpoint)
        return s

    def extend(self, **changes: Any) -> None:
        """Change the budget of a search (e.g. more generations) before continuing."""
        from dataclasses import replace

        self.config = replace(self.config, **changes)
        self.algorithm.termination = Budget(self)
        self.algorithm.termination.update(self.algorithm)

    @property
    def done(self) -> bool:
        """True once the budget is spent."""
        return not self.algorithm.has_next()

    def run(self, on_generation: Callable[[Generation], None] | None = None) -> Search:
        """Step until the budget is spent, checkpointing after every generation."""
        while self.algorithm.has_next():
            started = time.perf_counter()
            self.algorithm.next()
            self.elapsed_s += time.perf_counter() - started
            row = self._record()
            self.algorithm.termination.update(self.algorithm)
            self.save()
            if on_generation is not None:
                on_generation(row)
        return self

    def _record(self) -> Generation:
        ev = self.evaluator
        new = ev.order[self.n_seen :]
        keys = self.front_keys + new
        F = np.array([ev.cache[k].mean for k in keys], dtype=float)
        idx = non_dominated(F)
        self.front_keys = [keys[i] for i in idx]
        self.n_seen = len(ev.order)
        Fn = self.problem.normaliser(F[idx])
        hv = float(HV(ref_point=np.full(Fn.shape[1], REF_POINT))(Fn))
        igd = float("nan")
        if self.reference_F is not None:
            igd = float(IGD(self.problem.normaliser(self.reference_F))(Fn))
        row = Generation(
            gen=len(self.history) + 1,
            simulations=ev.simulations,
            individuals=ev.lookups,
            front_size=len(idx),
            hv=hv,
            igd=igd,
            time_s=self.elapsed_s,
        )
        self.history.append(row)
        return row

    def save(self) -> None:
        """Write the whole search to the checkpoint file, signed (:mod:`optimizer.checkpoint`)."""
        if self.checkpoint is None:
            return
        checkpoint_file.dump(self, self.checkpoint)

    def front(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Non-dominated allocations among all simulated (flat vectors, means, CIs)."""
        ev = self.evaluator
        X = np.array([np.frombuffer(k, dtype=np.int64) for k in self.front_keys])
        F = np.array([ev.cache[k].mean for k in self.front_keys], dtype=float)
        CI = np.array([ev.cache[k].ci for k in self.front_keys], dtype=float)
        order = np.lexsort(F.T[::-1])
        return X[order], F[order], CI[order]


def non_dominated(F: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated rows of ``F`` (minimisation); duplicates kept once."""
    F = np.atleast_2d(np.asarray(F, dtype=float))
    if len(F) == 0:
        return np.empty(0, dtype=int)
    idx = NonDominatedSorting().do(F, only_non_dominated_front=True)
    idx = np.sort(np.asarray(idx, dtype=int))
    _, first = np.unique(F[idx], axis=0, return_index=True)
    return idx[np.sort(first)]


def hypervolume(F: np.ndarray, lo: np.ndarray, hi: np.ndarray, ref: float = REF_POINT) -> float:
    """Hypervolume of raw criteria ``F`` after mapping [lo, hi] to [0, 1]; reference ``ref``."""
    span = np.where(np.asarray(hi) - np.asarray(lo) > 1e-12, np.asarray(hi) - np.asarray(lo), 1.0)
    Fn = (np.atleast_2d(F) - lo) / span
    return float(HV(ref_point=np.full(Fn.shape[1], ref))(Fn))
