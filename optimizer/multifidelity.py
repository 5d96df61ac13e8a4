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

:func:`confirm_front` DES-scores the screening-only members of the final front
(all of them, or a shortlist of the largest hypervolume contributors under a
DES budget), and the front a run reports is the DES-scored candidates' own, so
what a run reports was always simulated by the reference twin.
:class:`MultiFidelityEvaluator` counts both kinds of runs and logs which
candidate ran at which fidelity; the run folder gets that log
(``fidelity.csv``) and the settings.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from optimizer.evaluation import Evaluator, Fidelity, Score, _round, evaluate_matrix
from optimizer.ga import REF_POINT, Search, non_dominated
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
    normalised over the front) go first. The final front reported is
    DES-scored (:func:`confirm_front`): every screening-only member, or, under
    ``confirm_max`` / ``des_budget``, those adding the most hypervolume.
    """

    margin: float = 0.0
    des_share: float = 0.1
    polish_screens: int = 0
    polish_rounds: int = 4
    extreme_screens: int = 0  # end game: screened neighbourhoods of the front's top contributors
    row_screens: int = 0  # end game: screened row neighbourhoods (optimizer.rowsweep) of them
    max_screens: int | None = None  # screens during the search (end game excluded); None: no cap
    confirm_max: int | None = None  # end game's DES runs on the final front; None: every member
    # DES runs of search and end game together: the end game confirms at most what the
    # search left of it (None: no such cap)
    des_budget: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.margin <= 1:
            raise ValueError(f"margin must be in [0, 1], got {self.margin}")
        if not 0 < self.des_share <= 1:
            raise ValueError(f"des_share must be in (0, 1], got {self.des_share}")
        if self.polish_screens < 0:
            raise ValueError(f"polish_screens must be ≥ 0, got {self.polish_screens}")
        if self.max_screens is not None and self.max_screens < 1:
            raise ValueError(f"max_screens must be ≥ 1 or None, got {self.max_screens}")
        if self.extreme_screens < 0:
            raise ValueError(f"extreme_screens must be ≥ 0, got {self.extreme_screens}")
        if self.row_screens < 0:
            raise ValueError(f"row_screens must be ≥ 0, got {self.row_screens}")
        if self.polish_rounds < 1:
            raise ValueError(f"polish_rounds must be ≥ 1, got {self.polish_rounds}")
        if self.confirm_max is not None and self.confirm_max < 0:
            raise ValueError(f"confirm_max must be ≥ 0 or None, got {self.confirm_max}")
        if self.des_budget is not None and self.des_budget < 1:
            raise ValueError(f"des_budget must be ≥ 1 or None, got {self.des_budget}")

    @classmethod
    def for_budget(cls, max_evals: int) -> MultiFidelity:
        """The default multi-fidelity settings for a budget of ``max_evals`` DES runs (B).

        The rule (what won on generated instances, benchmarks/results/optimizer_generated.md):
        at most a quarter of each generation DES-scored, the search stops after 4·B screens
        (or :data:`SEARCH_DES_SHARE`·B DES runs, see :func:`search_budget`), then the end game
        screens B random one-move neighbours of the front, 8·B row neighbours and B whole
        one-move neighbourhoods of its largest hypervolume contributors, and DES-scores
        whatever of them enters the front, within what the search left of B (``des_budget``
        = B: when the front has more screening-only members than that, the ones adding the
        most hypervolume, :func:`confirm_front`). Search and end game together never
        DES-score more than B candidates. Screens cost 0.07–0.13 of a DES run each.
        """
        b = max(1, int(max_evals))
        return cls(
            0.0,
            0.25,
            polish_screens=b,
            max_screens=4 * b,
            extreme_screens=b,
            row_screens=8 * b,
            des_budget=b,
        )

    def describe(self) -> str:
        """One line for reports."""
        text = (
            f"screen every candidate; DES at most {self.des_share:.0%} of each batch, among "
            f"those within {self.margin:.0%} of the front, nearest the ideal point first"
        )
        if self.max_screens is not None:
            text += f"; at most {self.max_screens} screens during the search"
        if self.polish_screens:
            text += (
                f"; end game: {self.polish_screens} screened one-move neighbours of the front "
                f"in {self.polish_rounds} rounds"
            )
        if self.row_screens:
            text += (
                f"; end game: up to {self.row_screens} screened row neighbours (one component "
                "re-placed, the rest fitted around it) of the front's largest contributors"
            )
        if self.extreme_screens:
            text += (
                f"; end game: up to {self.extreme_screens} screened one-move neighbourhoods "
                "of the front's largest hypervolume contributors"
            )
        if self.confirm_max is None and self.des_budget is None:
            return text + "; the final front DES-scored"
        caps = [f"{self.confirm_max} DES runs"] if self.confirm_max is not None else []
        if self.des_budget is not None:
            caps.append(f"what the search left of {self.des_budget} DES runs")
        return text + (
            f"; at most {' and '.join(caps)} confirm the final front's largest "
            "hypervolume contributors, the front reported is the DES-scored candidates' own"
        )


SEARCH_DES_SHARE = 0.7  # of a multi-fidelity budget spent in the search; the rest: end game


def search_budget(max_evals: int) -> int:
    """DES runs the search itself may spend of a budget of ``max_evals`` (the end game's
    confirmations take the rest: :attr:`MultiFidelity.des_budget`)."""
    return max(1, int(SEARCH_DES_SHARE * max_evals))


def screen_matrix(
    scenario: Scenario, base: Deployment, matrix: np.ndarray, fidelity: Fidelity
) -> Score:
    """Screening-fidelity score of one allocation (pure and picklable, like evaluate_matrix)."""
    return screen_deployment(scenario, with_matrix(scenario, matrix, base), fidelity)


def screen_deployment(scenario: Scenario, dep: Deployment, fidelity: Fidelity) -> Score:
    """Screening-fidelity score of one deployment, any genome's (pure and picklable).

    The screening engine models cold starts as the DES does (an on-demand
    instance waits its component's ``startup_s`` whenever work finds it stopped),
    so the constant-run decision screens as it simulates.
    """
    # numba (via twin.screen) is loaded only when screening runs: plain `optimize` does not
    # pay its start-up, nor its address-space reservation (which fails under a 500 MB cap)
    from twin.screen import screen_criteria

    cpu0, wall0 = time.process_time(), time.perf_counter()
    rows = screen_criteria(
        scenario, dep, fidelity.workload, fidelity.horizon_s, fidelity.replications, fidelity.seed
    )
    stats = [confidence_interval(rows[:, i]) for i in range(rows.shape[1])]
    mean = tuple(_round(m) for m, _ in stats)
    ci = tuple(_round(np.nan_to_num(h)) for _, h in stats)
    wall = time.perf_counter() - wall0
    return Score(mean=mean, ci=ci, wall_s=wall, cpu_s=time.process_time() - cpu0)


def screen_many(scenario: Scenario, deps: list[Deployment], fidelity: Fidelity) -> list[Score]:
    """:func:`screen_deployment` of each deployment (one Dask task for a chunk of them)."""
    return [screen_deployment(scenario, d, fidelity) for d in deps]


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
    """An :class:`Evaluator` that screens every candidate and DES-scores the promising ones.

    Any genome works: candidates are screened as the deployments the genome
    makes of them (allocation, alignment, constant run). Where a screen is
    optimistic, that cannot lose a candidate for good: an optimistic screen
    that enters the front is DES-scored (now, or by :func:`confirm_front`), and
    a candidate it wrongly dominated keeps its own screening score, so it is
    back on the running front — and DES-scored at the end — as soon as the
    optimistic one is corrected. It costs DES runs on such candidates, not
    correctness; under a DES budget it costs hypervolume (before the screen
    modelled cold starts, deployments with an on-demand model server screened 93 %
    low on overruns on average, and the default reached 0.96 of the true front's
    hypervolume on benchmarks/optimizer_small_matrices.py).
    """

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
        self.polished = 0  # candidates screened by the end game (:func:`polish`)

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

    @property
    def screen_budget_used(self) -> float:
        """Share of ``max_screens`` spent (0 without a cap); the search's Budget stops at 1."""
        cap = getattr(self.settings, "max_screens", None)
        return 0.0 if cap is None else self.screened / cap

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

    def _vectors(self, keys: list[bytes]) -> list[np.ndarray]:
        """The genome vectors of cache keys (a plain genome's: its allocation, row-major)."""
        return [np.frombuffer(k, dtype=np.int64) for k in keys]

    def screen_only(self, X: np.ndarray) -> int:
        """Screen the new allocations among ``X`` (flat) and cache their screening scores.

        No DES runs: the caller confirms what it keeps (:func:`confirm_front`).
        Returns how many were new.
        """
        keys = [self.genome.key(x) for x in np.atleast_2d(np.asarray(X))]
        missing = list(dict.fromkeys(k for k in keys if k not in self.cache))
        if missing:
            self._score(missing, des=False)
        return len(missing)

    def _score(self, missing: list[bytes], des: bool = True) -> None:
        started = time.perf_counter()
        screened = self._screen(self._vectors(missing))
        self.screen_wall_s += time.perf_counter() - started
        S = np.array([s.mean for s in screened], dtype=float)
        known = np.array([self.cache[k].mean for k in self.front_keys], dtype=float)
        known = known.reshape(-1, S.shape[1])
        promising = could_enter(S, known, self.settings.margin) & des
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

    def _screen(self, vectors: list[np.ndarray]) -> list[Score]:
        """Screen inline, or in one chunk per Dask worker (a screen is a few ms: one task each
        would cost more in scheduling than in simulation)."""
        sc, fid = self.genome.scenario, self.fidelity
        deps = [self.genome.deployment(v) for v in vectors]
        if self.client is None:
            return screen_many(sc, deps, fid)
        n = max(1, min(len(self.client.scheduler_info().get("workers", {})), len(deps)))
        chunks = [deps[i::n] for i in range(n)]
        futures = [self.client.submit(screen_many, sc, c, fid, pure=False) for c in chunks if c]
        parts = self.client.gather(futures)
        out: list[Score] = [None] * len(deps)  # type: ignore[list-item]
        for i, part in enumerate(parts):
            out[i::n] = part
        return out

    def confirm(self, keys: list[bytes], also: list[bytes] | None = None) -> None:
        """DES-score ``keys`` not yet DES-scored; update the front with them and ``also``."""
        todo = [k for k in keys if k not in self.des_keys]
        if todo:
            started = time.perf_counter()
            scores = self._run(self._vectors(todo))  # the base class's DES path (inline/Dask)
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
            "polished": self.polished,
            "des": self.des_runs,
            "des_fraction": self.des_runs / max(len(self.log), 1),
            "screen_wall_s": round(self.screen_wall_s, 2),
            "des_wall_s": round(self.des_wall_s, 2),
            "fidelity": self.fidelity.describe(),
        }


