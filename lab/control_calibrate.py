"""The twin a control run is replayed against, calibrated from other control runs.

The uncalibrated replay simulates the policies' view (:mod:`lab.control_view`):
manifest service times at the replica's CPU share and a guessed 6 ms request
overhead. Here the lab's own calibration (:func:`lab.fitruns.fit_run_calibration`,
what ``make testbed`` fits from its fit runs) is fitted on the raw rows of
*other* control runs' load runs instead: per stage × variant the batch service
time at the CPU share the replica had, and the per-request overhead (latency
minus stage time: client, gateway, HTTP hops). Variants no run served keep the
view's service time (manifest time at the share).

The calibrated scenario only replaces what the simulation draws; the replay
scores every interval on the view (Q, C and E from the modelled capacity), as the
testbed side is scored, so only latency can move.

Known gap of that twin: replicas sharing one node's quota, and the quota's stall,
are not in it. :func:`quota_twin` adds them (``calibrate.quota``'s model, which
is for a fixed deployment, applied to the machines, so it holds as the deployment
changes), with the node cgroups' CPU beside the models fitted by :func:`node_cpu`
from the node agents' counters that control runs scrape. The CPU a replica start
took from the node it joined is gone: the agent starts replicas outside the quota.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from calibrate import calibration as cal
from lab.control_view import replica_speed
from lab.fitruns import fit_run_calibration
from loadgen.run import LoadResult
from twin.spec import Scenario, ServiceTime, Workload


def load_result(folder: Path) -> LoadResult:
    """A finished load-run folder (``requests``/``visits`` parquet, ``run.json``) as a result."""
    need = ("requests.parquet", "visits.parquet", "run.json")
    missing = [n for n in need if not (folder / n).is_file()]
    if missing:
        raise ValueError(f"{folder}: not a finished load run (missing {', '.join(missing)})")
    meta = json.loads((folder / "run.json").read_text())
    summary = folder / "summary.json"

    def table(name: str) -> pd.DataFrame:
        f = folder / f"{name}.parquet"
        return pd.read_parquet(f) if f.is_file() else pd.DataFrame()

    return LoadResult(
        t0=float(meta["t0_unix_s"]),
        requests=table("requests"),
        visits=table("visits"),
        per_second=table("per_second"),
        metrics=table("metrics"),
        batch=pd.DataFrame(),
        summary=json.loads(summary.read_text()) if summary.is_file() else {},
        wall_s=float(meta.get("duration_s", 0.0)),
    )


def replica_shares(scenario: Scenario, factor: float) -> dict[str, float]:
    """Host cores of a stage replica (one single-threaded process) on the testbed.

    Control runs move replicas between servers, so this needs one server size.
    """
    sizes = {replica_speed(s.cpu_cores, s.cpu_speed, factor) for s in scenario.servers}
    if len(sizes) != 1:
        raise ValueError(
            f"{scenario.name}: servers give replicas different CPU shares {sorted(sizes)}; "
            "the calibrated replay needs one server size"
        )
    share = sizes.pop()
    return {c.name: share for c in scenario.components if c.is_stage}


def calibrated_twin(
    scenario: Scenario,
    scenario_file: Path,
    runs: list[tuple[Path, Workload]],
    factor: float,
    rate_per_s: float | None = None,
) -> tuple[Scenario, cal.Calibration]:
    """The scenario calibrated on the load runs of ``runs`` (load-run folder, its workload).

    ``scenario``: as the testbed ran it (rates scaled, servers unscaled);
    ``factor``: the testbed's CPU factor; ``rate_per_s``: the per-request overhead
    at this offered rate (:func:`calibrate.calibration.overhead_at`: it grows with
    load) instead of the fit runs' pooled one. Returns the scenario to simulate and
    the calibration.
    """
    if not runs:
        raise ValueError("calibrating the replay needs at least one other control run")
    shares = replica_shares(scenario, factor)
    fits = [(load_result(folder), w) for folder, w in runs]
    calibration = fit_run_calibration(scenario, scenario_file, fits, shares)
    sc, untouched = cal.calibrated_scenario(scenario, calibration, shares, rate_per_s)
    if untouched:
        # not served in any run: the manifest time at the replica's share (the view's)
        comps = []
        for c in sc.components:
            slow = 1.0 / shares.get(c.name, 1.0)
            vs = [
                v.model_copy(update={"service_time": cal.scale_service_time(v.service_time, slow)})
                if f"{c.name}/{v.name}" in untouched
                else v
                for v in c.variants
            ]
            comps.append(c.model_copy(update={"variants": vs}))
        sc = Scenario.model_validate(sc.model_copy(update={"components": comps}).model_dump())
    return sc, calibration


# ------------------------------------------------------------------ the CFS quota replay


@dataclass(frozen=True)
class NodeCpu:
    """A node cgroup's CPU beside its models, over control runs (ms of CPU, host cores).

    Defaults are the knee benchmark's fit for the e-large stage server
    (``benchmarks/results/testbed_knee.md``: 0.34 ms per call, h 0.97), used when no
    control run scraped its node agents.
    """

    per_call_ms: float = 0.34  # a stage server's CPU per HTTP call (parse, answer)
    idle_cores: float = 0.0  # the node's CPU with nothing served (agent, scrapes)
    host_speed: float = 0.97  # model CPU / model wall time on the busy host (≤ 1)
    rows: int = 0  # (run, node) totals the fit used; 0: the defaults


def _node_of(replica: str, nodes: list[str]) -> str | None:
    return next((n for n in nodes if f"-{n}-" in f"{replica}-"), None)


def node_cpu(folders: list[Path], scenario: Scenario) -> NodeCpu:
    """Fit :class:`NodeCpu` from the node agents' counters of finished load runs.

    Per run and node: the cgroup's CPU over the scraped span, minus the models'
    CPU (each served batch at the manifest's full-core time, split over its items),
    is ``per_call · calls + idle · seconds`` (least squares over all rows). Runs
    without ``agent:*`` targets in ``metrics.parquet`` are skipped; with fewer than
    three rows the defaults are returned.
    """
    nodes = scenario.server_instances()
    cost: dict[str, tuple[float, float]] = {}
    for c in scenario.components:
        for v in c.variants:
            st = v.service_time
            cost[v.name] = (st.batch_mean_ms(1), st.batch_mean_ms(2) - st.batch_mean_ms(1))
    rows = []
    for folder in folders:
        mfile = folder / "metrics.parquet"
        if not mfile.is_file():
            continue
        m = pd.read_parquet(mfile)
        m = m[m["target"].astype(str).str.startswith("agent:")]
        if m.empty:
            continue
        visits = pd.read_parquet(
            folder / "visits.parquet", columns=["replica_name", "variant", "batch", "t_end"]
        )
        visits = visits.assign(node=[_node_of(str(r), nodes) for r in visits["replica_name"]])
        per = np.array([cost.get(str(v), (np.nan, np.nan)) for v in visits["variant"]])
        b = visits["batch"].to_numpy(dtype=float)
        visits = visits.assign(model_ms=(per[:, 0] + per[:, 1] * (b - 1)) / b)
        for target, g in m.groupby(m["target"].astype(str)):
            node = target.split(":", 1)[1]
            g = g[g["metric"].astype(str).isin(("node_cpu_seconds_total", "node_cpu_seconds"))]
            if len(g) < 2:
                continue
            g = g.sort_values("t")
            t0, t1 = float(g["t"].iloc[0]), float(g["t"].iloc[-1])
            mine = visits[(visits["node"] == node) & visits["t_end"].between(t0, t1)]
            rows.append(
                (
                    float(g["value"].iloc[-1] - g["value"].iloc[0]) - mine["model_ms"].sum() / 1e3,
                    float(len(mine)),
                    t1 - t0,
                )
            )
    if len(rows) < 3:
        return NodeCpu()
    y, calls, secs = np.array(rows, dtype=float).T
    (per_call, idle), *_ = np.linalg.lstsq(np.c_[calls, secs], y, rcond=None)
    if per_call < 0 or idle < 0:  # not separable on these rows: all of it per call
        per_call, idle = float(max(y.sum(), 0.0) / max(calls.sum(), 1.0)), 0.0
    return NodeCpu(per_call_ms=1e3 * float(per_call), idle_cores=float(idle), rows=len(rows))


def quota_twin(calibrated: Scenario, manifest: Scenario, factor: float, cpu: NodeCpu) -> Scenario:
    """The calibrated replay scenario with every node under the testbed's CFS quota.

    What :mod:`calibrate.quota` does for a fixed deployment, for one that changes
    every interval: each node a quota of ``(cores × speed × factor − idle) / h`` cores
    of running time shared by all its replicas, every variant its manifest (full-core)
    time run at speed ``h``, and each stage visit's server CPU (``per_call_ms``) spent
    beside the model from the same quota. So co-located replicas and the servers'
    HTTP work compete for one node's CPU, as on the testbed, and the latency grows
    with the configuration's CPU. The servers' CPU leaves the per-request overhead.
    """
    from calibrate.quota import CFS_CARRY_MS, CFS_TICK_MS
    from twin.spec import ServerOverhead

    h = cpu.host_speed
    servers = []
    for s, m in zip(calibrated.servers, manifest.servers, strict=True):
        share = m.cpu_cores * m.cpu_speed * factor  # host cores of the node's quota
        quota = max(share - cpu.idle_cores, 0.05 * share) / h
        servers.append(s.model_copy(update={"cpu_speed": h, "cpu_quota_cores": quota}))
    comps = []
    for c in calibrated.components:
        if not c.is_stage:
            comps.append(c)
            continue
        comps.append(
            c.model_copy(
                update={
                    "variants": manifest.component(c.name).variants,
                    "server_overhead": ServerOverhead(per_item_ms=cpu.per_call_ms, concurrent=True),
                }
            )
        )
    moved_ms = quota_moved_ms(calibrated, cpu)
    processes = []
    for p in calibrated.processes:
        if p.kind == "request" and p.request_overhead is not None:
            p = p.model_copy(
                update={"request_overhead": less_overhead(p.request_overhead, moved_ms)}
            )
        processes.append(p)
    settings = calibrated.settings.model_copy(
        update={"cpu_quota_carry_ms": CFS_CARRY_MS, "cpu_quota_tick_ms": CFS_TICK_MS}
    )
    new = calibrated.model_copy(
        update={
            "servers": servers,
            "components": comps,
            "processes": processes,
            "settings": settings,
        }
    )
    return Scenario.model_validate(new.model_dump())


def quota_moved_ms(scenario: Scenario, cpu: NodeCpu) -> float:
    """The part of a request's overhead (ms) :func:`quota_twin` simulates as the stage
    servers' CPU: each stage visit's ``per_call_ms`` at the host's speed."""
    stages = sum(1 for c in scenario.components if c.is_stage)
    return stages * cpu.per_call_ms / cpu.host_speed


def less_overhead(overhead: ServiceTime, moved_ms: float) -> ServiceTime:
    """``overhead`` with ``moved_ms`` of its mean taken out (work the quota twin
    simulates as the stage servers' CPU), keeping at least a tenth of it."""
    if not hasattr(overhead, "mean_ms"):
        return overhead
    mean = overhead.mean_ms
    return overhead.model_copy(update={"mean_ms": max(mean - moved_ms, 0.1 * mean)})


# ------------------------------------------------- the overhead per configuration class


def overhead_class(config: str) -> str:
    """A configuration's class for the per-request overhead: ``heavy`` when an
    encoder runs e-large (about 4.9 ms of model CPU a request, the others' encoders
    0.2 ms or less), else ``light``. ``config`` as ``optimizer.rl.online.describe``
    writes it. On the testbed the overhead (client, gateway, HTTP hops) of light
    intervals is about 0.6 of heavy ones' at the same workload (p50 5.1–5.8 ms against
    9.1 ms): the host has more CPU left for the client, the gateway and the servers'
    HTTP work."""
    return "heavy" if "e-large" in config else "light"


AFTER_CHANGE = "after change"


def class_overheads(
    runs: list[Path], moved_ms: float = 0.0, min_requests: int = 200, after_change: bool = False
) -> dict[str, ServiceTime]:
    """Per configuration class (:func:`overhead_class`), the per-request overhead
    fitted (:func:`calibrate.fit.fit_overhead`) on the requests of the control-run
    folders ``runs`` that arrived while a configuration of that class ran (the
    interval's ``config`` in ``intervals.parquet``). With ``after_change`` the
    intervals that follow a reconfiguration (the changes run in their first seconds:
    replica starts take the host's CPU, switched replicas pause) are a class of their
    own, :data:`AFTER_CHANGE`. ``moved_ms`` is taken out of each mean as
    :func:`quota_twin` does. A class with fewer than ``min_requests`` requests is left
    out (the replay keeps the pooled overhead for it).
    """
    return fit_class_overheads(class_samples(runs), moved_ms, min_requests, after_change)


def class_samples(runs: list[Path]) -> list[tuple[str, bool, np.ndarray]]:
    """Per interval of the control-run folders ``runs``: its configuration's class,
    whether it follows a reconfiguration, and its requests' overheads (ms,
    :func:`calibrate.samples.request_overheads`)."""
    from calibrate.samples import request_overheads

    out = []
    for folder in runs:
        summary = json.loads((folder / "summary.json").read_text())
        iv = pd.read_parquet(folder / "intervals.parquet")
        applied = iv.get("apply_s", iv.get("change_delay_s"))
        changed = [False] + [bool(a > 0) for a in applied.to_numpy()[:-1]]
        res = load_result(folder / "load")
        step = float(summary["duration_s"]) / max(len(iv), 1)
        arrive = res.requests.set_index("pid")["t_arrive"]
        visit_arrive = res.visits["pid"].map(arrive)
        for t, config, after in zip(iv["t_s"], iv["config"], changed, strict=True):
            t0 = float(summary["offset_s"]) + float(t)
            req = res.requests[res.requests["t_arrive"].between(t0, t0 + step, inclusive="left")]
            vis = res.visits[visit_arrive.between(t0, t0 + step, inclusive="left").to_numpy()]
            if len(req) and len(vis):
                over = request_overheads(req, vis)["overhead_ms"].to_numpy()
                out.append((overhead_class(str(config)), after, over))
    return out


def fit_class_overheads(
    samples: list[tuple[str, bool, np.ndarray]],
    moved_ms: float = 0.0,
    min_requests: int = 200,
    after_change: bool = False,
) -> dict[str, ServiceTime]:
    """:func:`class_overheads` from :func:`class_samples`' rows."""
    from calibrate.fit import fit_overhead

    parts: dict[str, list[np.ndarray]] = {}
    for cls, after, over in samples:
        parts.setdefault(AFTER_CHANGE if after and after_change else cls, []).append(over)
    out: dict[str, ServiceTime] = {}
    for cls, xs in sorted(parts.items()):
        x = np.concatenate(xs)
        if x.size >= min_requests:
            out[cls] = less_overhead(fit_overhead(x)[0], moved_ms)
    return out
