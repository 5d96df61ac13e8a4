"""Where the bottleneck node's CPU goes while its quota binds, per backend, and the capacity
the calibration gives from it.

Reads existing knee run folders (``benchmarks/testbed_knee.py run``; no load, no lock).
For each sweep, over the bottleneck stage's ~1-s scrape intervals (its counters
interpolated to the node agent's scrape times):

* the node's CPU per item served in the intervals where the node's CPU rate is at its
  quota (≥ ``calibrate.quota.BOUND_FRACTION`` of it) and, apart, in the unbound ones
  above 100 items/s (the same load, not throttled), with the model's share
  (``stage_compute_cpu_seconds``) and the rest (server, agent, what the kernel charges
  to the node's processes);
* the items served per second in the bound intervals, scaled to the whole quota: the
  testbed's capacity, read directly;
* ``calibrate.quota.stage_cpu`` over all runs and held out at the most loaded level
  (the runs the knee report's twin of that level is fitted on): the line's capacity,
  the bound factor and the capacity with it, against the testbed's answers per second
  over that level's runs' second half (backlogged; the knee report's saturation
  throughput).

Usage (no lock)::

    python benchmarks/testbed_bound_cpu.py --runs compose=runs/knee-compose-s5 \\
        --runs local=runs/knee-local-s4 --deployment default

Result: ``benchmarks/results/testbed_bound_cpu.md`` (``--result`` renames it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, markdown_table, write_result
from testbed_knee import BOTTLENECK, _served_rps

from calibrate.quota import BOUND_FRACTION, stage_cpu
from twin.load import load_deployment

BUSY_RATE = 100.0  # items/s: unbound intervals at least this loaded are compared


def _series(m: pd.DataFrame, target: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    x = m[(m["target"] == target) & (m["metric"] == metric)].sort_values("t")
    return x["t"].to_numpy(dtype=float), x["value"].to_numpy(dtype=float)


def intervals(folder: Path, node: str) -> pd.DataFrame:
    """The run's scrape intervals: seconds, node CPU, model CPU, items (the stage's
    counters interpolated to the agent's scrape times)."""
    m = pd.read_parquet(folder / "metrics.parquet")
    m = m.assign(target=m["target"].astype(str), metric=m["metric"].astype(str))
    stage = next(t for t in m["target"].unique() if t.startswith(f"{BOTTLENECK}-{node}-"))
    t, cpu = _series(m, f"agent:{node}", "node_cpu_seconds_total")
    cols = {"dt": np.diff(t), "cpu": np.diff(cpu)}
    for key, metric in (
        ("model", "stage_compute_cpu_seconds_total"),
        ("items", "stage_items_total"),
    ):
        ts, v = _series(m, stage, metric)
        cols[key] = np.diff(np.interp(t, ts, v))
    d = pd.DataFrame(cols)
    return d[(d["dt"] > 0) & (d["items"] > 0)]


def _per_item(d: pd.DataFrame) -> tuple[float, float]:
    """Node and model CPU per item (ms) pooled over intervals."""
    n = d["items"].sum()
    return 1e3 * d["cpu"].sum() / n, 1e3 * d["model"].sum() / n


def sweep_rows(root: Path, deployment: str) -> dict:
    d = root / deployment
    share = json.loads((d / "capacity.json").read_text())["share"]
    dep = load_deployment(d / "deployment.yaml")
    node = next(iter(dep.allocation[BOTTLENECK]))
    runs = sorted(p for p in d.glob("rho*-*") if (p / "metrics.parquet").is_file())
    iv = pd.concat([intervals(r, node) for r in runs])
    rate = iv["items"] / iv["dt"]
    bound = iv[iv["cpu"] >= BOUND_FRACTION * share * iv["dt"]]
    busy = iv[(iv["cpu"] < BOUND_FRACTION * share * iv["dt"]) & (rate >= BUSY_RATE)]
    out: dict = {"share": share, "bound_s": bound["dt"].sum(), "busy_s": busy["dt"].sum()}
    out["bound_node"], out["bound_model"] = _per_item(bound) if len(bound) else (np.nan,) * 2
    out["busy_node"], out["busy_model"] = _per_item(busy) if len(busy) else (np.nan,) * 2
    # the most loaded level (ρ ≥ 1.0): backlogged the longest
    top = max((r.name.split("-")[0] for r in runs), key=lambda x: float(x[3:]))
    sat = [r for r in runs if r.name.startswith(f"{top}-") and float(top[3:]) >= 1.0]
    out["top"] = top[3:]
    out["served"] = float(np.mean([_served_rps(r) for r in sat])) if sat else np.nan
    for key, fit_runs in (
        ("all", runs),
        ("held", [r for r in runs if r not in sat]),
    ):
        cpu = stage_cpu(fit_runs, dep, share)[BOTTLENECK]
        per_item = cpu.per_item_ms + cpu.per_call_ms * cpu.calls_per_item
        if dep.stages[BOTTLENECK].batch > 1:  # CPU per item in full batches
            b = dep.stages[BOTTLENECK].batch
            per_item = (cpu.batch_ms + cpu.per_item_ms * (b - 1)) / b + cpu.per_call_ms * (
                cpu.calls_per_item
            )
        line = (share - cpu.idle_cores) / per_item * 1e3
        out[f"{key}_line"] = line
        out[f"{key}_factor"] = cpu.bound_factor
        out[f"{key}_cap"] = line / cpu.bound_factor
    # the bound intervals' items per second, scaled to the whole quota (above idle)
    held = stage_cpu(runs, dep, share)[BOTTLENECK]
    if len(bound):
        b_rate = bound["items"].sum() / bound["dt"].sum()
        b_cpu = bound["cpu"].sum() / bound["dt"].sum()
        out["bound_rate"] = b_rate * (share - held.idle_cores) / (b_cpu - held.idle_cores)
    else:
        out["bound_rate"] = np.nan
    return out


