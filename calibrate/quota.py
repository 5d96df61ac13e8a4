"""A calibrated twin whose stages run under the testbed's CPU quota, as the testbed's do.

On the testbed a stage server is a process in a cgroup with a CFS quota (``share``
host cores per 10 ms period). The model and the server's own HTTP work draw from
that one quota; while the period's quota lasts a batch runs at full core speed,
after that it stalls to the next period. So the wall time of a batch is *not* a
property of the model: 3.3 ms at light load, 6 ms near saturation for the same
e-large batch (measured, ``benchmarks/results/testbed_knee.md``). A twin fitted on
those wall times pools both regimes: at light load its service is too slow, near
the knee too fast (capacity 1 / mean wall instead of share / CPU per item).

This module fits what does not depend on load, from the fit runs' Prometheus
counters (``metrics.parquet`` of ``loadgen`` runs):

* the model's CPU per batch (``stage_compute_cpu_seconds``, linear in batch size),
* the server's CPU per HTTP call and its idle CPU (node cgroup CPU minus model CPU,
  least squares over the runs: ``other = per_call · calls + idle · seconds``),
* the node's idle CPU and the scale of the CPU above, from one line through all the
  runs' node CPU rates against their work rates: its slope is the marginal CPU of an
  item, which sets the capacity (light runs spend more CPU per item, which a fit of
  their totals would carry to saturation),
* the host's speed ``h`` = model CPU / median model wall time of a batch in the
  lightest run, where the quota rarely stalls: a runnable process on the 2 shared
  host cores is not always running, and that time is not charged to the quota,
* the node's CPU per unit of that work while its quota binds, over what the line
  gives (``StageCpu.bound_factor``), from the runs' scrape intervals whose node CPU
  rate is at the quota. It is a property of the backend, fitted per testbed: on the
  local backend ≈ 1.0; on Compose the node spends 7 % more per item while throttled
  (3.66 against 3.41 ms per e-large item at the same > 100 items/s unthrottled), so
  a quota there serves 7 % fewer items than the line through the runs says.

:func:`quota_scenario` then gives every stage a service time of CPU/h (its wall time
when not stalled), its server's CPU per call as ``server_overhead``, and every
machine a quota of ``(share − idle) / h`` cores of that running time
(``Server.cpu_quota_cores``), so the twin's stall, its capacity (share / CPU per
item) and its light-load latency are the testbed's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from calibrate.calibration import Calibration, calibrated_scenario
from twin.deployment import stage_config
from twin.spec import (
    Deployment,
    GammaServiceTime,
    LognormalServiceTime,
    Scenario,
    ServerOverhead,
)

# Linux leaves up to min_cfs_rq_runtime (1 ms) of a group's runtime on a CPU when the
# group goes idle there, and since 5.4 that runtime does not expire at the period's end:
# the model's thread may run that much beyond the period's quota after an idle spell
CFS_CARRY_MS = 1.0
# the kernel checks a running thread's group runtime at its scheduler tick (CONFIG_HZ=250
# here: 4 ms; no high-resolution tick), so the thread overruns the quota until then
CFS_TICK_MS = 4.0
# the pooled capacity fit needs runs this far apart in item rate (max / min): the
# node's CPU against its item rate is then a line with a slope, not a point
MIN_RATE_SPREAD = 1.5
# a scrape interval whose node CPU rate is this fraction of the quota or more is
# quota-bound; the bound factor needs this many seconds of them over the runs (ten
# ~1-s scrape intervals: a single run's brief spell at the quota gives a noisy factor)
BOUND_FRACTION = 0.95
MIN_BOUND_S = 10.0


@dataclass(frozen=True)
class StageCpu:
    """A stage's CPU on the testbed, fitted over runs (ms of host CPU, cores)."""

    stage: str
    variant: str
    node: str
    batch_ms: float  # model CPU of a batch of one
    per_item_ms: float  # model CPU of each further item in a batch
    per_call_ms: float  # the server's CPU per HTTP call (parse, answer, hand-off)
    calls_per_item: float  # HTTP calls per item served, over the fit runs
    idle_cores: float  # the node's CPU while nothing is served (agent, scrapes)
    host_speed: float  # model CPU / model wall time in the lightest run (≤ 1)
    runs: int
    # spread of a batch's time when the quota does not stall it (lightest run, from the
    # interquartile range: stalls and preemptions only reach the upper tail)
    service_cv: float = 0.05
    # the node's marginal CPU (pooled over the runs, see :func:`_capacity_fit`) over the
    # per-run fit's; the CPU per batch, item and call above is already multiplied by it
    # (1: too few runs, or their item rates too close, to tell)
    capacity_scale: float = 1.0
    # the node's CPU above idle per unit of the work above while its quota binds, over
    # the line's (1: too few quota-bound seconds in the runs, or no quota given)
    bound_factor: float = 1.0
    bound_s: float = 0.0  # seconds of quota-bound scrape intervals it comes from


