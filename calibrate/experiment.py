"""The whole local experiment: testbed up → three workloads → twin → report → testbed down.

``mlops-twin experiment`` (and ``make testbed``) runs, from a fresh clone:

1. set-up and model build (``mlops-twin testbed build-models``),
2. ``mlops-twin testbed up`` with the local backend,
3. short **fit runs** (steady-low × 0.5 and × 3, own arrival seeds; half
   before and, reversed, half after step 4 — :mod:`calibrate.fitruns`),
4. steady-low, fluctuating and steady-high back to back with :mod:`loadgen`
   (open-loop Poisson arrivals, the twin's own arrival stream), scraping every
   service's ``/metrics``,
5. ``mlops-twin testbed down`` — always, also on error or Ctrl-C,
6. **calibration** from the fit runs' raw rows only (service time per stage at
   its CPU share, per-request overhead): ``calibration.yaml`` and
   ``calibrated-scenario.yaml`` in the run folder,
7. the same deployment and workloads in the *calibrated* twin
   (``twin.evaluate.evaluate(..., keep_records=True)``; replication 0 sees the
   very arrival instants the testbed saw) — held out: no row of step 4 went
   into the fit; the uncalibrated scenario once more for contrast,
8. ``runs/<name>/report.md`` with a table, the fidelity table (p50/p95/p99
   error % of the calibrated twin) and plots (RPS over time, latency
   percentiles over time, latency CDFs twin vs testbed per workload, CPU per
   server), each run's load-run folder, and ``summary.json``.

``--no-calibrate`` (or ``--twin-scenario``) skips steps 3 and 6.

The testbed is driven through a small :class:`Testbed` interface; the default
implementation calls the testbed's CLI in subprocesses, so this process never
hosts a service (and never imports Locust).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Protocol

import numpy as np
import pandas as pd
import typer
from rich.console import Console

from calibrate import calibration as cal
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
from loadgen.batch import BatchHook, command_hook
from loadgen.compare import (
    WorkloadOutcome,
    process_requests,
    request_process,
    stage_table,
    table,
)
from loadgen.metrics import rate
from loadgen.plots import Segment, plot_cdfs, plot_cpu, plot_latency, plot_rps
from loadgen.profile import scale_workload
from loadgen.records import ON_TIME_S
from loadgen.run import LoadRun, LoadRunError, execute, write_result
from twin.criteria import latency_summary, per_second
from twin.evaluate import Evaluation, evaluate
from twin.load import SpecError, load_deployment, load_scenario
from twin.runs import atomic_dir, write_table
from twin.spec import Deployment, Scenario, Workload

WORKLOADS = ("steady-low", "fluctuating", "steady-high")
TESTSET = Path("data/models/digits-test.npz")  # written by `mlops-twin testbed build-models`
SATURATED = 0.95  # achieved/offered below this: the testbed could not keep up


@dataclass
class Targets:
    """What a running testbed offers the load generator (URLs without trailing slash)."""

    gateway: str
    metrics: dict[str, str] = field(default_factory=dict)  # scrape target → base URL
    server_of: dict[str, str] = field(default_factory=dict)  # scrape target → emulated server
    replica_nodes: dict[str, str] = field(default_factory=dict)  # gateway replica → server
    factor: float | None = None  # host cores per emulated core, as the testbed recorded it
    notes: list[str] = field(default_factory=list)
    batch_hook: BatchHook | None = None  # runs one batch-process execution (e.g. the trainer)


class Testbed(Protocol):
    """The part of the testbed the experiment drives."""

    def build_models(self) -> None: ...

    def up(self, scenario: Path, deployment: Path) -> Targets: ...

    def down(self) -> None: ...


@dataclass
class ExperimentConfig:
    scenario: Path
    deployment: Path
    workloads: tuple[str, ...] = WORKLOADS
    duration_s: float = 100.0
    rate_scale: float = 1.0
    seed: int = 1
    replications: int = 5
    drain_s: float = 5.0
    scrape_interval_s: float = 1.0
    # images sent: the model zoo's noisy held-out set when built, else scikit-learn's digits
    inputs_file: Path | None = None
    # the twin's scenario, e.g. a calibrated one (`calibrate apply`); default: ``scenario``
    twin_scenario: Path | None = None
    # calibrate → validate: fit runs (not validation levels) calibrate the twin it compares
    calibrate: bool = True
    fit_workload: str = "steady-low"
    fit_rate_scales: tuple[float, ...] = (0.5, 3.0)
    fit_duration_s: float = 40.0  # all fit runs together (s), half before and half after
    fit_seed: int = 101
    # fit without seconds of host steal ≥ this (cores); None fits every second
    max_steal_cores: float | None = MAX_STEAL_CORES

    @classmethod
    def preset(cls, scenario: Path, deployment: Path, mode: str = "default") -> ExperimentConfig:
        """``default`` (≤ 10 min), ``quick`` (≤ 3 min) or ``ci`` (≤ 2 min) lengths."""
        lengths = {"default": (100.0, 5, 40.0), "quick": (30.0, 3, 32.0), "ci": (10.0, 2, 12.0)}
        if mode not in lengths:
            raise ValueError(f"unknown mode {mode!r} (use {', '.join(lengths)})")
        duration, reps, fit = lengths[mode]
        return cls(scenario, deployment, duration_s=duration, replications=reps, fit_duration_s=fit)

    @property
    def calibrating(self) -> bool:
        return self.calibrate and self.twin_scenario is None


def run_workloads(
    cfg: ExperimentConfig,
    sc: Scenario,
    targets: Targets,
    folder: Path,
    say: Callable[[str], None] = lambda _m: None,
) -> list[WorkloadOutcome]:
    """Offer each workload in turn to the running testbed; each gets a load-run folder."""
    outcomes = []
    for name in cfg.workloads:
        w = scale_workload(sc.workload(name), cfg.rate_scale)
        run = LoadRun(
            sc, w, targets.gateway, cfg.duration_s, seed=cfg.seed, drain_s=cfg.drain_s,
            metrics_targets=targets.metrics, scrape_interval_s=cfg.scrape_interval_s,
            replica_nodes=targets.replica_nodes or None, inputs_file=cfg.inputs_file,
            batch_hook=targets.batch_hook,
        )  # fmt: skip
        say(f"load: {name} for {cfg.duration_s:g} s")
        sub = folder / "load" / name
        result = execute(run, sub / "raw")
        write_result(run, result, sub)
        s = result.summary
        say(
            f"  {name}: offered {s['offered_rps']:.1f}/s, achieved/offered "
            f"{s['achieved_over_offered']:.3f}, p99 {1e3 * s['p99_s']:.1f} ms"
        )
        outcomes.append(WorkloadOutcome(name, result))
    return outcomes


def simulate(
    cfg: ExperimentConfig, sc: Scenario, dep: Deployment, outcomes: list[WorkloadOutcome]
) -> None:
    """The twin on the same deployment and (scaled) workloads, same seed and horizon."""
    for o in outcomes:
        w = scale_workload(sc.workload(o.name), cfg.rate_scale)
        o.twin = evaluate(sc, dep, w, cfg.duration_s, cfg.replications, cfg.seed, keep_records=True)


def manifest_accuracy(dep: Deployment, sc: Scenario, models: Path = Path("data/models")) -> float:
    """Held-out accuracy the model zoo's manifest lists for the deployed variants (or NaN)."""
    try:
        pipelines = json.loads((models / "manifest.json").read_text())["pipelines"]
        steps = next(p for p in sc.processes if p.kind == "request").steps
        key = "/".join(dep.stages[s.component].variant for s in steps)
        return float(pipelines[key])
    except (OSError, KeyError, StopIteration, ValueError, AttributeError):
        return float("nan")


