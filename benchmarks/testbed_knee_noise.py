"""How far a knee sweep's testbed figures can be trusted, and where each backend's CPU goes.

Reads existing knee run folders (``benchmarks/testbed_knee.py run``; no load, no lock):

* **Sampling noise.** Per level, the testbed figure the knee report compares the twin
  with (the mean over repeats of each run's p50 / p95 / p99). Its 90 % interval comes
  from a block bootstrap of each run's requests (blocks of 1 s of arrivals, so that the
  queue's correlation within a second stays in the block), in % of the figure: an error
  of the twin smaller than that half-width cannot be told from the testbed's own noise.
  The spread between the level's repeats (max − min over their mean) is shown beside it.
* **CPU per item.** The bottleneck stage's node CPU per item served (``node_cpu_seconds``
  of its agent), the model's share (``stage_compute_cpu_seconds``) and the rest (server,
  agent, what the kernel charges to them), per run; with the host's CPU by mode
  (``host_cpu_seconds_total``: user, system, softirq, nice) in cores.

Usage (no lock: it only reads run folders)::

    python benchmarks/testbed_knee_noise.py --runs compose=runs/knee-compose-4 \\
        --runs local=runs/knee-local-s4 --deployment default

The result: ``benchmarks/results/testbed_knee_noise.md`` (``--result`` renames it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, markdown_table, write_result
from testbed_knee import MIN_ACHIEVED, USABLE_LAG_S

QUANTILES = (50, 95, 99)
GOALS = {50: 5.0, 95: 10.0, 99: 15.0}  # the twin's fidelity goals, % (for ρ ≤ 0.9)
BLOCK_S = 1.0
HOST_MODES = ("user", "system", "softirq", "nice")


def latencies(folder: Path) -> pd.DataFrame:
    """Answered requests of a run: arrival time (s) and latency (ms)."""
    r = pd.read_parquet(folder / "requests.parquet", columns=["t_arrive", "t_end", "ok"])
    r = r[r["ok"]]
    return pd.DataFrame({"t": r["t_arrive"], "ms": 1e3 * (r["t_end"] - r["t_arrive"])})


def block_bootstrap(runs: list[pd.DataFrame], resamples: int, seed: int = 0) -> np.ndarray:
    """Resampled level figures, shape (resamples, len(QUANTILES)): each run's requests
    are redrawn by whole ``BLOCK_S`` blocks of arrivals, its percentiles taken, and the
    level's figure is their mean over runs (as the knee report computes it)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((resamples, len(QUANTILES)))
    for run in runs:
        block = np.floor(run["t"].to_numpy() / BLOCK_S).astype(int)
        ids = np.unique(block)
        groups = [run["ms"].to_numpy()[block == b] for b in ids]
        for i in range(resamples):
            pick = rng.integers(0, len(groups), len(groups))
            out[i] += np.percentile(np.concatenate([groups[j] for j in pick]), QUANTILES)
    return out / len(runs)


def _delta(m: pd.DataFrame, target: str, metric: str, labels: str | None = None) -> float:
    x = m[(m["target"] == target) & (m["metric"] == metric)]
    if labels is not None:
        x = x[x["labels"].astype(str) == labels]
    x = x.sort_values("t")
    if len(x) < 2:
        return float("nan")
    return float(x["value"].iloc[-1] - x["value"].iloc[0])


def cpu_row(folder: Path, stage: str, node: str) -> dict[str, float]:
    """The stage's CPU per item (ms) over a run, and the host's CPU by mode (cores)."""
    m = pd.read_parquet(folder / "metrics.parquet")
    m = m.assign(target=m["target"].astype(str), metric=m["metric"].astype(str))
    inst = [t for t in m["target"].unique() if t.startswith(f"{stage}-{node}-")]
    agent = f"agent:{node}"
    t = m[(m["target"] == agent) & (m["metric"] == "node_cpu_seconds_total")]["t"]
    span = float(t.max() - t.min()) if len(t) > 1 else float("nan")
    row: dict[str, float] = {}
    if len(inst) == 1:
        items = _delta(m, inst[0], "stage_items_total")
        node_cpu = _delta(m, agent, "node_cpu_seconds_total")
        model = _delta(m, inst[0], "stage_compute_cpu_seconds_total")
        row |= {
            "items/s": items / span,
            "node ms/item": 1e3 * node_cpu / items,
            "model ms/item": 1e3 * model / items,
            "rest ms/item": 1e3 * (node_cpu - model) / items,
            "node cores": node_cpu / span,
        }
    h = m[(m["target"] == "host") & (m["metric"] == "host_cpu_seconds_total")]
    if len(h):
        ht = h["t"]
        hspan = float(ht.max() - ht.min())
        for mode in HOST_MODES:
            row[f"host {mode}"] = (
                _delta(m, "host", "host_cpu_seconds_total", json.dumps({"mode": mode})) / hspan
            )
    return row