def _series(m: pd.DataFrame, target: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """A target's metric over a run: scrape times (s) and values, in time order."""
    x = m[(m["target"] == target) & (m["metric"] == metric)].sort_values("t")
    return x["t"].to_numpy(dtype=float), x["value"].to_numpy(dtype=float)


def _delta(m: pd.DataFrame, target: str, metric: str) -> tuple[float, float]:
    """Increase of a counter over a run and the seconds it spans (nan when absent)."""
    t, v = _series(m, target, metric)
    if len(t) < 2:
        return math.nan, math.nan
    return float(v[-1] - v[0]), float(t[-1] - t[0])


def _bound(m: pd.DataFrame, node: str, target: str, share: float | None) -> dict[str, float]:
    """Sums over the run's scrape intervals whose node CPU rate reaches
    ``BOUND_FRACTION`` of the quota (``share`` cores): seconds, node CPU, and the
    stage's batches, items and calls in them (its counters interpolated to the agent's
    scrape times). Zeros when there is no quota or none is bound."""
    out = dict.fromkeys(
        ("bound_s", "bound_cpu", "bound_batches", "bound_items", "bound_calls"), 0.0
    )
    if not share:
        return out
    t, cpu = _series(m, f"agent:{node}", "node_cpu_seconds_total")
    if len(t) < 2:
        t, cpu = _series(m, f"agent:{node}", "node_cpu_seconds")
    if len(t) < 3:
        return out
    cols = {}
    for key, metric in (
        ("batches", "stage_batch_size_count"),
        ("items", "stage_items_total"),
        ("calls", "stage_calls_total"),
    ):
        ts, v = _series(m, target, metric)
        if len(ts) < 2:
            return out
        cols[key] = np.diff(np.interp(t, ts, v))
    dt, dcpu = np.diff(t), np.diff(cpu)
    bound = (dt > 0) & (dcpu >= BOUND_FRACTION * share * dt) & (cols["items"] > 0)
    out["bound_s"], out["bound_cpu"] = float(dt[bound].sum()), float(dcpu[bound].sum())
    for key, d in cols.items():
        out[f"bound_{key}"] = float(d[bound].sum())
    return out


def _counters(
    folder: Path, node_of: dict[str, str], share: dict[str, float] | None = None
) -> list[dict]:
    m = pd.read_parquet(folder / "metrics.parquet")
    m = m.assign(target=m["target"].astype(str), metric=m["metric"].astype(str))
    targets = m["target"].unique()
    rows = []
    for stage, node in node_of.items():
        tgt = [t for t in targets if t.startswith(f"{stage}-{node}-")]
        if len(tgt) != 1:
            continue
        # the node agent's counter (``node_cpu_seconds_total``; ``node_cpu_seconds`` before)
        node_cpu, dt = _delta(m, f"agent:{node}", "node_cpu_seconds_total")
        if not math.isfinite(node_cpu):
            node_cpu, dt = _delta(m, f"agent:{node}", "node_cpu_seconds")
        row = {"stage": stage, "node": node, "node_cpu": node_cpu, "seconds": dt}
        for key, metric in (
            ("model_cpu", "stage_compute_cpu_seconds_total"),
            ("items", "stage_items_total"),
            ("calls", "stage_calls_total"),
            ("batches", "stage_batch_size_count"),
            ("wall", "stage_service_seconds_sum"),
        ):
            row[key] = _delta(m, tgt[0], metric)[0]
        if np.isfinite(list(row.values())[2:]).all() and row["batches"] > 0:
            bound = _bound(m, node, tgt[0], (share or {}).get(stage))
            rows.append({**row, **bound, "folder": str(folder)})
    return rows


def _capacity_fit(
    g: pd.DataFrame, first_ms: float, more_ms: float, per_call_ms: float
) -> tuple[float, float] | None:
    """The node's idle CPU (cores) and a scale of the per-run fit's CPU, from one line
    through every run's node CPU *rate* against its fitted work rate (least squares).

    ``node_cpu / s = idle + scale · (first · batches + more · extra items + per_call ·
    calls) / s``. Each run counts once whatever its length or load, and the slope is the
    *marginal* CPU of the work: what a backlogged node spends on one more item. The
    per-run fit's totals instead hold the light runs' extra CPU per item (cold caches
    between sparse inferences, event-loop wake-ups per call: 3.6–3.9 ms of node CPU per
    e-large item at 25/s against 3.3–3.4 ms at 120/s), which put the capacity 3–7 %
    low. ``None`` when the runs' item rates are too close to give a slope.
    """
    rate = g["items"] / g["seconds"]
    if len(g) < 2 or rate.max() < MIN_RATE_SPREAD * rate.min():
        return None
    work = (
        first_ms * g["batches"] + more_ms * (g["items"] - g["batches"]) + per_call_ms * g["calls"]
    ) / 1e3
    x = np.c_[np.ones(len(g)), work / g["seconds"]]
    (idle, scale), *_ = np.linalg.lstsq(x, g["node_cpu"] / g["seconds"], rcond=None)
    if idle < 0 or not 0.7 <= scale <= 1.3:  # no line a node's CPU could follow
        return None
    return float(idle), float(scale)


def _bound_factor(
    g: pd.DataFrame, idle: float, first_ms: float, more_ms: float, per_call_ms: float
) -> tuple[float, float]:
    """The node's CPU above idle over the fitted work in the runs' quota-bound scrape
    intervals, and their seconds; (1, s) when under ``MIN_BOUND_S`` seconds or off
    (0.8–1.3)."""
    seconds = float(g["bound_s"].sum())
    work = (
        first_ms * g["bound_batches"].sum()
        + more_ms * (g["bound_items"] - g["bound_batches"]).sum()
        + per_call_ms * g["bound_calls"].sum()
    ) / 1e3
    if seconds < MIN_BOUND_S or work <= 0:
        return 1.0, seconds
    factor = (float(g["bound_cpu"].sum()) - idle * seconds) / work
    return (factor, seconds) if 0.8 <= factor <= 1.3 else (1.0, seconds)


def _host_speed(
    light: pd.Series, stage: str, first_ms: float, more_ms: float
) -> tuple[float, float]:
    """Model CPU over model wall time of a batch in the lightest run (≤ 1), and the cv of
    that wall time when nothing stalls it.

    The *median* wall time of the most common batch size: even at light load some
    batches straddle a quota stall, which the mean would count as slowness. The cv
    comes from the interquartile range of the log wall times (a lognormal's σ is
    IQR / 1.349): stalls and preemptions lengthen the upper tail only, and the twin
    makes those itself (its quota), so counting them in the spread would count them
    twice. Without per-visit rows, the run's mean wall time and a cv of 0.05.
    """
    visits = Path(light["folder"]) / "visits.parquet"
    if visits.is_file():
        v = pd.read_parquet(visits, columns=["component", "batch", "service_s"])
        v = v[(v["component"].astype(str) == stage) & (v["service_s"] > 0)]
        if len(v) >= 8:
            b = int(v["batch"].mode().iloc[0])
            wall = 1e3 * v[v["batch"] == b]["service_s"].to_numpy(dtype=float)
            speed = float(np.clip((first_ms + more_ms * (b - 1)) / np.median(wall), 0.2, 1.0))
            q25, q75 = np.percentile(np.log(wall), [25, 75])
            sigma = (q75 - q25) / 1.349
            return speed, float(np.sqrt(np.expm1(sigma * sigma)))
    return float(np.clip(light["model_cpu"] / light["wall"], 0.2, 1.0)), 0.05


def stage_cpu(
    folders: list[Path],
    deployment: Deployment,
    share: float | dict[str, float] | None = None,
) -> dict[str, StageCpu]:
    """Per stage alone on one node: its CPU model fitted over the runs in ``folders``.

    A node's CPU beyond the model cannot be split between co-located stages, so
    stages that share a node (or span several) are left out. The stage's capacity
    comes from all the runs at once (:func:`_capacity_fit`): the node's CPU rate
    against its work rate is one line, whose slope scales the CPU per batch, item and
    call (``StageCpu.capacity_scale``) and whose intercept is the idle CPU. Pass
    every run whose counters are valid, also those whose load generator fell behind:
    the more load levels, the steadier the slope. ``share`` (host cores of each
    stage's node quota; one number or per stage) finds the quota-bound scrape
    intervals, whose CPU over the line's gives ``StageCpu.bound_factor``; without it
    the factor is 1.
    """
    holders: dict[str, list[str]] = {}
    for comp, where in deployment.allocation.items():
        for node, n in where.items():
            if n > 0:
                holders.setdefault(node, []).append(comp)
    node_of = {
        c: next(iter(w))
        for c, w in deployment.allocation.items()
        if len(w) == 1 and holders[next(iter(w))] == [c]
    }
    shares = (
        None
        if share is None
        else {c: share.get(c, 0.0) if isinstance(share, dict) else share for c in node_of}
    )
    rows = pd.DataFrame([r for f in folders for r in _counters(Path(f), node_of, shares)])
    out: dict[str, StageCpu] = {}
    if rows.empty:
        return out
    for stage, g in rows.groupby("stage"):
        b, n = g["batches"].to_numpy(), g["items"].to_numpy()
        cpu_ms = g["model_cpu"].to_numpy() * 1e3
        extra = n - b
        if extra.sum() > 0.05 * n.sum() and len(g) >= 2:
            (first, more), *_ = np.linalg.lstsq(np.c_[b, extra], cpu_ms, rcond=None)
            first, more = max(first, 0.0), max(more, 0.0)
        else:  # batches of one only: the per-item slope is not seen; scale linearly
            first = more = float(cpu_ms.sum() / n.sum())
        other = (g["node_cpu"] - g["model_cpu"]).to_numpy()
        per_call = idle = -1.0
        if len(g) >= 2:
            (per_call, idle), *_ = np.linalg.lstsq(
                np.c_[g["calls"].to_numpy(), g["seconds"].to_numpy()], other, rcond=None
            )
        if idle < 0 or per_call < 0:  # too few runs to tell them apart: all per call
            per_call, idle = float(other.sum() / g["calls"].sum()), 0.0
        scale = 1.0
        pooled = _capacity_fit(g, first, more, per_call * 1e3)
        if pooled is not None:
            idle, scale = pooled
            first, more, per_call = first * scale, more * scale, per_call * scale
        bound, bound_s = _bound_factor(g, idle, first, more, per_call * 1e3)
        light = g.loc[(g["items"] / g["seconds"]).idxmin()]
        speed, cv = _host_speed(light, str(stage), float(first), float(more))
        dep_cfg = deployment.stages.get(str(stage))
        out[str(stage)] = StageCpu(
            stage=str(stage),
            variant=dep_cfg.variant if dep_cfg is not None else "",
            node=str(g["node"].iloc[0]),
            batch_ms=float(first),
            per_item_ms=float(more),
            per_call_ms=float(per_call) * 1e3,
            calls_per_item=float(g["calls"].sum() / n.sum()),
            idle_cores=float(idle),
            host_speed=speed,
            runs=len(g),
            service_cv=cv,
            capacity_scale=scale,
            bound_factor=bound,
            bound_s=bound_s,
        )
    return out


def quota_scenario(
    scenario: Scenario,
    calibration: Calibration,
    deployment: Deployment,
    cpu: dict[str, StageCpu],
    share: float | dict[str, float],
    rate_per_s: float | None = None,
    carry_ms: float = CFS_CARRY_MS,
    tick_ms: float = CFS_TICK_MS,
    overhead_shape: bool = False,
) -> Scenario:
    """The calibrated scenario (:func:`calibrated_scenario` at ``share``) with its stages
    under the testbed's CPU quota (see the module doc).

    ``cpu``: :func:`stage_cpu` of the fit runs; ``share``: host cores of each node's
    quota (one number, or per stage: the quota of the node it runs on). Stages without
    a CPU fit keep their fitted wall-time model, and their servers get no quota.
    ``carry_ms``: quota a period may pass to the next (``Settings.cpu_quota_carry_ms``);
    ``tick_ms``: when the quota is enforced (``Settings.cpu_quota_tick_ms``).
    ``rate_per_s``: the per-request overhead at this offered rate
    (:func:`calibrate.calibration.overhead_at`) instead of the fit levels' mean;
    ``overhead_shape``: its cv at that rate too.
    """
    sc, _ = calibrated_scenario(
        scenario, calibration, shares=share, rate_per_s=rate_per_s, overhead_shape=overhead_shape
    )
    moved_ms = 0.0
    components = []
    for c in sc.components:
        fit = cpu.get(c.name)
        if fit is None or not c.is_stage:
            components.append(c)
            continue
        h = fit.host_speed
        current = stage_config(deployment, c).variant
        variants = []
        for v in c.variants:
            if v.name == current:
                st = LognormalServiceTime(
                    kind="lognormal",
                    mean_ms=fit.batch_ms / h,
                    per_item_ms=fit.per_item_ms / h,
                    cv=fit.service_cv,
                )
                v = v.model_copy(update={"service_time": st})
            variants.append(v)
        over_ms = fit.per_call_ms * fit.calls_per_item / h
        moved_ms += over_ms
        o = c.server_overhead or ServerOverhead()
        # with the twin's own calls (call_window_ms) the server's CPU is per call, as the
        # counters have it; without, each item carries the fit runs' calls per item
        per_call = {"per_call_ms": fit.per_call_ms / h} if o.call_window_ms > 0 else {}
        components.append(
            c.model_copy(
                update={
                    "variants": variants,
                    # the stage server reads and answers calls in its event loop while
                    # the model runs in a worker thread: one quota, not one queue
                    "server_overhead": ServerOverhead(
                        per_item_ms=0.0 if per_call else over_ms,
                        concurrent=True,
                        answer_ms=o.answer_ms,
                        timer_late_ms=o.timer_late_ms,
                        call_window_ms=o.call_window_ms,
                        answers_onward=o.answers_onward,
                        **per_call,
                    ),
                }
            )
        )
    quota = {}
    for f in cpu.values():
        cores = share.get(f.stage, 1.0) if isinstance(share, dict) else share
        # the bound factor shrinks the quota, not the service: the extra CPU is spent
        # only while the quota binds (a batch's unthrottled wall time is as measured)
        quota[f.node] = max(cores - f.idle_cores, 0.05 * cores) / (f.host_speed * f.bound_factor)
    servers = []
    for s in sc.servers:
        machines = s.instance_names()
        if not any(m in quota for m in machines):
            servers.append(s)
            continue
        if s.count == 1:
            servers.append(s.model_copy(update={"cpu_quota_cores": quota[machines[0]]}))
            continue
        # each machine its own quota (h and idle differ per node): one server type per
        # machine, named as the machine, so allocations keep their machine names
        for m in machines:
            servers.append(
                s.model_copy(update={"name": m, "count": 1, "cpu_quota_cores": quota.get(m)})
            )
    processes = []
    for p in sc.processes:
        o = p.request_overhead
        if p.kind == "request" and isinstance(o, LognormalServiceTime | GammaServiceTime):
            # the servers' CPU per call now sits in each stage's service; it leaves the
            # request's overhead, which held it as part of every HTTP hop
            o = o.model_copy(update={"mean_ms": max(o.mean_ms - moved_ms, 0.1 * o.mean_ms)})
            p = p.model_copy(update={"request_overhead": o})
        processes.append(p)
    settings = sc.settings.model_copy(
        update={"cpu_quota_carry_ms": carry_ms, "cpu_quota_tick_ms": tick_ms}
    )
    new = sc.model_copy(
        update={
            "components": components,
            "servers": servers,
            "processes": processes,
            "settings": settings,
        }
    )
    return Scenario.model_validate(new.model_dump())