def cpu_per_server(outcomes: list[WorkloadOutcome], targets: Targets) -> pd.DataFrame:
    """Cores in use per emulated server over the experiment's time axis (``t, target, rate``).

    A server's node agent reports the whole server's CPU (``node_cpu_seconds_total``);
    servers without one (the platform: gateway, registry, feature store) sum their
    processes' ``process_cpu_seconds_total``.
    """
    parts, offset = [], 0.0
    for o in outcomes:
        nodes = rate(o.load.metrics, "node_cpu_seconds_total")
        procs = rate(o.load.metrics, "process_cpu_seconds_total")
        covered = {targets.server_of.get(str(t), str(t)) for t in nodes["target"]}
        procs = procs[~procs["target"].astype(str).map(targets.server_of).isin(covered)]
        r = pd.concat([nodes, procs], ignore_index=True)
        span = len(o.load.per_second)
        r = r[(r["t"] >= 0) & (r["t"] < span)]  # the drain is not on the shared time axis
        if len(r):
            r = r.assign(t=r["t"] + offset, target=r["target"].astype(str))
            r["target"] = r["target"].map(lambda x: targets.server_of.get(x, x))
            r["t"] = r["t"].round()
            parts.append(r.groupby(["t", "target"], as_index=False)["rate"].sum())
        offset += span
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["t", "target", "rate"]
    )  # fmt: skip


