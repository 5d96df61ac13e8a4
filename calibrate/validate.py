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
   — see :mod:`calibrate.fitruns`;
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
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from calibrate import calibration as cal
from calibrate.experiment import (
    ExperimentConfig,
    Targets,
    Testbed,
    WorkloadOutcome,
    cpu_per_server,
    run_workloads,
    twin_latency_s,
)
from calibrate.fitruns import (
    fit_levels,
    fit_run,
    fit_run_calibration,
    overhead_text,
    rate_aware_errors,
    rate_aware_lines,
    stage_shares,
    twin_cpu_cores,
)
from calibrate.host_noise import (
    MAX_STEAL_CORES,
    host_lines,
    run_host_table,
    undisturbed_errors,
    undisturbed_lines,
)
from loadgen.run import LoadResult
from twin.criteria import latency_summary
from twin.evaluate import evaluate
from twin.load import load_deployment, load_scenario
from twin.runs import atomic_dir, write_table
from twin.spec import Deployment, Scenario, Workload
from twin.workload import scale_workload

METRICS = ("mean_ms", "p50_ms", "p95_ms", "p99_ms", "throughput_rps", "cpu_cores")


@dataclass
class ValidateConfig:
    scenario: Path
    deployment: Path
    workloads: tuple[str, ...] = ("steady-low", "fluctuating", "steady-high")
    near_saturation: tuple[str, ...] = ("steady-high",)  # reported separately
    fit_workload: str = "steady-low"
    fit_rate_scales: tuple[float, ...] = (0.5, 3.0)  # fit levels: not validation levels
    fit_duration_s: float = 40.0
    fit_seed: int = 101
    duration_s: float = 60.0
    seed: int = 1
    replications: int = 3
    drain_s: float = 5.0
    profile: Path | None = None
    shares: dict[str, float] = field(default_factory=dict)  # component → host cores
    # fit without seconds of host steal ≥ this (cores); None fits every second
    max_steal_cores: float | None = MAX_STEAL_CORES


# --------------------------------------------------------------------------- comparison


def _latency_stats(lat_s: np.ndarray) -> dict[str, float]:
    return {f"{k}_ms": v for k, v in latency_summary(np.asarray(lat_s) * 1e3).items()}


def testbed_latency_s(o: WorkloadOutcome) -> np.ndarray:
    req = o.load.requests
    ok = req[req["ok"]]
    return (ok["t_end"] - ok["t_arrive"]).to_numpy(dtype=float)


def _request_process(sc: Scenario) -> str | None:
    return next((p.name for p in sc.processes if p.kind == "request"), None)


def testbed_cpu_cores(outcome: WorkloadOutcome, targets: Targets, servers: set[str]) -> float:
    """Mean cores the emulated servers used during the run (all processes on them)."""
    cpu = cpu_per_server([outcome], targets)
    cpu = cpu[cpu["target"].astype(str).isin(servers)]
    if cpu.empty:
        return math.nan
    return float(cpu.groupby("t")["rate"].sum().mean())


def error_pct(twin: float, testbed: float) -> float:
    if not (math.isfinite(twin) and math.isfinite(testbed)) or testbed == 0:
        return math.nan
    return 100.0 * (twin - testbed) / testbed


def _level(cfg: ValidateConfig, workload: str) -> str:
    return "near saturation" if workload in cfg.near_saturation else "held-out"


