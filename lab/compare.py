"""Testbed vs twin, per workload: latency percentiles, per-stage times, CPU, error %.

Pure functions over a load run's :class:`~loadgen.run.LoadResult` and the
twin's :class:`~twin.evaluate.Evaluation` (with records) of the same workload;
the one ``error_pct`` and the one number formatter of every lab report.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from calibrate.calibration import CpuModel
from loadgen.metrics import rate
from loadgen.run import LoadResult
from testbed.client import Targets
from twin.criteria import latency_percentiles, latency_summary
from twin.evaluate import Evaluation
from twin.spec import Scenario


@dataclass
class WorkloadOutcome:
    """One workload's load run on the testbed and, once simulated, the twin's evaluation."""

    name: str
    load: LoadResult
    twin: Evaluation | None = None


def request_process(o: WorkloadOutcome) -> str:
    """The request pipeline the load drove: its rows come first in the testbed's log."""
    req = o.load.requests
    return str(req["process"].iloc[0]) if len(req) else ""


def process_requests(o: WorkloadOutcome) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The request pipeline's rows: testbed requests and (when simulated) the twin's."""
    req = o.load.requests
    proc = request_process(o)
    tb = req[req["process"] == proc]
    tw = None
    if o.twin is not None and o.twin.requests is not None:
        tw = o.twin.requests[o.twin.requests["process"] == proc]
    return tb, tw


def table(outcomes: list[WorkloadOutcome]) -> pd.DataFrame:
    """One row per workload: offered/achieved, testbed and twin latency percentiles (ms)."""
    rows = []
    for o in outcomes:
        s = o.load.summary
        _, tw = process_requests(o)
        twin = latency_percentiles(tw) if tw is not None and len(tw) else {}
        row = {
            "workload": o.name,
            "offered_rps": s["offered_rps"],
            "achieved_over_offered": s["achieved_over_offered"],
            "failures": int(s["failures"]),
            "testbed_p50_ms": 1e3 * s["p50_s"],
            "testbed_p95_ms": 1e3 * s["p95_s"],
            "testbed_p99_ms": 1e3 * s["p99_s"],
            "twin_p50_ms": 1e3 * twin.get("p50", np.nan),
            "twin_p95_ms": 1e3 * twin.get("p95", np.nan),
            "twin_p99_ms": 1e3 * twin.get("p99", np.nan),
            "accuracy": s.get("accuracy", np.nan),
            "loadgen_lag_p99_ms": 1e3 * s.get("lag_p99_s", np.nan),
            "sent_on_time": s.get("on_time", np.nan),
        }
        per = o.load.per_second
        # the most the testbed answered, over 5-s windows (for the saturation note)
        row["max_answered_rps_5s"] = float(per["rps"].rolling(5, min_periods=1).mean().max())
        rows.append(row)
    return pd.DataFrame(rows)


def stage_table(outcomes: list[WorkloadOutcome]) -> pd.DataFrame:
    """Mean wait and service per stage (ms), testbed vs twin, per workload.

    Testbed: the gateway's per-stage queue (batch wait in the stage server),
    service (batch compute) and hop (HTTP round trip minus both). Twin: its
    visits' ``t_start − t_arrive`` and ``t_end − t_start``.
    """
    rows = []
    for o in outcomes:
        v = o.load.visits
        twin_v = o.twin.visits if o.twin is not None else None
        for comp, g in v.groupby("component", observed=True):
            row = {
                "workload": o.name,
                "stage": str(comp),
                "testbed_queue_ms": 1e3 * g["queue_s"].mean(),
                "testbed_service_ms": 1e3 * g["service_s"].mean(),
                "testbed_hop_ms": 1e3 * g["hop_s"].mean(),
                "testbed_batch": g["batch"].mean(),
            }
            if twin_v is not None:
                t = twin_v[twin_v["component"] == comp]
                row["twin_queue_ms"] = 1e3 * (t["t_start"] - t["t_arrive"]).mean()
                row["twin_service_ms"] = 1e3 * (t["t_end"] - t["t_start"]).mean()
                row["twin_batch"] = t["batch"].mean()
            rows.append(row)
    return pd.DataFrame(rows)


def error_pct(twin: float, testbed: float) -> float:
    """(twin − testbed) / testbed in % (NaN when either is missing or testbed is 0)."""
    if not (np.isfinite(twin) and np.isfinite(testbed)) or testbed == 0:
        return float("nan")
    return 100.0 * (twin - testbed) / testbed


def fmt(x: float, digits: int = 1) -> str:
    """``x`` with ``digits`` decimals, or "–" when it is missing (NaN, inf)."""
    return "–" if not np.isfinite(x) else f"{x:.{digits}f}"


def latency_stats(lat_s: np.ndarray) -> dict[str, float]:
    """Mean and percentiles (ms, keys ``mean_ms``, ``p50_ms``, …) of latencies in s."""
    return {f"{k}_ms": v for k, v in latency_summary(np.asarray(lat_s) * 1e3).items()}


def testbed_latency_s(o: WorkloadOutcome) -> np.ndarray:
    """Answered testbed requests' latency (s), from their scheduled times."""
    req = o.load.requests
    ok = req[req["ok"]]
    return (ok["t_end"] - ok["t_arrive"]).to_numpy(dtype=float)


def twin_latency_s(ev: Evaluation, process: str | None = None) -> np.ndarray:
    """Finished twin requests' latency (s), of ``process`` when given (all replications)."""
    req = ev.requests if ev.requests is not None else pd.DataFrame(columns=["t_end"])
    req = req.dropna(subset=["t_end"])
    if process is not None and "process" in req:
        req = req[req["process"].astype(str) == process]
    return (req["t_end"] - req["t_arrive"]).to_numpy(dtype=float)


def cpu_per_server(outcomes: list[WorkloadOutcome], targets: Targets) -> pd.DataFrame:
    """Cores in use per emulated server over the runs' joined time axis (``t, target, rate``).

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
    if not parts:
        return pd.DataFrame(columns=["t", "target", "rate"])
    return pd.concat(parts, ignore_index=True)


def server_cores(outcome: WorkloadOutcome, targets: Targets, servers: set[str]) -> float:
    """Mean cores the emulated ``servers`` used during the run (all processes on them)."""
    cpu = cpu_per_server([outcome], targets)
    cpu = cpu[cpu["target"].astype(str).isin(servers)]
    if cpu.empty:
        return float("nan")
    return float(cpu.groupby("t")["rate"].sum().mean())


def twin_cpu_cores(
    visits: pd.DataFrame | None,
    replications: int,
    duration_s: float,
    scenario: Scenario,
    cpu: list[CpuModel],
) -> float:
    """Cores the twin predicts on the emulated servers: batch compute plus the fitted rest.

    ``visits``: the twin's visit rows (all replications); without ``cpu`` the
    batch compute alone (what the uncalibrated twin knows).
    """
    if visits is None or visits.empty:
        return float("nan")
    stages = {c.name for c in scenario.components if c.is_stage}
    v = visits[visits["component"].astype(str).isin(stages)].dropna(subset=["t_end"])
    execs = v.drop_duplicates(["replication", "component", "machine", "replica", "t_start"])
    total = float((execs["t_end"] - execs["t_start"]).sum() / replications / duration_s)
    rate_per_s = v.groupby(v["machine"].astype(str)).size() / replications / duration_s
    for m in cpu:
        total += m.idle_cores + m.per_visit_ms / 1e3 * float(rate_per_s.get(m.server, 0.0))
    return total