def hv_shortlist(F: np.ndarray, fixed: np.ndarray, k: int) -> np.ndarray:
    """Indices of at most ``k`` rows of ``F`` (not among ``fixed``) that add the most
    hypervolume to the ``fixed`` rows, chosen greedily (criteria minimised).

    Criteria are normalised over ``F`` (its ideal and nadir), reference point
    1.1 in each, as the searches' hypervolume. Greedy forward selection: each
    step adds the row with the largest hypervolume gain over the rows kept so
    far; gains only shrink as rows are added (hypervolume is submodular), so a
    stale gain is an upper bound and only the top row's is recomputed (lazy
    greedy). Greedy subset selection keeps at least 1 − 1/e of the best
    k-subset's gain. Rows that add nothing are never picked.
    """
    import heapq

    from moocore import hypervolume as hv  # exact, compiled (pymoo's own dependency)

    F = np.atleast_2d(np.asarray(F, dtype=float))
    lo, hi = F.min(axis=0), F.max(axis=0)
    Fn = (F - lo) / np.where(hi - lo > 1e-12, hi - lo, 1.0)
    ref = np.full(F.shape[1], REF_POINT)
    kept = [int(i) for i in np.flatnonzero(fixed)]
    base = hv(Fn[kept], ref=ref) if kept else 0.0
    heap = [(-(hv(Fn[[*kept, i]], ref=ref) - base), i) for i in np.flatnonzero(~fixed)]
    heapq.heapify(heap)
    fresh = set(range(len(F)))  # whose gain was computed against the current `kept`
    picked: list[int] = []
    while heap and len(picked) < k:
        neg, i = heapq.heappop(heap)
        if i not in fresh:
            heapq.heappush(heap, (-(hv(Fn[[*kept, i]], ref=ref) - base), i))
            fresh.add(i)
            continue
        if -neg <= 1e-15:
            break
        picked.append(i)
        kept.append(i)
        base = hv(Fn[kept], ref=ref)
        fresh = set()
    return np.array(picked, dtype=int)


