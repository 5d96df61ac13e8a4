"""The whole local experiment: testbed up → three workloads → twin → report → testbed down.

``mlops-twin experiment`` (and ``make testbed``) runs, from a fresh clone:

1. set-up and model build (``mlops-twin testbed build-models``),
2. the lab's loop (:mod:`lab.pipeline`): ``testbed up`` with the local backend,
   short **fit runs** (steady-low × 0.5 and × 3, own arrival seeds; half
   before and, reversed, half after) around steady-low, fluctuating and
   steady-high back to back, ``testbed down`` — always, also on error or
   Ctrl-C —, **calibration** from the fit runs' raw rows only
   (``calibration.yaml``, ``calibrated-scenario.yaml``), the same deployment and
   workloads in the *calibrated* twin (replication 0 sees the very arrival
   instants the testbed saw; held out: no row of a workload went into the fit),
   the uncalibrated scenario once more for contrast,
3. ``runs/<name>/report.md`` with a table, the fidelity table (p50/p95/p99
   error % of the calibrated twin) and plots (RPS over time, latency
   percentiles over time, latency CDFs twin vs testbed per workload, CPU per
   server), each run's load-run folder, and ``summary.json``.

``--no-calibrate`` (or ``--twin-scenario``) skips the fit runs and the calibration.

The testbed is driven through :class:`testbed.client.Testbed`; the default
implementation calls the testbed's CLI in subprocesses, so this process never
hosts a service (and never imports Locust).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import typer
from rich.console import Console

from calibrate import calibration as cal
from lab.compare import (
    cpu_per_server,
    error_pct,
    fmt,
    process_requests,
    request_process,
    server_cores,
    stage_table,
    table,
    twin_cpu_cores,
    twin_latency_s,
)
from lab.fitruns import overhead_text, rate_aware_lines
from lab.host_noise import MAX_STEAL_CORES, host_lines, undisturbed_lines
from lab.pipeline import ExperimentConfig, LabRun, check, run
from lab.utilisation import utilisation_lines, utilisation_table
from loadgen.plots import Segment, plot_cdfs, plot_cpu, plot_latency, plot_rps
from loadgen.records import ON_TIME_S
from loadgen.run import LoadRunError
from testbed.client import CliTestbed, Testbed
from twin.criteria import per_second
from twin.load import SpecError
from twin.runs import atomic_dir, write_table
from twin.spec import Deployment, Scenario

TESTSET = Path("data/models/digits-test.npz")  # written by `mlops-twin testbed build-models`
SATURATED = 0.95  # achieved/offered below this: the testbed could not keep up


def manifest_accuracy(dep: Deployment, sc: Scenario, models: Path = Path("data/models")) -> float:
    """Held-out accuracy the model zoo's manifest lists for the deployed variants (or NaN)."""
    try:
        pipelines = json.loads((models / "manifest.json").read_text())["pipelines"]
        steps = next(p for p in sc.processes if p.kind == "request").steps
        key = "/".join(dep.stages[s.component].variant for s in steps)
        return float(pipelines[key])
    except (OSError, KeyError, StopIteration, ValueError, AttributeError):
        return float("nan")


def run_experiment(
    cfg: ExperimentConfig,
    testbed: Testbed,
    out_dir: Path,
    say: Callable[[str], None] = lambda _m: None,
    build: bool = True,
) -> pd.DataFrame:
    """Build the models, run the lab's loop, write the report; returns the report's table."""
    check(cfg)
    with atomic_dir(out_dir) as folder:
        if build:
            say("building models")
            testbed.build_models()
        if cfg.inputs_file is None and TESTSET.is_file():
            cfg.inputs_file = TESTSET
        return write_report(run(cfg, testbed, folder, say), folder)


# --------------------------------------------------------------------------- the report