def _fmt(x: float, digits: int = 1) -> str:
    return "–" if not np.isfinite(x) else f"{x:.{digits}f}"


def write_report(
    cfg: ExperimentConfig,
    sc: Scenario,
    dep: Deployment,
    targets: Targets,
    outcomes: list[WorkloadOutcome],
    folder: Path,
    wall_s: float,
    load: tuple[float, float, float] = (float("nan"),) * 3,
    calibration: cal.Calibration | None = None,
    spec: dict[str, dict[str, float]] | None = None,
    rate_aware: pd.DataFrame | None = None,
    host: pd.DataFrame | None = None,
    clean: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Plots, ``table.csv``, ``summary.json`` and ``report.md``; returns the table.

    ``load``: the host's load average when the experiment started;
    ``calibration``: what the twin was calibrated with (adds the fidelity
    section); ``spec``: the uncalibrated twin's latency percentiles (ms);
    ``host``: :func:`calibrate.host_noise.host_table` of the runs (``host.csv``);
    ``clean``: :func:`calibrate.host_noise.undisturbed_errors` (``undisturbed.csv``).
    """
    segments = []
    for o in outcomes:
        tb, tw = process_requests(o)
        ok = tb[tb["ok"]]
        twin_ps = twin_lat = None
        if tw is not None:
            rep0 = tw[tw["replication"] == 0] if "replication" in tw else tw
            twin_ps = per_second(rep0, cfg.duration_s)
            twin_lat = twin_latency_s(o.twin, request_process(o))
        segments.append(
            Segment(
                o.name,
                o.load.per_second,
                (ok["t_end"] - ok["t_arrive"]).to_numpy(),
                twin_ps,
                twin_lat,
            )
        )
    plot_rps(segments, folder / "rps.png")
    plot_latency(segments, folder / "latency.png")
    plot_cdfs(segments, folder / "latency_cdf.png")
    cpu = cpu_per_server(outcomes, targets)
    bounds, x = [], 0.0
    for o in outcomes:
        bounds.append((o.name, x))
        x += len(o.load.per_second)
    plot_cpu(cpu, folder / "cpu.png", bounds)
    write_table(cpu, folder / "cpu")

    tab = table(outcomes)
    tab.to_csv(folder / "table.csv", index=False)
    lines = [
        f"# Experiment: {sc.name} / {dep.name}",
        "",
        f"- workloads back to back: {', '.join(cfg.workloads)}; {cfg.duration_s:g} s each, "
        f"rates × {cfg.rate_scale:g}, seed {cfg.seed} (open-loop Poisson; the twin's "
        "replication 0 has the same arrival instants)",
        f"- twin: {cfg.replications} replications per workload of "
        + (
            "the scenario calibrated on this run's fit runs (`calibrated-scenario.yaml`)"
            if calibration is not None
            else f"{cfg.twin_scenario or cfg.scenario}"
        ),
        f"- inputs: {cfg.inputs_file or 'scikit-learn digits (clean)'}",
        f"- testbed: local backend, gateway {targets.gateway}, "
        f"capacity factor {targets.factor if targets.factor is not None else 'not reported'}"
        " (host cores per emulated core)",
        f"- wall time {wall_s / 60:.1f} min; host load average {load[0]:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end ({os.cpu_count()} cores, shared)",
        *[f"- {n}" for n in targets.notes],
        "",
        "| workload | offered (req/s) | achieved/offered | failures | testbed p50 / p95 / p99 "
        "(ms) | twin p50 / p95 / p99 (ms) | accuracy | loadgen lag p99 (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in tab.itertuples():
        lines.append(
            f"| {r.workload} | {r.offered_rps:.1f} | {r.achieved_over_offered:.3f} | "
            f"{r.failures} | {_fmt(r.testbed_p50_ms)} / {_fmt(r.testbed_p95_ms)} / "
            f"{_fmt(r.testbed_p99_ms)} | {_fmt(r.twin_p50_ms)} / {_fmt(r.twin_p95_ms)} / "
            f"{_fmt(r.twin_p99_ms)} | {_fmt(r.accuracy, 3)} | {_fmt(r.loadgen_lag_p99_ms)} |"
        )
    expected = manifest_accuracy(dep, sc)
    if np.isfinite(expected):
        lines += [
            "",
            f"Accuracy the model zoo's manifest lists for these variants: {expected:.3f}.",
        ]
    stages = stage_table(outcomes)
    write_table(stages, folder / "stages")
    if len(stages):
        lines += [
            "",
            "Per stage, mean (ms): testbed queue / service / HTTP hop vs twin queue / service; "
            "mean batch testbed / twin.",
            "",
            "| workload | stage | testbed q / s / hop | twin q / s | batch tb / twin |",
            "|---|---|---:|---:|---:|",
        ]
        for r in stages.itertuples():
            tq, ts = getattr(r, "twin_queue_ms", np.nan), getattr(r, "twin_service_ms", np.nan)
            lines.append(
                f"| {r.workload} | {r.stage} | {_fmt(r.testbed_queue_ms, 2)} / "
                f"{_fmt(r.testbed_service_ms, 2)} / {_fmt(r.testbed_hop_ms, 2)} | "
                f"{_fmt(tq, 2)} / {_fmt(ts, 2)} | {_fmt(r.testbed_batch, 1)} / "
                f"{_fmt(getattr(r, 'twin_batch', np.nan), 1)} |"
            )
    lines.append("")
    for r in tab.itertuples():
        if r.achieved_over_offered < SATURATED:
            lines.append(
                f"**{r.workload}: the testbed saturated** — it answered at most "
                f"{r.max_answered_rps_5s:.0f} req/s (5-s mean) of {r.offered_rps:.0f} req/s "
                f"offered (achieved/offered {r.achieved_over_offered:.3f})."
            )
        elif r.sent_on_time < SATURATED:
            lines.append(
                f"**{r.workload}: requests were answered but not offered on time** — only "
                f"{100 * r.sent_on_time:.1f}% left the load generator within "
                f"{1e3 * ON_TIME_S:.0f} ms of their scheduled time (lag p99 "
                f"{r.loadgen_lag_p99_ms:.0f} ms): every sender was waiting on a slow answer "
                "(the testbed saturated near this rate) or the host was CPU-starved (see its "
                "load average); latencies still count from the scheduled times."
            )
    if calibration is not None:
        cpu = cpu_cores(outcomes, targets, sc, cfg.duration_s, calibration)
        lines += fidelity_lines(cfg, tab, calibration, spec or {}, cpu)
        if clean is not None and cfg.max_steal_cores is not None:
            clean.to_csv(folder / "undisturbed.csv", index=False)
            lines += undisturbed_lines(clean, cfg.max_steal_cores)
        if rate_aware is not None:
            lines += rate_aware_lines(rate_aware)
    if host is not None:
        host.to_csv(folder / "host.csv", index=False)
        lines += host_lines(host)
    lines += [
        "",
        "## Requests per second",
        "![RPS](rps.png)",
        "",
        "## Latency percentiles over time",
        "![latency](latency.png)",
        "",
        "## Latency CDFs, twin vs testbed",
        "![CDFs](latency_cdf.png)",
        "",
        "## CPU per server",
        "![CPU](cpu.png)",
        "",
        "Each workload's raw request log, per-stage visits, per-second table, scraped "
        "metrics and `prometheus.yml` are under `load/<workload>/`.",
    ]
    (folder / "report.md").write_text("\n".join(lines) + "\n")
    (folder / "summary.json").write_text(
        json.dumps(
            {
                "wall_s": wall_s,
                "calibrated": calibration is not None,
                "table": json.loads(tab.to_json(orient="records")),
            },
            indent=2,
        )
    )
    return tab


def run_experiment(
    cfg: ExperimentConfig,
    testbed: Testbed,
    out_dir: Path,
    say: Callable[[str], None] = lambda _m: None,
    build: bool = True,
) -> pd.DataFrame:
    """The whole loop (module doc); the testbed is brought down whatever happens."""
    started, load = time.perf_counter(), os.getloadavg()
    sc = load_scenario(cfg.scenario)
    dep = load_deployment(cfg.deployment)
    for name in cfg.workloads:
        sc.workload(name)  # fail before anything starts when a workload is missing
    levels = []
    if cfg.calibrating:
        levels = [scale_workload(w, cfg.rate_scale)
                  for w in fit_levels(sc, cfg.fit_workload, cfg.fit_rate_scales)]  # fmt: skip
    with atomic_dir(out_dir) as folder:
        if build:
            say("building models")
            testbed.build_models()
        if cfg.inputs_file is None and TESTSET.is_file():
            cfg.inputs_file = TESTSET
        say("testbed up")
        fits = []
        try:
            targets = testbed.up(cfg.scenario, cfg.deployment)
            part = cfg.fit_duration_s / 2 / max(len(levels), 1)

            def one(w: Workload, i: int) -> None:
                sub = folder / "load" / f"{w.name}-{i}"
                fits.append(fit_run(sc, w, targets, part, cfg.fit_seed + i, sub, 2.0, say,
                                    cfg.inputs_file))  # fmt: skip

            for i, w in enumerate(levels):
                one(w, i)
            outcomes = run_workloads(cfg, sc, targets, folder, say)
            for i, w in enumerate(reversed(levels)):
                one(w, len(levels) + i)
        finally:
            say("testbed down")
            testbed.down()
        calibration, spec, rate_aware = None, {}, None
        twin_sc = load_scenario(cfg.twin_scenario) if cfg.twin_scenario else sc
        if cfg.calibrating:
            say("calibrating the twin from the fit runs")
            shares = stage_shares(sc, dep, targets.factor or 1.0)
            calibration = fit_run_calibration(
                sc, cfg.scenario, fits, shares, deployment=dep, targets=targets,
                max_steal_cores=cfg.max_steal_cores,
            )  # fmt: skip
            (folder / "calibration.yaml").write_text(cal.dump(calibration))
            twin_sc, _ = cal.calibrated_scenario(sc, calibration, shares)
            (folder / "calibrated-scenario.yaml").write_text(
                cal.dump_model(twin_sc, exclude_defaults=True)
            )
            spec = spec_latencies(cfg, sc, dep)
        say("twin: simulating the same deployment and workloads")
        simulate(cfg, twin_sc, dep, outcomes)
        if calibration is not None:
            rate_aware = rate_aware_errors(sc, dep, calibration, shares, outcomes, cfg.duration_s,
                                           cfg.replications, cfg.seed, cfg.rate_scale)  # fmt: skip
        wall_s = time.perf_counter() - started
        host = run_host_table(fits, outcomes)
        clean = None
        if calibration is not None and cfg.max_steal_cores is not None:
            clean = undisturbed_errors(
                [(o.name, "near saturation" if o.name == "steady-high" else "held-out", o.load,
                  twin_latency_s(o.twin, request_process(o))) for o in outcomes],
                cfg.max_steal_cores,
            )  # fmt: skip
        return write_report(cfg, sc, dep, targets, outcomes, folder, wall_s, load, calibration,
                            spec, rate_aware, host, clean)  # fmt: skip


def twin_latency_s(ev: Evaluation, process: str | None = None) -> np.ndarray:
    """Finished twin requests' latency (s), of ``process`` when given (all replications)."""
    req = ev.requests if ev.requests is not None else pd.DataFrame(columns=["t_end"])
    req = req.dropna(subset=["t_end"])
    if process is not None and "process" in req:
        req = req[req["process"].astype(str) == process]
    return (req["t_end"] - req["t_arrive"]).to_numpy(dtype=float)


def spec_latencies(
    cfg: ExperimentConfig, sc: Scenario, dep: Deployment
) -> dict[str, dict[str, float]]:
    """The uncalibrated scenario's request latency percentiles (ms) per workload, for contrast."""
    out = {}
    request = next((p.name for p in sc.processes if p.kind == "request"), None)
    for name in cfg.workloads:
        w = scale_workload(sc.workload(name), cfg.rate_scale)
        ev = evaluate(sc, dep, w, cfg.duration_s, 1, cfg.seed, keep_records=True)
        req = ev.requests if ev.requests is not None else pd.DataFrame(columns=["t_end"])
        req = req.dropna(subset=["t_end"])
        req = req[req["process"].astype(str) == request] if request else req
        out[name] = latency_summary(1e3 * (req["t_end"] - req["t_arrive"]).to_numpy())
    return out


def error_pct(twin: float, testbed: float) -> float:
    """(twin − testbed) / testbed in % (NaN when either is missing or testbed is 0)."""
    if not (np.isfinite(twin) and np.isfinite(testbed)) or testbed == 0:
        return float("nan")
    return 100.0 * (twin - testbed) / testbed


def cpu_cores(
    outcomes: list[WorkloadOutcome],
    targets: Targets,
    sc: Scenario,
    duration_s: float,
    calibration: cal.Calibration,
) -> dict[str, tuple[float, float]]:
    """Per workload, mean cores on the emulated servers: testbed (scraped) and calibrated twin."""
    servers = set(sc.server_instances())
    out = {}
    for o in outcomes:
        cpu = cpu_per_server([o], targets)
        cpu = cpu[cpu["target"].astype(str).isin(servers)]
        tb = float(cpu.groupby("t")["rate"].sum().mean()) if len(cpu) else float("nan")
        tw = float("nan")
        if o.twin is not None:
            tw = twin_cpu_cores(o.twin.visits, o.twin.replications, duration_s, sc,
                                calibration.cpu)  # fmt: skip
        out[o.name] = (tb, tw)
    return out


def fidelity_lines(
    cfg: ExperimentConfig,
    tab: pd.DataFrame,
    calibration: cal.Calibration,
    spec: dict[str, dict[str, float]],
    cpu: dict[str, tuple[float, float]] | None = None,
) -> list[str]:
    """The report's calibrated-twin section: how it was fitted and its error per workload."""
    cpu = cpu or {}
    lines = [
        "",
        "## Calibrated twin vs testbed (held-out workloads)",
        "",
        f"- fit runs (their rows only, not the workloads above): {cfg.fit_workload} × "
        + " and × ".join(f"{x * cfg.rate_scale:g}" for x in cfg.fit_rate_scales)
        + f", {cfg.fit_duration_s / 2 / len(cfg.fit_rate_scales):g} s each before and as long "
        f"after the workloads, arrival seeds from {cfg.fit_seed} (workloads: seed {cfg.seed})",
        "- fitted service times (mean at batch 1): "
        + ", ".join(
            f"{f.component}/{f.variant} {f.service_time.batch_mean_ms(1):.3f} ms "
            f"({f.dist}/{f.structure}, share {f.cpu_share:g}, n {f.n})"
            for f in calibration.fits
        ),
        f"- {overhead_text(calibration)}",
        f"- fitted from: {calibration.source}",
        "- the twin above is this calibrated scenario (`calibrated-scenario.yaml`, from "
        "`calibration.yaml`); the uncalibrated spec's p50 is shown for contrast",
        "- CPU: testbed = every process on the emulated servers (node agents); twin = batch "
        "compute plus each server's CPU beyond it fitted on the fit runs (idle + per visit): "
        + (
            ", ".join(
                f"{m.server} {m.idle_cores:.3f} cores + {m.per_visit_ms:.3f} ms/visit"
                for m in calibration.cpu
            )
            or "none measured"
        ),
        "",
        "| workload | level | p50 error % | p95 error % | p99 error % | goal (p50 ≤ 10%, "
        "p95 ≤ 15%) | uncalibrated p50 (ms) | CPU cores testbed / twin |",
        "|---|---|---:|---:|---:|---|---:|---:|",
    ]
    for r in tab.itertuples():
        err = {q: error_pct(getattr(r, f"twin_{q}_ms"), getattr(r, f"testbed_{q}_ms"))
               for q in ("p50", "p95", "p99")}  # fmt: skip
        near = r.workload == "steady-high"
        ok = abs(err["p50"]) <= 10 and abs(err["p95"]) <= 15
        goal = "reported separately" if near else ("met" if ok else "not met")
        lines.append(
            f"| {r.workload} | {'near saturation' if near else 'held-out'} | "
            f"{_fmt(err['p50'])} | {_fmt(err['p95'])} | {_fmt(err['p99'])} | {goal} | "
            f"{_fmt(spec.get(r.workload, {}).get('p50', np.nan))} | "
            f"{_fmt(cpu.get(r.workload, (np.nan,) * 2)[0], 3)} / "
            f"{_fmt(cpu.get(r.workload, (np.nan,) * 2)[1], 3)} |"
        )
    return lines


# --------------------------------------------------------------------------- the real testbed


class CliTestbed:
    """The testbed driven through ``mlops-twin testbed …`` in subprocesses (local backend).

    Services run in their own processes whatever happens here; ``down`` is safe to
    call when ``up`` failed half-way (the testbed's own ``down`` cleans up by state).
    """

    def __init__(
        self, backend: str = "local", state_dir: Path | None = None, log: Path | None = None
    ) -> None:
        self.backend, self.state_dir, self.log = backend, state_dir, log

    def _cli(self, *args: str, timeout_s: float = 900.0) -> str:
        argv = [sys.executable, "-c", "from twin.cli import main; main()", "testbed", *args]
        if self.state_dir is not None and args[0] in ("up", "down", "status"):
            argv += ["--state-dir", str(self.state_dir)]
        env = {**os.environ, "ORT_DISABLE_TELEMETRY": "1"}
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, env=env)
        if self.log is not None:
            with self.log.open("a") as f:
                f.write(f"$ mlops-twin testbed {' '.join(args)}\n{res.stdout}{res.stderr}\n")
        if res.returncode != 0:
            message = (res.stderr.strip().splitlines() or ["no message"])[-1]
            raise RuntimeError(f"mlops-twin testbed {args[0]} failed: {message}")
        return res.stdout

    def build_models(self) -> None:
        self._cli("build-models")

    def up(self, scenario: Path, deployment: Path) -> Targets:
        up = json.loads(
            self._cli(
                "up", str(scenario), "-d", str(deployment), "--backend", self.backend, "--json"
            )
        )
        status = json.loads(self._cli("status", "--json"))
        return targets_from_status(status, up.get("endpoints"))

    def down(self) -> None:
        self._cli("down", timeout_s=120.0)


