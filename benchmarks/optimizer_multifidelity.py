"""Multi-fidelity vs DES-only NSGA-II on examples/edge-cloud.yaml: wall time and hypervolume.

Each (mode, seed, workers) search is one command, cached in
benchmarks/results/.optimizer_multifidelity/, so every locked chunk stays short:

    B="flock /work/bench.lock .venv/bin/python benchmarks/optimizer_multifidelity.py"
    $B --mode des --seed 1; $B --mode mf --seed 1; $B --mode mf --seed 1 --workers 1
    ... seeds 2 and 3 ...
    .venv/bin/python benchmarks/optimizer_multifidelity.py --report

Both modes run the same search (NSGA-II, the first-round matrix operators
``custom``, population 100, 50 generations, search fidelity 600 s × 1
replication, same seed) on a local Dask cluster. The operators are pinned
(the default became ``placement`` later, issue #21) so that every cached
run stays comparable: the current code reproduces the cached DES-only runs'
first generations bit for bit. The multi-fidelity search screens every
candidate and DES-scores those that could enter the front (capped); its end
game (:func:`optimizer.multifidelity.end_game`) screens one-move neighbours
of the front when asked (``--polish``) and DES-scores the final front. The
hypervolume of both DES-scored fronts is taken after normalising by the
ideal and nadir of their union (reference point 1.1).

Each multi-fidelity variant (``--variant NAME`` with its settings) is cached
and reported on its own, beside the same DES-only runs; ``first`` is the
first session's setting (DES share 0.1, no polish).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, markdown_table, write_result
from twin_screening import _cpu_jiffies, steal_since

from optimizer.distributed import evaluation_client
from optimizer.evaluation import Evaluator, Fidelity
from optimizer.ga import Search, SearchConfig, hypervolume, non_dominated
from optimizer.genome import Genome
from optimizer.multifidelity import (
    MultiFidelity,
    MultiFidelityEvaluator,
    end_game,
    screen_matrix,
)
from twin.load import load_deployment, load_scenario

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / "results" / ".optimizer_multifidelity"
SCENARIO = ROOT / "examples" / "edge-cloud.yaml"
BASE = ROOT / "examples" / "edge-cloud.deployment.yaml"


def run_one(
    mode: str,
    seed: int,
    workers: int,
    pop: int,
    gens: int,
    horizon: float,
    margin: float,
    des_share: float,
    polish: int = 0,
    polish_rounds: int = 4,
    variant: str = "first",
    confirm_max: int | None = None,
) -> Path:
    """One search; writes its DES-scored front, wall time and counts to the cache."""
    sc = load_scenario(SCENARIO)
    genome = Genome(sc, load_deployment(BASE))
    fid = Fidelity(None, horizon, 1, seed)
    config = SearchConfig(pop_size=pop, n_gen=gens, seed=seed, operators="custom")
    j0, load0, t0 = _cpu_jiffies(), os.getloadavg()[0], time.time()
    with evaluation_client(workers) as client:
        if mode == "mf":
            ev: Evaluator = MultiFidelityEvaluator(
                genome,
                fid,
                MultiFidelity(margin, des_share, polish, polish_rounds, confirm_max=confirm_max),
                client,
            )
            # Load the compiled screening engine (numba caches it on disk) outside the timing.
            screen_matrix(sc, genome.base, _any_matrix(genome), fid)
        else:
            ev = Evaluator(genome, fid, client)
        started = time.perf_counter()
        search = Search.start(config, ev)
        search.run(
            lambda g: print(
                f"  gen {g.gen}: {g.simulations} cand, HV {g.hv:.4f}, {g.time_s:.0f} s",
                file=sys.stderr,
            )
        )
        ended = end_game(search)
        wall = time.perf_counter() - started
    _, F, _ = search.front()
    out = {
        "mode": mode,
        "seed": seed,
        "workers": workers,
        "pop": pop,
        "gens": gens,
        "horizon_s": horizon,
        "wall_s": wall,
        "front_F": F.tolist(),
        "candidates": ev.screened if isinstance(ev, MultiFidelityEvaluator) else ev.simulations,
        "des_runs": ev.des_runs if isinstance(ev, MultiFidelityEvaluator) else ev.simulations,
        "confirmed_at_end": ended["confirmed"],
        "polished": ended["polished"],
        "variant": variant if mode == "mf" else None,
        "sim_cpu_s": ev.sim_cpu_s,
        "steal": steal_since(j0),
        # 1-min load average before and after, and when it ran: the lock keeps other timing
        # jobs off the host, not other helpers' unlocked nice-19 work
        "load_before": load0,
        "load_after": os.getloadavg()[0],
        "started_utc": time.strftime("%H:%M:%S", time.gmtime(t0)),
        "mf": ev.summary() if isinstance(ev, MultiFidelityEvaluator) else None,
        "des_cpu_per_run_s": _des_cpu(ev),
    }
    CACHE.mkdir(parents=True, exist_ok=True)
    name = mode if mode == "des" or variant == "first" else f"mf-{variant}"
    path = CACHE / f"{name}_seed{seed}_w{workers}.json"
    path.write_text(json.dumps(out))
    return path


def _any_matrix(genome: Genome) -> np.ndarray:
    from twin.deployment import allocation_matrix

    return allocation_matrix(genome.scenario, genome.base)


def _des_cpu(ev: Evaluator) -> float:
    """Mean CPU seconds of one DES run (the Dask task size)."""
    if isinstance(ev, MultiFidelityEvaluator):
        des = [ev.cache[k].cpu_s for k in ev.des_keys]
    else:
        des = [ev.cache[k].cpu_s for k in ev.order]
    return float(np.mean(des)) if des else float("nan")


def variant_of(run: dict) -> str:
    """The multi-fidelity variant of a cached run (runs before variants existed: ``first``)."""
    return run.get("variant") or "first"


def comparison(runs: list[dict], variant: str) -> tuple[list[str], float, float]:
    """Table of one multi-fidelity variant vs DES-only, seed by seed; (lines, worst speed-up,
    worst HV ratio)."""
    by = {(r["mode"], r["seed"], r["workers"], variant_of(r)): r for r in runs}
    rows, wall_ratios, hv_ratios = [], [], []
    for seed in sorted({r["seed"] for r in runs}):
        des, mf = by.get(("des", seed, 2, "first")), by.get(("mf", seed, 2, variant))
        if des is None or mf is None:
            continue
        older = des.get("session") is not None  # a baseline from an earlier session
        Fd, Fm = np.array(des["front_F"]), np.array(mf["front_F"])
        both = np.vstack([Fd, Fm])
        front = both[non_dominated(both)]
        lo, hi = front.min(axis=0), front.max(axis=0)
        hv_d, hv_m = hypervolume(Fd, lo, hi), hypervolume(Fm, lo, hi)
        wall_ratios.append(des["wall_s"] / mf["wall_s"])
        hv_ratios.append(hv_m / hv_d)
        rows.append(
            [
                f"{seed}{' †' if older else ''}",
                f"{des['wall_s']:.0f}",
                f"{mf['wall_s']:.0f}",
                f"{wall_ratios[-1]:.1f}×",
                f"{des['sim_cpu_s'] / mf['sim_cpu_s']:.1f}×",
                des["candidates"],
                mf["candidates"],
                mf.get("polished", 0),
                f"{mf['des_runs']} ({mf['des_runs'] / max(mf['candidates'], 1):.0%})",
                mf["confirmed_at_end"],
                f"{hv_d:.4f}",
                f"{hv_m:.4f}",
                f"{hv_ratios[-1]:.4f}",
                f"{des['steal']:.1%} / {mf['steal']:.1%}",
                f"{_load(des)} / {_load(mf)}",
            ]
        )
    if not rows:
        return [], float("nan"), float("nan")
    settings = next(r["mf"] for r in runs if r["mode"] == "mf" and variant_of(r) == variant)
    note = (
        [
            "† DES-only baseline from the third session (no run of this session fits the "
            "lock budget): measured under the lock but without the autogroup priority (other "
            "sessions' nice-19 work shared the cores with it), so its wall time — and this "
            "row's speed-up — is not comparable with the other rows'; its front (deterministic "
            "for a seed) is.",
            "",
        ]
        if any(str(r[0]).endswith("†") for r in rows)
        else []
    )
    lines = [
        f"## Variant `{variant}`: DES share cap {settings['des_share']}, margin "
        f"{settings['margin']}, end-game polish {settings.get('polish_screens', 0)} screens "
        f"in {settings.get('polish_rounds', 0) if settings.get('polish_screens') else 0} rounds"
        + (
            f", final front confirmed by at most {settings['confirm_max']} DES runs (shortlist)"
            if settings.get("confirm_max") is not None
            else ", every final-front member confirmed"
        ),
        "",
        markdown_table(
            [
                "seed",
                "DES-only wall s",
                "multi-fidelity wall s",
                "speed-up",
                "simulation CPU ratio",
                "DES-only candidates",
                "MF candidates screened",
                "of which end-game polish",
                "MF DES runs",
                "DES-scored at end",
                "HV DES-only",
                "HV multi-fidelity",
                "HV ratio",
                "steal des / mf",
                "load avg des / mf (start→end, UTC start)",
            ],
            rows,
        ),
        "",
        f"Over {len(rows)} seed(s): worst speed-up {min(wall_ratios):.1f}× (goal ≥ 5×: "
        f"{'met' if min(wall_ratios) >= 5 else 'NOT met'}); worst HV ratio "
        f"{min(hv_ratios):.4f} (goal ≥ 0.99: {'met' if min(hv_ratios) >= 0.99 else 'NOT met'}).",
        "",
        *note,
    ]
    return lines, min(wall_ratios), min(hv_ratios)


def _load(run: dict) -> str:
    """The 1-min load average at a run's start and end, and its start time (runs made before
    these were recorded: '?')."""
    if "load_before" not in run:
        return "?"
    return f"{run['load_before']:.1f}→{run['load_after']:.1f} ({run['started_utc']})"


def report() -> Path:
    """Markdown from every cached run."""
    runs = [json.loads(p.read_text()) for p in sorted(CACHE.glob("*.json"))]
    have = {r["seed"] for r in runs if r["mode"] == "des"}
    for p in sorted((CACHE / "session-3").glob("des_*.json")):
        old = json.loads(p.read_text())
        if old["seed"] not in have:  # no DES-only run of this session for that seed
            runs.append({**old, "session": 3})
    lines = [
        "# Multi-fidelity vs DES-only NSGA-II on edge-cloud",
        "",
        f"- {machine_line()}",
        "- NSGA-II, first-round matrix operators (`custom`, pinned), population 100, 50 "
        "generations; search fidelity 600 s × 1 replication; 2 Dask workers (LocalCluster); "
        "same seeds in both modes. The multi-fidelity search screens every candidate with "
        "twin.screen and DES-scores at most the capped share of each generation, among those "
        "that could enter the front, nearest its ideal point; its end game screens one-move "
        "neighbours of the front (polish), then DES-scores the final front: every "
        "screening-only member until the front is all DES (earlier variants), or — variant "
        "`shortlist` — only the members that add the most hypervolume to the DES-scored ones "
        "(lazy-greedy hypervolume subset selection, `optimizer.multifidelity.hv_shortlist`), "
        "at most `confirm_max` DES runs, half the remaining budget per round. The budget rule "
        "here: `confirm_max` = the population size, i.e. the end game costs at most one "
        "DES-only generation. The front compared is the DES-scored candidates' non-dominated "
        "set in both modes.",
        "- Hypervolume: both DES-scored fronts normalised by the ideal and nadir of their "
        "union, reference point 1.1. The simulation CPU ratio (DES-only's CPU in simulations "
        "over multi-fidelity's, screening included) does not move with the shared host's load "
        "as wall time does.",
        "- Host: 2 cores shared by seven helpers. The bench lock keeps other timing jobs off, "
        "not the helpers' unlocked `nice -n 19` work, and with the kernel's autogroup "
        "scheduling (`/proc/sys/kernel/sched_autogroup_enabled` = 1) a process's nice value "
        "only ranks it within its own session: a nice-19 job in another session takes as much "
        "CPU as a locked run (measured: locked DES workers at 30 % of a core each beside three "
        "nice-19 jobs at 35–40 %). Runs of this session (with a load column) therefore ran "
        "in their own session with autogroup nice −10 (`setsid`, `echo -10 > "
        "/proc/self/autogroup`), so the locked run gets the cores first; the load average "
        "still counts the waiting unlocked jobs.",
        "- Every run in a table was made on the code after the three-matrix merge (execution "
        "cost, on-demand metering in the twin), under the bench lock. The third session's "
        "runs (DES-only seeds 1–2, variant `polish`) are kept in "
        "`.optimizer_multifidelity/session-3/`; the earlier sessions' (rental cost: fronts "
        "not comparable) in `pre-matrices/`, with the LocalCluster 1- vs 2-worker scale-out "
        "measurement in git history.",
        "",
    ]
    variants = sorted(
        {variant_of(r) for r in runs if r["mode"] == "mf"}, key=lambda v: (v != "first", v)
    )
    for v in variants:
        lines += comparison(runs, v)[0]
    scale = sorted(
        (r for r in runs if r["mode"] == "mf" and variant_of(r) == "first"),
        key=lambda r: (r["seed"], r["workers"]),
    )
    pairs = [
        (a, b)
        for a in scale
        for b in scale
        if a["seed"] == b["seed"] and a["workers"] == 1 and b["workers"] == 2
    ]
    if pairs:
        lines += ["## Scale-out (multi-fidelity search, variant `first`, LocalCluster)", ""]
        srows = []
        for a, b in pairs:
            srows.append(
                [
                    a["seed"],
                    f"{a['wall_s']:.0f}",
                    f"{b['wall_s']:.0f}",
                    f"{a['wall_s'] / b['wall_s']:.2f}×",
                    f"{b['des_cpu_per_run_s']:.3f}",
                    f"{b['mf']['screen_wall_s']:.1f}",
                    b["des_runs"],
                ]
            )
        lines += [
            markdown_table(
                [
                    "seed",
                    "1 worker wall s",
                    "2 workers wall s",
                    "speed-up",
                    "CPU s per DES task",
                    "screening wall s (chunked over workers)",
                    "DES tasks",
                ],
                srows,
            ),
            "",
            *projection(pairs[0][0], pairs[0][1]),
        ]
    return write_result("optimizer_multifidelity", "\n".join(lines) + "\n")


def projection(one: dict, two: dict, sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 64)) -> list[str]:
    """Expected wall time on w workers from the measured task sizes (a model, not a run).

    Per generation: the screens (one chunk per worker), then ⌈DES tasks / w⌉ rounds of DES
    tasks, plus a per-round overhead fitted from the 1- and 2-worker runs.
    """
    gens = one["gens"] + 1  # the final front's confirmation is one more round
    screen_cpu = one["mf"]["screen_wall_s"] / gens  # one worker: screening is serial
    des_per_gen = one["des_runs"] / gens
    t_des = one["des_cpu_per_run_s"]
    fixed = one["wall_s"] - one["mf"]["screen_wall_s"] - one["mf"]["des_wall_s"]
    over_s = max(0.0, (two["mf"]["screen_wall_s"] / gens - screen_cpu / 2))
    over_d = max(0.0, (two["mf"]["des_wall_s"] / gens - np.ceil(des_per_gen / 2) * t_des))

    def wall(w: int) -> float:
        per = screen_cpu / w + over_s + np.ceil(des_per_gen / w) * t_des + over_d
        return fixed + gens * per

    des_only = one["des_cpu_per_run_s"] * one["pop"]  # CPU of one DES-only generation
    rows = [
        [
            w,
            f"{wall(w):.0f}",
            f"{wall(1) / wall(w):.1f}×",
            f"{gens * (np.ceil(one['pop'] / w) * t_des + over_d):.0f}",
        ]
        for w in sizes
    ]
    return [
        "Expected curve (model from the measured task sizes: screening "
        f"{1e3 * screen_cpu / one['pop']:.1f} ms per candidate, DES task {t_des:.3f} s CPU, "
        f"{des_per_gen:.1f} DES tasks per generation, per-round overheads "
        f"{over_s:.3f} s + {over_d:.3f} s, {fixed:.1f} s outside the rounds):",
        "",
        markdown_table(
            ["workers", "multi-fidelity wall s", "speed-up vs 1", "DES-only wall s (same model)"],
            rows,
        ),
        "",
        "The multi-fidelity search stops scaling near "
        f"{int(np.ceil(des_per_gen))} workers (one round of DES tasks per generation), where "
        f"a generation costs one DES task plus the overheads; DES-only, at {des_only:.1f} s of "
        "CPU per generation, keeps scaling to about one worker per candidate. On a large "
        "cluster the two meet; the screening pays most on few workers or at a costly search "
        "fidelity, where each DES task is seconds and a screen stays ~20× cheaper.",
        "",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=["des", "mf"])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--pop", type=int, default=100)
    ap.add_argument("--gens", type=int, default=50)
    ap.add_argument("--horizon", type=float, default=600.0)
    ap.add_argument("--margin", type=float, default=0.0)
    ap.add_argument("--des-share", type=float, default=0.1)
    ap.add_argument("--polish", type=int, default=0, help="end-game screens (0: none)")
    ap.add_argument("--polish-rounds", type=int, default=4)
    ap.add_argument("--variant", default="first", help="name of the multi-fidelity settings")
    ap.add_argument(
        "--confirm-max",
        type=int,
        default=None,
        help="end game's DES runs on the final front (default: every member)",
    )
    ap.add_argument("--report", action="store_true")
    a = ap.parse_args()
    if a.mode:
        print(
            run_one(
                a.mode,
                a.seed,
                a.workers,
                a.pop,
                a.gens,
                a.horizon,
                a.margin,
                a.des_share,
                a.polish,
                a.polish_rounds,
                a.variant,
                a.confirm_max,
            )
        )
    if a.report or not a.mode:
        print(report())


if __name__ == "__main__":
    main()
