"""The twin beside the testbed, once: the loop ``mlops-twin experiment`` and ``calibrate validate``
share.

:func:`run` does, in a folder the caller owns (each caller wraps it in
:func:`twin.runs.atomic_dir` and writes its own report from the :class:`LabRun`):

1. ``testbed up`` with the deployment,
2. **fit runs** (the fit workload × each fit level, own arrival seeds; half
   before and, reversed, half after step 3 so a drift of the host's background
   load cannot favour either side — :mod:`lab.fitruns`),
3. the held-out workloads back to back with :mod:`loadgen` (open-loop Poisson
   arrivals, the twin's own arrival stream), scraping every service's ``/metrics``,
4. ``testbed down`` — always, also on error or Ctrl-C,
5. **calibration** from the fit runs' raw rows only: ``calibration.yaml`` and
   ``calibrated-scenario.yaml`` in the folder,
6. the same deployment and (scaled) workloads in the calibrated twin
   (replication 0 sees the very arrival instants the testbed saw), the
   uncalibrated scenario once more for contrast, the rate-aware variant,
7. the host's steal per run and the fidelity without disturbed seconds.

Without calibration (``calibrate=False`` or a ``twin_scenario``) steps 2 and 5
are skipped and the twin is the given scenario.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from calibrate import calibration as cal
from calibrate.enforce import fit_tick, visits_stall_share, with_quota_tick
from calibrate.quota import CFS_TICK_MS, StageCpu, quota_scenario, stage_cpu
from lab.compare import WorkloadOutcome, request_process, twin_latency_s
from lab.fitruns import fit_levels, fit_run, fit_run_calibration, rate_aware_errors, stage_shares
from lab.host_noise import MAX_STEAL_CORES, run_host_table, undisturbed_errors
from loadgen.run import LoadResult, LoadRun, execute, write_result
from testbed.client import Targets, Testbed
from twin.criteria import latency_summary, stage_capacity_rps
from twin.evaluate import evaluate
from twin.load import load_deployment, load_scenario
from twin.spec import Deployment, Scenario, Workload
from twin.workload import rate_series, scale_workload

WORKLOADS = ("steady-low", "fluctuating", "steady-high")
Say = Callable[[str], None]


@dataclass
class ExperimentConfig:
    """What the lab runs: the deployment, the held-out workloads and how the twin is fitted."""

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
    # a light level (ρ ≈ 0.15 of the bottleneck: the model's unstalled speed) and one near
    # ρ 0.6 (server CPU per call apart from idle CPU); none near saturation
    fit_rate_scales: tuple[float, ...] = (0.5, 2.0)
    fit_duration_s: float = 40.0  # all fit runs together (s), half before and half after
    fit_seed: int = 101
    fit_drain_s: float = 2.0  # seconds each fit run waits for answers after its arrivals
    # fit without seconds of host steal ≥ this (cores); None fits every second
    max_steal_cores: float | None = MAX_STEAL_CORES
    near_saturation: tuple[str, ...] = ("steady-high",)  # reported separately
    profile: Path | None = None  # a profile folder for variants the fit runs did not exercise
    shares: dict[str, float] = field(default_factory=dict)  # stage → host cores; {}: the plan's
    contrast: bool = True  # also simulate the uncalibrated scenario (its p50 in the report)

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

    def level(self, workload: str) -> str:
        """``near saturation`` or ``held-out``: how the reports judge the workload."""
        return "near saturation" if workload in self.near_saturation else "held-out"

    def scaled_workloads(self, scenario: Scenario) -> dict[str, Workload]:
        """The run's workloads at its rate scale, by name: built once, testbed and twin alike."""
        return {n: scale_workload(scenario.workload(n), self.rate_scale) for n in self.workloads}


@dataclass
class LabRun:
    """Everything one pass of the loop measured and computed, for the report writers."""

    cfg: ExperimentConfig
    scenario: Scenario  # as given (the testbed's)
    deployment: Deployment
    twin_scenario: Scenario  # what the twin simulated: calibrated, given or ``scenario``
    targets: Targets
    outcomes: list[WorkloadOutcome]
    workloads: dict[str, Workload]  # the held-out workloads as offered (scaled)
    fits: list[tuple[LoadResult, Workload]] = field(default_factory=list)
    calibration: cal.Calibration | None = None
    shares: dict[str, float] = field(default_factory=dict)  # stage → host cores
    spec: dict[str, dict[str, float]] = field(default_factory=dict)  # uncalibrated p's (ms)
    rate_aware: pd.DataFrame | None = None
    host: pd.DataFrame | None = None
    clean: pd.DataFrame | None = None  # fidelity without disturbed seconds
    stage_cpu: dict[str, StageCpu] = field(default_factory=dict)  # fitted CPU per stage
    quota_tick_ms: float = CFS_TICK_MS  # when the twin's quotas are enforced (fitted)
    started_s: float = 0.0  # time.perf_counter() at the start
    load: tuple[float, float, float] = (float("nan"),) * 3  # host load average at the start

    @property
    def wall_s(self) -> float:
        return time.perf_counter() - self.started_s


