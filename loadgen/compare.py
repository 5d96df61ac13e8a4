"""Testbed vs twin, per workload: latency percentiles and per-stage times as tables.

Pure functions over a load run's :class:`~loadgen.run.LoadResult` and the
twin's :class:`~twin.evaluate.Evaluation` (with records) of the same workload.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from loadgen.run import LoadResult
from twin.criteria import latency_percentiles
from twin.evaluate import Evaluation


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
