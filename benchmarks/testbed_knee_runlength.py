"""How long must a knee run be for its p95 to be known within ±5 %, and how much does a
small error in the capacity move it?

No load, no lock: it reads knee run folders (``benchmarks/testbed_knee.py run``) and runs
the held-out twin of a sweep (calibrated on the other levels' runs, as the knee report).

* **Run length (twin, Monte Carlo).** At each level, ``--seeds`` independent twin runs
  per length T, each starting with empty queues like a testbed run. Per T: the 90 %
  interval of one run's p95 (5th–95th percentile over the seeds) as a half-width in %
  of its median, and the same for the mean of two runs (the knee report's figure).
  A power law through the half-widths (least squares in log–log) gives the T at which
  the half-width reaches ±5 %.
* **Sensitivity to the capacity.** p95 of long twin runs at the level's rate × (1 ± δ):
  the % change of p95 per % change of ρ. A twin whose capacity is off by ε % is off in
  p95 by about this elasticity × ε, however long the runs.
* **The testbed's own runs.** Per run: the p95 over the whole run and over consecutive
  12-s windows (as long as the earlier sweeps' runs), and each run's capacity (the
  encoder node's CPU per item: a slower host hour shows here before it shows in latency).
* For reference, Whitt's planning rule for an M/M/1 queue's mean sojourn time:
  T ≈ z² · 2(1+ρ) / (ρ (1−ρ)² ε² μ) seconds for a relative half-width ε at z = 1.645.

Usage::

    python benchmarks/testbed_knee_runlength.py --runs runs/knee-s4 --levels 0.6,0.8,0.9 \\
        --testbed runs/knee-s6long

The result: ``benchmarks/results/testbed_knee_runlength.md`` (``--result`` renames it).
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
from testbed_knee_noise import _allocation, cpu_row

from twin.sim import simulate_replication
from twin.spec import SteadyWorkload

ROOT = Path(__file__).resolve().parents[1]
LENGTHS_S = (12.0, 30.0, 60.0, 120.0, 240.0)
TARGET_PCT = 5.0
Z90 = 1.645
WINDOW_S = 12.0


def _p95(sc, dep, rate: float, horizon_s: float, seed: int) -> float:
    wl = SteadyWorkload(kind="steady", name="knee", rate_per_s=rate)
    r = simulate_replication(sc, dep, wl, horizon_s, seed, visits=False).requests
    lat = (r["t_end"] - r["t_arrive"]).dropna().to_numpy() * 1e3
    return float(np.percentile(lat, 95))


def _half_width(x: np.ndarray) -> float:
    lo, mid, hi = np.percentile(x, [5, 50, 95])
    return 100 * (hi - lo) / 2 / mid


def run_length(sc, dep, rate: float, seeds: int) -> dict:
    """Half-widths (%) of one run's p95 and of the mean of two, per length; the fitted
    length (s) at which each reaches TARGET_PCT."""
    rng = np.random.default_rng(0)
    rows = []
    for t in LENGTHS_S:
        p95 = np.array([_p95(sc, dep, rate, t, 1000 + s) for s in range(seeds)])
        pairs = p95[rng.integers(0, seeds, (4000, 2))].mean(axis=1)
        rows.append(
            {
                "T": t,
                "median": float(np.median(p95)),
                "one": _half_width(p95),
                "two": _half_width(pairs),
            }
        )
    df = pd.DataFrame(rows)
    need = {}
    for col in ("one", "two"):
        b, a = np.polyfit(np.log(df["T"]), np.log(df[col]), 1)
        # b < 0: the half-width shrinks as T^b; the length where it reaches the target
        need[col] = float(np.exp((np.log(TARGET_PCT) - a) / b)) if b < 0 else float("inf")
        need[f"{col}_slope"] = float(b)
    return {"table": df, "need": need}


def elasticity(sc, dep, rate: float, delta: float, horizon_s: float, seeds: int) -> float:
    """% change of p95 per % change of the offered rate around ``rate`` (long runs)."""
    lo = np.mean([_p95(sc, dep, rate * (1 - delta), horizon_s, 2000 + s) for s in range(seeds)])
    hi = np.mean([_p95(sc, dep, rate * (1 + delta), horizon_s, 2000 + s) for s in range(seeds)])
    return float(np.log(hi / lo) / np.log((1 + delta) / (1 - delta)))


def whitt_s(rho: float, capacity_rps: float, eps: float = TARGET_PCT / 100) -> float:
    """Whitt's M/M/1 run length (s) for a relative half-width ``eps`` of the mean sojourn."""
    return Z90**2 * 2 * (1 + rho) / (rho * (1 - rho) ** 2 * eps**2 * capacity_rps)