def run_workloads(
    cfg: ExperimentConfig,
    sc: Scenario,
    targets: Targets,
    folder: Path,
    say: Say = lambda _m: None,
    workloads: dict[str, Workload] | None = None,
) -> list[WorkloadOutcome]:
    """Offer each workload in turn to the running testbed; each gets a load-run folder."""
    outcomes = []
    for name, w in (workloads or cfg.scaled_workloads(sc)).items():
        run = LoadRun(
            sc,
            w,
            targets.gateway,
            cfg.duration_s,
            seed=cfg.seed,
            drain_s=cfg.drain_s,
            metrics_targets=targets.metrics,
            scrape_interval_s=cfg.scrape_interval_s,
            replica_nodes=targets.replica_nodes or None,
            inputs_file=cfg.inputs_file,
            batch_hook=targets.batch_hook,
        )
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
    cfg: ExperimentConfig,
    sc: Scenario,
    dep: Deployment,
    outcomes: list[WorkloadOutcome],
    workloads: dict[str, Workload],
    per_workload: dict[str, Scenario] | None = None,
) -> None:
    """The twin on the same deployment and (scaled) workloads, same seed and horizon.

    ``per_workload``: a scenario of its own for a workload (by name), else ``sc``.
    """
    for o in outcomes:
        w = workloads[o.name]
        s = (per_workload or {}).get(o.name, sc)
        o.twin = evaluate(s, dep, w, cfg.duration_s, cfg.replications, cfg.seed, keep_records=True)


def spec_latencies(
    cfg: ExperimentConfig,
    sc: Scenario,
    dep: Deployment,
    workloads: dict[str, Workload] | None = None,
) -> dict[str, dict[str, float]]:
    """The uncalibrated scenario's request latency percentiles (ms) per workload, for contrast."""
    out = {}
    request = next((p.name for p in sc.processes if p.kind == "request"), None)
    for name, w in (workloads or cfg.scaled_workloads(sc)).items():
        ev = evaluate(sc, dep, w, cfg.duration_s, 1, cfg.seed, keep_records=True)
        out[name] = latency_summary(1e3 * twin_latency_s(ev, request))
    return out


def _measure(
    cfg: ExperimentConfig,
    testbed: Testbed,
    sc: Scenario,
    workloads: dict[str, Workload],
    levels: list[Workload],
    folder: Path,
    say: Say,
) -> tuple[Targets, list[WorkloadOutcome], list[tuple[LoadResult, Workload]]]:
    """Steps 1–4: up, fit runs around the held-out workloads, down (whatever happens)."""
    say("testbed up")
    fits: list[tuple[LoadResult, Workload]] = []
    try:
        targets = testbed.up(cfg.scenario, cfg.deployment)
        part = cfg.fit_duration_s / 2 / max(len(levels), 1)

        def one(w: Workload, i: int) -> None:
            sub = folder / "load" / f"{w.name}-{i}"
            fits.append(
                fit_run(
                    sc,
                    w,
                    targets,
                    part,
                    cfg.fit_seed + i,
                    sub,
                    cfg.fit_drain_s,
                    say,
                    cfg.inputs_file,
                )
            )

        for i, w in enumerate(levels):
            one(w, i)
        outcomes = run_workloads(cfg, sc, targets, folder, say, workloads)
        for i, w in enumerate(reversed(levels)):
            one(w, len(levels) + i)
    finally:
        say("testbed down")
        testbed.down()
    return targets, outcomes, fits


def _calibrate(lab: LabRun, folder: Path, say: Say) -> None:
    """Step 5: fit on the fit runs' rows; write the calibration and the calibrated scenario."""
    cfg, sc = lab.cfg, lab.scenario
    say("calibrating the twin from the fit runs")
    lab.calibration = fit_run_calibration(
        sc,
        cfg.scenario,
        lab.fits,
        lab.shares,
        cfg.profile,
        deployment=lab.deployment,
        targets=lab.targets,
        max_steal_cores=cfg.max_steal_cores,
    )
    (folder / "calibration.yaml").write_text(cal.dump(lab.calibration))
    fit_dirs = sorted(p.parent for p in (folder / "load").glob("fit-*/metrics.parquet"))
    lab.stage_cpu = stage_cpu(fit_dirs, lab.deployment, lab.shares)
    if lab.stage_cpu:
        # stages under the testbed's CPU quota: model and server CPU per call from the
        # fit runs' counters, full speed until a period's quota is used (calibrate.quota)
        lab.twin_scenario = quota_scenario(
            sc, lab.calibration, lab.deployment, lab.stage_cpu, lab.shares
        )
        lab.quota_tick_ms = _quota_tick(lab, say)
        lab.twin_scenario = with_quota_tick(lab.twin_scenario, lab.quota_tick_ms)
    else:  # no counters (e.g. another backend): each server's CPU per visit, no quota
        server_cpu = cal.server_cpu_of(lab.calibration, lab.deployment.allocation)
        lab.twin_scenario, _ = cal.calibrated_scenario(
            sc, lab.calibration, lab.shares, server_cpu=server_cpu
        )
    (folder / "calibrated-scenario.yaml").write_text(
        cal.dump_model(lab.twin_scenario, exclude_defaults=True)
    )
    if cfg.contrast:
        lab.spec = spec_latencies(cfg, sc, lab.deployment, lab.workloads)