def targets_from_status(status: dict, endpoints: dict | None = None) -> Targets:
    """Scrape targets, replica → server map and trainer hook of a running testbed.

    ``status``: ``testbed status --json``; ``endpoints``: the ``endpoints`` of
    ``testbed up --json`` (node agents, registry, feature store), when known.
    """
    endpoints = endpoints or {}
    gateway = status["gateway"].rstrip("/")
    metrics = {"gateway": gateway}
    server_of = {"gateway": "platform"}
    replica_nodes = {}
    host = gateway.split("//", 1)[-1].rsplit(":", 1)[0]
    for inst in status.get("instances", []):
        metrics[inst["name"]] = f"http://{host}:{inst['port']}"
        server_of[inst["name"]] = inst["node"]
        replica_nodes[inst["name"]] = inst["node"]
    for service in ("registry", "features"):
        if endpoints.get(service):
            metrics[service] = endpoints[service].rstrip("/")
            server_of[service] = "platform"
    for node, url in (endpoints.get("nodes") or {}).items():
        metrics[f"agent:{node}"] = url.rstrip("/")
        server_of[f"agent:{node}"] = node
    hook = None
    if endpoints.get("registry") and endpoints.get("features"):
        # the scenario's batch processes (retraining) run the testbed's trainer job
        hook = command_hook(
            [sys.executable, "-m", "testbed.services.trainer", "--registry",
             endpoints["registry"], "--features", endpoints["features"], "--steps", "50"]
        )  # fmt: skip
    return Targets(
        gateway=gateway,
        metrics=metrics,
        server_of=server_of,
        replica_nodes=replica_nodes,
        factor=status.get("factor"),
        notes=[f"backend {status.get('backend', '?')}"],
        batch_hook=hook,
    )


