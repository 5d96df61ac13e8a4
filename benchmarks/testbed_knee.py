"""The knee: latency against offered load across the bottleneck's capacity, testbed vs twin.

Three deployments of the digits pipeline (local backend): ``default`` (encoder e-large,
batch 1: the bottleneck), ``variant`` (encoder e-medium) and ``batch`` (encoder e-large,
batch 8). Each is offered the same steady rates, from ρ 0.2 to 1.2 of the default
bottleneck's capacity (estimated from the zoo's manifest at the stage's CPU share),
each repeated. The twin for a level is calibrated (``mlops-twin calibrate fit``) on the
*other* levels' runs of the same deployment — held out — and simulated at the level's
rate. A run whose load generator fell behind (achieved/offered < 0.99 or release lag
p99 > 5 ms) is marked and left out of the fidelity figures, and so is a run with other
work beside it on the host (:func:`others_cores`; ``KNEE_DISTURBED=keep`` keeps it). Host
steal per level is recorded.

Resumable, one deployment per command (each < 10 min; run under the lock)::

    flock /work/bench.lock .venv/bin/python benchmarks/testbed_knee.py run --deployment default
    flock /work/bench.lock .venv/bin/python benchmarks/testbed_knee.py run --deployment variant
    flock /work/bench.lock .venv/bin/python benchmarks/testbed_knee.py run --deployment batch
    flock /work/bench.lock .venv/bin/python benchmarks/testbed_knee.py report

Run folders land in ``runs/knee/<deployment>/rho<ρ>-<repeat>/``; the result in
``benchmarks/results/testbed_knee.md``.

``--backend compose`` (on ``run`` and ``report``) does the same on the Compose backend:
run folders in ``runs/knee-compose/``, the result in
``benchmarks/results/testbed_knee_compose.md``, which also puts the local backend's
levels (from ``runs/knee/``, when there) beside Compose's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, markdown_table, run_cli, write_result

from calibrate import calibration as cal
from calibrate.backlog import (
    fit_backlog_quota,
    run_backlogged_interval,
    stage_machine,
    with_quota_scale,
)
from calibrate.enforce import fit_tick, run_stall_share, with_quota_tick
from calibrate.handoff import (
    HandoffFit,
    fit_handoff,
    fit_pace_handoff,
    run_handoff_gaps,
    with_cpu_handoff,
    with_handoff,
)
from calibrate.quota import CFS_TICK_MS, quota_scenario, stage_cpu
from testbed.client import CliTestbed
from testbed.zoo.manifest import DEFAULT_DIR, TESTSET
from twin.criteria import stage_capacity_rps
from twin.load import load_deployment, load_scenario
from twin.sim import simulate_replication
from twin.spec import Deployment, Scenario, SteadyWorkload

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
ROOT = Path(__file__).resolve().parents[1]
# another sweep: KNEE_RUNS=dir (its result: KNEE_RESULT=name, in benchmarks/results/;
# KNEE_NOTE=text: a line on the sweep, e.g. when it ran and on how quiet a host)
OUT = Path(os.environ.get("KNEE_RUNS", ROOT / "runs" / "knee"))
OUTS = {"local": OUT, "compose": ROOT / "runs" / "knee-compose"}
BACKEND = "local"
RHOS = (0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.2)
BASE_RATE = 100.0  # the scenario's knee workload; levels scale it
BOTTLENECK = "encoder"
DEPLOYMENTS = {
    "default": {"variant": "e-large", "batch": 1},
    "variant": {"variant": "e-medium", "batch": 1},
    "batch": {"variant": "e-large", "batch": 8},
}
# e-large's CPU per item in its stage server: model 2.96 ms (stage_compute_cpu_seconds; the
# manifest's 2.77 ms is a bare onnxruntime loop) + 0.35 ms per HTTP call (node CPU − model CPU)
ITEM_CPU_MS = 3.31
MAX_LAG_S, MIN_ACHIEVED = 0.005, 0.99
# On this shared host (other helpers' tests run outside the lock) most runs had a release
# lag p99 of 6–11 ms; runs up to USABLE_LAG_S are still used, and reported apart.
USABLE_LAG_S = 0.020
# the capacity probe (``run --probe S``): this far past the estimate, so the queue is
# backlogged however slow the hour
PROBE_RHO = 1.2
PROBE_BACKLOG = 0.9  # served below this share of offered: the probe was backlogged (0.97 let
# knee-s8's variant probe, 179 of 187/s, pass while the deployment served 216/s later)
PROBE_TRIES = 3
# A run beside other work on the host is left out of the figures and the fits: its host
# CPU outside the three nodes (gateway, load generator, proxies — and anyone else's) above
# the sweep's quiet line by more than this (cores). Set with these runs in view: on the
# Compose s11 batch sweep two first-pass runs had 0.83 and 1.12 cores of others' work and
# their p50 rose 11 and 35 % over their repeats, while runs with 0.28–0.29 moved less
# than their repeats' spread; on the local s13 batch sweep 0.38 cores moved p50 by +7 %
# and p95 by +15 %. No run of the quiet default sweeps (Compose s9, local s7/s9) had more
# than 0.07. KNEE_DISTURBED=keep: use every run as before.
OTHERS_MAX_CORES = 0.35
# A run on a slower host is left out too: the bottleneck's model CPU per item (the same
# ONNX model, one thread) more than this fraction above the deployment's fastest run of
# the sweep. Set with the runs in view: on the fresh-machine Compose default sweep s14
# the second pass (from 16:25 UTC) took 3.15–3.51 ms per item against 2.92–3.00 in the
# first, no other work beside it (≤ 0.21 cores) and steal ≤ 0.02 cores, and its p50 rose
# 13 → 17, 13 → 19, 15 → 30 ms at ρ 0.2/0.4/0.6 while ρ 0.8 backlogged; the batch sweep
# before it stayed within 2.89–3.12 (+7 %, the lightest runs' cold caches highest).
# KNEE_DISTURBED=keep keeps these too.
HOST_SLOW_MAX = 0.10


def _files(name: str, d: Path | None = None) -> tuple[Path, Path]:
    """The scenario (one steady ``knee`` workload) and the deployment ``name``, written
    once into ``d`` (default: the sweep's folder of that deployment)."""
    d = OUT / name if d is None else d
    d.mkdir(parents=True, exist_ok=True)
    sc = yaml.safe_load((ROOT / "examples" / "digits-pipeline.yaml").read_text())
    sc["workloads"] = [{"kind": "steady", "name": "knee", "rate_per_s": BASE_RATE}]
    dep = yaml.safe_load((ROOT / "examples" / "digits-pipeline.deployment.yaml").read_text())
    dep["name"] = f"knee-{name}"
    dep["stages"][BOTTLENECK] = dict(DEPLOYMENTS[name])
    (d / "scenario.yaml").write_text(yaml.safe_dump(sc, sort_keys=False))
    (d / "deployment.yaml").write_text(yaml.safe_dump(dep, sort_keys=False))
    return d / "scenario.yaml", d / "deployment.yaml"


def capacity_rps(share: float) -> float:
    """The default bottleneck's capacity (req/s): its quota over e-large's CPU per item."""
    return share * 1000.0 / ITEM_CPU_MS


def run(
    name: str,
    duration_s: float,
    repeats: int,
    rhos: tuple[float, ...] = RHOS,
    durations: dict[float, float] | None = None,
    capacity_per_s: float | None = None,
    probe_s: float | None = None,
) -> None:
    """One deployment's sweep: ``repeats`` × ``rhos``, each run ``duration_s`` long unless
    ``durations`` gives its level another length (s); runs already done are skipped.
    ``capacity_per_s`` (req/s), when given, is what ρ 1 means instead of the local estimate
    (e.g. the backend's own backlogged throughput, measured in the same hour).
    ``probe_s`` (s), without ``capacity_per_s``: measure it first, on the sweep's own
    testbed (:func:`_probe`)."""
    scenario, deployment = _files(name)
    d = OUT / name
    testbed = CliTestbed(BACKEND, OUT / f".{name}.testbed", log=OUT / f".{name}.log")
    targets = testbed.up(scenario, deployment)
    try:
        share = float(targets.factor or 0.25) * 2.0  # a node's 2 cores at the testbed's factor
        cap = capacity_per_s or capacity_rps(share)
        (d / "capacity.json").write_text(
            json.dumps(
                {"share": share, "capacity_rps": cap, "estimate_rps": capacity_rps(share)}
                | ({"measured": True} if capacity_per_s else {})
            )
        )
        metrics = [f"{k}={v}" for k, v in targets.metrics.items()]
        if probe_s and not capacity_per_s:
            cap = _probe(name, scenario, targets.gateway, metrics, share, probe_s)
        for rep in range(repeats):
            for rho in rhos:
                out = d / f"rho{rho:.1f}-{rep}"
                if (out / "summary.json").exists():
                    continue
                rate = rho * cap
                print(f"{name} ρ {rho} ({rate:.0f}/s) repeat {rep}", file=sys.stderr)
                seconds = (durations or {}).get(rho, duration_s)
                _load(scenario, targets.gateway, metrics, out, seconds, rate, 11 + rep)
    finally:
        testbed.down()


def _load(
    scenario: Path,
    gateway: str,
    metrics: list[str],
    out: Path,
    seconds: float,
    rate: float,
    seed: int,
    drain_s: float = 5.0,
) -> None:
    """One steady run of ``rate`` req/s for ``seconds`` into ``out`` (``loadgen``), its
    answers awaited ``drain_s`` s after the last arrival."""
    run_cli(
        "load",
        "run",
        "-s",
        str(scenario),
        "--shape",
        "knee",
        "--target",
        gateway,
        "--out",
        str(out),
        "--duration",
        f"{seconds:g}",
        "--rate-scale",
        f"{rate / BASE_RATE:.4f}",
        "--seed",
        str(seed),
        "--drain",
        f"{drain_s:g}",
        "--inputs-file",
        str(DEFAULT_DIR / TESTSET),
        *[a for m in metrics for a in ("--metrics", m)],
    )


def _probe(
    name: str, scenario: Path, gateway: str, metrics: list[str], share: float, seconds: float
) -> float:
    """What ρ 1 means in this hour (req/s): the answers per second over the second half
    of a ``seconds``-long run at ρ PROBE_RHO of the estimate, once it is backlogged
    (served < 90 % of offered; a faster deployment's probe is repeated at twice the rate,
    up to PROBE_TRIES runs). Run once per sweep in ``<deployment>/probe[-i]/`` (a resumed
    sweep reuses them, so its levels keep their rates); recorded in ``capacity.json``.
    The fixed ``ITEM_CPU_MS`` estimate is 5–7 % off on a slow hour, where nominal ρ 0.9
    is really 0.97 and its queue explodes."""
    d = OUT / name
    estimate = capacity_rps(share)
    tries = []
    for i in range(PROBE_TRIES):
        out = d / ("probe" if i == 0 else f"probe-{i}")
        if i > 0 and not tries[-1]["ran_now"] and not (out / "summary.json").exists():
            break  # a resumed sweep keeps the probes it had, so its levels keep their rates
        ran_now = not (out / "summary.json").exists()
        if ran_now:
            rate = PROBE_RHO * estimate * 2**i
            print(
                f"{name} probe: {rate:.0f}/s ({PROBE_RHO} × {2**i} × the estimate)", file=sys.stderr
            )
            _load(scenario, gateway, metrics, out, seconds, rate, 7 + i)
        served = _served_rps(out)
        if not np.isfinite(served) or served <= 0:
            sys.exit(f"{out}: the capacity probe answered nothing; is the testbed up?")
        summary = json.loads((out / "summary.json").read_text())
        lag_ms = 1e3 * float(summary.get("lag_p99_s", 0.0))
        if served >= PROBE_BACKLOG * summary["offered_rps"] and lag_ms > 1e3 * USABLE_LAG_S:
            # every answer came, but late offers: the host's cores ran out before the
            # deployment's bottleneck did (Compose variant: 722/s, lag p99 167 ms), and
            # doubling the rate again would measure the load generator
            sys.exit(
                f"{out}: the load generator fell behind at {summary['offered_rps']:.0f}/s "
                f"(release lag p99 {lag_ms:.0f} ms) while the deployment kept up: the host "
                "saturates before its bottleneck; give ρ 1 with --capacity-per-s"
            )
        tries.append(
            {
                "run": out.name,
                "duration_s": summary["duration_s"],
                "offered_rps": summary["offered_rps"],
                "served_rps": served,
                "steal_cores": _steal(out),
                "ran_now": ran_now,
            }
        )
        if served < PROBE_BACKLOG * summary["offered_rps"]:
            break
    probe = tries[-1] | {"backlogged": served < PROBE_BACKLOG * tries[-1]["offered_rps"]}
    capacity = {"share": share, "capacity_rps": served, "estimate_rps": estimate}
    (d / "capacity.json").write_text(
        json.dumps(capacity | {"measured": True, "probe": probe, "probe_runs": tries})
    )
    print(f"{name} probe: ρ 1 = {served:.1f}/s (estimate {estimate:.1f}/s)", file=sys.stderr)
    return served


def _steal(folder: Path) -> float:
    try:
        from loadgen.host import host_summary

        return float(host_summary(pd.read_parquet(folder / "metrics.parquet"))["steal_cores"])
    except Exception:  # no host samples in this run
        return float("nan")


def _rest_cores(folder: Path) -> float:
    """The host's busy cores outside the three nodes' CPU (the nodes' agents) over the
    run: the gateway's, the load generator's, the proxies' — and other work's. NaN
    without host or node counters."""
    try:
        from loadgen.host import host_summary

        m = pd.read_parquet(folder / "metrics.parquet")
        busy = float(host_summary(m)["busy_cores"])
        nodes = m[m["metric"].astype(str) == "node_cpu_seconds_total"]
        nodes = nodes[nodes["t"] > 0]
        used = 0.0
        for _, g in nodes.groupby("target", observed=True):
            c = g.groupby("t")["value"].sum().sort_index()
            used += float((c.iloc[-1] - c.iloc[0]) / (c.index[-1] - c.index[0]))
        return busy - used if len(nodes) else float("nan")
    except Exception:  # no host samples in this run
        return float("nan")


def others_cores(runs: pd.DataFrame) -> pd.Series:
    """Per run: other work's cores beside it (≥ 0 when disturbed), its ``rest`` cores
    (:func:`_rest_cores`) above the sweep's quiet line (a straight line in the offered
    rate through each level's quietest run below saturation). NaN with < 2 such levels."""
    quiet = runs[(runs["rho"] < 1.0) & runs["rest_cores"].notna()]
    low = quiet.loc[quiet.groupby("rho")["rest_cores"].idxmin()] if len(quiet) else quiet
    if len(low) < 2:
        return pd.Series(np.nan, index=runs.index)
    slope, icpt = np.polyfit(low["offered"], low["rest_cores"], 1)
    return runs["rest_cores"] - (icpt + slope * runs["offered"])


def _item_cpu_ms(folder: Path) -> float:
    """The bottleneck's model CPU per item over the run (ms; the stage server's
    ``stage_compute_cpu_seconds_total`` over ``stage_items_total``); NaN without them or
    with fewer than 300 items."""
    try:
        m = pd.read_parquet(folder / "metrics.parquet", columns=["target", "metric", "t", "value"])
    except Exception:  # no metrics in this run
        return float("nan")
    m = m[m["target"].astype(str).str.startswith(f"{BOTTLENECK}-")]

    def delta(metric: str) -> float:
        x = m[m["metric"].astype(str) == metric].sort_values("t")["value"]
        return float(x.iloc[-1] - x.iloc[0]) if len(x) > 1 else float("nan")

    items = delta("stage_items_total")
    return 1e3 * delta("stage_compute_cpu_seconds_total") / items if items >= 300 else np.nan


def host_slow(runs: pd.DataFrame) -> pd.Series:
    """Per run: its bottleneck's model CPU per item over the fastest run's of the sweep,
    less 1 (0.15: the host ran the same model 15 % slower); NaN where not measured."""
    return runs["item_cpu_ms"] / runs["item_cpu_ms"].min() - 1


def _served_rps(folder: Path) -> float:
    """Answers per second over the run's second half (the queue's service rate once backlogged)."""
    ps = pd.read_parquet(folder / "per_second.parquet")
    half = ps[ps["second"] >= ps["second"].max() / 2]
    return float(half["rps"].mean()) if len(half) else float("nan")


def _levels(name: str) -> pd.DataFrame:
    rows = []
    for f in sorted((OUT / name).glob("rho*-*/summary.json")):
        s = json.loads(f.read_text())
        rho = float(f.parent.name[3:].split("-")[0])
        behind = s["achieved_over_offered"] < MIN_ACHIEVED or s["lag_p99_s"] > MAX_LAG_S
        rows.append(
            {
                "deployment": name,
                "rho": rho,
                "run": f.parent.name,
                "offered": s["offered_rps"],
                "duration": s["duration_s"],
                "achieved": s["achieved_rps"],
                "p50": s["p50_s"] * 1e3,
                "p95": s["p95_s"] * 1e3,
                "p99": s["p99_s"] * 1e3,
                "lag_p99_ms": s["lag_p99_s"] * 1e3,
                "behind": behind,
                "usable": s["achieved_over_offered"] >= MIN_ACHIEVED
                and s["lag_p99_s"] <= USABLE_LAG_S,
                "steal_cores": _steal(f.parent),
                "served_2nd_half": _served_rps(f.parent),
                "rest_cores": _rest_cores(f.parent),
                "item_cpu_ms": _item_cpu_ms(f.parent),
            }
        )
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["others_cores"] = others_cores(out)
    out["host_slow"] = host_slow(out)
    out["disturbed"] = (out["others_cores"] > OTHERS_MAX_CORES) | (out["host_slow"] > HOST_SLOW_MAX)
    if os.environ.get("KNEE_DISTURBED", "drop").strip() != "keep":
        out["usable"] &= ~out["disturbed"]
    return out


def held_out_twin(name: str, rho: float, runs: pd.DataFrame) -> dict:
    """Level ``rho``'s twins, calibrated on the other levels' runs of ``name`` (cached in
    ``twin-rho<ρ>/``): ``twin`` (CPU quota, overhead at this rate), ``mean`` (one overhead
    for every rate), ``plain`` (wall-time fit, no quota) scenarios, with the
    ``deployment``, the stages' CPU fit ``cpu`` and the level's mean offered ``rate``
    (req/s)."""
    d = OUT / name
    share = json.loads((d / "capacity.json").read_text())["share"]
    # KNEE_ANSWER=on (default): each batching stage's answers leave one by one
    # (ServerOverhead.answer_ms, fitted by `calibrate fit`); off: the twin before it,
    # whose per-request overhead held the hop's growth with the batch. Own caches each.
    answer = os.environ.get("KNEE_ANSWER", "on").strip() != "off"
    # KNEE_TIMER=on: the batch timer fires as late as the fit runs' did
    # (ServerOverhead.timer_late_ms); off (default): the lateness stays in the overhead's
    # dispatch lag. Off because on Compose s11 batch it moved ρ 0.6's p50 error from +7.7
    # to +9.1 % and ρ 0.9's p95 from −9.4 to −16.9 (with the answers; session 8)
    timer = os.environ.get("KNEE_TIMER", "off").strip() == "on"
    # KNEE_CALLS=on (default): the gateway's calls (ServerOverhead.call_window_ms,
    # `calibrate fit --call-window`): items of one loop turn share a call and are answered
    # with it; off: the twin before. On by default since compose-9: on the fresh Compose
    # sweep s14 it took the batch's worst held-out |error| at ρ ≤ 0.9 from 112 / 44 / 36 %
    # to 10 / 24 / 18 (ρ 0.9); of the other 12 batch cells 4 got better by 0.2–1.7 points
    # and 7 worse by 0.5–1.4 (ρ 0.6, 0.8's tails, 0.2's tails); the default sweep's cells
    # moved by ≤ 0.3 points (10 better, 5 worse) and no goal changed status in either
    # (testbed_knee_compose_s14.md against …_s14_calls.md)
    calls = os.environ.get("KNEE_CALLS", "on").strip() != "off"
    # KNEE_ONWARD=on: a batch's items that go on leave together once the gateway has read
    # all its answers, as one call to the next stage (ServerOverhead.answers_onward)
    onward = os.environ.get("KNEE_ONWARD", "off").strip() == "on"
    cal_dir = d / (
        f"twin-rho{rho:.1f}"
        + ("" if answer else "-noanswer")
        + ("-timer" if timer else "")
        + ("-calls" if calls else "")
        + ("-onward" if onward else "")
    )
    cal_dir.mkdir(exist_ok=True)
    other = runs[(runs["rho"] != rho) & runs["usable"]]
    if other.empty:  # no other level had a usable run (a busy host): fit on them all
        other = runs[runs["rho"] != rho]
    # the CPU fit sees every other level's run that had the host to itself: a run whose
    # load generator fell behind has valid CPU counters (the capacity's slope needs the
    # backlogged levels), one beside others' work does not (KNEE_DISTURBED=keep: all)
    cpu_runs = runs[runs["rho"] != rho]
    if os.environ.get("KNEE_DISTURBED", "drop").strip() != "keep":
        cpu_runs = cpu_runs[~cpu_runs["disturbed"]]
    _fresh_cache(
        cal_dir,
        sorted(other["run"]),
        {"cpu": sorted(cpu_runs["run"]), "answer": answer, "timer": timer},
    )
    sc_path = cal_dir / "calibrated.yaml"
    if not sc_path.exists():
        run_cli(
            "calibrate",
            "fit",
            *[str(d / r) for r in other["run"]],
            "-s",
            str(d / "scenario.yaml"),
            "--cpu-share",
            f"{share:g}",
            "--deployment",
            str(d / "deployment.yaml"),
            "--answer-hop" if answer else "--no-answer-hop",
            "--timer-late" if timer else "--no-timer-late",
            "--call-window" if calls else "--no-call-window",
            "--answer-onward" if onward else "--no-answer-onward",
            "-o",
            str(cal_dir / "calibration.yaml"),
            "--scenario-out",
            str(sc_path),
        )
    dep = load_deployment(d / "deployment.yaml")
    calibration = cal.load(cal_dir / "calibration.yaml")
    base = load_scenario(d / "scenario.yaml")
    cpu = stage_cpu([d / r for r in cpu_runs["run"]], dep, share)
    (cal_dir / "stage_cpu.json").write_text(
        json.dumps({k: v.__dict__ for k, v in cpu.items()}, indent=1)
    )
    rate = float(runs[runs["rho"] == rho]["offered"].mean())
    quota_sc = quota_scenario(base, calibration, dep, cpu, share)
    tick = _quota_tick(cal_dir, quota_sc, dep, runs, rho) if cpu else CFS_TICK_MS
    quota_sc = with_quota_tick(quota_sc, tick)
    plain_sc, _ = cal.calibrated_scenario(base, calibration, shares=share)
    # KNEE_OVERHEAD=shape: the overhead's cv at this rate too (overhead_at); pooled
    # (default): one cv for every rate. Off by default: on the quiet default sweeps it
    # left ρ 0.9's p50 as it was (+7.8 against +7.2 %) and cost ρ 0.2's p99 3.7–4.0
    # points (Compose s9, local s7/s9), though it halved the local s13 batch's ρ 0.2
    # p95/p99 error (+20/+24 → +9/+9 %)
    shape = os.environ.get("KNEE_OVERHEAD", "pooled").strip() == "shape"
    rate_sc = quota_scenario(
        base, calibration, dep, cpu, share, rate_per_s=rate, tick_ms=tick, overhead_shape=shape
    )
    handoff = _handoff(cal_dir, runs, rho, rate)
    if handoff is not None:
        quota_sc = with_handoff(quota_sc, BOTTLENECK, handoff)
        rate_sc = with_handoff(rate_sc, BOTTLENECK, handoff)
    pace_cpu_ms = 0.0
    # KNEE_PACE=handoff (default) | quota | off; KNEE_BACKLOG=off (as before): off
    pace = os.environ.get("KNEE_PACE", "handoff").strip()
    if os.environ.get("KNEE_BACKLOG", "fit").strip() == "off":
        pace = "off"
    if pace == "off":
        backlog = 1.0
    elif pace != "quota":
        # the pace in long busy periods from the server's CPU between jobs
        # (calibrate.handoff); KNEE_PACE=quota: from the node's quota (calibrate.backlog,
        # the twin before: ρ 0.9's p50 +9.6 % against +7.2 on the quiet Compose sweep)
        backlog = 1.0
        pace_cpu_ms = (
            _pace_handoff(cal_dir, quota_sc, dep, runs, rho, handoff is not None) if cpu else 0.0
        )
        if pace_cpu_ms > 0:
            quota_sc = with_cpu_handoff(quota_sc, BOTTLENECK, pace_cpu_ms)
            rate_sc = with_cpu_handoff(rate_sc, BOTTLENECK, pace_cpu_ms)
    else:
        backlog = (
            _backlog_scale(cal_dir, quota_sc, dep, runs, rho, handoff is not None) if cpu else 1.0
        )
    machine = stage_machine(dep, BOTTLENECK)
    if backlog != 1.0 and machine is not None:
        quota_sc = with_quota_scale(quota_sc, machine, backlog)
        rate_sc = with_quota_scale(rate_sc, machine, backlog)
    return {
        "twin": rate_sc,
        "mean": quota_sc,
        "plain": plain_sc,
        "deployment": dep,
        "cpu": cpu,
        "rate": rate,
        "tick_ms": tick,
        "backlog": backlog,
        "handoff": handoff,
        "pace_cpu_ms": pace_cpu_ms,
        "cal_dir": cal_dir,
    }


def _fresh_cache(cal_dir: Path, fit_runs: list[str], more: dict | None = None) -> None:
    """Empty ``cal_dir``'s caches when they were fitted on other runs than ``fit_runs``
    or with another ``more`` (the CPU fit's runs, the model's switches) than now
    (``fit_runs.json``; a cache from before it: the runs its ``calibration.yaml`` names),
    e.g. once a disturbed run is left out. The pace, tick and backlog fits are fitted
    on the calibrated twin, so they go with it."""
    record = cal_dir / "fit_runs.json"
    now: list | dict = {"fit": fit_runs, **more} if more else fit_runs
    if record.exists():
        before = json.loads(record.read_text())
    elif (cal_dir / "calibration.yaml").exists():
        source = yaml.safe_load((cal_dir / "calibration.yaml").read_text()).get("source", "")
        before = sorted(Path(x.strip()).name for x in str(source).split(","))
    else:
        before = now
    if before != now:
        for f in cal_dir.iterdir():
            if f.suffix in (".yaml", ".json"):
                f.unlink()
    record.write_text(json.dumps(now))


def _pace_points(runs: pd.DataFrame, rho: float) -> list[tuple]:
    """(offered req/s, duration s, *the bottleneck's backlogged interval per item*) of
    the other levels' usable runs below the capacity: what the pace fits are fitted on
    (:func:`calibrate.backlog.run_backlogged_interval`)."""
    other = runs[(runs["rho"] != rho) & (runs["rho"] < 1.0) & runs["usable"]]
    d = OUT / str(runs["deployment"].iloc[0])
    return [
        (float(r.offered), float(r.duration), *run_backlogged_interval(d / r.run, BOTTLENECK))
        for r in other.itertuples()
    ]


def _pace_handoff(
    cal_dir: Path,
    sc: Scenario,
    dep: Deployment,
    runs: pd.DataFrame,
    rho: float,
    handoff: bool = False,
) -> float:
    """The bottleneck server's CPU between jobs (ms, only while
    the next one waits) that gives the twin the fit runs' pace in long busy periods
    (:func:`calibrate.handoff.fit_pace_handoff`; the other levels below the capacity,
    as :func:`_backlog_scale`; cached in ``pace_handoff.json``, or with ``handoff``
    (``sc`` has the idle hand-off too) in ``pace_handoff-idle.json``); 0 when none is
    fitted."""
    cache = cal_dir / ("pace_handoff-idle.json" if handoff else "pace_handoff.json")
    if cache.exists():
        return float(json.loads(cache.read_text())["cpu_ms"])
    points = _pace_points(runs, rho)
    fit = fit_pace_handoff(sc, dep, BOTTLENECK, points)
    record = {"cpu_ms": 0.0 if fit is None else fit.cpu_ms, "fit": None}
    if fit is not None:
        record["fit"] = {
            "testbed_ms": fit.testbed_ms,
            "band_ms": fit.band_ms,
            "items": fit.items,
            "twin_ms": list(fit.twin_ms),
        }
    cache.write_text(json.dumps(record, indent=1))
    return record["cpu_ms"]


def _handoff(cal_dir: Path, runs: pd.DataFrame, rho: float, rate: float) -> HandoffFit | None:
    """The bottleneck server's hand-off between jobs at this level's rate
    (:func:`calibrate.handoff.fit_handoff`, on the other levels' usable runs below the
    capacity; cached in ``handoff.json``), when ``KNEE_HANDOFF=fit``; None by default
    (see :mod:`calibrate.handoff` for what it measured: it does not give the twin the
    testbed's pace, the backlog quota scale does)."""
    if os.environ.get("KNEE_HANDOFF", "off").strip() != "fit":
        return None
    cache = cal_dir / "handoff.json"
    if cache.exists():
        got = json.loads(cache.read_text())
        return None if got is None else HandoffFit(**got)
    other = runs[(runs["rho"] != rho) & (runs["rho"] < 1.0) & runs["usable"]]
    d = OUT / str(runs["deployment"].iloc[0])
    points = [
        (float(r.offered), run_handoff_gaps(d / r.run, BOTTLENECK)) for r in other.itertuples()
    ]
    fit = fit_handoff(points, rate)
    cache.write_text(json.dumps(None if fit is None else fit.__dict__, indent=1))
    return fit


def _backlog_scale(
    cal_dir: Path,
    sc: Scenario,
    dep: Deployment,
    runs: pd.DataFrame,
    rho: float,
    handoff: bool = False,
) -> float:
    """The factor on the bottleneck's node quota that gives the twin the fit runs' pace
    in long busy periods (:func:`calibrate.backlog.fit_backlog_quota`; fit on the other
    levels below the capacity, cached in ``backlog.json``). ``KNEE_BACKLOG=off``: 1
    (the twin before this fit). ``handoff``: ``sc`` has the server's hand-off (its own
    cache)."""
    if os.environ.get("KNEE_BACKLOG", "fit").strip() == "off":
        return 1.0
    cache = cal_dir / ("backlog-handoff.json" if handoff else "backlog.json")
    if cache.exists():
        return float(json.loads(cache.read_text())["factor"])
    points = _pace_points(runs, rho)
    fit = fit_backlog_quota(sc, dep, BOTTLENECK, points)
    record = {"factor": 1.0 if fit is None else fit.factor, "fit": None}
    if fit is not None:
        record["fit"] = {
            "testbed_ms": fit.testbed_ms,
            "band_ms": fit.band_ms,
            "items": fit.items,
            "twin_ms": list(fit.twin_ms),
            "runs": [list(p) for p in points if p[3]],
        }
    cache.write_text(json.dumps(record, indent=1))
    return record["factor"]


def _quota_tick(
    cal_dir: Path, sc: Scenario, dep: Deployment, runs: pd.DataFrame, rho: float
) -> float:
    """When the twin's quota is enforced (ms after the quota ran out; 0: at once).

    ``KNEE_TICK=fit`` (default): fitted on the other levels below the capacity, so the
    twin stalls the bottleneck as often as their runs did (:func:`calibrate.enforce.
    fit_tick`; cached in ``quota_tick.json``); ``KNEE_TICK=<ms>``: that interval (4:
    the twin before this fit, the scheduler tick at HZ=250)."""
    how = os.environ.get("KNEE_TICK", "fit").strip()
    if how != "fit":
        return float(how)
    cache = cal_dir / "quota_tick.json"
    if cache.exists():
        return float(json.loads(cache.read_text())["tick_ms"])
    other = runs[(runs["rho"] != rho) & (runs["rho"] < 1.0) & runs["usable"]]
    d = OUT / str(runs["deployment"].iloc[0])
    points = [
        (
            float(g["offered"].mean()),
            float(np.nanmean([run_stall_share(d / r, BOTTLENECK) for r in g["run"]])),
        )
        for _, g in other.groupby("rho")
    ]
    fit = fit_tick(sc, dep, BOTTLENECK, points)
    tick = CFS_TICK_MS if fit is None else fit.tick_ms
    record = {"tick_ms": tick, "fit": None}
    if fit is not None:
        record["fit"] = {
            "rates": [r for r, _ in points],
            "testbed_stall": list(fit.testbed),
            "twin_stall": {str(k): list(v) for k, v in fit.twin.items()},
        }
    cache.write_text(json.dumps(record, indent=1))
    return tick


def twin_level(name: str, rho: float, runs: pd.DataFrame, seeds: int = 8) -> dict:
    """The twin calibrated on the other levels' runs, at this level's offered rate.

    Three twins: ``twin_*`` runs each stage under the testbed's CPU quota
    (:mod:`calibrate.quota`: model and server CPU per call from the fit runs'
    counters, full speed until the period's quota is used, capacity from the
    quota-bound intervals) with the per-request overhead at this offered rate
    (interpolated between the fit levels'); ``mean_*`` is the same with one overhead
    for every rate (the fit levels' mean, as the lab's experiment twin has it);
    ``plain_*`` is the calibration as ``calibrate fit`` gives it (service = the
    measured wall time of a batch, pooled over the fit levels; no quota).
    """
    held = held_out_twin(name, rho, runs)
    # the simulated figures, cached beside the fits (and emptied with them): a report
    # that stops (a locked piece's time) goes on where it stopped
    knobs = ("KNEE_OVERHEAD", "KNEE_PACE", "KNEE_BACKLOG", "KNEE_HANDOFF", "KNEE_TICK")
    key = {"seeds": seeds, "rate": held["rate"], **{k: os.environ.get(k, "") for k in knobs}}
    cache = held["cal_dir"] / "twin_level.json"
    if cache.exists():
        got = json.loads(cache.read_text())
        if got.get("key") == key:
            return got["out"]
    rate, dep, cpu = held["rate"], held["deployment"], held["cpu"]
    rate_sc, quota_sc, plain_sc = held["twin"], held["mean"], held["plain"]
    wl = SteadyWorkload(kind="steady", name="knee", rate_per_s=rate)
    out: dict[str, float] = {}
    # as long as a testbed run (each starts with empty queues), over more seeds
    horizon = float(runs[runs["rho"] == rho]["duration"].mean())
    for key, sc in (("twin", rate_sc), ("plain", plain_sc), ("mean", quota_sc)):
        lat, done = [], 0
        for seed in range(seeds):
            r = simulate_replication(sc, dep, wl, horizon, seed, visits=False).requests
            lat.append((r["t_end"] - r["t_arrive"]).dropna().to_numpy() * 1e3)
            # answers over the second half, as the testbed's saturation throughput
            done += int(((r["t_end"] > horizon / 2) & (r["t_end"] <= horizon)).sum())
        p50, p95, p99 = np.percentile(np.concatenate(lat), [50, 95, 99])
        out |= {
            f"{key}_p50": p50,
            f"{key}_p95": p95,
            f"{key}_p99": p99,
            f"{key}_rps": done / (horizon / 2 * seeds),
            # one seed is one run as long as the testbed's: how far its p95 moves by chance
            f"{key}_p95_runs": [float(np.percentile(x, 95)) for x in lat if len(x)],
        }
    enc = cpu.get(BOTTLENECK)
    out["twin_capacity"] = stage_capacity_rps(rate_sc, dep, BOTTLENECK)
    out["server_cpu_ms"] = (
        f"model {enc.batch_ms:.2f}+{enc.per_item_ms:.2f}(b−1), server {enc.per_call_ms:.2f}/call, "
        f"h {enc.host_speed:.2f}, cv {enc.service_cv:.2f}, cap ×{enc.capacity_scale:.3f}, "
        f"bound ×{enc.bound_factor:.3f} ({enc.bound_s:.0f} s), quota check "
        f"{held['tick_ms']:g} ms, backlog pace ×{held['backlog']:.3f}"
        + (f", pace hand-off {held['pace_cpu_ms']:.3f} ms CPU" if held["pace_cpu_ms"] else "")
        + (
            ""
            if held["handoff"] is None
            else f", hand-off {held['handoff'].mean_ms:.2f} ms (cv {held['handoff'].cv:.1f})"
        )
        if enc
        else ""
    )
    out = {k: (float(v) if isinstance(v, np.floating) else v) for k, v in out.items()}
    cache.write_text(json.dumps({"key": key, "out": out}))
    return out


def _knee(rates: np.ndarray, p95: np.ndarray) -> float:
    """The first offered rate where p95 reaches twice its lowest-load value (interpolated)."""
    goal = 2 * p95[0]
    for i in range(1, len(rates)):
        if p95[i] >= goal:
            f = (goal - p95[i - 1]) / (p95[i] - p95[i - 1])
            return float(rates[i - 1] + f * (rates[i] - rates[i - 1]))
    return float("nan")


def report() -> None:
    parts = [
        f"# The knee: testbed vs held-out calibrated twin (digits pipeline, {BACKEND} backend)",
        "",
        # what the run folders are (when, on what host): KNEE_NOTE, one line
        *([f"- {os.environ['KNEE_NOTE']}"] if os.environ.get("KNEE_NOTE") else []),
        f"- {machine_line()}",
        "- command: `flock /work/bench.lock .venv/bin/python benchmarks/testbed_knee.py run "
        + ("" if BACKEND == "local" else f"--backend {BACKEND} ")
        + "--deployment D` for D in default, variant, batch, then `… report`"
        + (
            ""
            if BACKEND == "local"
            else f" --backend {BACKEND}; run folders {os.path.relpath(OUT, ROOT)}"
        ),
        "- a level's twin is calibrated on the other levels' runs of the same deployment "
        "(`calibrate fit --deployment`, `calibrate.quota.stage_cpu`; held out) and simulated "
        "at the level's mean offered rate, with the per-request overhead interpolated to it "
        "(8 seeds × the runs' duration); error % = (twin − testbed) / testbed on the mean "
        "of the level's repeats; runs *behind* (achieved/offered < 0.99 or release lag p99 "
        "> 5 ms) are counted in 'runs ok'; the figures use the runs with lag p99 ≤ 20 ms "
        "(most runs here had 6–11 ms: the host was shared with unlocked work) and without "
        f"more than {OTHERS_MAX_CORES:g} cores of others' work beside them (the host's busy "
        "cores outside the nodes, above the sweep's quiet line; per run in 'others' cores') "
        f"or a host more than {100 * HOST_SLOW_MAX:g} % slower (the bottleneck's model CPU "
        "per item over the sweep's fastest run's; per run in its column), "
        "in the figures and the fits; a level "
        "without any uses all its runs and is marked *; 'twin p95 per run' is the p95 of "
        "each seed alone (one run as long as the testbed's): near ρ 0.9 a 12-s run's p95 "
        "moves by 2–3× by chance, on the testbed as in the twin",
        "",
    ]
    p95_at: dict[str, pd.DataFrame] = {}
    for name in DEPLOYMENTS:
        runs = _levels(name)
        if runs.empty:
            parts += [f"## {name}: not run", ""]
            continue
        cap = json.loads((OUT / name / "capacity.json").read_text())
        rows, summary = [], []
        for rho, g in runs.groupby("rho"):
            ok = g[g["usable"]]
            strict = g[~g["behind"]]
            tw = twin_level(name, rho, runs)
            m = ok if len(ok) else g
            row = {
                "rho": rho,
                "offered": g["offered"].mean(),
                "achieved": g["achieved"].mean(),
                "p50": m["p50"].mean(),
                "p95": m["p95"].mean(),
                "p99": m["p99"].mean(),
                "n_ok": len(ok),
                "n": len(g),
                "steal": g["steal_cores"].mean(),
                "served": g["served_2nd_half"].mean(),
            }
            row.update(tw)
            err = {q: 100 * (tw[f"twin_{q}"] / row[q] - 1) for q in ("p50", "p95", "p99")}
            row.update({f"err_{q}": e for q, e in err.items()})
            summary.append(row)
            rows.append(
                [
                    f"{rho:.1f}{'' if len(ok) else '*'}",
                    f"{row['offered'] / tw['twin_capacity']:.2f}",
                    f"{row['offered']:.0f}",
                    f"{row['achieved']:.0f}",
                    f"{len(strict)}/{len(ok)}/{len(g)}",
                    f"{row['p50']:.1f}",
                    f"{row['p95']:.1f}",
                    f"{row['p99']:.1f}",
                    f"{tw['twin_p50']:.1f}",
                    f"{tw['twin_p95']:.1f}",
                    f"{tw['twin_p99']:.1f}",
                    *(f"{err[q]:+.1f}" for q in ("p50", "p95", "p99")),
                    f"{100 * (tw['plain_p95'] / row['p95'] - 1):+.1f}",
                    f"{100 * (tw['mean_p95'] / row['p95'] - 1):+.1f}",
                    "/".join(f"{x:.0f}" for x in m["p95"]),
                    f"{min(tw['twin_p95_runs']):.0f}–{max(tw['twin_p95_runs']):.0f}",
                    f"{row['steal']:.3f}",
                    "/".join(f"{x:.2f}" for x in g["others_cores"]),
                    "/".join(f"{x:.2f}" for x in g["item_cpu_ms"]),
                    tw["server_cpu_ms"],
                ]
            )
        s = pd.DataFrame(summary)
        p95_at[name] = s
        knee_tb = _knee(s["offered"].to_numpy(), s["p95"].to_numpy())
        knee_tw = _knee(s["offered"].to_numpy(), s["twin_p95"].to_numpy())
        sat = s[s["rho"] >= 1.0]
        held = s[(s["rho"] <= 0.9) & (s["n_ok"] > 0)]
        worst = {q: held[f"err_{q}"].abs().max() for q in ("p50", "p95", "p99")}
        fidelity = (
            f"- fidelity, ρ ≤ 0.9 ({len(held)} levels): worst |error| p50 {worst['p50']:.1f} % "
            f"(goal 5), p95 {worst['p95']:.1f} % (goal 10), p99 {worst['p99']:.1f} % (goal 15)"
        )
        # the levels are fractions of the local backend's estimate (capacity.json); a
        # backend that serves fewer per quota is further along its own knee at each level
        # its capacity: the most loaded level's answers per second, if that level was
        # backlogged (served below 97 % of offered)
        top = s.loc[s["rho"].idxmax()]
        if top["rho"] >= 1.0 and top["served"] < 0.97 * top["offered"]:
            own = s["offered"] / float(top["served"])
            mine = s[(own <= 0.9) & (s["n_ok"] > 0)]
            w = {q: mine[f"err_{q}"].abs().max() for q in ("p50", "p95", "p99")}
            fidelity += (
                f"\n- the testbed's own ρ (offered / its answers per second backlogged at ρ "
                f"{top['rho']:.1f}, {float(top['served']):.1f}/s): "
                + ", ".join(f"{a:.1f} → {b:.2f}" for a, b in zip(s["rho"], own, strict=True))
                + f"; fidelity at own ρ ≤ 0.9 ({len(mine)} levels): worst |error| p50 "
                f"{w['p50']:.1f} %, p95 {w['p95']:.1f} %, p99 {w['p99']:.1f} %"
            )
        left_out = ", ".join(
            f"{r.run} ("
            + (
                f"lag p99 {r.lag_p99_ms:.0f} ms"
                if r.lag_p99_ms > USABLE_LAG_S * 1e3 or not r.disturbed
                else f"others' work {r.others_cores:.2f} cores"
                if r.others_cores > OTHERS_MAX_CORES
                else f"slow host: {BOTTLENECK} CPU per item +{100 * r.host_slow:.0f} %"
            )
            + ")"
            for r in runs.itertuples()
            if not r.usable
        )
        parts += [
            f"## {name}: encoder {DEPLOYMENTS[name]['variant']} batch "
            f"{DEPLOYMENTS[name]['batch']} (share {cap['share']:.2f} core, default bottleneck "
            f"capacity {'measured' if cap.get('measured') else 'estimate'} "
            f"{cap['capacity_rps']:.0f}/s)",
            *_probe_line(cap),
            "",
            markdown_table(
                [
                    "ρ",
                    "twin ρ",
                    "offered/s",
                    "achieved/s",
                    "runs ok (lag ≤ 5 / ≤ 20 ms / all)",
                    "tb p50",
                    "tb p95",
                    "tb p99",
                    "twin p50",
                    "twin p95",
                    "twin p99",
                    "p50 err %",
                    "p95 err %",
                    "p99 err %",
                    "p95 err % wall-time fit, no quota",
                    "p95 err % one overhead for all rates (the lab's twin)",
                    "tb p95 per run",
                    "twin p95 per run (8 seeds, min–max)",
                    "steal cores",
                    "others' cores per run",
                    f"{BOTTLENECK} model CPU per item per run (ms)",
                    "encoder CPU fit (ms)",
                ],
                rows,
            ),
            "",
            fidelity,
            f"- runs left out of the fidelity figures: {left_out or 'none'}",
            f"- knee (p95 = 2 × its lowest-load value): testbed {knee_tb:.0f}/s, twin "
            f"{knee_tw:.0f}/s ({100 * (knee_tw / knee_tb - 1):+.1f} %)",
            *(
                f"- saturation throughput at ρ {r.rho:.1f} (answers/s over the run's second "
                f"half, backlogged): testbed {r.served:.1f}/s, twin {r.twin_rps:.1f}/s "
                f"({100 * (r.twin_rps / r.served - 1):+.1f} %); the twin's capacity "
                f"{r.twin_capacity:.1f}/s"
                for r in sat.itertuples()
            ),
            "",
        ]
    if "default" in p95_at:
        parts += ["## Decisions matter: p95 ratio to the default deployment at each level", ""]
        base = p95_at["default"].set_index("rho")
        for other in ("variant", "batch"):
            if other not in p95_at:
                continue
            o = p95_at[other].set_index("rho")
            rows = []
            for rho in base.index.intersection(o.index):
                tb = base.loc[rho, "p95"] / o.loc[rho, "p95"]
                tw = base.loc[rho, "twin_p95"] / o.loc[rho, "twin_p95"]
                rows.append([f"{rho:.1f}", f"{tb:.2f}", f"{tw:.2f}", f"{100 * (tw / tb - 1):+.1f}"])
            parts += [
                f"default / {other}:",
                "",
                markdown_table(["ρ", "testbed p95 ratio", "twin p95 ratio", "error %"], rows),
                "",
            ]
    if BACKEND != "local":
        parts += side_by_side(p95_at)
    default_name = "testbed_knee" + ("" if BACKEND == "local" else f"_{BACKEND}")
    write_result(os.environ.get("KNEE_RESULT", default_name), "\n".join(parts))


def _probe_line(cap: dict) -> list[str]:
    """The report's line on the sweep's capacity probe, when it had one."""
    p = cap.get("probe")
    if not p:
        return []
    return [
        "",
        f"ρ 1 = {p['served_rps']:.1f}/s, measured by the sweep's capacity probe "
        f"({p['duration_s']:g} s at {p['offered_rps']:.0f}/s; the fixed estimate "
        f"{cap['estimate_rps']:.1f}/s; steal {p['steal_cores']:.3f} cores): the "
        f"estimate was {100 * (cap['estimate_rps'] / p['served_rps'] - 1):+.1f} % off"
        + ("" if p.get("backlogged", True) else " (NOT backlogged: a lower bound)"),
    ]


def use_backend(backend: str) -> None:
    """Point the run folders (and the result's name) at ``backend``'s."""
    global OUT, BACKEND
    OUT, BACKEND = OUTS[backend], backend


def _summary(name: str) -> pd.DataFrame:
    """Per level of ``name``: the testbed's mean p50/p95/p99 (usable runs) and the
    held-out twin's error %, as :func:`report` computes them."""
    runs = _levels(name)
    rows = []
    for rho, g in runs.groupby("rho") if not runs.empty else ():
        ok = g[g["usable"]]
        m = ok if len(ok) else g
        tw = twin_level(name, rho, runs)
        row = {"rho": rho, "n_ok": len(ok), "offered": g["offered"].mean()}
        for q in ("p50", "p95", "p99"):
            row[q] = m[q].mean()
            row[f"err_{q}"] = 100 * (tw[f"twin_{q}"] / row[q] - 1)
        rows.append(row)
    return pd.DataFrame(rows)


def _cells(x: dict | None) -> list[str]:
    if x is None:
        return ["–"] * 5
    errs = "/".join(f"{x[f'err_{q}']:+.0f}" for q in ("p50", "p95", "p99"))
    return [
        f"{x['p50']:.1f}",
        f"{x['p95']:.1f}",
        f"{x['p99']:.1f}",
        f"{x['p95'] / x['p50']:.2f}",
        errs,
    ]


# Committed result files with local-backend levels, cited when the side-by-side has no
# local sweep to score (a fresh machine has no run folders): per deployment
LOCAL_RESULTS = {
    "default": ("testbed_knee_s13_local.md", "testbed_knee_quiet9.md"),
    "batch": ("testbed_knee_s13_local.md",),
    "variant": ("testbed_knee.md",),
}


def side_by_side(this: dict[str, pd.DataFrame]) -> list[str]:
    """Markdown: the local backend's levels beside this backend's, per deployment."""
    here = BACKEND
    use_backend("local")
    try:
        parts = ["## Both backends side by side (testbed ms; twin error % held out)", ""]
        for name, s in this.items():
            loc = _summary(name) if (OUT / name / "capacity.json").exists() else pd.DataFrame()
            if loc.empty:
                cited = ", ".join(f"`benchmarks/results/{f}`" for f in LOCAL_RESULTS[name])
                parts += [
                    f"{name}: no local-backend runs in {os.path.relpath(OUT / name, ROOT)} "
                    "(none on this machine; KNEE_RUNS=<a local sweep> scores one here). "
                    f"The local backend's committed figures: {cited}.",
                    "",
                ]
                continue
            rows = []
            for r in s.to_dict("records"):
                lo = loc[loc["rho"] == r["rho"]].to_dict("records")
                rows.append([f"{r['rho']:.1f}", *_cells(lo[0] if lo else None), *_cells(r)])
            parts += [
                f"{name}:",
                "",
                markdown_table(
                    [
                        "ρ",
                        "local p50",
                        "local p95",
                        "local p99",
                        "local p95/p50",
                        "local twin err p50/p95/p99 %",
                        f"{here} p50",
                        f"{here} p95",
                        f"{here} p99",
                        f"{here} p95/p50",
                        f"{here} twin err p50/p95/p99 %",
                    ],
                    rows,
                ),
                "",
            ]
        return parts
    finally:
        use_backend(here)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="one deployment's sweep (resumable)")
    r.add_argument("--deployment", choices=list(DEPLOYMENTS), required=True)
    r.add_argument(
        "--probe",
        type=float,
        default=None,
        metavar="S",
        help="first measure what ρ 1 means: S s at ρ 1.2 of the estimate (twice that if not "
        "backlogged, up to 3 runs), on the same "
        "testbed (recorded in capacity.json; default: the fixed estimate)",
    )
    r.add_argument("--duration", type=float, default=20.0, help="s per run")
    r.add_argument("--repeats", type=int, default=2)
    r.add_argument(
        "--rhos",
        default=None,
        help="comma-separated levels (default: all), each optionally with its own run "
        "length in s: 0.2:20,0.9:90",
    )
    r.add_argument(
        "--capacity-per-s",
        default=None,
        help="what ρ 1 means, req/s (default: the local estimate from the zoo), or a run "
        "folder: its answers per second over its second half (a backlogged probe run)",
    )
    rp = sub.add_parser("report", help="calibrate held-out twins and write the result")
    for q in (r, rp):
        q.add_argument("--backend", choices=list(OUTS), default="local")
        q.add_argument("--runs", type=Path, default=None, help="run folders (default per backend)")
    a = ap.parse_args()
    use_backend(a.backend)
    if a.runs is not None:
        OUTS[a.backend] = a.runs
        use_backend(a.backend)
    if a.cmd == "run":
        levels = [x.split(":") for x in a.rhos.split(",")] if a.rhos else [[str(x)] for x in RHOS]
        rhos = tuple(float(x[0]) for x in levels)
        durations = {float(x[0]): float(x[1]) for x in levels if len(x) > 1}
        cap = a.capacity_per_s
        if cap is not None:
            try:
                cap = _served_rps(Path(cap)) if Path(cap).is_dir() else float(cap)
            except (ValueError, FileNotFoundError):
                ap.error(
                    f"--capacity-per-s: {cap!r} is neither req/s nor a run folder "
                    "with per_second.parquet"
                )
            print(f"ρ 1 = {cap:.1f}/s", file=sys.stderr)
        run(a.deployment, a.duration, a.repeats, rhos, durations, cap, probe_s=a.probe)
    else:
        report()


if __name__ == "__main__":
    main()
