"""Placement search on generated instances against their exhaustive fronts.

Run (each step under the bench lock, each call < 10 min, resumable):

    flock /work/bench.lock .venv/bin/python benchmarks/optimizer_generated.py \
        --fronts-only --minutes 8
    flock /work/bench.lock .venv/bin/python benchmarks/optimizer_generated.py

``--fronts-only`` simulates every feasible allocation of each generated
instance (``optimizer.instances``) in saved chunks until ``--minutes`` have
passed; rerun it until it says every front is complete. The second call
runs every method on every instance × seed at 5 % of the exhaustive
evaluations and writes ``benchmarks/results/optimizer_generated.md``.

Evaluation is a pure function of (scenario, allocation, fidelity), so the
searches read each allocation's criteria from the exhaustive table instead
of simulating it again: the numbers are the ones a simulation would give
(the run re-simulates a sample of table entries and fails if one differs),
and a whole benchmark takes minutes. The budget still counts distinct
allocations a method asks for, exactly as ``Evaluator.simulations`` does.

Hypervolume: criteria normalised by the true front's ideal and nadir,
reference point 1.1 in each (pymoo's HV); IGD: pymoo's, on the same
normalisation. "Misses" counts runs whose best value of a criterion is more
than 1 % of the front's range worse than the true front's best.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from pymoo.indicators.igd import IGD
from rich.progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, markdown_table, write_result

from optimizer.baselines import random_search
from optimizer.evaluation import Evaluator, Fidelity, Score, evaluate_matrix
from optimizer.ga import Search, budget_pop, default_config, hypervolume, non_dominated
from optimizer.genome import Genome
from optimizer.instances import Front, InstanceInfo, cache_key, exhaustive_front, generate
from optimizer.multifidelity import (
    MultiFidelity,
    MultiFidelityEvaluator,
    end_game,
    screen_matrix,
)
from twin.criteria import CRITERIA

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "runs" / "bench" / "generated"
FIDELITY = Fidelity(workload=None, horizon_s=600.0, replications=1, seed=1)
BUDGET_SHARE = 0.05
MISS_TOL = 0.01  # of the true front's range of a criterion


class TableEvaluator(Evaluator):
    """An evaluator that reads scores from an exhaustive table (same numbers, no simulation)."""

    def __init__(self, genome: Genome, fidelity: Fidelity, front: Front) -> None:
        super().__init__(genome, fidelity, None)
        self.table = {
            x.astype(np.int64).tobytes(): Score(tuple(f), (0.0,) * len(f), 0.0)
            for x, f in zip(front.X, front.F, strict=True)
        }

    def _run(self, matrices: list[np.ndarray]) -> list[Score]:
        return [self.table[np.asarray(m, dtype=np.int64).tobytes()] for m in matrices]


class TableMultiFidelity(MultiFidelityEvaluator):
    """A multi-fidelity evaluator whose DES runs read the exhaustive table; screens run the
    screening twin (or read a table of screens when one is given)."""

    def __init__(
        self,
        genome: Genome,
        fidelity: Fidelity,
        front: Front,
        settings: MultiFidelity,
        screens: Front | None = None,
    ) -> None:
        super().__init__(genome, fidelity, settings, None)
        self.table = TableEvaluator(genome, fidelity, front).table
        self.screens = None if screens is None else TableEvaluator(genome, fidelity, screens).table

    def _run(self, matrices: list[np.ndarray]) -> list[Score]:
        return [self.table[np.asarray(m, dtype=np.int64).tobytes()] for m in matrices]

    def _screen(self, matrices: list[np.ndarray]) -> list[Score]:
        if self.screens is None:
            return super()._screen(matrices)
        return [self.screens[np.asarray(m, dtype=np.int64).tobytes()] for m in matrices]


@dataclass(frozen=True)
class Screening:
    """Multi-fidelity settings relative to a method's DES budget B."""

    des_share: float = 0.25  # at most this share of each generation DES-scored
    screens_x: float = 4.0  # screens during the search: at most screens_x · B
    polish_x: float = 1.0  # end-game screens: polish_x · B
    search_x: float = 0.7  # DES runs during the search: at most search_x · B (rest: end game)
    extreme_x: float = 0.0  # end-game neighbourhoods of the front's top contributors: · B screens
    pop_x: float = 1.0  # population: budget_pop(pop_x · B)
    rows_x: float = 0.0  # end-game row neighbourhoods (optimizer.rowsweep) of top contributors: · B
    within_budget: bool = False  # end game confirms at most what the search left of B

    def settings(self, budget: int) -> MultiFidelity:
        """The :class:`MultiFidelity` for a DES budget of ``budget``."""
        return MultiFidelity(
            0.0,
            self.des_share,
            polish_screens=int(self.polish_x * budget),
            max_screens=max(1, int(self.screens_x * budget)),
            extreme_screens=int(self.extreme_x * budget),
            row_screens=int(self.rows_x * budget),
            des_budget=budget if self.within_budget else None,
        )


