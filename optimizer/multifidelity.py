"""Multi-fidelity search: screen every candidate with the fast twin, confirm with the DES.

The screening fidelity (:func:`twin.screen.screen`) simulates the same model
as the SimPy twin about 20–50× faster, so its scores are directly
comparable with the DES's. Each batch of new candidates is:

1. screened, all of them (inline: a screening run of the search fidelity
   takes milliseconds, less than a Dask round trip);
2. compared with the front so far (scores of every candidate scored, DES
   where confirmed) and with each other: a candidate that some point
   dominates even after that point's criteria are inflated by the margin
   (``(1 + margin)·f``) cannot enter the front and keeps its screening score;
3. the rest — those that could enter the front — are simulated by the DES
   (inline or on the Dask client) and carry the DES score from then on.

:func:`confirm_front` DES-scores any screening-only member of the final front,
repeating until the front is all DES, so what a run reports was always
simulated by the reference twin. :class:`MultiFidelityEvaluator` counts both
kinds of runs and logs which candidate ran at which fidelity; the run folder
gets that log (``fidelity.csv``) and the settings.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from optimizer.evaluation import Evaluator, Fidelity, Score, _round, evaluate_matrix
from optimizer.ga import Search, non_dominated
from optimizer.genome import Genome
from twin.criteria import CRITERIA
from twin.screen import screen
from twin.spec import Deployment, Scenario


@dataclass(frozen=True)
class MultiFidelity:
    """Settings of a multi-fidelity search.

    ``margin``: relative slack of the screening domination test (0.05: a
    candidate is skipped only if a known point beats it by 5 % on every
    criterion it does not tie). Larger margins confirm more candidates.
    """

    margin: float = 0.05

    def __post_init__(self) -> None:
        if not 0 <= self.margin <= 1:
            raise ValueError(f"margin must be in [0, 1], got {self.margin}")

    def describe(self) -> str:
        """One line for reports."""
        return f"screen every candidate, DES those within {self.margin:.0%} of the front"


def screen_matrix(
    scenario: Scenario, base: Deployment, matrix: np.ndarray, fidelity: Fidelity
) -> Score:
    """Screening-fidelity score of one allocation (pure and picklable, like evaluate_matrix)."""
    cpu0 = time.process_time()
    genome = Genome(scenario, base)
    dep = genome.deployment(genome.encode(matrix))
    ev = screen(
        scenario, dep, fidelity.workload, fidelity.horizon_s, fidelity.replications, fidelity.seed
    )
    s = ev.summary
    mean = tuple(_round(s.loc[c, "mean"]) for c in CRITERIA)
    ci = tuple(_round(np.nan_to_num(s.loc[c, "ci"])) for c in CRITERIA)
    return Score(mean=mean, ci=ci, wall_s=ev.wall_s, cpu_s=time.process_time() - cpu0)


def could_enter(candidates: np.ndarray, known: np.ndarray, margin: float) -> np.ndarray:
    """Bool per row of ``candidates``: not dominated by any row of ``known`` or another candidate
    once those are inflated by ``1 + margin`` (criteria ≥ 0, minimised)."""
    pool = np.vstack([known, candidates]) if len(known) else candidates
    slack = pool * (1.0 + margin)
    out = np.ones(len(candidates), dtype=bool)
    for i, c in enumerate(candidates):
        le = np.all(slack <= c, axis=1)
        lt = np.any(slack < c, axis=1)
        dom = le & lt
        dom[len(pool) - len(candidates) + i] = False  # not itself
        out[i] = not dom.any()
    return out


class MultiFidelityEvaluator(Evaluator):
    """An :class:`Evaluator` that screens every candidate and DES-scores the promising ones."""

    def __init__(self, genome: Genome, fidelity: Fidelity, settings: MultiFidelity,
                 client: Any | None = None) -> None:  # fmt: skip
        super().__init__(genome, fidelity, client)
        self.settings = settings
        self.des_keys: set[bytes] = set()
        self.front_keys: list[bytes] = []
        self.log: list[dict[str, Any]] = []  # one row per distinct candidate
        self.screen_wall_s = 0.0
        self.des_wall_s = 0.0
        self.batches = 0

    @property
    def des_runs(self) -> int:
        """Candidates simulated by the DES so far."""
        return len(self.des_keys)

    def evaluate(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Criteria means and CIs (n×4 each); see the module docstring for who gets the DES."""
        X = np.atleast_2d(np.asarray(X))
        keys = [self.genome.key(x) for x in X]
        self.lookups += len(keys)
        missing = list(dict.fromkeys(k for k in keys if k not in self.cache))
        if missing:
            self._score(missing)
        F = np.array([self.cache[k].mean for k in keys], dtype=float)
        CI = np.array([self.cache[k].ci for k in keys], dtype=float)
        return F, CI

    def _matrices(self, keys: list[bytes]) -> list[np.ndarray]:
        return [np.frombuffer(k, dtype=np.int64).reshape(self.genome.shape) for k in keys]

    def _score(self, missing: list[bytes]) -> None:
        sc, base, fid = self.genome.scenario, self.genome.base, self.fidelity
        started = time.perf_counter()
        screened = [screen_matrix(sc, base, m, fid) for m in self._matrices(missing)]
        self.screen_wall_s += time.perf_counter() - started
        S = np.array([s.mean for s in screened], dtype=float)
        known = np.array([self.cache[k].mean for k in self.front_keys], dtype=float)
        promising = could_enter(S, known.reshape(-1, S.shape[1]), self.settings.margin)
        for k, s in zip(missing, screened, strict=True):
            self.cache[k] = s
            self.order.append(k)
            self.sim_wall_s += s.wall_s
            self.sim_cpu_s += s.cpu_s
            self.log.append({"key": k, "batch": self.batches, "screen": s.mean, "des": None})
        self.batches += 1
        self.confirm([k for k, p in zip(missing, promising, strict=True) if p], also=missing)

    def confirm(self, keys: list[bytes], also: list[bytes] | None = None) -> None:
        """DES-score ``keys`` not yet DES-scored; update the front with them and ``also``."""
        todo = [k for k in keys if k not in self.des_keys]
        if todo:
            started = time.perf_counter()
            scores = self._run(self._matrices(todo))  # the base class's DES path (inline/Dask)
            self.des_wall_s += time.perf_counter() - started
            rows = {r["key"]: r for r in self.log}
            for k, s in zip(todo, scores, strict=True):
                self.cache[k] = s
                self.des_keys.add(k)
                self.sim_wall_s += s.wall_s
                self.sim_cpu_s += s.cpu_s
                if k in rows:
                    rows[k]["des"] = s.mean
        pool = list(dict.fromkeys(self.front_keys + (also or []) + keys))
        F = np.array([self.cache[k].mean for k in pool], dtype=float)
        self.front_keys = [pool[i] for i in non_dominated(F)]

    def fidelity_table(self) -> pd.DataFrame:
        """Which candidate ran at which fidelity, with both scores where both ran."""
        rows = []
        for i, r in enumerate(self.log):
            row = {"candidate": i, "batch": r["batch"], "des": r["des"] is not None}
            row.update({f"screen_{c}": v for c, v in zip(CRITERIA, r["screen"], strict=True)})
            des = r["des"] or (np.nan,) * len(CRITERIA)
            row.update({f"des_{c}": v for c, v in zip(CRITERIA, des, strict=True)})
            rows.append(row)
        return pd.DataFrame(rows)

    def summary(self) -> dict[str, Any]:
        """Budget and what ran at which fidelity (for the run folder and report)."""
        return {
            **asdict(self.settings),
            "screened": len(self.log),
            "des": self.des_runs,
            "des_share": self.des_runs / max(len(self.log), 1),
            "screen_wall_s": round(self.screen_wall_s, 2),
            "des_wall_s": round(self.des_wall_s, 2),
            "fidelity": self.fidelity.describe(),
        }


