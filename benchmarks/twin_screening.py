"""Screening fidelity vs the SimPy twin: rank agreement over random deployments, and speed.

Run (each case is one locked chunk; results are cached in
benchmarks/results/.twin_screening/, ``--report`` writes the markdown):

    flock /work/bench.lock .venv/bin/python benchmarks/twin_screening.py --case edge-cloud
    flock /work/bench.lock .venv/bin/python benchmarks/twin_screening.py --case digits
    flock /work/bench.lock .venv/bin/python benchmarks/twin_screening.py --case ipa-video
    flock /work/bench.lock .venv/bin/python benchmarks/twin_screening.py --speed
    .venv/bin/python benchmarks/twin_screening.py --report

1. ``--case``: ``--n`` random feasible deployments (random allocation; for the
   pipelines also a random variant and batch per stage) are scored by both
   fidelities with the same horizon, replications and seed; Spearman's rank
   correlation per criterion, and the relative error of the mean time of
   deployments whose bottleneck utilisation ρ is below 0.9.
2. ``--speed``: one evaluation of examples/edge-cloud.yaml (1 h × 10
   replications, the hand-made deployment) by each fidelity, one core.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, markdown_table, write_result

from optimizer.genome import Genome
from optimizer.operators import random_allocation
from twin.criteria import CRITERIA, pipeline_capacity_rps
from twin.deployment import check
from twin.evaluate import evaluate
from twin.load import load_deployment, load_scenario
from twin.screen import screen
from twin.spec import Deployment, Scenario, StageConfig
from twin.workload import rate_series

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / "results" / ".twin_screening"
CASES = {
    # name: scenario, base deployment, workload, horizon (s), replications, request process
    "edge-cloud": ("edge-cloud.yaml", "edge-cloud.deployment.yaml", None, 3600.0, 3, "inference"),
    "digits": (
        "digits-pipeline.yaml",
        "digits-pipeline.deployment.yaml",
        "steady-high",
        60.0,
        2,
        None,
    ),
    "ipa-video": ("pipelines/ipa-video.yaml", None, "steady-high", 120.0, 2, None),
}


def _cpu_jiffies() -> tuple[int, int]:
    """(steal, total) jiffies of the host from /proc/stat (zeros off Linux)."""
    try:
        v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0, 0
    return v[7], sum(v)


def steal_since(start: tuple[int, int]) -> float:
    """Fraction of the host's CPU time stolen by the hypervisor since ``start``."""
    s, t = _cpu_jiffies()
    return (s - start[0]) / (t - start[1]) if t > start[1] else 0.0


def random_deployment(
    sc: Scenario, genome: Genome, rng: np.random.Generator, stages: bool
) -> Deployment | None:
    """A random allocation (and stage configs when ``stages``); None if infeasible."""
    dep = genome.deployment(genome.encode(random_allocation(genome, rng)))
    if stages:
        cfg = {}
        for c in sc.components:
            if c.is_stage:
                v = c.variants[int(rng.integers(len(c.variants)))].name
                b = int(rng.choice([b for b in (1, 2, 4, 8, 16, 32) if b <= c.max_batch]))
                cfg[c.name] = StageConfig(variant=v, batch=b)
        dep = dep.model_copy(update={"stages": cfg})
    return None if check(sc, dep) else dep


def utilisation(
    sc: Scenario, dep: Deployment, workload: str | None, horizon_s: float, process: str | None
) -> float:
    """Offered load over the bottleneck stage's capacity of the request pipeline."""
    proc = process or next(p.name for p in sc.processes if p.kind == "request")
    if workload is None:
        arr = sc.process(proc).arrivals
        rate = getattr(arr, "rate_per_s", float("nan"))
    else:
        rate = float(rate_series(sc.workload(workload), horizon_s).mean())
    cap = pipeline_capacity_rps(sc, dep, proc)
    return rate / cap if cap > 0 else float("inf")


def _des(args: tuple) -> tuple[list[float], float]:
    sc, dep, w, h, reps = args
    ev = evaluate(sc, dep, w, h, reps, seed=1, check=False)
    return list(ev.criteria()), ev.wall_s


def run_case(name: str, n: int, workers: int) -> Path:
    """Score ``n`` random feasible deployments with both fidelities; cache a CSV."""
    scen, base, w, h, reps, proc = CASES[name]
    sc = load_scenario(ROOT / "examples" / scen)
    dep0 = load_deployment(ROOT / "examples" / base) if base else None
    genome = Genome(sc, dep0)
    j0 = _cpu_jiffies()
    rng = np.random.default_rng(20)
    deps: list[Deployment] = []
    tries = 0
    while len(deps) < n and tries < 200 * n:
        tries += 1
        d = random_deployment(sc, genome, rng, stages=dep0 is None or name != "edge-cloud")
        if d is not None:
            deps.append(d)
    screen(sc, deps[0], w, h, 1)  # compile (numba caches to disk) outside the timing
    rows = []
    for i, d in enumerate(deps):
        ev = screen(sc, d, w, h, reps, seed=1, check=False)
        rows.append(
            {
                "i": i,
                **{f"screen_{c}": v for c, v in zip(CRITERIA, ev.criteria(), strict=True)},
                "screen_s": ev.wall_s,
                "rho": utilisation(sc, d, w, h, proc),
            }
        )
    started = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        des = list(pool.map(_des, [(sc, d, w, h, reps) for d in deps], chunksize=4))
    for row, (crit, wall) in zip(rows, des, strict=True):
        row.update({f"des_{c}": v for c, v in zip(CRITERIA, crit, strict=True)})
        row["des_s"] = wall
    CACHE.mkdir(parents=True, exist_ok=True)
    out = CACHE / f"{name}.csv"
    frame = pd.DataFrame(rows)
    frame.attrs["des_wall_s"] = time.perf_counter() - started
    frame.to_csv(out, index=False)
    (CACHE / f"{name}.json").write_text(
        json.dumps(
            {
                "n": len(deps),
                "tries": tries,
                "workload": w,
                "horizon_s": h,
                "replications": reps,
                "des_pool_wall_s": time.perf_counter() - started,
                "workers": workers,
                "steal": steal_since(j0),
            }
        )
    )
    return out