def confirm_front(search: Search, budget: int | None = None) -> int:
    """DES-score the search's final front: every screening-only member, or a shortlist.

    Returns how many candidates this DES-scored. ``budget`` (default: the
    settings' ``confirm_max``, lowered to what the search left of their
    ``des_budget``) caps the DES runs; None confirms every member,
    repeating until none is left (a member that loses its place once
    DES-scored is replaced by the next best, confirmed in turn). Under a cap,
    each round confirms the screening-only members that add the most
    hypervolume to the DES-scored members (:func:`hv_shortlist`), half the
    remaining budget at a time so a member whose DES score disappoints is
    replaced by the next contributor. The reported front (``search.front_keys``)
    is the non-dominated set of the DES-scored candidates.
    """
    ev = search.evaluator
    if not isinstance(ev, MultiFidelityEvaluator):
        return 0
    if budget is None:
        budget = getattr(ev.settings, "confirm_max", None)
        total = getattr(ev.settings, "des_budget", None)
        if total is not None:
            left = max(total - ev.des_runs, 0)
            budget = left if budget is None else min(budget, left)
    before = ev.des_runs
    while True:
        keys = ev.order
        F = np.array([ev.cache[k].mean for k in keys], dtype=float)
        front = [keys[i] for i in non_dominated(F)]
        todo = [k for k in front if k not in ev.des_keys]
        room = None if budget is None else budget - (ev.des_runs - before)
        if not todo or (room is not None and room <= 0):
            break
        if room is not None and len(todo) > room:
            take = room if room <= 16 else (room + 1) // 2
            Ff = np.array([ev.cache[k].mean for k in front], dtype=float)
            fixed = np.array([k in ev.des_keys for k in front])
            todo = [front[i] for i in hv_shortlist(Ff, fixed, take)]
            if not todo:
                break
        ev.confirm(todo)
    des = [k for k in ev.order if k in ev.des_keys]
    F = np.array([ev.cache[k].mean for k in des], dtype=float).reshape(-1, len(CRITERIA))
    search.front_keys = [des[i] for i in non_dominated(F)]
    return ev.des_runs - before


