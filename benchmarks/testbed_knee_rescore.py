"""Earlier knee sweeps re-scored with the fitted quota check, before and after, per level.

Each sweep's levels are scored as ``testbed_knee.py report`` does (the held-out twin
of a level is calibrated on the sweep's other levels, simulated 8 seeds × the runs'
length at the level's mean offered rate; error % on the mean of the usable runs), twice:
*before* with the quota checked at the 4-ms scheduler tick (``KNEE_TICK=4``, the twin
until now) and *after* with the check interval fitted on the other levels' stall shares
(:mod:`calibrate.enforce`). The testbed's own stall share of the bottleneck per level and
the fitted interval are shown beside. Nothing is run on the testbed.

Usage (no lock; the twin only; each sweep's folder gets ``twin-rho*/quota_tick.json``)::

    python benchmarks/testbed_knee_rescore.py runs/knee-s7quiet runs/knee-s6long ...

The result: ``benchmarks/results/testbed_knee_rescore8.md`` (``--result`` for another).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import testbed_knee as knee
from _report import machine_line, markdown_table, write_result

from calibrate.enforce import run_stall_share
from twin.criteria import stage_capacity_rps
from twin.sim import simulate_replication
from twin.spec import SteadyWorkload

ROOT = Path(__file__).resolve().parents[1]
ARMS = {"before": "4", "after": "fit"}
QS = ("p50", "p95", "p99")


def _twin(name: str, rho: float, runs: pd.DataFrame, seeds: int) -> dict:
    """The held-out twin's p50/p95/p99 (ms), answers/s over the second half, its
    capacity and its quota check (ms), as ``testbed_knee.twin_level``'s ``twin_*``."""
    held = knee.held_out_twin(name, rho, runs)
    sc, dep = held["twin"], held["deployment"]
    wl = SteadyWorkload(kind="steady", name="knee", rate_per_s=held["rate"])
    horizon = float(runs[runs["rho"] == rho]["duration"].mean())
    lat, done = [], 0
    for seed in range(seeds):
        r = simulate_replication(sc, dep, wl, horizon, seed, visits=False).requests
        lat.append((r["t_end"] - r["t_arrive"]).dropna().to_numpy() * 1e3)
        done += int(((r["t_end"] > horizon / 2) & (r["t_end"] <= horizon)).sum())
    p = np.percentile(np.concatenate(lat), [50, 95, 99])
    return {
        **dict(zip(QS, p, strict=True)),
        "rps": done / (horizon / 2 * seeds),
        "capacity": stage_capacity_rps(sc, dep, knee.BOTTLENECK),
        "tick_ms": held["tick_ms"],
    }


def sweep(folder: Path, seeds: int) -> list[str]:
    """Markdown: every deployment of the sweep in ``folder``, before and after."""
    knee.OUT = folder
    parts = [f"## {folder.name} ({os.path.relpath(folder, ROOT)})", ""]
    for name in knee.DEPLOYMENTS:
        runs = knee._levels(name)
        if runs.empty:
            continue
        rows, worst, sat = [], {a: dict.fromkeys(QS, 0.0) for a in ARMS}, []
        for rho, g in runs.groupby("rho"):
            ok = g[g["usable"]]
            m = ok if len(ok) else g
            tb = {q: float(m[q].mean()) for q in QS}
            stall = np.nanmean(
                [run_stall_share(folder / name / r, knee.BOTTLENECK) for r in g["run"]]
            )
            tw = {}
            for arm, tick in ARMS.items():
                os.environ["KNEE_TICK"] = tick
                tw[arm] = _twin(name, rho, runs, seeds)
            err = {a: {q: 100 * (tw[a][q] / tb[q] - 1) for q in QS} for a in ARMS}
            if rho <= 0.9 and len(ok):
                for a in ARMS:
                    for q in QS:
                        worst[a][q] = max(worst[a][q], abs(err[a][q]))
            if rho >= 1.0:
                served = float(g["served_2nd_half"].mean())
                b, f = tw["before"]["rps"], tw["after"]["rps"]
                sat.append(
                    f"ρ {rho:.1f}: testbed {served:.1f}/s, twin before {b:.1f}/s "
                    f"({100 * (b / served - 1):+.1f} %), after {f:.1f}/s "
                    f"({100 * (f / served - 1):+.1f} %)"
                )
            rows.append(
                [
                    f"{rho:.1f}{'' if len(ok) else '*'}",
                    f"{len(ok)}/{len(g)}",
                    "/".join(f"{tb[q]:.1f}" for q in QS),
                    f"{100 * stall:.0f}",
                    "/".join(f"{err['before'][q]:+.1f}" for q in QS),
                    "/".join(f"{err['after'][q]:+.1f}" for q in QS),
                    f"{tw['after']['tick_ms']:g}",
                    f"{g['steal_cores'].mean():.3f}",
                ]
            )
        parts += [
            f"### {name}",
            "",
            markdown_table(
                [
                    "ρ",
                    "runs used / all",
                    "testbed p50/p95/p99 ms",
                    "testbed stalled %",
                    "before: error % p50/p95/p99 (check at the 4-ms tick)",
                    "after: error % p50/p95/p99 (fitted check)",
                    "fitted check ms",
                    "steal cores",
                ],
                rows,
            ),
            "",
            *(
                f"- worst |error| at ρ ≤ 0.9, {a}: p50 {worst[a]['p50']:.1f} %, p95 "
                f"{worst[a]['p95']:.1f} %, p99 {worst[a]['p99']:.1f} %"
                for a in ARMS
            ),
            *(f"- saturation {s}" for s in sat),
            "",
        ]
    return parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("sweeps", type=Path, nargs="+", help="knee sweep folders (run folders)")
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--result", default="testbed_knee_rescore8")
    a = ap.parse_args()
    parts = [
        "# Knee sweeps re-scored: the quota checked at the 4-ms tick (before) vs the "
        "check interval fitted on the other levels' stall shares (after)",
        "",
        f"- {machine_line()}",
        "- command: `python benchmarks/testbed_knee_rescore.py "
        + " ".join(os.path.relpath(s, ROOT) for s in a.sweeps)
        + f" --seeds {a.seeds}` (no lock: the twin only)",
        "- each level's twin held out (calibrated on the sweep's other levels), "
        f"{a.seeds} seeds × the runs' length; error % = (twin − testbed) / testbed on the "
        "mean of the usable runs (* = none usable: all runs); testbed stalled % = the "
        "bottleneck's items whose service exceeds the run's 25th percentile + 1.5 ms",
        "",
    ]
    for s in a.sweeps:
        parts += sweep(s.resolve(), a.seeds)
        write_result(a.result, "\n".join(parts))  # what is done so far survives a crash
    print(json.dumps({"result": a.result}), file=sys.stderr)


if __name__ == "__main__":
    main()