def testbed_runs(root: Path, levels: tuple[float, ...]) -> list[list[str]]:
    """Per run of ``root/default`` at ``levels``: length, p95 of the whole run, p95 per
    12-s window, encoder node CPU per item (ms) and steal (cores)."""
    stage, node = _allocation(root / "default" / "deployment.yaml")
    out = []
    for f in sorted((root / "default").glob("rho*-*/summary.json")):
        rho = float(f.parent.name[3:].split("-")[0])
        if rho not in levels:
            continue
        s = json.loads(f.read_text())
        r = pd.read_parquet(f.parent / "requests.parquet", columns=["t_arrive", "t_end", "ok"])
        r = r[r["ok"]]
        ms = 1e3 * (r["t_end"] - r["t_arrive"])
        t = r["t_arrive"] - r["t_arrive"].min()
        windows = [
            np.percentile(ms[(t >= a) & (t < a + WINDOW_S)], 95)
            for a in np.arange(0, s["duration_s"] - WINDOW_S + 1e-9, WINDOW_S)
        ]
        cpu = cpu_row(f.parent, stage, node)
        out.append(
            [
                f.parent.name,
                f"{s['duration_s']:.0f}",
                f"{s['offered_rps']:.1f}",
                f"{np.percentile(ms, 95):.1f}",
                " / ".join(f"{w:.0f}" for w in windows),
                f"{cpu.get('node ms/item', float('nan')):.3f}",
                f"{knee._steal(f.parent):.4f}",
            ]
        )
    return out


def error_by_length(root: Path, levels: tuple[float, ...], seeds: int = 8) -> list[list[str]]:
    """The held-out twin's p50/p95/p99 error (%) on the first T s of each long run of
    ``root/default``, the twin simulated T s per seed (``seeds`` seeds), for T = 12 s,
    30 s and the whole run: does the error shrink as the runs get longer?"""
    knee.OUT = root
    runs = knee._levels("default")
    out = []
    for rho in levels:
        level = runs[runs["rho"] == rho]
        if level.empty:
            continue
        held = knee.held_out_twin("default", rho, runs)
        full = float(level["duration"].min())
        tb = []
        for run in level["run"]:
            r = pd.read_parquet(root / "default" / run / "requests.parquet")
            r = r[r["ok"]]
            tb.append(r.assign(t=r["t_arrive"] - r["t_arrive"].min()))
        wl = SteadyWorkload(kind="steady", name="knee", rate_per_s=held["rate"])
        for t in sorted({12.0, 30.0, full}):
            if t > full:
                continue
            tb_q = np.mean(
                [
                    np.percentile(1e3 * (x["t_end"] - x["t_arrive"])[x["t"] < t], (50, 95, 99))
                    for x in tb
                ],
                axis=0,
            )
            lat = []
            for seed in range(seeds):
                sim = simulate_replication(
                    held["twin"], held["deployment"], wl, t, seed, visits=False
                )
                q = sim.requests
                lat.append((q["t_end"] - q["t_arrive"]).dropna().to_numpy() * 1e3)
            tw_q = np.percentile(np.concatenate(lat), (50, 95, 99))
            err = 100 * (tw_q / tb_q - 1)
            out.append(
                [
                    f"{rho:g}",
                    f"{t:g}",
                    " / ".join(f"{x:.1f}" for x in tb_q),
                    " / ".join(f"{x:.1f}" for x in tw_q),
                    " / ".join(f"{x:+.1f}" for x in err),
                ]
            )
    return out