def run_speed(repeats: int) -> Path:
    """Screen and DES one edge-cloud evaluation (1 h × 10 replications) on one core."""
    j0 = _cpu_jiffies()
    sc = load_scenario(ROOT / "examples" / "edge-cloud.yaml")
    dep = load_deployment(ROOT / "examples" / "edge-cloud.deployment.yaml")
    screen(sc, dep, None, 3600.0, 1)
    t_screen = min(_timed(lambda: screen(sc, dep, None, 3600.0, 10)) for _ in range(repeats))
    t_des = min(_timed(lambda: evaluate(sc, dep, None, 3600.0, 10)) for _ in range(repeats))
    CACHE.mkdir(parents=True, exist_ok=True)
    out = CACHE / "speed.json"
    out.write_text(
        json.dumps(
            {"screen_s": t_screen, "des_s": t_des, "repeats": repeats, "steal": steal_since(j0)}
        )
    )
    return out


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def report() -> Path:
    """Markdown from the cached cases and speed run."""
    lines = ["# Screening fidelity vs the SimPy twin", "", machine_line(), ""]
    sp = CACHE / "speed.json"
    if sp.is_file():
        s = json.loads(sp.read_text())
        ok = "met" if s["screen_s"] <= 0.2 else "NOT met"
        lines += [
            "## Speed: one evaluation of examples/edge-cloud.yaml, 1 h × 10 replications, one core",
            "",
            markdown_table(
                ["fidelity", f"wall s (best of {s['repeats']})", "speed-up"],
                [
                    ["SimPy twin", f"{s['des_s']:.3f}", "1"],
                    [
                        "screening (numba)",
                        f"{s['screen_s']:.3f}",
                        f"{s['des_s'] / s['screen_s']:.1f}×",
                    ],
                ],
            ),
            "",
            f"Goal ≤ 0.2 s per screening evaluation: {ok}. Host steal during the run: "
            f"{s['steal']:.1%}.",
            "",
        ]
    rows = []
    worst = 1.0
    for name in CASES:
        f = CACHE / f"{name}.csv"
        if not f.is_file():
            continue
        meta = json.loads((CACHE / f"{name}.json").read_text())
        d = pd.read_csv(f)
        cells = [
            name,
            f"{meta['n']}",
            f"{meta['workload'] or 'own arrivals'}",
            f"{meta['horizon_s']:g} s × {meta['replications']}",
        ]
        for c in CRITERIA:
            a, b = d[f"screen_{c}"].to_numpy(), d[f"des_{c}"].to_numpy()
            if np.ptp(b) == 0 and np.ptp(a) == 0:
                cells.append("— (constant)")
                continue
            rho = stats.spearmanr(a, b).statistic
            worst = min(worst, rho)
            cells.append(f"{rho:.3f}")
        low = d[d["rho"] < 0.9]
        err = (low["screen_time_mean_s"] - low["des_time_mean_s"]).abs() / low["des_time_mean_s"]
        cells += [
            f"{len(low)}",
            f"{err.max():.1%}" if len(low) else "—",
            f"{err.mean():.1%}" if len(low) else "—",
            f"{d['des_s'].sum() / d['screen_s'].sum():.0f}×",
        ]
        rows.append(cells)
    if rows:
        lines += [
            "## Rank agreement over random feasible deployments (same horizon, replications, seed)",
            "",
            markdown_table(
                ["scenario", "deployments", "workload", "horizon × reps"]
                + [f"Spearman {c}" for c in CRITERIA]
                + ["n with ρ<0.9", "max |err| mean time (ρ<0.9)", "mean |err|", "CPU ratio"],
                rows,
            ),
            "",
            f"Worst Spearman over all criteria: {worst:.3f} (goal ≥ 0.95: "
            f"{'met' if worst >= 0.95 else 'NOT met'}).",
            "",
        ]
    return write_result("twin_screening", "\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", choices=list(CASES))
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--speed", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--report", action="store_true")
    a = ap.parse_args()
    if a.case:
        print(run_case(a.case, a.n, a.workers))
    if a.speed:
        print(run_speed(a.repeats))
    if a.report or not (a.case or a.speed):
        print(report())


if __name__ == "__main__":
    main()
