"""Fit runs: short load runs on a running testbed whose raw rows calibrate the twin.

Shared by ``calibrate validate`` and ``mlops-twin experiment``. A fit run
offers the scenario's fit workload (steady-low) scaled to levels that are not
validation levels, with its own arrival seed; its per-visit rows give each
deployed stage's service time at the CPU share it really had, its
per-request rows the per-request overhead (latency minus the stages' queue
and service time: client lag, gateway, HTTP hops). Callers run half the fit
levels before and, reversed, half after the held-out runs, so a drift of the
host's background load cannot favour either side.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from calibrate import calibration as cal
from calibrate.fit import fit_overhead, fit_samples
from calibrate.samples import dispatch_lag, overheads, request_overheads, testbed_samples
from loadgen.profile import scale_workload
from loadgen.run import LoadResult, LoadRun, execute, write_result
from twin.spec import Deployment, Scenario, Workload

if TYPE_CHECKING:  # experiment imports this module
    from calibrate.experiment import Targets


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
) -> tuple[LoadResult, Workload]:
    """One fit run of ``duration_s`` (s) into ``folder`` (a load-run folder)."""
    run = LoadRun(
        scenario, workload, targets.gateway, duration_s, seed=seed, drain_s=drain_s,
        metrics_targets=targets.metrics, replica_nodes=targets.replica_nodes or None,
    )  # fmt: skip
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
) -> cal.Calibration:
    """Calibration from the fit runs' raw rows (plus a profile for what they lack).

    Service times per stage × variant at the stage's CPU share (``shares``:
    component → host cores); one per-request overhead distribution over all
    fit runs (the levels' mean mean and cv, :func:`calibrate.fit.fit_overhead`),
    with its measured mean/p50/p95 per offered rate. With the
    ``deployment`` the runs had, the overhead also holds each stage's batch
    dispatch lag (:func:`calibrate.samples.dispatch_lag`).
    """
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
    pooled = {k: sum(o[k] * o["n_requests"] for o in per_run) / max(n, 1)
              for k in ("hop_ms", "request_ms")}  # fmt: skip
    return cal.build(
        models,
        scenario,
        cal.file_sha256(scenario_file),
        source=f"{len(fits)} fit run(s)" + (f" + profile {profile}" if profile else ""),
        overheads={**pooled, "n_requests": n},
        per_request=model,
        heldout_loglik=scores,
        by_rate=cal.overhead_levels(over),
        dispatch_lag_ms=float(over["lag_ms"].mean()),
    )


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
            f"{lo.rate_per_s:g} to {hi.rate_per_s:g}/s; the twin uses one distribution)"
        )
    return text