# --------------------------------------------------------------------------- the command

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def experiment(
    scenario: Annotated[Path, typer.Option(help="Scenario YAML.")] = Path(
        "examples/digits-pipeline.yaml"
    ),
    deployment: Annotated[Path, typer.Option(help="Deployment YAML.")] = Path(
        "examples/digits-pipeline.deployment.yaml"
    ),
    name: Annotated[str, typer.Option(help="Run folder name under runs/.")] = "",
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Run folder (instead of runs/<name>).")
    ] = None,
    quick: Annotated[bool, typer.Option(help="30 s per workload (≤ 3 min).")] = False,
    ci: Annotated[bool, typer.Option(help="10 s per workload (≤ 2 min), for CI.")] = False,
    duration: Annotated[float, typer.Option(help="Override seconds per workload.")] = 0.0,
    rate_scale: Annotated[float, typer.Option(help="Multiply every rate by this.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of arrivals (testbed and twin).")] = 1,
    backend: Annotated[str, typer.Option(help="Testbed backend.")] = "local",
    state_dir: Annotated[
        Path, typer.Option(help="Testbed state folder (one per running testbed).")
    ] = Path(".testbed"),
    twin_scenario: Annotated[
        Path | None, typer.Option(help="Scenario the twin simulates (e.g. a calibrated one).")
    ] = None,
    rebuild: Annotated[
        bool, typer.Option(help="Rebuild the model zoo even when data/models has one.")
    ] = False,
    calibrate: Annotated[
        bool,
        typer.Option(help="Fit runs first; the twin compared is the one calibrated on them."),
    ] = True,
    max_steal: Annotated[
        float,
        typer.Option(
            help="Fit without the requests of seconds in which the hypervisor stole at least "
            "this many cores from the host; 0 fits every second."
        ),
    ] = MAX_STEAL_CORES,
) -> None:
    """Testbed up → fit runs and three workloads → down → calibrated twin → report.md."""
    err = Console(stderr=True)
    mode = "ci" if ci else "quick" if quick else "default"
    cfg = ExperimentConfig.preset(scenario, deployment, mode)
    cfg.rate_scale, cfg.seed, cfg.twin_scenario = rate_scale, seed, twin_scenario
    cfg.calibrate, cfg.max_steal_cores = calibrate, max_steal or None
    if duration > 0:
        cfg.duration_s = duration
    out = out_dir or Path("runs") / (name or time.strftime(f"experiment-{mode}-%Y%m%d-%H%M%S"))
    out.parent.mkdir(parents=True, exist_ok=True)
    testbed = CliTestbed(backend, state_dir, log=out.parent / f".{out.name}.testbed.log")
    t_start = time.monotonic()
    say = lambda m: err.print(f"[{time.monotonic() - t_start:5.0f} s] {m}", highlight=False)  # noqa: E731
    try:
        build = rebuild or not (TESTSET.parent / "manifest.json").is_file()
        tab = run_experiment(cfg, testbed, out, say, build=build)
    except (RuntimeError, ValueError, KeyError, SpecError, LoadRunError) as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    sections = (out / "report.md").read_text().split("\n## ")
    print(sections[0])  # the table; and the calibrated twin's fidelity when there is one
    for part in sections[1:]:
        if part.startswith("Calibrated twin"):
            print("## " + part.rstrip())
    err.print(f"report: {out / 'report.md'} ({len(tab)} workloads)", highlight=False)