@dataclass(frozen=True)
class Method:
    label: str
    config: dict[str, Any] | None  # SearchConfig fields; None: random feasible search
    screening: Screening | None = None  # multi-fidelity: screen, DES within the budget
    was: str | None = None  # the label its outcomes were cached under (--only reuses them)


# = MultiFidelity.for_budget
DEFAULT_SCREENING = Screening(extreme_x=1.0, rows_x=8.0, within_budget=True)
PREVIOUS_DEFAULT = "default (`mlops-twin optimize`): screening + row sweep + extreme polish"


def methods() -> list[Method]:
    """Every method compared, the default first."""
    return [
        Method(
            "default (`mlops-twin optimize`): screening + row sweep + extreme polish, "
            "end game within the budget",
            {},
            DEFAULT_SCREENING,
        ),
        Method(
            "previous default (session 4): the same, every final-front member confirmed",
            {},
            Screening(extreme_x=1.0, rows_x=8.0),
            was=PREVIOUS_DEFAULT,
        ),
        Method("DES only (`mlops-twin optimize --no-screen`)", {}),
        Method(
            "screening + extreme polish (last session's best, no row sweep)",
            {},
            Screening(extreme_x=1.0),
        ),
        Method(
            "NSGA-II, matrix operators, pop 20",
            dict(algorithm="nsga2", operators="custom", pop_size=20),
        ),
        Method(
            "NSGA-II, rounded SBX + PM (stock), pop 20",
            dict(algorithm="nsga2", operators="stock", pop_size=20),
        ),
        Method(
            "NSGA-III, matrix operators, pop 20",
            dict(algorithm="nsga3", operators="custom", pop_size=20),
        ),
        Method(
            "SMS-EMOA, matrix operators, pop 20",
            dict(algorithm="smsemoa", operators="custom", pop_size=20),
        ),
        Method("random feasible search", None),
    ]


def ablations() -> list[Method]:
    """One change at a time from the default (this session's candidates; earlier sessions'
    ablations — fit-aware moves, rejection sampling, population by screens — are in git
    history and their results in the notes)."""
    return [
        Method("ablation: screening, no end-game local search", {}, Screening()),
        Method(
            "ablation: screening, equal cost",
            {},
            Screening(screens_x=2.5, polish_x=0.5, search_x=0.45),
        ),
    ]


def run_method(
    method: Method,
    genome: Genome,
    front: Front,
    budget: int,
    seed: int,
    screens: Front | None = None,
) -> Evaluator:
    """One search on the table; returns its evaluator (everything it simulated).

    A multi-fidelity method's search stops at ``search_x`` of the budget in
    DES runs (or at its screen cap), leaving the rest for its end game's confirmations
    (:func:`optimizer.multifidelity.end_game`); every DES run counts, so a
    confirmation that overruns the budget shows in the simulations column.
    """
    if method.screening is not None:
        settings = method.screening.settings(budget)
        ev: Evaluator = TableMultiFidelity(genome, FIDELITY, front, settings, screens)
        search_budget = max(1, int(method.screening.search_x * budget))
        config = default_config(
            search_budget,
            n_gen=100_000,
            seed=seed,
            pop_size=budget_pop(int(method.screening.pop_x * budget)),
            **method.config,
        )
        search = Search.start(config, ev)
        search.run()
        end_game(search)
        return ev
    ev = TableEvaluator(genome, FIDELITY, front)
    if method.config is None:
        random_search(ev, budget, seed)
        return ev
    config = default_config(budget, n_gen=100_000, seed=seed, **method.config)
    Search.start(config, ev).run()
    return ev


