"""Fit runs: short load runs on a running testbed whose raw rows calibrate the twin.

Part of :mod:`lab.pipeline` (``mlops-twin experiment``, ``calibrate validate``). A fit run
offers the scenario's fit workload (steady-low) scaled to levels that are not
validation levels, with its own arrival seed; its per-visit rows give each
deployed stage's service time at the CPU share it really had, its
per-request rows the per-request overhead (latency minus the stages' queue
and service time: client lag, gateway, HTTP hops). Callers run half the fit
levels before and, reversed, half after the held-out runs, so a drift of the
host's background load cannot favour either side.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from calibrate import calibration as cal
from calibrate.fit import fit_overhead, fit_samples
from calibrate.samples import dispatch_lag, overheads, request_overheads, testbed_samples
from lab.compare import WorkloadOutcome, cpu_per_server, error_pct
from lab.host_noise import undisturbed
from loadgen.run import LoadResult, LoadRun, execute, write_result
from testbed.client import Targets
from twin.criteria import latency_summary
from twin.evaluate import evaluate
from twin.spec import Deployment, Scenario, Workload
from twin.workload import rate_series, scale_workload


def stage_shares(scenario: Scenario, deployment: Deployment, factor: float) -> dict[str, float]:
    """Host cores of the emulated server each stage runs on (its cgroup quota).

    ``cpu_cores × cpu_speed × factor`` of the machine with the stage's first
    instance, as the testbed's capacity plan gives it.
    """
    server_of = scenario.server_of()
    out = {}
    for c in scenario.components:
        row = {m: n for m, n in deployment.allocation.get(c.name, {}).items() if n > 0}
        if c.is_stage and row:
            s = server_of[next(iter(row))]
            out[c.name] = round(s.cpu_cores * s.cpu_speed * factor, 4)
    return out


def fit_levels(scenario: Scenario, workload: str, scales: tuple[float, ...]) -> list[Workload]:
    """``workload`` × each of ``scales``, named ``fit-x<scale>``."""
    base = scenario.workload(workload)
    return [
        scale_workload(base, x).model_copy(update={"name": f"fit-x{x:g}".replace(".", "p")})
        for x in scales
    ]


def fit_run(
    scenario: Scenario,
    workload: Workload,
    targets: Targets,
    duration_s: float,
    seed: int,
    folder: Path,
    drain_s: float = 5.0,
    say: Callable[[str], None] = lambda _m: None,
    inputs_file: Path | None = None,
) -> tuple[LoadResult, Workload]:
    """One fit run of ``duration_s`` (s) into ``folder`` (a load-run folder)."""
    run = LoadRun(
        scenario,
        workload,
        targets.gateway,
        duration_s,
        seed=seed,
        drain_s=drain_s,
        metrics_targets=targets.metrics,
        replica_nodes=targets.replica_nodes or None,
        inputs_file=inputs_file,
    )
    say(f"fit run: {workload.name} for {duration_s:g} s")
    result = execute(run, folder / "raw")
    write_result(run, result, folder)
    return result, workload


def fit_run_calibration(
    scenario: Scenario,
    scenario_file: Path,
    fits: list[tuple[LoadResult, Workload]],
    shares: dict[str, float],
    profile: Path | None = None,
    deployment: Deployment | None = None,
    targets: Targets | None = None,
    max_steal_cores: float | None = None,
) -> cal.Calibration:
    """Calibration from the fit runs' raw rows (plus a profile for what they lack).

    Service times per stage × variant at the stage's CPU share (``shares``:
    component → host cores); one per-request overhead distribution over all
    fit runs (the levels' mean mean and cv, :func:`calibrate.fit.fit_overhead`),
    with its measured mean/p50/p95 per offered rate. With the
    ``deployment`` the runs had, the overhead also holds each stage's batch
    dispatch lag (:func:`calibrate.samples.dispatch_lag`); with the
    ``targets`` that were scraped, each server's CPU beyond batch compute
    (:func:`fit_cpu`). With ``max_steal_cores``, service times and the overhead
    are fitted without the requests of seconds in which the hypervisor stole at
    least that much CPU from the host (:func:`lab.host_noise.undisturbed`):
    the twin models the services, not the neighbours of a shared host. The CPU
    fit keeps every second (it is a time average).
    """
    all_fits, left_out = fits, ""
    if max_steal_cores is not None:
        fits, left_out = _undisturbed_fits(fits, max_steal_cores)
    parts = []
    for result, _ in fits:
        for component, share in shares.items():
            rows = result.visits[result.visits["component"].astype(str) == component]
            if len(rows):
                parts.append(testbed_samples(rows, share))
    samples = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if profile is not None:
        prof = pd.read_parquet(profile / "samples.parquet")
        have = set(zip(samples.get("component", []), samples.get("variant", []), strict=False))
        keep = [(c, v) not in have for c, v in zip(prof["component"], prof["variant"], strict=True)]
        samples = pd.concat([samples, prof[keep]], ignore_index=True)
    models = fit_samples(samples)
    # pids restart at 0 in every run: overheads are computed run by run, then pooled
    over = pd.concat(
        [
            request_overheads(
                r.requests,
                r.visits,
                w,
                None if deployment is None else dispatch_lag(r.visits, scenario, deployment),
            ).assign(level=w.name)
            for r, w in fits
        ],
        ignore_index=True,
    )
    model, scores = fit_overhead(over["overhead_ms"].to_numpy(), over["level"].to_numpy())
    per_run = [overheads(r.requests, r.visits) for r, _ in fits]
    n = sum(o["n_requests"] for o in per_run)
    pooled = {
        k: sum(o[k] * o["n_requests"] for o in per_run) / max(n, 1)
        for k in ("hop_ms", "request_ms")
    }
    return cal.build(
        models,
        scenario,
        cal.file_sha256(scenario_file),
        source=f"{len(fits)} fit run(s)" + (f" + profile {profile}" if profile else "") + left_out,
        overheads={**pooled, "n_requests": n},
        per_request=model,
        heldout_loglik=scores,
        by_rate=cal.overhead_levels(over),
        dispatch_lag_ms=float(over["lag_ms"].mean()),
        cpu=None if targets is None else fit_cpu(all_fits, targets, scenario),
    )


def _undisturbed_fits(
    fits: list[tuple[LoadResult, Workload]], max_steal_cores: float
) -> tuple[list[tuple[LoadResult, Workload]], str]:
    """The fit runs without disturbed seconds, and a note for the calibration's source.

    A run left with no request is dropped; if every run would be, all are kept
    as they are (a fit from a disturbed host beats none) and the note says so.
    """
    kept, n_all, n_out, measured = [], 0, 0, False
    for result, w in fits:
        clean, share = undisturbed(result, max_steal_cores)
        n = len(result.requests)
        n_all += n
        if math.isnan(share):
            kept.append((result, w))
            continue
        measured = True
        n_out += n - len(clean.requests)
        if len(clean.requests):
            kept.append((clean, w))
    if not measured:
        return fits, ""
    if not kept:
        return fits, f"; every fit second had host steal ≥ {max_steal_cores:g} cores: kept all"
    return kept, (
        f"; {n_out} of {n_all} requests ({100 * n_out / max(n_all, 1):.1f} %) left out: "
        f"host steal ≥ {max_steal_cores:g} cores in their second"
    )


def fit_cpu(
    fits: list[tuple[LoadResult, Workload]], targets: Targets, scenario: Scenario
) -> list[cal.CpuModel]:
    """Per emulated server, host cores beyond batch compute as a line in stage visits/s.

    Each fit run gives one point per server: the scraped cores (node agent)
    minus the cores its stages' batches kept busy (in-server service time of
    each batch execution), against the stage visits it served per second.
    Least squares over the runs (intercept ≥ 0, slope ≥ 0); one level only: a
    line through the origin.
    """
    servers = set(scenario.server_instances())
    points: dict[str, list[tuple[float, float]]] = {}
    for result, w in fits:
        span = max(len(result.per_second), 1)
        cpu = cpu_per_server([WorkloadOutcome(w.name, result)], targets)
        cores = cpu.groupby("target")["rate"].mean() if len(cpu) else pd.Series(dtype=float)
        v = result.visits
        execs = v.drop_duplicates(["replica_name", "batch", "service_s", "t_start"])
        busy = execs.groupby(execs["machine"].astype(str))["service_s"].sum() / span
        visits = v.groupby(v["machine"].astype(str)).size() / span
        for s in servers & set(cores.index) & set(visits.index):
            points.setdefault(s, []).append((float(visits[s]), float(cores[s] - busy.get(s, 0.0))))
    models = []
    for s, pts in sorted(points.items()):
        x = np.array([p[0] for p in pts])
        y = np.array([p[1] for p in pts])
        if np.ptp(x) > 0 and len(pts) > 1:
            slope, icpt = np.polyfit(x, y, 1)
            if icpt < 0:
                slope, icpt = float(np.sum(x * y) / np.sum(x * x)), 0.0
        else:
            slope, icpt = float(np.sum(y) / max(np.sum(x), 1e-9)), 0.0
        models.append(
            cal.CpuModel(
                server=s,
                idle_cores=max(float(icpt), 0.0),
                per_visit_ms=max(float(slope), 0.0) * 1e3,
                rates=[round(float(r), 2) for r in x],
            )
        )
    return models


def rate_aware_errors(
    scenario: Scenario,
    deployment: Deployment,
    calibration: cal.Calibration,
    shares: dict[str, float],
    outcomes: list,
    duration_s: float,
    replications: int,
    seed: int,
    workloads: dict[str, Workload] | None = None,
) -> pd.DataFrame:
    """Latency error % of the twin calibrated *for each workload's mean offered rate*.

    The same calibration, with the overhead's mean interpolated between the fit
    levels' at the workload's mean offered rate (:func:`calibration.overhead_at`; the
    rate is the workload spec's, not a measurement): how much of the
    remaining error is the overhead's growth with load, which one
    ``request_overhead`` distribution cannot follow. ``outcomes``: the
    testbed's :class:`lab.compare.WorkloadOutcome` per workload; ``workloads``: them as
    offered (scaled), by name (default: the scenario's own).
    """
    request = next((p.name for p in scenario.processes if p.kind == "request"), None)
    rows = []
    for o in outcomes:
        w = workloads[o.name] if workloads else scenario.workload(o.name)
        rate = float(rate_series(w, duration_s).mean())
        sc, _ = cal.calibrated_scenario(scenario, calibration, shares, rate_per_s=rate)
        ev = evaluate(sc, deployment, w, duration_s, replications, seed, keep_records=True)
        req = ev.requests if ev.requests is not None else pd.DataFrame(columns=["t_end"])
        req = req.dropna(subset=["t_end"])
        req = req[req["process"].astype(str) == request] if request else req
        tw = latency_summary(1e3 * (req["t_end"] - req["t_arrive"]).to_numpy(dtype=float))
        ok = o.load.requests[o.load.requests["ok"].astype(bool)]
        tb = latency_summary(1e3 * (ok["t_end"] - ok["t_arrive"]).to_numpy(dtype=float))
        overhead = cal.overhead_at(calibration, rate)
        mean = overhead.batch_mean_ms(1) if overhead is not None else float("nan")
        row = {"workload": o.name, "rate_per_s": rate, "overhead_mean_ms": mean}
        for q in ("p50", "p95", "p99"):
            row[f"{q}_error_pct"] = error_pct(tw[q], tb[q])
        rows.append(row)
    return pd.DataFrame(rows)


def rate_aware_lines(tab: pd.DataFrame) -> list[str]:
    """Markdown: the rate-aware errors (:func:`rate_aware_errors`)."""
    if tab.empty:
        return []
    lines = [
        "",
        "For contrast, the wall-time calibration alone (`calibrate fit`'s scenario: each "
        "batch's measured wall time, no CPU quota) with the overhead's mean set for each "
        "workload's mean offered rate (interpolated between the fit levels'). Where the "
        "stages run under their quota, the twin above already has the per-rate overhead; "
        "this table shows what the quota adds:",
        "",
        "| workload | mean offered (req/s) | overhead mean (ms) | p50 error % | p95 error % | "
        "p99 error % |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in tab.itertuples():
        lines.append(
            f"| {r.workload} | {r.rate_per_s:.1f} | {r.overhead_mean_ms:.2f} | "
            f"{r.p50_error_pct:.1f} | {r.p95_error_pct:.1f} | {r.p99_error_pct:.1f} |"
        )
    return lines


def overhead_text(calibration: cal.Calibration) -> str:
    """One markdown paragraph: the fitted overhead and how it moves with the offered rate."""
    ov = calibration.overheads
    m = ov.per_request
    if m is None:
        return "no per-request overhead fitted"
    scores = ", ".join(f"{k} {v:.3f}" for k, v in ov.heldout_loglik.items())
    text = (
        f"per-request overhead {m.kind} mean {m.batch_mean_ms(1):.2f} ms, cv "
        f"{m.batch_cv(1):.2f} (held-out log-likelihood per request: {scores}); "
        f"HTTP hop {ov.hop_ms:.2f} ms per stage, client↔gateway {ov.request_ms:.2f} ms, "
        f"batch dispatch lag {ov.dispatch_lag_ms:.2f} ms per request (queue time beyond the "
        "twin's batching: timer and event-loop lag)"
    )
    if len(ov.by_rate) > 1:
        lo, hi = ov.by_rate[0], ov.by_rate[-1]
        text += (
            "; measured by offered rate: "
            + ", ".join(
                f"{r.rate_per_s:g}/s mean {r.mean_ms:.2f} / p50 {r.p50_ms:.2f} / p95 "
                f"{r.p95_ms:.2f} ms"
                for r in ov.by_rate
            )
            + f" (mean {100 * (hi.mean_ms / lo.mean_ms - 1):+.0f}% from "
            f"{lo.rate_per_s:g} to {hi.rate_per_s:g}/s; a twin under CPU quotas takes it at "
            "each workload's mean rate, interpolated, otherwise one distribution)"
        )
    return text
