"""``mlops-twin calibrate validate``: one deployment on the testbed and in the calibrated twin.

1. ``testbed up`` with the deployment;
2. **fit runs** at two load levels used for nothing else (the scenario's
   ``fit_workload`` × each of ``fit_rate_scales``, their own arrival seeds;
   half before and half after the held-out runs, so a drift of the host's
   background load cannot favour either side): their raw
   per-visit rows give each deployed stage's service time at the CPU share it
   really had, and their per-request rows the overhead distribution
   (latency minus stage queue and service: client lag, gateway, HTTP hops;
   one lognormal or gamma, with its measured level per offered rate reported)
   — see :mod:`lab.fitruns`;
3. the **held-out runs**: the validation workloads, other rates, other seed;
4. ``testbed down`` (always);
5. fit (:mod:`calibrate.fit`; a profile folder fills in what the fit run did
   not exercise), write the calibration file and the calibrated scenario;
6. the calibrated twin on the same deployment and workloads (replication 0
   sees the testbed's very arrival instants); the calibrated scenario's
   request processes carry the fitted overhead (``Process.request_overhead``),
   so the twin's latencies hold it;
7. ``report.md`` with a table per workload level — mean, p50, p95, p99
   latency, throughput, CPU use: twin, testbed, error % — and CDF overlays.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from calibrate import calibration as cal
from lab.compare import (
    error_pct,
    fmt,
    latency_stats,
    server_cores,
    testbed_latency_s,
    twin_cpu_cores,
    twin_latency_s,
)
from lab.fitruns import overhead_text, rate_aware_lines, stage_shares
from lab.host_noise import host_lines, undisturbed_lines
from lab.pipeline import ExperimentConfig, LabRun, run
from testbed.client import Testbed
from twin.runs import atomic_dir, write_table

__all__ = ["METRICS", "ValidateConfig", "error_pct", "run_validation", "stage_shares"]

METRICS = ("mean_ms", "p50_ms", "p95_ms", "p99_ms", "throughput_rps", "cpu_cores")


@dataclass
class ValidateConfig(ExperimentConfig):
    """The lab's configuration with the validation's defaults: 60 s per held-out workload,
    3 replications, fit runs drained as long as the held-out ones, no uncalibrated contrast."""

    duration_s: float = 60.0
    replications: int = 3
    contrast: bool = False

    def __post_init__(self) -> None:
        self.fit_drain_s = self.drain_s


# --------------------------------------------------------------------------- comparison


def comparison(lab: LabRun) -> tuple[pd.DataFrame, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Long table (workload, metric, twin, testbed, error_pct) and latencies for the CDFs."""
    rows, lat = [], {}
    cfg, calibrated = lab.cfg, lab.twin_scenario
    servers = set(calibrated.server_instances())
    process = next((p.name for p in calibrated.processes if p.kind == "request"), None)
    cpu = lab.calibration.cpu if lab.calibration is not None else []
    for o in lab.outcomes:
        ev = o.twin
        assert ev is not None, "the pipeline simulates every workload"
        tb_lat, tw_lat = testbed_latency_s(o), twin_latency_s(ev, process)
        lat[o.name] = (tb_lat, tw_lat)
        tb, tw = latency_stats(tb_lat), latency_stats(tw_lat)
        tb["throughput_rps"] = tb_lat.size / cfg.duration_s
        tw["throughput_rps"] = tw_lat.size / ev.replications / cfg.duration_s
        tb["cpu_cores"] = server_cores(o, lab.targets, servers)
        tw["cpu_cores"] = twin_cpu_cores(
            ev.visits, ev.replications, cfg.duration_s, calibrated, cpu
        )
        for m in METRICS:
            rows.append(
                {
                    "workload": o.name,
                    "level": cfg.level(o.name),
                    "metric": m,
                    "twin": tw[m],
                    "testbed": tb[m],
                    "error_pct": error_pct(tw[m], tb[m]),
                }
            )
    return pd.DataFrame(rows), lat


# --------------------------------------------------------------------------- report