def level_rows(root: Path, deployment: str, resamples: int) -> list[dict]:
    """Per level of ``root/deployment``: the figures, their bootstrap half-widths (%),
    the repeats' spread (%), and the mean CPU row."""
    d = root / deployment
    dep = _allocation(d / "deployment.yaml")
    levels: dict[float, list[Path]] = {}
    usable: dict[float, list[Path]] = {}
    for f in sorted(d.glob("rho*-*/summary.json")):
        rho = float(f.parent.name[3:].split("-")[0])
        levels.setdefault(rho, []).append(f.parent)
        s = json.loads(f.read_text())
        if s["achieved_over_offered"] >= MIN_ACHIEVED and s["lag_p99_s"] <= USABLE_LAG_S:
            usable.setdefault(rho, []).append(f.parent)
    rows = []
    for rho, every in sorted(levels.items()):
        # the runs the knee report uses: lag p99 within USABLE_LAG_S, else all (marked *)
        folders = usable.get(rho, every)
        runs = [latencies(f) for f in folders]
        per_run = np.array([np.percentile(r["ms"], QUANTILES) for r in runs])
        figure = per_run.mean(axis=0)
        boot = block_bootstrap(runs, resamples)
        lo, hi = np.percentile(boot, [5, 95], axis=0)
        row = {
            "rho": f"{rho:.1f}" + ("" if rho in usable else "*"),
            "runs": f"{len(runs)}/{len(every)}",
            "requests": sum(len(r) for r in runs),
        }
        for i, q in enumerate(QUANTILES):
            row[f"p{q}"] = figure[i]
            row[f"ci{q}"] = 100 * (hi[i] - lo[i]) / 2 / figure[i]
            row[f"spread{q}"] = (
                100 * (per_run[:, i].max() - per_run[:, i].min()) / figure[i]
                if len(runs) > 1
                else float("nan")
            )
        cpu = pd.DataFrame([cpu_row(f, *dep) for f in folders]).mean().to_dict()
        rows.append(row | {"cpu": cpu})
    return rows


def _pct(x: float) -> str:
    return "–" if not np.isfinite(x) else f"{x:.0f}"


def _allocation(path: Path) -> tuple[str, str]:
    """The bottleneck stage (encoder) and the one node it runs on."""
    dep = yaml.safe_load(path.read_text())
    return "encoder", next(iter(dep["allocation"]["encoder"]))


def report(runs: dict[str, Path], deployment: str, resamples: int, name: str) -> None:
    parts = [
        f"# Knee sweeps: the testbed's own noise, and CPU per item, per backend ({deployment})",
        "",
        f"- {machine_line()}",
        "- command: `python benchmarks/testbed_knee_noise.py "
        + " ".join(f"--runs {k}={v}" for k, v in runs.items())
        + f" --deployment {deployment} --resamples {resamples}` (reads run folders only)",
        "- runs used: as the knee report (achieved/offered ≥ 0.99 and release lag p99 ≤ "
        f"{1e3 * USABLE_LAG_S:g} ms; a level without any uses all, marked *)",
        "- figure = the mean over a level's repeats of each run's percentile (as the knee "
        "report); ±90 % = half-width of the block-bootstrap 90 % interval (1-s blocks of "
        f"arrivals, {resamples} resamples) in % of the figure; spread = (max − min) over the "
        "repeats in % of the figure. A twin error inside ±90 % is not distinguishable from "
        f"the testbed's noise at that level (goals: p50 {GOALS[50]:g}, p95 {GOALS[95]:g}, "
        f"p99 {GOALS[99]:g} %).",
        "",
    ]
    for label, root in runs.items():
        rows = level_rows(root, deployment, resamples)
        if not rows:
            parts += [f"## {label}: no runs in {root / deployment}", ""]
            continue
        table = [
            [
                r["rho"],
                r["runs"],
                r["requests"],
                *[
                    f"{r[f'p{q}']:.1f} ±{r[f'ci{q}']:.0f} ({_pct(r[f'spread{q}'])})"
                    for q in QUANTILES
                ],
            ]
            for r in rows
        ]
        cpu_cols = [
            "node ms/item",
            "model ms/item",
            "rest ms/item",
            "node cores",
            *[f"host {m}" for m in HOST_MODES],
        ]
        cpu = [
            [r["rho"], *[f"{r['cpu'].get(c, float('nan')):.3f}" for c in cpu_cols]] for r in rows
        ]
        parts += [
            f"## {label} ({root / deployment})",
            "",
            markdown_table(
                [
                    "ρ",
                    "runs used/all",
                    "requests",
                    "p50 ms ±90 % (spread)",
                    "p95 ms ±90 % (spread)",
                    "p99 ms ±90 % (spread)",
                ],
                table,
            ),
            "",
            "CPU per item of the encoder's node (ms, mean over the level's runs) and the "
            "host's CPU by mode (cores):",
            "",
            markdown_table(["ρ", *cpu_cols], cpu),
            "",
        ]
    write_result(name, "\n".join(parts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--runs",
        action="append",
        required=True,
        help="label=folder of knee run folders (repeatable)",
    )
    ap.add_argument("--deployment", default="default")
    ap.add_argument("--resamples", type=int, default=500)
    ap.add_argument("--result", default="testbed_knee_noise")
    a = ap.parse_args()
    runs = {}
    for spec in a.runs:
        label, sep, folder = spec.partition("=")
        if not sep or not Path(folder, a.deployment).is_dir():
            ap.error(f"--runs {spec}: expected label=folder with a {a.deployment}/ sub-folder")
        runs[label] = Path(folder)
    report(runs, a.deployment, a.resamples, a.result)


if __name__ == "__main__":
    main()