def confirm_front(search: Search) -> int:
    """DES-score every screening-only member of the search's front until none is left.

    Returns how many candidates this DES-scored. The search's front keys are
    recomputed over every candidate scored, so a member that loses its place
    once DES-scored is replaced by the next best (confirmed in turn).
    """
    ev = search.evaluator
    if not isinstance(ev, MultiFidelityEvaluator):
        return 0
    before = ev.des_runs
    while True:
        keys = ev.order
        F = np.array([ev.cache[k].mean for k in keys], dtype=float)
        front = [keys[i] for i in non_dominated(F)]
        todo = [k for k in front if k not in ev.des_keys]
        if not todo:
            search.front_keys = front
            return ev.des_runs - before
        ev.confirm(todo)


def start_multifidelity(genome: Genome, config: Any, fidelity: Fidelity, settings: MultiFidelity,
                        client: Any | None, reference_F: np.ndarray | None = None,
                        checkpoint: Any = None) -> Search:  # fmt: skip
    """A new :class:`Search` whose evaluator screens and confirms."""
    return Search.start(
        config, MultiFidelityEvaluator(genome, fidelity, settings, client), reference_F, checkpoint
    )


__all__ = [
    "MultiFidelity",
    "MultiFidelityEvaluator",
    "confirm_front",
    "could_enter",
    "evaluate_matrix",
    "screen_matrix",
    "start_multifidelity",
]