def _quota_tick(lab: LabRun, say: Say) -> float:
    """When the twin's CPU quotas are enforced (ms; :mod:`calibrate.enforce`), fitted so
    the bottleneck (the stage of lowest capacity in the twin, as the utilisation table
    names it) stalls in the twin as often as in the fit runs; the default without visits
    to fit on."""
    stage = min(
        lab.stage_cpu,
        key=lambda c: stage_capacity_rps(lab.twin_scenario, lab.deployment, c),
    )
    points = [
        (float(result.summary.get("offered_rps", 0.0)), visits_stall_share(result.visits, stage))
        for result, _w in lab.fits
    ]
    fit = fit_tick(lab.twin_scenario, lab.deployment, stage, points)
    if fit is None:
        return CFS_TICK_MS
    say(
        f"quota check fitted on {stage}'s stalls: {fit.tick_ms:g} ms (testbed stalled "
        + ", ".join(f"{100 * x:.0f}" for x in fit.testbed)
        + " %; twin "
        + ", ".join(f"{100 * x:.0f}" for x in fit.twin[fit.tick_ms])
        + " %)"
    )
    return fit.tick_ms


def check(cfg: ExperimentConfig) -> tuple[Scenario, Deployment]:
    """The scenario and deployment, with every workload looked up: fail before anything starts."""
    sc, dep = load_scenario(cfg.scenario), load_deployment(cfg.deployment)
    for name in cfg.workloads:
        sc.workload(name)
    return sc, dep


def run(
    cfg: ExperimentConfig, testbed: Testbed, folder: Path, say: Say = lambda _m: None
) -> LabRun:
    """The whole loop (module doc) into ``folder``; the testbed is brought down whatever happens."""
    started, load = time.perf_counter(), os.getloadavg()
    sc, dep = check(cfg)
    workloads = cfg.scaled_workloads(sc)
    levels = []
    if cfg.calibrating:
        fit = fit_levels(sc, cfg.fit_workload, cfg.fit_rate_scales)
        levels = [scale_workload(w, cfg.rate_scale) for w in fit]
    targets, outcomes, fits = _measure(cfg, testbed, sc, workloads, levels, folder, say)
    twin_sc = load_scenario(cfg.twin_scenario) if cfg.twin_scenario else sc
    lab = LabRun(cfg, sc, dep, twin_sc, targets, outcomes, workloads, fits)
    lab.started_s, lab.load = started, load
    if cfg.calibrating:
        lab.shares = dict(cfg.shares) or stage_shares(sc, dep, targets.factor or 1.0)
        _calibrate(lab, folder, say)
    say("twin: simulating the same deployment and workloads")
    per_workload = None
    if lab.stage_cpu and lab.calibration is not None:
        # the per-request overhead grows with the host's load: each workload's twin has
        # it at the workload's mean offered rate (interpolated between the fit levels')
        per_workload = {
            name: quota_scenario(
                sc,
                lab.calibration,
                dep,
                lab.stage_cpu,
                lab.shares,
                rate_per_s=float(rate_series(w, cfg.duration_s).mean()),
                tick_ms=lab.quota_tick_ms,
            )
            for name, w in workloads.items()
        }
    simulate(cfg, lab.twin_scenario, dep, outcomes, workloads, per_workload)
    if lab.calibration is not None:
        lab.rate_aware = rate_aware_errors(
            sc,
            dep,
            lab.calibration,
            lab.shares,
            outcomes,
            cfg.duration_s,
            cfg.replications,
            cfg.seed,
            workloads,
        )
    lab.host = run_host_table(fits, outcomes)
    if lab.calibration is not None and cfg.max_steal_cores is not None:
        lab.clean = undisturbed_errors(
            [
                (o.name, cfg.level(o.name), o.load, twin_latency_s(o.twin, request_process(o)))
                for o in outcomes
                if o.twin is not None
            ],
            cfg.max_steal_cores,
        )
    return lab