def report(runs: dict[str, Path], deployments: list[str], name: str) -> None:
    rows = []
    for dep in deployments:
        for backend, root in runs.items():
            if not (root / dep / "capacity.json").is_file():
                continue
            r = sweep_rows(root, dep)

            def pct(x: float, r: dict = r) -> str:
                return f"{x:.1f} ({100 * (x / r['served'] - 1):+.1f} %)"

            rows.append(
                [
                    dep,
                    backend,
                    f"{r['busy_node']:.2f} / {r['busy_model']:.2f} ({r['busy_s']:.0f} s)",
                    f"{r['bound_node']:.2f} / {r['bound_model']:.2f} ({r['bound_s']:.0f} s)",
                    f"{100 * (r['bound_node'] / r['busy_node'] - 1):+.1f}",
                    f"{r['served']:.1f} (ρ {r['top']})",
                    f"{r['bound_rate']:.1f}",
                    f"{r['all_factor']:.3f}",
                    pct(r["all_line"]),
                    pct(r["all_cap"]),
                    f"{r['held_factor']:.3f}",
                    pct(r["held_line"]),
                    pct(r["held_cap"]),
                ]
            )
    parts = [
        "# The bottleneck's CPU while its quota binds, per backend, and the calibrated capacity",
        "",
        f"- {machine_line()}",
        "- command: `python benchmarks/testbed_bound_cpu.py "
        + " ".join(f"--runs {k}={v}" for k, v in runs.items())
        + " "
        + " ".join(f"--deployment {d}" for d in deployments)
        + "` (reads run folders; no load, no lock)",
        f"- bound: a ~1-s scrape interval whose node CPU rate is ≥ {BOUND_FRACTION:g} × the "
        f"quota; busy: not bound and ≥ {BUSY_RATE:.0f} items/s. CPU per item in ms of host "
        "CPU, node / model (the rest is the server, the agent and the kernel time charged to "
        "them). 'served': the testbed's answers per second over the second half of the "
        "runs of its most loaded level (ρ in brackets; backlogged). 'bound items/s': the "
        "bound intervals' items per second "
        "scaled to the whole quota above idle. 'line': the capacity from the one line "
        "through the runs' node CPU rates (`calibrate.quota`, before this term); "
        "'with factor': the line's capacity over the bound factor (what the twin now uses); "
        "'held out': fitted without that level's runs, as the knee report's twin of it",
        "",
        markdown_table(
            [
                "deployment",
                "backend",
                "busy CPU/item node / model",
                "bound CPU/item node / model",
                "bound over busy %",
                "served/s",
                "bound items/s",
                "factor (all runs)",
                "line capacity (all runs)",
                "with factor (all runs)",
                "factor (held out)",
                "line capacity (held out)",
                "with factor (held out)",
            ],
            rows,
        ),
        "",
    ]
    write_result(name, "\n".join(parts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", action="append", required=True, help="backend=folder of a sweep")
    ap.add_argument("--deployment", action="append", default=None)
    ap.add_argument("--result", default="testbed_bound_cpu")
    a = ap.parse_args()
    runs = {k: Path(v) for k, v in (x.split("=", 1) for x in a.runs)}
    report(runs, a.deployment or ["default"], a.result)


if __name__ == "__main__":
    main()