def fronts(seeds: list[int], workers: int, minutes: float, screens: bool = True) -> bool:
    """Compute missing exhaustive fronts (DES, then screening-twin tables when ``screens``)
    until the time is up; True when all are done."""
    stop_at = time.monotonic() + 60 * minutes
    kinds = [False, True] if screens else [False]
    with Progress(transient=True) as progress:
        for screening in kinds:
            for s in seeds:
                sc, info = generate(s)
                what = "screens" if screening else "DES"
                task = progress.add_task(f"instance {s} {what} ({info.feasible})", total=None)
                got = exhaustive_front(
                    sc,
                    FIDELITY,
                    CACHE,
                    workers,
                    stop_at=stop_at,
                    on_chunk=lambda d, t, task=task: progress.update(task, completed=d, total=t),
                    screening=screening,
                )
                progress.remove_task(task)
                if got is None:
                    print(f"time is up at instance {s} ({what}): rerun", file=sys.stderr)
                    return False
                print(
                    f"instance {s} {what}: {len(got.X)} allocations, {got.wall_s:.0f} s",
                    file=sys.stderr,
                )
    return True


def steal_cores() -> tuple[float, float]:
    """(steal CPU-seconds, wall seconds) counters of the host, to difference over a run."""
    from loadgen.host import CPU_SECONDS, host_samples

    steal = sum(v for m, lab, v in host_samples() if m == CPU_SECONDS and '"steal"' in lab)
    return steal, time.monotonic()


def check_table(cases: list[tuple[Any, Genome, Front, Front]], n: int, seed: int = 0) -> int:
    """Re-simulate ``n`` random entries of the DES and the screening tables each; raise if one
    differs. Returns how many of each were checked."""
    rng = np.random.default_rng(seed)
    for i in rng.choice(len(cases), size=n):
        sc, genome, front, screens = cases[i]
        j = int(rng.integers(len(front.X)))
        m = front.X[j].reshape(genome.shape)
        for table, score_fn in ((front, evaluate_matrix), (screens, screen_matrix)):
            got = score_fn(sc, genome.base, m, FIDELITY).mean
            if not np.allclose(got, table.F[j], rtol=1e-9, atol=0):
                raise RuntimeError(f"{sc.name}: allocation {j} scores {got}, table: {table.F[j]}")
    return n


