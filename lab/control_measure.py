"""Per-interval latency of a controlled run, the same function for testbed and twin.

Both sides keep one row per request with the scheduled arrival ``t_arrive`` and
the answer ``t_end`` (NaN: failed or never answered) on the load run's clock
(the twin's arrivals are the load run's, ``loadgen.schedule``). An interval
``[t0, t1)`` is scored by the requests that *arrived* in it: p50/p95 latency of
the answered ones, the share over the pipeline's deadline (unanswered ones
count as over), and how many failed.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


def interval_latency(
    requests: pd.DataFrame, t0: float, t1: float, deadline_s: float | None
) -> dict[str, float]:
    """Requests, failures, p50/p95 latency (s) and SLO violations (share) of the
    arrivals in [t0, t1)."""
    arrive = requests["t_arrive"].to_numpy(dtype=float)
    mine = (arrive >= t0) & (arrive < t1)
    n = int(mine.sum())
    lat = requests["t_end"].to_numpy(dtype=float)[mine] - arrive[mine]
    answered = lat[np.isfinite(lat)]
    failed = n - answered.size
    over = failed + (
        int((answered > deadline_s).sum()) if deadline_s and math.isfinite(deadline_s) else 0
    )
    return {
        "requests": float(n),
        "failed": float(failed),
        "p50_s": float(np.percentile(answered, 50)) if answered.size else float("nan"),
        "p95_s": float(np.percentile(answered, 95)) if answered.size else float("nan"),
        "slo_violations": over / n if n else 0.0,
    }


def per_interval(
    requests: pd.DataFrame,
    starts_s: list[float],
    interval_s: float,
    deadline_s: float | None,
) -> pd.DataFrame:
    """:func:`interval_latency` of every interval starting at ``starts_s`` (load-run clock)."""
    rows = [
        {"t_load_s": t0, **interval_latency(requests, t0, t0 + interval_s, deadline_s)}
        for t0 in starts_s
    ]
    return pd.DataFrame(rows)


def slo_share(requests: pd.DataFrame, t0: float, t1: float, deadline_s: float | None) -> float:
    """Share of the requests arriving in [t0, t1) answered later than the deadline or never."""
    return interval_latency(requests, t0, t1, deadline_s)["slo_violations"]
