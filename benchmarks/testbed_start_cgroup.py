"""Does starting replicas outside their node's quota change the testbed's capacity?

Since the node agent's ``--start-cgroup`` (replicas start in the host's reserve and join
the node's cgroup once healthy), one knee sweep saturated 6–8 % below the one before it.
This A/B separates that change from the host: the default knee deployment at one
saturating level, with replicas started outside the quota (``outside``, the default)
and inside it from the start (``inside``, ``MLOPS_TWIN_START_OUTSIDE=0``: the behaviour
before), in the order outside, inside, inside, outside (so a drift of the host within
the hour falls on both arms alike), each arm on a freshly started testbed.

Per run: answers/s over the run's second half (backlogged), each node's CPU per item
(node agent counters: the encoder's node with its model's share, and the two light
stages' nodes, whose CPU per item is mostly the Python HTTP server), the host's busy
cores, steal, the CPU outside the three nodes, and the host probe (a fixed piece of
interpreter work timed by the scraper: larger is a slower host).

Usage (run under the lock; about 4 min)::

    flock /work/bench.lock python benchmarks/testbed_start_cgroup.py run
    python benchmarks/testbed_start_cgroup.py report     # no lock: reads the run folders

``report --compare runs/knee-s4`` adds the same figures for every run of earlier knee
sweeps (default deployment), to set the A/B beside other hours of the same host.

Run folders: ``runs/start-cgroup/<arm>-<i>/default/``; the result
``benchmarks/results/testbed_start_cgroup.md``.
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

from loadgen.host import host_series
from testbed.backends.local import START_GROUP_ENV, START_OUTSIDE_ENV

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(os.environ.get("START_AB_RUNS", ROOT / "runs" / "start-cgroup"))
ORDER = (("outside", 0), ("inside", 0), ("inside", 1), ("outside", 1))
ARM_ENV = {"outside": "1", "inside": "0"}


def run(rho: float, duration_s: float) -> None:
    """The four runs, in ORDER; a run already done is skipped (resumable)."""
    for arm, i in ORDER:
        knee.OUT = OUT / f"{arm}-{i}"
        os.environ[START_OUTSIDE_ENV] = ARM_ENV[arm]
        # "outside" as it was measured: the host's reserve (the default is now an idle
        # start group of its own; rl_testbed's start-path A/B compares the two)
        os.environ[START_GROUP_ENV] = "reserve"
        print(f"{arm}-{i}: ρ {rho}, {duration_s:g} s", file=sys.stderr)
        knee.run("default", duration_s, 1, (rho,))


def _rate(m: pd.DataFrame, target: str, metric: str) -> float:
    x = m[(m["target"] == target) & (m["metric"] == metric)].sort_values("t")
    span = float(x["t"].iloc[-1] - x["t"].iloc[0]) if len(x) > 1 else float("nan")
    return float(x["value"].iloc[-1] - x["value"].iloc[0]) / span if len(x) > 1 else np.nan


def run_row(folder: Path) -> dict[str, float]:
    """One run's capacity and CPU figures (see the module doc)."""
    m = pd.read_parquet(folder / "metrics.parquet")
    m = m.assign(target=m["target"].astype(str), metric=m["metric"].astype(str))
    row: dict[str, float] = {"served/s": knee._served_rps(folder)}
    nodes_cores = 0.0
    for stage in ("denoise", "encoder", "classifier"):
        inst = next(t for t in m["target"].unique() if t.startswith(f"{stage}-node-"))
        node = inst.split("-")[1] + "-" + inst.split("-")[2]
        items = _rate(m, inst, "stage_items_total")
        cores = _rate(m, f"agent:{node}", "node_cpu_seconds_total")
        nodes_cores += cores
        row[f"{stage} node ms/item"] = 1e3 * cores / items
        if stage == "encoder":
            row["encoder model ms/item"] = (
                1e3 * _rate(m, inst, "stage_compute_cpu_seconds_total") / items
            )
    h = host_series(m)
    row |= {
        "host busy cores": float(h["busy_cores"].mean()),
        "outside the nodes, cores": float(h["busy_cores"].mean()) - nodes_cores,
        "steal cores": float(h["steal_cores"].mean()),
        "probe ms (median)": float(h["probe_ms"].median()),
    }
    return row


def report(note: str = "", compare: tuple[Path, ...] = ()) -> None:
    rows, table = {}, []
    for arm, i in ORDER:
        found = sorted((OUT / f"{arm}-{i}" / "default").glob("rho*-0"))
        if not found:
            continue
        rows[f"{arm}-{i}"] = r = run_row(found[0])
        table.append([f"{arm}-{i}", *(f"{v:.3f}" for v in r.values())])
    if not rows:
        sys.exit(f"no runs in {OUT}: run `python benchmarks/testbed_start_cgroup.py run` first")
    df = pd.DataFrame(rows).T
    arms = {a: df[df.index.str.startswith(a)].mean() for a in ARM_ENV}
    out, ins = arms["outside"], arms["inside"]
    diff = [
        [c, f"{out[c]:.3f}", f"{ins[c]:.3f}", f"{100 * (out[c] / ins[c] - 1):+.1f}"]
        for c in df.columns
    ]
    parts = [
        "# Replicas started outside the node's quota vs inside it: capacity at saturation",
        "",
        *([f"- {note}"] if note else []),
        f"- {machine_line()}",
        "- command: `flock /work/bench.lock python benchmarks/testbed_start_cgroup.py run` "
        "then `… report`; default knee deployment (encoder e-large batch 1), one level, "
        f"runs in {os.path.relpath(OUT, ROOT)}, order {', '.join(f'{a}-{i}' for a, i in ORDER)}, "
        "each on a freshly started testbed",
        "",
        markdown_table(["run", *df.columns], table),
        "",
        "Means per arm (outside − inside, % of inside):",
        "",
        markdown_table(["figure", "outside", "inside", "outside vs inside %"], diff),
        "",
    ]
    for sweep in compare:
        # the same figures on an earlier knee sweep's runs, each level: the host's hour
        # shows in the model's CPU per item, which no testbed change touches
        runs = sorted((sweep / "default").glob("rho*-*/summary.json"))
        if not runs:
            continue
        cmp = pd.DataFrame({f.parent.name: run_row(f.parent) for f in runs}).T
        parts += [
            f"Per run of {sweep.name} ({os.path.relpath(sweep, ROOT)}):",
            "",
            markdown_table(
                ["run", *cmp.columns],
                [[i, *(f"{v:.3f}" for v in r)] for i, r in cmp.iterrows()],
            ),
            "",
            f"{sweep.name}, median over its runs: encoder model "
            f"{cmp['encoder model ms/item'].median():.3f} ms/item, probe "
            f"{cmp['probe ms (median)'].median():.3f} ms",
            "",
        ]
    write_result("testbed_start_cgroup", "\n".join(parts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="the four runs (under the lock)")
    r.add_argument("--rho", type=float, default=1.2)
    r.add_argument("--duration", type=float, default=25.0, help="s per run")
    rp = sub.add_parser("report", help="the result from the run folders")
    rp.add_argument("--note", default="", help="a line on when and on how busy a host it ran")
    rp.add_argument(
        "--compare", type=Path, action="append", default=[], help="earlier knee sweeps to list"
    )
    a = ap.parse_args()
    if a.cmd == "run":
        run(a.rho, a.duration)
    else:
        report(a.note, tuple(p.resolve() for p in a.compare))


if __name__ == "__main__":
    main()
