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
from twin.criteria import CRITERIA, confidence_interval
from twin.deployment import with_matrix
from twin.spec import Deployment, Scenario


@dataclass(frozen=True)
class MultiFidelity:
    """Settings of a multi-fidelity search.

    ``margin``: relative slack of the screening domination test (0.05: a
    candidate is skipped only if a known point beats it by 5 % on every
    criterion it does not tie). ``des_share``: at most this share of each
    batch is DES-scored during the search — with four criteria a quarter of
    the offspring are non-dominated when screened, so the cap is what makes
    the search cheap; the ones nearest the front's ideal point (criteria
    normalised over the front) go first. The final front is DES-scored
    whatever the cap (:func:`confirm_front`).
    """

    margin: float = 0.0
    des_share: float = 0.1

    def __post_init__(self) -> None:
        if not 0 <= self.margin <= 1:
            raise ValueError(f"margin must be in [0, 1], got {self.margin}")
        if not 0 < self.des_share <= 1:
            raise ValueError(f"des_share must be in (0, 1], got {self.des_share}")

    def describe(self) -> str:
        """One line for reports."""
        return (
            f"screen every candidate; DES at most {self.des_share:.0%} of each batch, among "
            f"those within {self.margin:.0%} of the front, nearest the ideal point first"
        )


def screen_matrix(
    scenario: Scenario, base: Deployment, matrix: np.ndarray, fidelity: Fidelity
) -> Score:
    """Screening-fidelity score of one allocation (pure and picklable, like evaluate_matrix)."""
    # numba (via twin.screen) is loaded only when screening runs: plain `optimize` does not
    # pay its start-up, nor its address-space reservation (which fails under a 500 MB cap)
    from twin.screen import screen_criteria

    cpu0, wall0 = time.process_time(), time.perf_counter()
    dep = with_matrix(scenario, matrix, base)
    rows = screen_criteria(
        scenario, dep, fidelity.workload, fidelity.horizon_s, fidelity.replications, fidelity.seed
    )
    stats = [confidence_interval(rows[:, i]) for i in range(rows.shape[1])]
    mean = tuple(_round(m) for m, _ in stats)
    ci = tuple(_round(np.nan_to_num(h)) for _, h in stats)
    wall = time.perf_counter() - wall0
    return Score(mean=mean, ci=ci, wall_s=wall, cpu_s=time.process_time() - cpu0)


def screen_many(
    scenario: Scenario, base: Deployment, matrices: list[np.ndarray], fidelity: Fidelity
) -> list[Score]:
    """:func:`screen_matrix` of each allocation (one Dask task for a chunk of them)."""
    return [screen_matrix(scenario, base, m, fidelity) for m in matrices]


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

    def __init__(
        self, genome: Genome, fidelity: Fidelity, settings: MultiFidelity, client: Any | None = None
    ) -> None:
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

    @property
    def simulations(self) -> int:
        """DES runs: the cost a search's budget (``max_evals``) counts; screens are extra."""
        return len(self.des_keys)

    @property
    def screened(self) -> int:
        """Distinct candidates screened so far."""
        return len(self.log)

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
        started = time.perf_counter()
        screened = self._screen(self._matrices(missing))
        self.screen_wall_s += time.perf_counter() - started
        S = np.array([s.mean for s in screened], dtype=float)
        known = np.array([self.cache[k].mean for k in self.front_keys], dtype=float)
        known = known.reshape(-1, S.shape[1])
        promising = could_enter(S, known, self.settings.margin)
        cap = int(np.ceil(self.settings.des_share * len(missing)))
        if promising.sum() > cap:
            ref = np.vstack([known, S[promising]])
            lo, hi = ref.min(axis=0), ref.max(axis=0)
            dist = np.linalg.norm((S - lo) / np.where(hi > lo, hi - lo, 1.0), axis=1)
            dist[~promising] = np.inf
            promising = np.zeros(len(missing), dtype=bool)
            promising[np.argsort(dist, kind="stable")[:cap]] = True
        for k, s in zip(missing, screened, strict=True):
            self.cache[k] = s
            self.order.append(k)
            self.sim_wall_s += s.wall_s
            self.sim_cpu_s += s.cpu_s
            self.log.append({"key": k, "batch": self.batches, "screen": s.mean, "des": None})
        self.batches += 1
        self.confirm([k for k, p in zip(missing, promising, strict=True) if p], also=missing)

    def _screen(self, matrices: list[np.ndarray]) -> list[Score]:
        """Screen inline, or in one chunk per Dask worker (a screen is a few ms: one task each
        would cost more in scheduling than in simulation)."""
        sc, base, fid = self.genome.scenario, self.genome.base, self.fidelity
        if self.client is None:
            return screen_many(sc, base, matrices, fid)
        n = max(1, min(len(self.client.scheduler_info().get("workers", {})), len(matrices)))
        chunks = [matrices[i::n] for i in range(n)]
        futures = [
            self.client.submit(screen_many, sc, base, c, fid, pure=False) for c in chunks if c
        ]
        parts = self.client.gather(futures)
        out: list[Score] = [None] * len(matrices)  # type: ignore[list-item]
        for i, part in enumerate(parts):
            out[i::n] = part
        return out

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
            "des_fraction": self.des_runs / max(len(self.log), 1),
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


def start_multifidelity(
    genome: Genome,
    config: Any,
    fidelity: Fidelity,
    settings: MultiFidelity,
    client: Any | None,
    reference_F: np.ndarray | None = None,
    checkpoint: Any = None,
) -> Search:
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
