"""Quota stalls of the bottleneck against the idle gap before each item, testbed vs twin.

An item *stalls* when its service takes more than the stage's unstalled service (the
25th percentile of the run's service times) + ``STALL_MS``: the CPU quota ran out
while it ran. The *gap* is the time from the previous item's end to this item's
arrival at the server: negative when it arrived while the previous one was served
(it queued). The testbed's arrival is the server's own receive stamp (``t_server_s``
in ``visits.parquet``, recorded since this session; older runs lack it and are
skipped); the twin's are exact. The twin is the level's held-out twin of the knee
report (calibrated on the sweep's other levels), simulated ``--seconds`` × 4 seeds.

Usage (no lock: reads run folders and runs the twin)::

    python benchmarks/testbed_knee_stalls.py --runs runs/knee-s6long --levels 0.2,0.6,0.8

The result: ``benchmarks/results/testbed_knee_stalls.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import testbed_knee as knee
from _report import machine_line, markdown_table, write_result

from twin.sim import simulate_replication
from twin.spec import SteadyWorkload

ROOT = Path(__file__).resolve().parents[1]
STALL_MS = 1.5
GAP_BINS_MS = (-np.inf, 0.0, 0.5, 2.0, 5.0, 10.0, 20.0, np.inf)


def _table(service_ms: np.ndarray, gap_ms: np.ndarray) -> tuple[float, float, pd.DataFrame]:
    base = float(np.percentile(service_ms, 25))
    d = pd.DataFrame({"stall": service_ms > base + STALL_MS, "gap": gap_ms})
    by = d.groupby(pd.cut(d["gap"], GAP_BINS_MS), observed=False)["stall"]
    return base, float(d["stall"].mean()), pd.DataFrame({"n": by.size(), "stall": by.mean()})


def testbed_stalls(run: Path) -> tuple[float, float, pd.DataFrame] | None:
    v = pd.read_parquet(run / "visits.parquet")
    e = v[v["component"].astype(str) == knee.BOTTLENECK]
    if "t_server_s" not in e or e["t_server_s"].isna().all():
        return None
    e = e.sort_values("t_server_s")
    t, q, s = (e[c].to_numpy(dtype=float) for c in ("t_server_s", "queue_s", "service_s"))
    # queue_s also holds any wait at the gateway for a call slot (before the server
    # received the call): on one batch-1 replica at these rates that wait is rare
    gap = np.r_[np.nan, (t[1:] - (t[:-1] + q[:-1] + s[:-1])) * 1e3]
    return _table(s * 1e3, gap)


def twin_stalls(held: dict, seconds: float) -> tuple[float, float, pd.DataFrame]:
    wl = SteadyWorkload(kind="steady", name="knee", rate_per_s=held["rate"])
    svc, gaps = [], []
    for seed in range(4):
        v = simulate_replication(held["twin"], held["deployment"], wl, seconds, seed).visits
        e = v[v["component"].astype(str) == knee.BOTTLENECK].sort_values("t_start")
        a, st, en = (e[c].to_numpy(dtype=float) for c in ("t_arrive", "t_start", "t_end"))
        svc.append((en - st) * 1e3)
        gaps.append(np.r_[np.nan, (a[1:] - en[:-1]) * 1e3])
    return _table(np.concatenate(svc), np.concatenate(gaps))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=Path, required=True, help="a knee sweep (default deployment)")
    ap.add_argument("--levels", default="0.2,0.6,0.8")
    ap.add_argument("--seconds", type=float, default=60.0, help="twin seconds per seed")
    ap.add_argument("--result", default="testbed_knee_stalls")
    a = ap.parse_args()
    knee.OUT = a.runs.resolve()
    runs = knee._levels("default")
    if runs.empty:
        ap.error(f"--runs {a.runs}: no runs in {a.runs / 'default'}")
    parts = [
        "# Bottleneck quota stalls against the idle gap before each item (default deployment)",
        "",
        f"- {machine_line()}",
        f"- command: `python benchmarks/testbed_knee_stalls.py --runs {os.path.relpath(a.runs)} "
        f"--levels {a.levels} --seconds {a.seconds:g}` (no load)",
        f"- stalled: service > the run's 25th percentile + {STALL_MS:g} ms; gap: previous "
        "item's end → this item's arrival at the server (≤ 0: it queued); testbed arrivals "
        "from the server's own clock (`t_server_s`), twin arrivals exact (held-out twin of "
        "the knee report, 4 seeds)",
        "",
    ]
    for rho in (float(x) for x in a.levels.split(",")):
        level = runs[runs["rho"] == rho]
        if level.empty:
            continue
        tb = testbed_stalls(a.runs / "default" / level["run"].iloc[0])
        if tb is None:
            parts += [f"## ρ {rho:g}: the run has no server receive stamps", ""]
            continue
        tw = twin_stalls(knee.held_out_twin("default", rho, runs), a.seconds)
        rows = [
            [
                str(b),
                int(tb[2].loc[b, "n"]),
                f"{100 * tb[2].loc[b, 'stall']:.0f}",
                int(tw[2].loc[b, "n"]),
                f"{100 * tw[2].loc[b, 'stall']:.0f}",
            ]
            for b in tb[2].index
        ]
        parts += [
            f"## ρ {rho:g} ({level['run'].iloc[0]})",
            "",
            f"Stalled: testbed {100 * tb[1]:.1f} % (unstalled service {tb[0]:.2f} ms), twin "
            f"{100 * tw[1]:.1f} % ({tw[0]:.2f} ms).",
            "",
            markdown_table(
                ["gap ms", "testbed items", "testbed stalled %", "twin items", "twin stalled %"],
                rows,
            ),
            "",
        ]
    write_result(a.result, "\n".join(parts))


if __name__ == "__main__":
    main()