def plot_cdfs(lat: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    """Latency CDFs (log ms) of testbed and calibrated twin, one panel per workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(lat), figsize=(4.5 * len(lat), 3.6), squeeze=False)
    for ax, (name, (tb, tw)) in zip(axes[0], lat.items(), strict=True):
        for data, label in ((tb, "testbed"), (tw, "calibrated twin")):
            x = np.sort(data * 1e3)
            if x.size:
                ax.step(x, np.arange(1, x.size + 1) / x.size, where="post", label=label)
        ax.set_xscale("log")
        ax.set_title(name)
        ax.set_xlabel("latency (ms)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("fraction of requests")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cpu_text(calibration: cal.Calibration) -> str:
    parts = [
        f"{m.server} {m.idle_cores:.3f} cores + {m.per_visit_ms:.3f} ms/visit"
        for m in calibration.cpu
    ]
    return ", ".join(parts) or "none measured"


def header_lines(
    cfg: ValidateConfig, lab: LabRun, fit_rates: list[float], wall_s: float
) -> list[str]:
    """Title and how the comparison was made: fit runs, held-out runs, shares, CPU model."""
    calibration = lab.calibration
    assert calibration is not None, "validation always calibrates"
    return [
        f"# Validation: {lab.scenario.name} / {lab.deployment.name} — testbed vs calibrated twin",
        "",
        f"- fit runs: {cfg.fit_workload} × "
        + " and × ".join(f"{x:g}" for x in cfg.fit_rate_scales)
        + f" ({', '.join(f'{r:.1f}' for r in fit_rates)} req/s offered), each "
        f"{cfg.fit_duration_s / 2 / len(cfg.fit_rate_scales):g} s before and as long after "
        f"the held-out runs, arrival seeds from {cfg.fit_seed}",
        f"- held-out runs: {', '.join(cfg.workloads)}; {cfg.duration_s:g} s each, arrival "
        f"seed {cfg.seed}; twin: {cfg.replications} replications (replication 0 has the "
        "testbed's arrival instants)",
        f"- capacity factor {lab.targets.factor}; stage CPU shares (host cores): "
        + ", ".join(f"{k} {v:g}" for k, v in cfg.shares.items()),
        f"- fitted from: {calibration.source}",
        f"- from the fit runs: {overhead_text(calibration)}; the calibrated scenario's "
        "request process carries it as `request_overhead`",
        "- CPU use: testbed = all processes on the emulated servers (scraped); twin = the "
        "stages' batch compute plus, per server, the fit runs' measured rest (idle cores + "
        "CPU per stage visit: HTTP handling, runtime, node agent): " + _cpu_text(calibration),
        f"- wall time {wall_s / 60:.1f} min",
    ]


def fits_lines(calibration: cal.Calibration) -> list[str]:
    """The fitted service time of each stage × variant."""
    lines = [
        "",
        "## Fitted service times",
        "",
        "| stage | variant | share | n | model | mean b=1 (ms) | cv |",
        "|---|---|---:|---:|---|---:|---:|",
    ]
    for f in calibration.fits:
        st = f.service_time
        lines.append(
            f"| {f.component} | {f.variant} | {f.cpu_share:g} | {f.n} | {f.dist}/{f.structure}"
            f" | {st.batch_mean_ms(1):.3f} | {st.batch_cv(1):.2f} |"
        )
    return lines


def workload_lines(tab: pd.DataFrame) -> list[str]:
    """One table per workload: every metric, twin vs testbed and error %."""
    lines: list[str] = []
    for w, rows in tab.groupby("workload", sort=False):
        level = rows["level"].iloc[0]
        lines += [
            "",
            f"## {w} ({level})",
            "",
            "| metric | twin | testbed | error % |",
            "|---|---:|---:|---:|",
        ]
        for r in rows.itertuples():
            lines.append(
                f"| {r.metric} | {fmt(r.twin, 2)} | {fmt(r.testbed, 2)} | {fmt(r.error_pct)} |"
            )
    return lines


def fidelity_lines(tab: pd.DataFrame) -> list[str]:
    """p50 and p95 error % on the held-out runs against the goal."""
    held = tab[(tab["level"] == "held-out") & tab["metric"].isin(["p50_ms", "p95_ms"])]
    if not len(held):
        return []
    lines = ["", "## Fidelity on held-out runs", ""]
    lines += ["| workload | p50 error % | p95 error % | goal |", "|---|---:|---:|---|"]
    for w, rows in held.groupby("workload", sort=False):
        e = rows.set_index("metric")["error_pct"]
        p50, p95 = e.get("p50_ms", math.nan), e.get("p95_ms", math.nan)
        goal = "met" if abs(p50) <= 10 and abs(p95) <= 15 else "not met"
        lines.append(f"| {w} | {fmt(p50)} | {fmt(p95)} | {goal} (p50 ≤ 10%, p95 ≤ 15%) |")
    return lines


def report_text(
    cfg: ValidateConfig, lab: LabRun, tab: pd.DataFrame, fit_rates: list[float], wall_s: float
) -> str:
    """The validation's ``report.md``."""
    assert lab.calibration is not None, "validation always calibrates"
    lines = header_lines(cfg, lab, fit_rates, wall_s) + fits_lines(lab.calibration)
    lines += workload_lines(tab) + fidelity_lines(tab)
    if lab.clean is not None and cfg.max_steal_cores is not None:
        lines += undisturbed_lines(lab.clean, cfg.max_steal_cores)
    if lab.rate_aware is not None:
        lines += rate_aware_lines(lab.rate_aware)
    if lab.host is not None:
        lines += host_lines(lab.host)
    lines += ["", "## Latency CDFs", "", "![CDFs](latency_cdf.png)", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the loop


def run_validation(
    cfg: ValidateConfig,
    testbed: Testbed,
    folder: Path,
    say: Callable[[str], None] = lambda _m: None,
) -> pd.DataFrame:
    """Testbed up → fit runs → held-out runs → down → fit → twin → report; the long table."""
    with atomic_dir(folder) as tmp:
        lab = run(cfg, testbed, tmp, say)
        cfg.shares = lab.shares
        tab, lat = comparison(lab)
        write_table(tab, tmp / "comparison")
        tab.to_csv(tmp / "comparison.csv", index=False)
        plot_cdfs(lat, tmp / "latency_cdf.png")
        n_levels = len(cfg.fit_rate_scales)
        fit_rates = [f.summary.get("offered_rps", math.nan) for f, _ in lab.fits[:n_levels]]
        if lab.rate_aware is not None:
            lab.rate_aware.to_csv(tmp / "rate_aware.csv", index=False)
        if lab.host is not None:
            lab.host.to_csv(tmp / "host.csv", index=False)
        if lab.clean is not None:
            lab.clean.to_csv(tmp / "undisturbed.csv", index=False)
        (tmp / "report.md").write_text(report_text(cfg, lab, tab, fit_rates, lab.wall_s))
        meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
        (tmp / "validate.json").write_text(json.dumps(meta, indent=2, default=str))
    return tab