def polish(search: Search, screens: int, rounds: int = 4) -> int:
    """End game: screen one-move neighbours of the front, ``screens`` of them in ``rounds``.

    Each round draws parents uniformly from the current front (every
    candidate scored so far, the evaluator's running front) and applies one
    placement move each (move, add, remove, evacuate or relocate an instance;
    :class:`optimizer.operators.PlacementMutation`), repaired to feasibility;
    new allocations are screened only. Screening is exact enough on the
    search fidelity (common random numbers) that this is a cheap local search
    around the front; :func:`confirm_front` then DES-scores whatever of it
    enters the front. Returns how many candidates were screened.
    """
    ev = search.evaluator
    if not isinstance(ev, MultiFidelityEvaluator) or screens <= 0:
        return 0
    # Local import: operators imports genome only, but keep this module's import list lean.
    from optimizer.matrices import DecisionGenome, LiftedMutation, LiftedRepair
    from optimizer.operators import MUTATION_WEIGHTS, PlacementMutation, PlacementRepair

    mutation: Any = PlacementMutation(MUTATION_WEIGHTS)
    repair: Any = PlacementRepair()
    if isinstance(ev.genome, DecisionGenome):
        # Moves on the allocation part, or one alignment / constant-run gene (the GA's own mix).
        mutation, repair = LiftedMutation(mutation), LiftedRepair()
    rng = np.random.default_rng([search.config.seed, 20])
    per_round = max(1, screens // rounds)
    done = 0
    for _ in range(rounds):
        parents = np.array([np.frombuffer(k, dtype=np.int64) for k in ev.front_keys])
        fresh: dict[bytes, np.ndarray] = {}
        for _attempt in range(20):  # duplicates and cached ones are dropped; top up
            X = parents[rng.integers(len(parents), size=per_round)]
            Y = mutation._do(search.problem, X, random_state=rng)
            Y = repair._do(search.problem, Y, random_state=rng)
            for y in Y:
                k = ev.genome.key(y)
                if k not in ev.cache:
                    fresh.setdefault(k, y)
            if len(fresh) >= per_round:
                break
        if not fresh:
            break
        done += ev.screen_only(np.array(list(fresh.values())[:per_round]))
    ev.polished = getattr(ev, "polished", 0) + done
    return done


def neighbours(genome: Genome, x: np.ndarray) -> list[np.ndarray]:
    """Every feasible allocation one move from ``x``: one instance moved to another machine,
    one added, or one removed (never a component's last); a DecisionGenome's alignment and
    constant-run genes are kept as they are."""
    from optimizer.matrices import allocation_view

    m0, alloc, vector = allocation_view(genome, x)

    ub = alloc.cell_bounds()
    K, S = m0.shape
    out: dict[bytes, np.ndarray] = {}

    def consider(m: np.ndarray) -> None:
        if alloc.is_feasible(m.reshape(-1)):
            v = vector(m)
            out.setdefault(genome.key(v), v)

    for k in range(K):
        for j in range(S):
            if m0[k, j] < ub[k, j]:  # add one on j
                m = m0.copy()
                m[k, j] += 1
                consider(m)
            if m0[k, j] == 0:
                continue
            if m0[k].sum() > 1:  # remove one from j
                m = m0.copy()
                m[k, j] -= 1
                consider(m)
            for t in range(S):  # move one from j to t
                if t != j and m0[k, t] < ub[k, t]:
                    m = m0.copy()
                    m[k, j] -= 1
                    m[k, t] += 1
                    consider(m)
    out.pop(genome.key(x), None)
    return list(out.values())


def contributions(F: np.ndarray) -> np.ndarray:
    """Each row's exclusive hypervolume (what the front loses without it), criteria normalised
    over the front, reference point 1.1: the extremes and the isolated points score highest."""
    from optimizer.ga import hypervolume

    lo, hi = F.min(axis=0), F.max(axis=0)
    total = hypervolume(F, lo, hi)
    idx = np.arange(len(F))
    return np.array([total - hypervolume(F[idx != i], lo, hi) for i in idx])


def polish_extremes(
    search: Search,
    screens: int,
    hood: Callable[[Genome, np.ndarray], list[np.ndarray]] = neighbours,
) -> int:
    """End game: a screened local search on the front's largest hypervolume contributors.

    Repeatedly take the front member (every candidate scored so far) with the
    largest exclusive hypervolume whose neighbourhood was not searched yet,
    and screen *all* its one-move neighbours (:func:`neighbours`) — until
    ``screens`` are spent. A new member that enters the front is searched in
    turn, so an extreme walks downhill move by move.

    Why: a four-criterion front at a small budget loses most of its
    hypervolume through a few missing points — often one extreme of a slice
    of a discrete criterion (e.g. the lowest variance among the fewest
    overruns), reached only by one specific move such as a third instance of
    a heavy component on the right machine. Random one-move polish
    (:func:`polish`) finds such a move with probability ~1/(its neighbourhood
    size) per try; searching the neighbourhood of the points that matter
    finds it for sure. ``hood``: the neighbourhood searched (one move by default;
    :func:`optimizer.rowsweep.row_neighbours` re-places one component at a time).
    Returns how many candidates were screened.
    """
    ev = search.evaluator
    if not isinstance(ev, MultiFidelityEvaluator) or screens <= 0:
        return 0
    done_parents: set[bytes] = set()
    done = 0
    while done < screens:
        keys = ev.order
        F = np.array([ev.cache[k].mean for k in keys], dtype=float)
        front = [keys[i] for i in non_dominated(F)]
        todo = [k for k in front if k not in done_parents]
        if not todo:
            break
        Ff = np.array([ev.cache[k].mean for k in front], dtype=float)
        gain = dict(zip(front, contributions(Ff), strict=True)) if len(front) > 1 else {}
        parent = max(todo, key=lambda k: gain.get(k, 0.0))
        done_parents.add(parent)
        fresh = [
            v
            for v in hood(ev.genome, np.frombuffer(parent, dtype=np.int64))
            if ev.genome.key(v) not in ev.cache
        ]
        if fresh:
            done += ev.screen_only(np.array(fresh[: screens - done]))
    ev.polished = getattr(ev, "polished", 0) + done
    return done


def end_game(search: Search) -> dict[str, int]:
    """A multi-fidelity search's finish: :func:`polish`, row sweeps and :func:`polish_extremes`
    (as its settings ask), then :func:`confirm_front`. Returns the counts of screens and
    confirmations (zeros for a DES-only search)."""
    ev = search.evaluator
    if not isinstance(ev, MultiFidelityEvaluator):
        return {"polished": 0, "confirmed": 0}
    s = ev.settings
    polished = 0
    if not getattr(ev, "polished", 0):
        from optimizer.rowsweep import row_neighbours

        polished = polish(search, s.polish_screens, s.polish_rounds)
        polished += polish_extremes(search, getattr(s, "row_screens", 0), hood=row_neighbours)
        polished += polish_extremes(search, getattr(s, "extreme_screens", 0))
    return {"polished": polished, "confirmed": confirm_front(search)}


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
    "contributions",
    "could_enter",
    "end_game",
    "evaluate_matrix",
    "hv_shortlist",
    "neighbours",
    "polish",
    "polish_extremes",
    "screen_deployment",
    "screen_matrix",
    "search_budget",
    "start_multifidelity",
]