@dataclass
class Outcome:
    """One search's result on one instance."""

    instance: int
    method: str
    seed: int
    simulations: int
    hv_ratio: float
    igd: float
    gaps: np.ndarray  # per criterion: (best found − true best) / true front's range
    wall_s: float
    screened: int = 0  # screening runs (multi-fidelity methods), beside the simulations

    def save(self, path: Path) -> None:
        """Write as JSON (atomically: a stop never leaves half a file)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {**self.__dict__, "gaps": [float(g) for g in self.gaps]}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Outcome:
        data = json.loads(path.read_text())
        return cls(**{**data, "gaps": np.array(data["gaps"])})


def score(
    ev: Evaluator, F_true: np.ndarray, lo: np.ndarray, hi: np.ndarray, hv_true: float
) -> tuple[float, float, np.ndarray]:
    """HV ratio, IGD and per-criterion extreme gaps of everything ``ev`` simulated
    (DES-scored only: a multi-fidelity search's screens do not count)."""
    if isinstance(ev, MultiFidelityEvaluator):
        Fs = np.array([ev.cache[k].mean for k in ev.order if k in ev.des_keys], dtype=float)
    else:
        _, Fs, _ = ev.evaluated()
    found = Fs[non_dominated(Fs)]
    span = np.where(hi - lo > 1e-12, hi - lo, 1.0)
    ratio = hypervolume(found, lo, hi) / hv_true
    igd = float(IGD((F_true - lo) / span)((found - lo) / span))
    gaps = (Fs.min(axis=0) - lo) / span
    return ratio, igd, gaps


def outcome_path(front_key: str, method: Method, seed: int) -> Path:
    """Where one search's outcome is kept: keyed on the front, the method and the optimizer's
    source, so the search phase resumes after a stop and re-runs when the optimizer changes."""
    h = hashlib.sha1(
        f"{front_key}|{method.label}|{method.config!r}|{method.screening!r}|{seed}".encode()
    )
    h.update(_optimizer_source())
    return CACHE / "outcomes" / f"{h.hexdigest()[:20]}.json"


@functools.cache
def _optimizer_source() -> bytes:
    """The optimizer's source as this process loaded it (read once: edits mid-run don't count)."""
    # cli.py and run.py are the command's plumbing, which no search here runs
    skip = {"cli.py", "run.py"}
    files = sorted(p for p in (ROOT / "optimizer").glob("*.py") if p.name not in skip)
    return b"".join(p.read_bytes() for p in files)


@functools.cache
def _latest_outcomes() -> dict[tuple[str, int, int], Path]:
    """The newest cached outcome file of each (method label, instance, seed), whatever the
    optimizer's source it was computed with (for ``--only``)."""
    latest: dict[tuple[str, int, int], tuple[float, Path]] = {}
    for p in (CACHE / "outcomes").glob("*.json"):
        o = json.loads(p.read_text())
        k, t = (o["method"], o["instance"], o["seed"]), p.stat().st_mtime
        if k not in latest or t > latest[k][0]:
            latest[k] = (t, p)
    return {k: p for k, (_, p) in latest.items()}


def _instance_searches(
    s: int,
    n_seeds: int,
    chosen: list[Method],
    stop_at: float | None,
    only: str | None = None,
) -> tuple[tuple, list[Outcome] | None]:
    """Every method × seed on instance ``s`` (cached outcomes reused); (row, outcomes), or
    (row, None) when ``stop_at`` passed before all were done. Runs in a worker process.

    With ``only``, methods whose label does not contain it are not searched: their newest
    cached outcome is reused (under ``Method.was`` when set), whatever source it ran."""
    sc, info = generate(s)
    genome = Genome(sc)
    front = exhaustive_front(sc, FIDELITY, CACHE)
    screens = exhaustive_front(sc, FIDELITY, CACHE, screening=True)
    key = cache_key(sc, FIDELITY)
    F = front.F
    idx = non_dominated(F)
    lo, hi = F[idx].min(axis=0), F[idx].max(axis=0)
    hv_true = hypervolume(F[idx], lo, hi)
    budget = int(BUDGET_SHARE * len(F))
    row = (info, len(idx), budget)
    outcomes: list[Outcome] = []
    for m in chosen:
        for seed in range(1, n_seeds + 1):
            path = outcome_path(key, m, seed)
            if only is not None and only not in m.label:
                old = _latest_outcomes().get((m.was or m.label, s, seed))
                if old is None:
                    raise RuntimeError(f"--only: no cached outcome of {m.label!r}, {s}, {seed}")
                outcomes.append(replace(Outcome.load(old), method=m.label))
                continue
            if path.is_file():
                outcomes.append(Outcome.load(path))
                continue
            if stop_at is not None and time.monotonic() > stop_at:
                return row, None
            t0 = time.perf_counter()
            ev = run_method(m, genome, front, budget, seed, screens)
            ratio, igd, gaps = score(ev, F[idx], lo, hi, hv_true)
            o = Outcome(
                s,
                m.label,
                seed,
                ev.simulations,
                ratio,
                igd,
                gaps,
                time.perf_counter() - t0,
                getattr(ev, "screened", 0),
            )
            o.save(path)
            outcomes.append(o)
    return row, outcomes


def search_all(
    seeds: list[int],
    n_seeds: int,
    chosen: list[Method],
    stop_at: float | None = None,
    workers: int = 2,
    only: str | None = None,
) -> tuple[list, list, float, list] | None:
    """Every method × seed on every instance; (outcomes, instance rows, wall seconds, cases).

    Instances run on ``workers`` processes. Outcomes are cached one per search;
    past ``stop_at`` (``time.monotonic()``) the phase stops between searches and
    returns None (rerun to continue). The wall time reported is the sum of the
    searches' own wall times.
    """
    outcomes: list[Outcome] = []
    rows: list[tuple[InstanceInfo, int, int]] = []
    complete = True
    with ProcessPoolExecutor(max_workers=max(workers, 1)) as pool, Progress() as progress:
        task = progress.add_task("instances", total=len(seeds))
        futures = [
            pool.submit(_instance_searches, s, n_seeds, chosen, stop_at, only) for s in seeds
        ]
        for fut in futures:  # in instance order
            row, got = fut.result()
            rows.append(row)
            complete = complete and got is not None
            outcomes += got or []
            progress.advance(task)
    if not complete:
        return None
    cases = []
    for s in seeds:
        sc, _ = generate(s)
        screens = exhaustive_front(sc, FIDELITY, CACHE, screening=True)
        cases.append((sc, Genome(sc), exhaustive_front(sc, FIDELITY, CACHE), screens))
    return outcomes, rows, sum(o.wall_s for o in outcomes), cases


def report(args: argparse.Namespace, seeds: list[int]) -> None:
    """Run every method and write benchmarks/results/optimizer_generated.md."""
    steal0, t0 = steal_cores()
    chosen = methods() + ([] if args.no_ablations else ablations())
    stop_at = time.monotonic() + 60 * args.minutes
    got = search_all(seeds, args.seeds, chosen, stop_at, args.workers, args.only)
    if got is None:
        print("time is up in the search phase: rerun to continue", file=sys.stderr)
        sys.exit(3)
    outcomes, rows, search_wall, cases = got
    checked = check_table(cases, 30)
    steal1, t1 = steal_cores()
    steal = (steal1 - steal0) / max(t1 - t0, 1e-9)

    fronts_wall = sum(c[2].wall_s for c in cases)
    screens_wall = sum(c[3].wall_s for c in cases)
    screen_cost = screens_wall / fronts_wall  # one screen in DES runs (same allocations)
    feasible = {info.seed: info.feasible for info, _, _ in rows}
    budgets = {info.seed: b for info, _, b in rows}
    summary, misses = [], []
    for m in chosen:
        mine = [o for o in outcomes if o.method == m.label]
        used = [o.simulations / budgets[o.instance] for o in mine]
        screened = [o.screened / feasible[o.instance] for o in mine]
        cost = [(o.simulations + screen_cost * o.screened) / feasible[o.instance] for o in mine]
        hv = np.array([o.hv_ratio for o in mine])
        igd = np.array([o.igd for o in mine])
        gaps = np.array([o.gaps for o in mine])
        summary.append(
            [
                m.label,
                round(float(np.median(hv)), 4),
                round(float(hv.min()), 4),
                round(float(hv.mean()), 4),
                int((hv < 0.97).sum()),
                round(float(np.median(igd)), 4),
                round(float(igd.max()), 4),
                f"{np.median(used):.2f} / {max(used):.2f}",
                f"{np.median(screened):.1%} / {max(screened):.1%}",
                f"{np.median(cost):.1%} / {max(cost):.1%}",
                round(sum(o.wall_s for o in mine), 1),
            ]
        )
        misses.append(
            [
                m.label,
                *[int((gaps[:, c] > MISS_TOL).sum()) for c in range(len(CRITERIA))],
                *[round(float(gaps[:, c].max()), 3) for c in range(len(CRITERIA))],
            ]
        )
    inst_rows = []
    for info, n_front, budget in rows:
        per = []
        for m in chosen:
            hv = [o.hv_ratio for o in outcomes if o.method == m.label and o.instance == info.seed]
            per.append(round(float(np.min(hv)), 3))
        inst_rows.append(
            [
                info.seed,
                f"{info.n_components}×{info.n_machines}",
                info.cpu_tightness,
                info.ram_tightness,
                info.price_spread,
                "yes" if info.has_gpu_step else "no",
                info.deadlines,
                info.zones,
                f"{info.candidates:,}",
                f"{info.feasible:,}",
                n_front,
                budget,
                *per,
            ]
        )
    infos = [r[0] for r in rows]
    sizes = {}
    for i in infos:
        sizes[f"{i.n_components}×{i.n_machines}"] = (
            sizes.get(f"{i.n_components}×{i.n_machines}", 0) + 1
        )
    cfg = default_config(100)  # a budget of 100 shows the population rule
    short = [chr(ord("A") + i) for i in range(len(chosen))]
    text = "\n".join(
        [
            "# Placement search on generated instances vs their exhaustive fronts",
            "",
            "Commands (hypervolume figures, not timings: run without the bench lock under "
            "`nice -n 19` on a shared 2-core host with ~8 other busy processes, so the wall "
            "times below are inflated by the host's other work):",
            f"`nice -n 19 .venv/bin/python benchmarks/optimizer_generated.py --instances "
            f"{args.instances} --fronts-only --minutes 60` (rerun until every front is cached), "
            f"then `nice -n 19 .venv/bin/python benchmarks/optimizer_generated.py --instances "
            f"{args.instances} --seeds {args.seeds} --workers {args.workers}"
            + (f' --only "{args.only}"' if args.only else "")
            + "`",
            "",
            f"- {machine_line()}; host steal during the last search slice {steal:.2f} cores",
            f"- instances: {len(infos)} generated by `optimizer.instances.generate(seed)`, seeds "
            f"1–{len(infos)}; sizes (components×machines): "
            + ", ".join(f"{k} ×{v}" for k, v in sorted(sizes.items()))
            + ". Drawn: machines 2–4 and components 3–5 uniformly; machines from three "
            "archetypes (edge, rack, GPU box); price spread log-uniform 1.5–60×; CPU and RAM "
            "tightness (one instance of everything / all cores, all RAM) uniform 0.15–0.7 each; "
            "max replicas 1–3 per component; a request chain (Poisson 0.3–2 /s) and usually a "
            "periodic batch job (GPU work on trainer steps and 25 % of others); deadlines "
            "binding (≈ 0.9–2.5× the nominal work; 0.6–1.5× for batch) 50 %, slack 30 %, none "
            "20 %; one zone for all machines 30 %. Draws with more than 400,000 matrices to "
            "enumerate or fewer than 800 / more than 8,000 feasible allocations are redrawn "
            "(so small-and-tight draws are rarer than the uniform draws suggest: see the sizes).",
            f"- evaluation: {FIDELITY.describe()} (common random numbers); exhaustive fronts: "
            f"{sum(i.feasible for i in infos):,} simulations, {fronts_wall:.0f} s of chunk wall "
            f"time on {args.workers} processes, and the same allocations screened in "
            f"{screens_wall:.0f} s (cached in runs/bench/generated/). The tables were computed "
            "on the twin of 7823875; the twin changed since only for machines with a CPU quota "
            "(and its tick) and for batch steps with a `wait`, which generated instances do not "
            "have, so they were carried over after re-simulating 10 random entries of each "
            "instance's DES and screening tables with the current twin (240 + 240, all equal; "
            "instances 1–4's DES tables were recomputed whole with the current twin, equal to "
            "the carried-over ones except instance 2's, where of two cached versions differing "
            "in cost only the one the current twin reproduces is used, for DES and screens "
            "alike), besides the check below. Session 5 changed the screening engine (cold "
            "starts, longest-idle shared-queue workers: neither occurs here) and carried the "
            "tables to its source key again after 10 more random entries of each DES and "
            "screening table matched exactly",
            f"- searches read each allocation's criteria from the exhaustive tables (evaluation "
            f"is pure); {checked} random entries of each table (DES and screening) were "
            "re-simulated and matched exactly",
            f"- budget of every method: 5 % of the instance's feasible allocations, counted as "
            f"distinct allocations evaluated; {args.seeds} seeds per method and instance",
            "- what counts as an evaluation: a DES run of a distinct allocation (the reference "
            "twin at the search fidelity). The multi-fidelity methods also *screen* candidates "
            "with the screening twin (`twin.screen`, same model compiled, common random "
            "numbers): their search stops at 70 % of the DES budget or after 4 × budget "
            "screens, at most a quarter of each generation is DES-scored (those that could "
            "enter the front), then the end game screens 1 × budget one-move neighbours of the "
            "front and DES-scores the screening-only members of the final front ('equal cost': "
            "45 %, 2.5 × and 0.5 ×, so that DES runs plus screens at their measured cost stay "
            "near 5 %). 'Extreme polish' adds to the end game 1 × budget screens spent on whole "
            "one-move neighbourhoods of the front's largest hypervolume contributors "
            "(`optimizer.multifidelity.polish_extremes`). Only DES-scored allocations count "
            "in their front and HV. Screens are not free: over the exhaustive tables one screen "
            f"took {screen_cost:.3f} of a DES run's wall time ({screens_wall:.0f} s vs "
            f"{fronts_wall:.0f} s for the same allocations), and the 'cost in DES runs' column "
            "adds them at that rate, so the multi-fidelity methods' 5 % is DES runs, not cost. "
            "'Row sweep' (the default's end game, `optimizer.rowsweep`): 8 × budget screens "
            "spent on the row neighbourhoods of the front's largest hypervolume contributors — "
            "every other row (per-machine counts) of one component, the other components "
            "kept where they fit and moved to the machine with the most free CPU otherwise "
            "(≈ 50 allocations per parent on these sizes) — before the 1 × budget extreme "
            "polish. The default's settings are `MultiFidelity.for_budget(budget)`, what "
            "`mlops-twin optimize --max-evals budget` runs: its end game confirms at most what "
            "the search left of the budget (`des_budget`; when the final front has more "
            "screening-only members, those adding the most hypervolume to the DES-scored ones, "
            "`optimizer.multifidelity.hv_shortlist`, in rounds). Every other multi-fidelity row "
            "(and the 'previous default' row, session 4's default) confirms every member, and "
            "may overrun the budget.",
            "- outcomes reused: a search's outcome is cached under its table, method, seed and "
            "the optimizer's source. This run (`--only`) searched only the default again "
            "(session 5: the screening engine now models cold starts and hands shared-queue "
            "work to the worker idle longest; generated instances have neither, and the "
            "default's figures came out as in session 4's run); every other row, including "
            "the previous default's, is "
            "the newest cached outcome of its method from session 4's run on the same tables "
            "(code those methods run is unchanged: the budget cap is off for them). Their wall "
            "times are session 4's; the default's were measured in this run on 1 process at "
            "nice 19.",
            "- the default's search is `optimizer.ga.default_config(0.7 × budget)` with the "
            "population of the budget (NSGA-II, operators `placement` — machine-set sampling "
            "of allocations built to fit with stratified instance counts, matrix crossover, "
            "move/add/remove/evacuate/relocate moves — population budget/8 within 6–100), "
            "screened; at a budget of 100: "
            f"{cfg.describe()}; {MultiFidelity.for_budget(100).describe()}",
            f"- wall time of the whole search phase: {search_wall:.0f} s summed over "
            f"{len(outcomes)} searches (table lookups; resumable, run in slices), plus the "
            "tables above",
            "",
            "## HV ratio and IGD over all instances × seeds",
            "",
            markdown_table(
                [
                    "method",
                    "median HV ratio",
                    "worst HV ratio",
                    "mean HV ratio",
                    "runs < 0.97",
                    "median IGD",
                    "worst IGD",
                    "DES runs / budget (median / max)",
                    "screens, % of feasible (median / max)",
                    "cost in DES runs, % of exhaustive (median / max)",
                    "wall (s)",
                ],
                summary,
            ),
            "",
            "## Where each method loses: extremes of the front it misses",
            "",
            f"Runs (of {len(infos) * args.seeds}) whose best value of a criterion is more than "
            f"{MISS_TOL:.0%} of the true front's range worse than the true best; then the "
            "largest such gap (in units of that range).",
            "",
            markdown_table(
                [
                    "method",
                    *[f"misses {c}" for c in CRITERIA],
                    *[f"worst gap {c}" for c in CRITERIA],
                ],
                misses,
            ),
            "",
            "## Per instance (worst HV ratio over seeds)",
            "",
            "Methods: " + "; ".join(f"{k} = {m.label}" for k, m in zip(short, chosen, strict=True)),
            "",
            markdown_table(
                [
                    "seed",
                    "size",
                    "CPU tight",
                    "RAM tight",
                    "price spread",
                    "GPU step",
                    "deadlines",
                    "zones",
                    "matrices",
                    "feasible",
                    "front",
                    "budget",
                    *short,
                ],
                inst_rows,
            ),
            "",
            "## The default against the acceptance",
            "",
            "- median HV ratio ≥ 0.99 and worst ≥ 0.97 over 24 instances × 3 seeds: see the "
            "first row above. DES runs: the search stops at 0.7 × budget and the end game "
            "DES-scores what enters the front within what the search left, so no run of the "
            "default passes the budget (column 'DES runs / budget'). The previous default "
            "confirmed every member and passed it where the final front had more points than "
            "the budget allows (instance 6: a true front of 45 points, budget 41; up to 1.44 × "
            "the budget). The row sweep's screens are extra: the 'cost' column prices them at "
            "the measured screen cost.",
            "- memory: screening loads numba; `mlops-twin optimize` on small-placement.yaml "
            "(`--max-evals 60 --horizon 120`) peaked at 357 MB RSS against 247 MB with "
            "`--no-screen` (GNU time, maxrss).",
            "",
            "## Why instance 11 was hard, and what finds it",
            "",
            "Instance 11 (5 components × 4 machines, 1,155 feasible allocations; a request "
            "chain without deadline and a periodic GPU batch job trainer → prep with a binding "
            "deadline) has overruns 2, 3 or 4 over the horizon: on the true front the overruns "
            "axis spans one count, and the HV normalises it to [0, 1] like the continuous "
            "criteria. Where the trainer's instances go decides overruns and variance almost "
            "alone. Only one trainer row gives the fewest overruns *and* low variance: three "
            "instances, 2 on gpu1 + 1 on gpu3 (variance 81 against ≥ 136 for every other "
            "2-overrun allocation). It fits only if the model (2 cores) leaves gpu1 for gpu0 "
            "and the prep step sits on rack2: 3 of 1,155 allocations, which hold 63 % of the "
            "hypervolume (without them the front's HV is 0.374 of the true one). They are "
            "≥ 3 one-instance moves from the 2-overrun allocations the searches reach, and "
            "no intermediate is better than those (the trainer rows one move away have "
            "variance ≥ 136 or 3 overruns), so nothing leads a search there: only 10 of the "
            "1,155 allocations (7 besides the "
            "three) have one of them in their one-move neighbourhood (≈ 8 allocations each), "
            "so neither the GA's moves nor the one-move end game (extreme polish) get there "
            "except by luck — every method missed it on at least one seed. A row "
            "neighbourhood (one component moved to another row, the rest fitted around it; "
            "≈ 54 allocations per parent) contains one of them from 216 of the 1,155 "
            "allocations, including many 2-overrun ones the searches do reach. Sweeping the "
            "row neighbourhoods of the front's largest contributors finds the corner on all "
            "three seeds at 8 × budget screens (an exploratory run of the same code at "
            "4 × budget, not in the tables, still missed it on seed 2: the sweep ran out "
            "before it reached a parent whose row neighbourhood holds the corner). "
            "This is a property of the search, not of the instance: the generator and the "
            "HV reference are unchanged, and tests/optimizer/test_rowsweep.py checks both the "
            "neighbourhood fact and that the default search finds the corner on 3 seeds "
            "(screening twin as ground truth).",
        ]
    )
    write_result("optimizer_generated", text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=24, help="generated instances (seeds 1..n)")
    ap.add_argument("--seeds", type=int, default=3, help="search seeds per instance and method")
    ap.add_argument("--workers", type=int, default=2, help="processes (fronts and searches)")
    ap.add_argument(
        "--minutes",
        type=float,
        default=8.0,
        help="stop (fronts, or searches) after this; rerun to continue",
    )
    ap.add_argument("--fronts-only", action="store_true", help="only compute missing fronts")
    ap.add_argument(
        "--only",
        help="search only the methods whose label contains this; reuse the newest cached "
        "outcomes of the others",
    )
    ap.add_argument("--no-ablations", action="store_true", help="only the methods, no ablations")
    args = ap.parse_args()
    seeds = list(range(1, args.instances + 1))
    if not fronts(seeds, args.workers, args.minutes):
        sys.exit(3)
    if args.fronts_only:
        return
    report(args, seeds)


if __name__ == "__main__":
    main()