def write_report(lab: LabRun, folder: Path) -> pd.DataFrame:
    """Plots, ``table.csv``, ``summary.json`` and ``report.md``; returns the table."""
    wall_s = lab.wall_s
    write_plots(lab, folder)
    tab = table(lab.outcomes)
    tab.to_csv(folder / "table.csv", index=False)
    stages = stage_table(lab.outcomes)
    write_table(stages, folder / "stages")
    lines = header_lines(lab, wall_s) + table_lines(tab)
    lines += accuracy_lines(lab) + stage_lines(stages) + saturation_lines(tab)
    util = utilisation_table(lab) if lab.calibration is not None else pd.DataFrame()
    if lab.calibration is not None:
        cpu = cpu_cores(lab)
        if lab.stage_cpu and not util.empty:
            # the quota twin's CPU: what its stages ran for (lab.utilisation), not wall busy
            used = (util["twin_busy"] * util["share_cores"]).groupby(util["workload"]).sum()
            cpu = {w: (tb, float(used.get(w, tw))) for w, (tb, tw) in cpu.items()}
        lines += fidelity_lines(lab.cfg, tab, lab.calibration, lab.spec, cpu)
        if lab.clean is not None and lab.cfg.max_steal_cores is not None:
            lab.clean.to_csv(folder / "undisturbed.csv", index=False)
            lines += undisturbed_lines(lab.clean, lab.cfg.max_steal_cores)
        if lab.rate_aware is not None:
            lines += rate_aware_lines(lab.rate_aware)
    if not util.empty:
        util.to_csv(folder / "utilisation.csv", index=False)
        lines += utilisation_lines(util, tab)
    if lab.host is not None:
        lab.host.to_csv(folder / "host.csv", index=False)
        lines += host_lines(lab.host)
    lines += plot_lines()
    (folder / "report.md").write_text("\n".join(lines) + "\n")
    summary = {
        "wall_s": wall_s,
        "calibrated": lab.calibration is not None,
        "table": json.loads(tab.to_json(orient="records")),
    }
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    return tab


def write_plots(lab: LabRun, folder: Path) -> None:
    """RPS, latency over time, latency CDFs and CPU per server (``cpu.*`` table too)."""
    segments = []
    for o in lab.outcomes:
        tb, tw = process_requests(o)
        ok = tb[tb["ok"]]
        twin_ps = twin_lat = None
        if tw is not None and o.twin is not None:
            rep0 = tw[tw["replication"] == 0] if "replication" in tw else tw
            twin_ps = per_second(rep0, lab.cfg.duration_s)
            twin_lat = twin_latency_s(o.twin, request_process(o))
        latency = (ok["t_end"] - ok["t_arrive"]).to_numpy()
        segments.append(Segment(o.name, o.load.per_second, latency, twin_ps, twin_lat))
    plot_rps(segments, folder / "rps.png")
    plot_latency(segments, folder / "latency.png")
    plot_cdfs(segments, folder / "latency_cdf.png")
    cpu = cpu_per_server(lab.outcomes, lab.targets)
    bounds, x = [], 0.0
    for o in lab.outcomes:
        bounds.append((o.name, x))
        x += len(o.load.per_second)
    plot_cpu(cpu, folder / "cpu.png", bounds)
    write_table(cpu, folder / "cpu")


def header_lines(lab: LabRun, wall_s: float) -> list[str]:
    """Title and what ran: workloads, twin, inputs, testbed, wall time, host load."""
    cfg, targets = lab.cfg, lab.targets
    twin = (
        "the scenario calibrated on this run's fit runs (`calibrated-scenario.yaml`"
        + (
            "; stages under their CPU quota, and each workload's per-request overhead at its "
            "mean offered rate, interpolated between the fit levels')"
            if lab.stage_cpu
            else ")"
        )
        if lab.calibration is not None
        else f"{cfg.twin_scenario or cfg.scenario}"
    )
    factor = targets.factor if targets.factor is not None else "not reported"
    backend = next((n.split()[1] for n in targets.notes if n.startswith("backend ")), "local")
    return [
        f"# Experiment: {lab.scenario.name} / {lab.deployment.name}",
        "",
        f"- workloads back to back: {', '.join(cfg.workloads)}; {cfg.duration_s:g} s each, "
        f"rates × {cfg.rate_scale:g}, seed {cfg.seed} (open-loop Poisson; the twin's "
        "replication 0 has the same arrival instants)",
        f"- twin: {cfg.replications} replications per workload of " + twin,
        f"- inputs: {cfg.inputs_file or 'scikit-learn digits (clean)'}",
        f"- testbed: {backend} backend, gateway {targets.gateway}, "
        f"capacity factor {factor} (host cores per emulated core)",
        f"- wall time {wall_s / 60:.1f} min; host load average {lab.load[0]:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end ({os.cpu_count()} cores, shared)",
        *[f"- {n}" for n in targets.notes if not n.startswith("backend ")],
    ]


