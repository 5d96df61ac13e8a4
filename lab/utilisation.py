"""How loaded each stage was: measured busy share of its CPU quota vs the twin's, and ρ.

Part of the experiment report (:mod:`lab.experiment`). For each held-out workload and
stage alone on its emulated server:

* **ρ (twin)**: the workload's offered rate over the stage's capacity in the
  calibrated twin (:func:`twin.criteria.stage_capacity_rps`: its quota over the CPU of
  an item at the configured batch); for a varying workload also the highest 5-s mean;
* **busy share, testbed**: the node's cgroup CPU (``node_cpu_seconds_total``, every
  process on it) over its quota;
* **busy share, twin**: the CPU the twin's stage ran for — each batch's model and server
  CPU, times the host speed the fit found, plus the fitted idle CPU — over the quota.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from lab.compare import cpu_per_server, fmt
from twin.criteria import stage_capacity_rps
from twin.deployment import stage_config

if TYPE_CHECKING:
    from lab.compare import WorkloadOutcome
    from lab.pipeline import LabRun

# the acceptance of issue #15 for the example pipeline's workloads
LOW, HIGH = "steady-low", "steady-high"


def _twin_busy(lab: LabRun, o: WorkloadOutcome, stage: str, share: float) -> float:
    if o.twin is None or o.twin.visits is None or o.twin.visits.empty:
        return float("nan")
    visits, fit = o.twin.visits, lab.stage_cpu.get(stage)
    v = visits[visits["component"].astype(str) == stage].dropna(subset=["t_end"])
    execs = v.drop_duplicates(["replication", "component", "machine", "replica", "t_start"])
    span_s = lab.cfg.duration_s * o.twin.replications
    if fit is None:  # no CPU fit: the time the stage was busy (wall)
        return float((execs["t_end"] - execs["t_start"]).sum() / span_s / share)
    comp = lab.twin_scenario.component(stage)
    st = comp.variant(stage_config(lab.deployment, comp).variant).service_time
    over = comp.server_overhead
    sizes = execs["batch"].to_numpy()
    run_ms = sum(
        st.batch_mean_ms(int(b))
        + (over.per_call_ms + over.per_item_ms * b if over is not None else 0.0)
        for b in sizes
    )
    cores = run_ms / 1e3 * fit.host_speed / span_s + fit.idle_cores
    return float(cores / share)


def utilisation_table(lab: LabRun) -> pd.DataFrame:
    """One row per workload × stage (see the module doc); empty without a calibrated twin."""
    rows = []
    sc, dep = lab.twin_scenario, lab.deployment
    for o in lab.outcomes:
        cpu = cpu_per_server([o], lab.targets)
        offered = o.load.per_second["offered"].astype(float)
        mean_rps = float(offered.mean())
        peak_rps = float(offered.rolling(5, min_periods=5).mean().max())
        for stage, share in lab.shares.items():
            where = [m for m, n in dep.allocation.get(stage, {}).items() if n > 0]
            if len(where) != 1:
                continue
            node = where[0]
            busy = cpu[cpu["target"].astype(str) == node]["rate"]
            cap = stage_capacity_rps(sc, dep, stage)
            rows.append(
                {
                    "workload": o.name,
                    "stage": stage,
                    "node": node,
                    "share_cores": share,
                    "capacity_rps": cap,
                    "rho": mean_rps / cap,
                    "rho_peak_5s": peak_rps / cap,
                    "testbed_busy": float(busy.mean()) / share if len(busy) else float("nan"),
                    "twin_busy": _twin_busy(lab, o, stage, share),
                }
            )
    return pd.DataFrame(rows)


def utilisation_lines(util: pd.DataFrame, tab: pd.DataFrame) -> list[str]:
    """The report's section: the table, the bottleneck, and the workloads' acceptance."""
    if util.empty:
        return []
    lines = [
        "",
        "## Utilisation: busy share of each stage's CPU quota, testbed vs twin",
        "",
        "ρ = offered rate / the stage's capacity in the calibrated twin (its quota over the "
        "CPU of an item at the configured batch, server CPU included); busy share = the "
        "node's CPU over its quota (testbed: cgroup counter; twin: CPU its batches ran for).",
        "",
        "| workload | stage | quota (cores) | twin capacity (req/s) | ρ mean / 5-s peak | "
        "busy share testbed / twin |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in util.itertuples():
        lines.append(
            f"| {r.workload} | {r.stage} | {r.share_cores:g} | {r.capacity_rps:.0f} | "
            f"{r.rho:.2f} / {r.rho_peak_5s:.2f} | {fmt(r.testbed_busy, 2)} / "
            f"{fmt(r.twin_busy, 2)} |"
        )
    bottleneck = util.groupby("stage")["capacity_rps"].mean().idxmin()
    b = util[util["stage"] == bottleneck].set_index("workload")
    p95 = tab.set_index("workload")["testbed_p95_ms"]
    lines += ["", f"Bottleneck (lowest twin capacity): **{bottleneck}**."]
    if LOW in b.index and HIGH in b.index and LOW in p95.index and HIGH in p95.index:
        low, high = b.loc[LOW, "testbed_busy"], b.loc[HIGH, "testbed_busy"]
        ratio = p95[HIGH] / p95[LOW]
        checks = [
            (f"busy share at {LOW} ≤ 0.4", low <= 0.4, f"{low:.2f}"),
            (f"busy share at {HIGH} ≥ 0.8", high >= 0.8, f"{high:.2f}"),
            (f"p95({HIGH}) ≥ 2 × p95({LOW})", ratio >= 2, f"{ratio:.2f}×"),
        ]
        lines += [""] + [
            f"- {what}: {value} — {'met' if ok else 'NOT met'}"
            for what, ok, value in checks
            if np.isfinite(float(value.rstrip("×")))
        ]
    return lines