def comparison(
    cfg: ValidateConfig,
    calibrated: Scenario,
    dep: Deployment,
    outcomes: list[WorkloadOutcome],
    targets: Targets,
    calibration: cal.Calibration,
) -> tuple[pd.DataFrame, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Long table (workload, metric, twin, testbed, error_pct) and latencies for the CDFs."""
    rows, lat = [], {}
    servers = set(calibrated.server_instances())
    for o in outcomes:
        w = scale_workload(calibrated.workload(o.name), 1.0)
        ev = evaluate(calibrated, dep, w, cfg.duration_s, cfg.replications, cfg.seed,
                      keep_records=True)  # fmt: skip
        o.twin = ev
        process = _request_process(calibrated)
        tb_lat, tw_lat = testbed_latency_s(o), twin_latency_s(ev, process)
        lat[o.name] = (tb_lat, tw_lat)
        tb = _latency_stats(tb_lat)
        tw = _latency_stats(tw_lat)
        tb["throughput_rps"] = tb_lat.size / cfg.duration_s
        tw["throughput_rps"] = tw_lat.size / ev.replications / cfg.duration_s
        tb["cpu_cores"] = testbed_cpu_cores(o, targets, servers)
        tw["cpu_cores"] = twin_cpu_cores(
            ev.visits, ev.replications, cfg.duration_s, calibrated, calibration.cpu
        )
        level = _level(cfg, o.name)
        for m in METRICS:
            rows.append({"workload": o.name, "level": level, "metric": m, "twin": tw[m],
                         "testbed": tb[m], "error_pct": error_pct(tw[m], tb[m])})  # fmt: skip
    return pd.DataFrame(rows), lat


# --------------------------------------------------------------------------- report


def plot_cdfs(lat: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> None:
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


def _f(x: float, digits: int = 2) -> str:
    return "–" if not math.isfinite(x) else f"{x:.{digits}f}"


def _cpu_text(calibration: cal.Calibration) -> str:
    parts = [
        f"{m.server} {m.idle_cores:.3f} cores + {m.per_visit_ms:.3f} ms/visit"
        for m in calibration.cpu
    ]
    return ", ".join(parts) or "none measured"


def report_text(
    cfg: ValidateConfig,
    sc: Scenario,
    dep: Deployment,
    calibration: cal.Calibration,
    tab: pd.DataFrame,
    fit_rates: list[float],
    targets: Targets,
    wall_s: float,
    rate_aware: pd.DataFrame | None = None,
    host: pd.DataFrame | None = None,
    clean: pd.DataFrame | None = None,
) -> str:
    lines = [
        f"# Validation: {sc.name} / {dep.name} — testbed vs calibrated twin",
        "",
        f"- fit runs: {cfg.fit_workload} × "
        + " and × ".join(f"{x:g}" for x in cfg.fit_rate_scales)
        + f" ({', '.join(f'{r:.1f}' for r in fit_rates)} req/s offered), each "
        f"{cfg.fit_duration_s / 2 / len(cfg.fit_rate_scales):g} s before and as long after "
        f"the held-out runs, arrival seeds from {cfg.fit_seed}",
        f"- held-out runs: {', '.join(cfg.workloads)}; {cfg.duration_s:g} s each, arrival "
        f"seed {cfg.seed}; twin: {cfg.replications} replications (replication 0 has the "
        "testbed's arrival instants)",
        f"- capacity factor {targets.factor}; stage CPU shares (host cores): "
        + ", ".join(f"{k} {v:g}" for k, v in cfg.shares.items()),
        f"- fitted from: {calibration.source}",
        f"- from the fit runs: {overhead_text(calibration)}; the calibrated scenario's "
        "request process carries it as `request_overhead`",
        "- CPU use: testbed = all processes on the emulated servers (scraped); twin = the "
        "stages' batch compute plus, per server, the fit runs' measured rest (idle cores + "
        "CPU per stage visit: HTTP handling, runtime, node agent): " + _cpu_text(calibration),
        f"- wall time {wall_s / 60:.1f} min",
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
    for w, rows in tab.groupby("workload", sort=False):
        level = rows["level"].iloc[0]
        lines += ["", f"## {w} ({level})", "", "| metric | twin | testbed | error % |",
                  "|---|---:|---:|---:|"]  # fmt: skip
        for r in rows.itertuples():
            lines.append(f"| {r.metric} | {_f(r.twin)} | {_f(r.testbed)} | {_f(r.error_pct, 1)} |")
    held = tab[(tab["level"] == "held-out") & tab["metric"].isin(["p50_ms", "p95_ms"])]
    if len(held):
        lines += ["", "## Fidelity on held-out runs", ""]
        lines += ["| workload | p50 error % | p95 error % | goal |", "|---|---:|---:|---|"]
        for w, rows in held.groupby("workload", sort=False):
            e = rows.set_index("metric")["error_pct"]
            ok = abs(e.get("p50_ms", math.nan)) <= 10 and abs(e.get("p95_ms", math.nan)) <= 15
            lines.append(
                f"| {w} | {_f(e.get('p50_ms', math.nan), 1)} | {_f(e.get('p95_ms', math.nan), 1)}"
                f" | {'met' if ok else 'not met'} (p50 ≤ 10%, p95 ≤ 15%) |"
            )
    if clean is not None and cfg.max_steal_cores is not None:
        lines += undisturbed_lines(clean, cfg.max_steal_cores)
    if rate_aware is not None:
        lines += rate_aware_lines(rate_aware)
    if host is not None:
        lines += host_lines(host)
    lines += ["", "## Latency CDFs", "", "![CDFs](latency_cdf.png)", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the loop


def run_validation(
    cfg: ValidateConfig,
    testbed: Testbed,
    folder: Path,
    say: Callable[[str], None] = lambda _m: None,
) -> pd.DataFrame:
    """Testbed up → fit run → held-out runs → down → fit → twin → report; the long table."""
    started = time.perf_counter()
    sc, dep = load_scenario(cfg.scenario), load_deployment(cfg.deployment)
    with atomic_dir(folder) as tmp:
        say("testbed up")
        try:
            targets = testbed.up(cfg.scenario, cfg.deployment)
            if not cfg.shares:
                cfg.shares = stage_shares(sc, dep, targets.factor or 1.0)
            levels = fit_levels(sc, cfg.fit_workload, cfg.fit_rate_scales)
            part = cfg.fit_duration_s / 2 / len(levels)

            def one(w: Workload, i: int) -> tuple[LoadResult, Workload]:
                sub = tmp / "load" / f"{w.name}-{i}"
                return fit_run(sc, w, targets, part, cfg.fit_seed + i, sub, cfg.drain_s, say)

            # Both levels before and, in reverse order, after the held-out runs.
            fits = [one(w, i) for i, w in enumerate(levels)]
            exp = ExperimentConfig(cfg.scenario, cfg.deployment, workloads=cfg.workloads,
                                   duration_s=cfg.duration_s, seed=cfg.seed,
                                   replications=cfg.replications, drain_s=cfg.drain_s)  # fmt: skip
            outcomes = run_workloads(exp, sc, targets, tmp, say)
            fits += [one(w, len(levels) + i) for i, w in enumerate(reversed(levels))]
        finally:
            say("testbed down")
            testbed.down()
        say("fitting")
        calibration = fit_run_calibration(
            sc, cfg.scenario, fits, cfg.shares, cfg.profile, deployment=dep, targets=targets,
            max_steal_cores=cfg.max_steal_cores,
        )  # fmt: skip
        (tmp / "calibration.yaml").write_text(cal.dump(calibration))
        calibrated, _ = cal.calibrated_scenario(sc, calibration, cfg.shares)
        (tmp / "calibrated-scenario.yaml").write_text(
            cal.dump_model(calibrated, exclude_defaults=True)
        )
        say("twin: calibrated scenario on the same deployment and workloads")
        tab, lat = comparison(cfg, calibrated, dep, outcomes, targets, calibration)
        write_table(tab, tmp / "comparison")
        tab.to_csv(tmp / "comparison.csv", index=False)
        plot_cdfs(lat, tmp / "latency_cdf.png")
        fit_rates = [f.summary.get("offered_rps", math.nan) for f, _ in fits[: len(levels)]]
        rate_aware = rate_aware_errors(sc, dep, calibration, cfg.shares, outcomes,
                                       cfg.duration_s, cfg.replications, cfg.seed)  # fmt: skip
        rate_aware.to_csv(tmp / "rate_aware.csv", index=False)
        host = run_host_table(fits, outcomes)
        host.to_csv(tmp / "host.csv", index=False)
        clean = None
        if cfg.max_steal_cores is not None:
            clean = undisturbed_errors(
                [(o.name, _level(cfg, o.name), o.load, lat[o.name][1]) for o in outcomes],
                cfg.max_steal_cores,
            )
            clean.to_csv(tmp / "undisturbed.csv", index=False)
        text = report_text(cfg, sc, dep, calibration, tab, fit_rates, targets,
                           time.perf_counter() - started, rate_aware, host, clean)  # fmt: skip
        (tmp / "report.md").write_text(text)
        meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
        (tmp / "validate.json").write_text(json.dumps(meta, indent=2, default=str))
    return tab