def table_lines(tab: pd.DataFrame) -> list[str]:
    """The main table: offered, achieved, failures, testbed and twin percentiles per workload."""
    lines = [
        "",
        "| workload | offered (req/s) | achieved/offered | failures | testbed p50 / p95 / p99 "
        "(ms) | twin p50 / p95 / p99 (ms) | accuracy | loadgen lag p99 (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in tab.itertuples():
        lines.append(
            f"| {r.workload} | {r.offered_rps:.1f} | {r.achieved_over_offered:.3f} | "
            f"{r.failures} | {fmt(r.testbed_p50_ms)} / {fmt(r.testbed_p95_ms)} / "
            f"{fmt(r.testbed_p99_ms)} | {fmt(r.twin_p50_ms)} / {fmt(r.twin_p95_ms)} / "
            f"{fmt(r.twin_p99_ms)} | {fmt(r.accuracy, 3)} | {fmt(r.loadgen_lag_p99_ms)} |"
        )
    return lines


def accuracy_lines(lab: LabRun) -> list[str]:
    """The accuracy the model zoo lists for the deployed variants, when it lists one."""
    expected = manifest_accuracy(lab.deployment, lab.scenario)
    if not np.isfinite(expected):
        return []
    return ["", f"Accuracy the model zoo's manifest lists for these variants: {expected:.3f}."]


def stage_lines(stages: pd.DataFrame) -> list[str]:
    """Per stage: testbed queue / service / hop vs twin queue / service, and batch sizes."""
    if not len(stages):
        return []
    lines = [
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
            f"| {r.workload} | {r.stage} | {fmt(r.testbed_queue_ms, 2)} / "
            f"{fmt(r.testbed_service_ms, 2)} / {fmt(r.testbed_hop_ms, 2)} | "
            f"{fmt(tq, 2)} / {fmt(ts, 2)} | {fmt(r.testbed_batch, 1)} / "
            f"{fmt(getattr(r, 'twin_batch', np.nan), 1)} |"
        )
    return lines


def saturation_lines(tab: pd.DataFrame) -> list[str]:
    """A warning per workload the testbed could not keep up with, or not offer on time."""
    lines = [""]
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
    return lines


def plot_lines() -> list[str]:
    """The plots' sections and where the raw data is."""
    return [
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


def cpu_cores(lab: LabRun) -> dict[str, tuple[float, float]]:
    """Per workload, mean cores on the emulated servers: testbed (scraped) and calibrated twin."""
    sc, servers = lab.scenario, set(lab.scenario.server_instances())
    cpu_models = lab.calibration.cpu if lab.calibration is not None else []
    out = {}
    for o in lab.outcomes:
        tb = server_cores(o, lab.targets, servers)
        tw = float("nan")
        if o.twin is not None:
            tw = twin_cpu_cores(
                o.twin.visits, o.twin.replications, lab.cfg.duration_s, sc, cpu_models
            )
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
        *fit_lines(cfg, calibration),
        "",
        "| workload | level | p50 error % | p95 error % | p99 error % | goal (p50 ≤ 10%, "
        "p95 ≤ 15%) | uncalibrated p50 (ms) | CPU cores testbed / twin |",
        "|---|---|---:|---:|---:|---|---:|---:|",
    ]
    for r in tab.itertuples():
        err = {
            q: error_pct(getattr(r, f"twin_{q}_ms"), getattr(r, f"testbed_{q}_ms"))
            for q in ("p50", "p95", "p99")
        }
        level = cfg.level(r.workload)
        ok = abs(err["p50"]) <= 10 and abs(err["p95"]) <= 15
        goal = "reported separately" if level != "held-out" else ("met" if ok else "not met")
        tb, tw = cpu.get(r.workload, (np.nan,) * 2)
        lines.append(
            f"| {r.workload} | {level} | {fmt(err['p50'])} | {fmt(err['p95'])} | "
            f"{fmt(err['p99'])} | {goal} | {fmt(spec.get(r.workload, {}).get('p50', np.nan))} | "
            f"{fmt(tb, 3)} / {fmt(tw, 3)} |"
        )
    return lines


def fit_lines(cfg: ExperimentConfig, calibration: cal.Calibration) -> list[str]:
    """How the twin was fitted: fit runs, service times, overhead, CPU beyond batch compute."""
    cpu_text = ", ".join(
        f"{m.server} {m.idle_cores:.3f} cores + {m.per_visit_ms:.3f} ms/visit"
        for m in calibration.cpu
    )
    return [
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
        + (cpu_text or "none measured"),
    ]


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


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