def report(
    runs: Path,
    levels: tuple[float, ...],
    testbeds: list[Path],
    seeds: int,
    name: str,
    long: Path | None = None,
) -> None:
    knee.OUT = runs
    all_runs = knee._levels("default")
    parts = [
        "# Knee runs: how long for a p95 within ±5 %, and how much a capacity error moves it",
        "",
        f"- {machine_line()}",
        "- command: `python benchmarks/testbed_knee_runlength.py "
        f"--runs {os.path.relpath(runs, ROOT)}"
        f" --levels {','.join(f'{x:g}' for x in levels)}"
        + "".join(f" --testbed {os.path.relpath(t, ROOT)}" for t in testbeds)
        + f" --seeds {seeds}` (no load: the held-out twin of {os.path.relpath(runs, ROOT)}, "
        "calibrated on its other levels, as the knee report)",
        f"- run length: {seeds} independent twin runs per length, each from empty queues; "
        "half-width = (95th − 5th percentile of the runs' p95) / 2 in % of their median; "
        "'mean of 2' as the knee report's figure (two repeats); the length for ±5 % from a "
        "power law through the half-widths (log–log least squares; its exponent beside it, "
        "−0.5 for independent samples)",
        "- elasticity: % change of p95 per % change of ρ, from 6 twin runs of 300 s at the "
        "level's rate × (1 ± 0.02)",
        "",
    ]
    summary = []
    for rho in levels:
        held = knee.held_out_twin("default", rho, all_runs)
        sc, dep, rate = held["twin"], held["deployment"], held["rate"]
        cap = knee.stage_capacity_rps(sc, dep, knee.BOTTLENECK)
        rl = run_length(sc, dep, rate, seeds)
        el = elasticity(sc, dep, rate, 0.02, 300.0, 6)
        t = rl["table"]
        parts += [
            f"## ρ {rho:g}: offered {rate:.1f}/s, twin capacity {cap:.1f}/s (twin ρ "
            f"{rate / cap:.2f})",
            "",
            markdown_table(
                ["run length s", "median p95 ms", "one run ±% (90 %)", "mean of 2 runs ±%"],
                [
                    [f"{r.T:g}", f"{r.median:.1f}", f"{r.one:.0f}", f"{r.two:.0f}"]
                    for r in t.itertuples()
                ],
            ),
            "",
        ]
        n = rl["need"]
        summary.append(
            [
                f"{rho:g}",
                f"{rate / cap:.2f}",
                f"{t['one'].iloc[0]:.0f} / {t['two'].iloc[0]:.0f}",
                f"{n['one']:.0f} (T^{n['one_slope']:.2f})",
                f"{n['two']:.0f} (T^{n['two_slope']:.2f})",
                f"{whitt_s(rate / cap, cap):.0f}",
                f"{el:.1f}",
                f"{el * 1:.0f} / {el * 3:.0f}",
            ]
        )
    parts += [
        "## Summary",
        "",
        markdown_table(
            [
                "ρ",
                "twin ρ",
                "p95 ±% at 12 s (one / mean of 2)",
                "s for ±5 %, one run",
                "s for ±5 %, mean of 2 runs",
                "Whitt M/M/1 s (mean sojourn, ±5 %)",
                "p95 elasticity to ρ",
                "p95 % moved by a 1 % / 3 % capacity error",
            ],
            summary,
        ),
        "",
    ]
    for tb in testbeds:
        parts += [
            f"## Testbed runs in {os.path.relpath(tb, ROOT)}",
            "",
            markdown_table(
                [
                    "run",
                    "s",
                    "offered/s",
                    "p95 ms (whole run)",
                    f"p95 ms per {WINDOW_S:g}-s window",
                    "encoder node ms/item",
                    "steal cores",
                ],
                testbed_runs(tb, levels),
            ),
            "",
        ]
    if long is not None:
        parts += [
            f"## Error against run length: the long runs of {os.path.relpath(long, ROOT)}",
            "",
            "Each level's twin is calibrated on the other levels' (whole) runs of that sweep; "
            "the testbed figure is the run's first T s of arrivals, the twin's 8 seeds × T s.",
            "",
            markdown_table(
                [
                    "ρ",
                    "T s",
                    "testbed p50 / p95 / p99 ms",
                    "twin p50 / p95 / p99 ms",
                    "error % p50 / p95 / p99",
                ],
                error_by_length(long, levels),
            ),
            "",
        ]
    write_result(name, "\n".join(parts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=Path, required=True, help="knee sweep whose twin is used")
    ap.add_argument("--levels", default="0.8,0.9")
    ap.add_argument("--testbed", type=Path, action="append", default=[], help="sweeps to list")
    ap.add_argument("--seeds", type=int, default=40)
    ap.add_argument(
        "--long", type=Path, default=None, help="a sweep of long runs: its error by run length"
    )
    ap.add_argument("--result", default="testbed_knee_runlength")
    a = ap.parse_args()
    if not (a.runs / "default" / "capacity.json").exists():
        ap.error(f"--runs {a.runs}: expected a knee sweep with default/capacity.json")
    levels = tuple(float(x) for x in a.levels.split(","))
    report(
        a.runs.resolve(),
        levels,
        [t.resolve() for t in a.testbed],
        a.seeds,
        a.result,
        a.long.resolve() if a.long else None,
    )


if __name__ == "__main__":
    main()
