"""What stalls the pipeline while a replica starts: a run's replica starts second by
second (offline, from a run folder of ``benchmarks/rl_testbed.py``), and the A/B of the
idle start group's CPU cap (``MLOPS_TWIN_START_CPU``).

Per replica start (decision → healthy → routed), from ``visits.parquet`` (every hop of
every request: queue, service, hop time, batch, replica) and the 1-s host scrapes of
``metrics.parquet``:

- the host's idle CPU (cores) in the 3 s before the decision and its lowest 1-s value
  while the replica starts;
- the stages' queueing (mean ``queue_s`` over all hops in 0.2-s bins of arrival) before
  the decision (median bin) and its worst bin while the replica starts (decision →
  routed) and in the 1.5 s after it is routed;
- the new replica's first requests: service time of its first batch against the
  median of its next 50, and its first hop (gateway ↔ server).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

BIN_S = 0.2
AFTER_ROUTE_S = 1.5


def start_anatomy(folder: Path, control: Path | None = None) -> list[dict]:
    """One row per replica start in the run folder (empty without one). ``control``: a
    run without the start (same block, same arrivals, e.g. IPA's), whose worst queue
    bins over the same windows (aligned on the control's start) go in ``control_*``."""
    ch = folder / "changes.parquet"
    if not ch.is_file():
        return []
    c = pd.read_parquet(ch).astype({"seconds": float})
    starts = c[c["kind"] == "replica-start"]
    if starts.empty:
        return []
    summary = json.loads((folder / "summary.json").read_text())
    off = float(summary["offset_s"])
    load = folder / "load"
    v = pd.read_parquet(
        load / "visits.parquet",
        columns=["t_arrive", "t_start", "replica_name", "queue_s", "service_s", "hop_s", "batch"],
    )
    first = v.groupby("replica_name")["t_start"].min()
    idle = _idle_cores(load / "metrics.parquet")
    bins = v.assign(b=np.floor(v["t_arrive"] / BIN_S) * BIN_S).groupby("b")
    queue_ms, hop_ms = bins["queue_s"].mean() * 1e3, bins["hop_s"].mean() * 1e3
    ctrl = None
    if control is not None and (control / "load" / "visits.parquet").is_file():
        cv = pd.read_parquet(control / "load" / "visits.parquet", columns=["t_arrive", "queue_s"])
        c_off = float(json.loads((control / "summary.json").read_text())["offset_s"])
        ctrl = cv.groupby(np.floor(cv["t_arrive"] / BIN_S) * BIN_S)["queue_s"].mean() * 1e3
        ctrl.index = ctrl.index - c_off + off
    rows = []
    for t_s, g in starts.groupby("t_s"):
        t0 = off + float(t_s)
        ready = t0 + g["seconds"].sum()
        routes = c[(c["t_s"] == t_s) & (c["kind"] == "routes")]["seconds"].sum()
        for name in first[(first > t0) & (first < ready + routes + 5.0)].index:
            t_route = float(first[name])
            mine = v[v["replica_name"] == name].sort_values("t_start")
            during = queue_ms[(queue_ms.index >= t0) & (queue_ms.index < t_route)]
            after = queue_ms[
                (queue_ms.index >= t_route) & (queue_ms.index < t_route + AFTER_ROUTE_S)
            ]
            before = queue_ms[(queue_ms.index >= t0 - 5.0) & (queue_ms.index < t0)]
            hop_d = hop_ms[(hop_ms.index >= t0) & (hop_ms.index < t_route)]
            idle_before = idle[(idle.index > t0 - 3.0) & (idle.index <= t0)]
            idle_during = idle[(idle.index > t0) & (idle.index <= t_route + 1.0)]
            rows.append(
                {
                    "run": f"{folder.parent.name}/{folder.name}",
                    "replica": name,
                    "start_s": float(g["seconds"].sum()),
                    "routed_after_s": t_route - t0,
                    "idle_before_cores": float(idle_before.mean()),
                    "idle_during_min_cores": float(idle_during.min()),
                    "queue_before_ms": float(before.median()),
                    "queue_start_max_ms": float(during.max()) if len(during) else np.nan,
                    "queue_start_worst_at_s": (
                        float(during.idxmax()) - t_route if len(during) else np.nan
                    ),
                    "hop_start_max_ms": float(hop_d.max()) if len(hop_d) else np.nan,
                    "queue_after_route_max_ms": float(after.max()) if len(after) else np.nan,
                    "first_service_ms": float(mine["service_s"].iloc[0]) * 1e3,
                    "next_service_ms": float(mine["service_s"].iloc[1:51].median()) * 1e3,
                    "first_hop_ms": float(mine["hop_s"].iloc[0]) * 1e3,
                    "max_batch_new": int(mine["batch"].max()),
                    "control_queue_start_max_ms": _worst(ctrl, t0, t_route),
                    "control_queue_after_route_max_ms": _worst(
                        ctrl, t_route, t_route + AFTER_ROUTE_S
                    ),
                }
            )
    return rows


def _worst(q: pd.Series | None, a: float, b: float) -> float:
    """The worst bin of ``q`` in [a, b) (nan without one)."""
    if q is None:
        return float("nan")
    w = q[(q.index >= a - 1e-9) & (q.index < b)]
    return float(w.max()) if len(w) else float("nan")


def _idle_cores(metrics: Path) -> pd.Series:
    """The host's idle CPU (cores) per 1-s scrape, indexed by the scrape's end (s)."""
    m = pd.read_parquet(metrics)
    h = m[m["metric"] == "host_cpu_seconds_total"]
    idle = h[h["labels"].map(lambda s: json.loads(s).get("mode") == "idle")]
    s = idle.groupby(idle["t"].round(1))["value"].sum().sort_index()
    return (s.diff() / pd.Series(s.index, index=s.index).diff()).dropna()


def anatomy_table(folders: list[Path]) -> pd.DataFrame:
    """Every replica start in these run folders (see :func:`start_anatomy`), each with
    the same block's IPA run (``<workload>-ipa-r<n>`` beside it) as control if there."""
    return pd.DataFrame(
        [r for f in folders for r in start_anatomy(f, f.parent / f.name.replace("-ppo-", "-ipa-"))]
    )


if __name__ == "__main__":
    import sys

    pd.set_option("display.width", 250)
    print(anatomy_table([Path(p) for p in sys.argv[1:]]).round(2).to_string(index=False))
