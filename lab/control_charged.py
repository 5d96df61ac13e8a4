"""A testbed run's control loop replayed in the charged model, the charged PPO's training twin.

The view twin (``lab.control_twin.replay``) simulates the policies' view: no node quotas
shared by co-located replicas, no stage servers' CPU, so it does not make the late
requests IPA's configurations get on the testbed, and under the objective as the
testbed charges it (eq. 4 with late requests as unmet load) it ranked the policies
otherwise than the testbed (session 8: Kendall τ 0.33 on fluctuating). This replay
scores every interval with :func:`optimizer.rl.charged.estimate_charged` — the model the
charged PPO is trained in — at the host speed the run measured, with the run's own
arrivals, and lets the policy decide from those windows on the testbed controller's
clock (:func:`optimizer.rl.online.decide`): the initial configuration serves the first
interval, each decision the next one, its first :func:`~optimizer.rl.charged.change_seconds`
served by the configuration before it (:class:`~optimizer.rl.backends.ChargedBackend`).

The model gives a mean latency per interval, not a distribution: a row's
``slo_violations`` is the model's share of requests over the deadline
(:func:`~optimizer.rl.charged.late_share`) and ``p95_s`` is left empty.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from optimizer.rl.backends import ChargedBackend
from optimizer.rl.charged import TestbedCharges, change_seconds, late_share
from optimizer.rl.env import PipelineEnv
from optimizer.rl.online import decide, describe
from optimizer.rl.predictor import HISTORY_S
from twin.spec import Scenario

# the host-speed probe: a (variant, batch) served at least this often, its wall times'
# quantile (the visits without a quota stall)
MIN_VISITS = 8
PROBE_QUANTILE = 0.1


def run_host_speed(visits: pd.DataFrame, scenario: Scenario) -> float:
    """The host's speed a run measured (model CPU / model wall time, ≤ 1): the manifest's
    full-core time of the *heaviest* (variant, batch) the run served at least
    :data:`MIN_VISITS` times over the :data:`PROBE_QUANTILE` of its wall times.

    The heaviest, because a stage call's fixed cost (≈ 0.05 ms of ONNX Runtime and
    server work) is most of a small model's wall time (c-linear: 0.009 ms in the
    manifest, 0.05 ms at best on the testbed); a low quantile rather than
    ``calibrate.quota``'s median, because these runs are loaded near their node quotas
    and a median visit straddles a quota stall (e-large in a steady-high run: 0.92 of
    the manifest's speed at p10, 0.69 at the median). ``visits``: a load run's
    ``visits.parquet`` (component, variant, batch, service_s). NaN when nothing was
    served :data:`MIN_VISITS` times.
    """
    manifest = {(c.name, v.name): v.service_time for c in scenario.components for v in c.variants}
    v = visits[visits["service_s"] > 0]
    best, best_ms = None, 0.0
    for (stage, variant, batch), g in v.groupby(
        [v["component"].astype(str), v["variant"].astype(str), "batch"]
    ):
        st = manifest.get((stage, variant))
        if st is None or len(g) < MIN_VISITS:
            continue
        ms = st.batch_mean_ms(int(batch))
        if ms > best_ms:
            best, best_ms = g, ms
    if best is None:
        return float("nan")
    wall_ms = 1e3 * float(np.quantile(best["service_s"].to_numpy(dtype=float), PROBE_QUANTILE))
    return float(np.clip(best_ms / wall_ms, 0.2, 1.0))


def control_arrivals(
    t_arrive: np.ndarray, offset_s: float, intervals: int, interval_s: float
) -> np.ndarray:
    """Arrivals per second on the controller's clock (second 0 at ``offset_s`` of the
    load run's clock), ``intervals × interval_s`` seconds of them."""
    n = round(intervals * interval_s)
    t = np.asarray(t_arrive, dtype=float) - offset_s
    return np.histogram(t, bins=np.arange(n + 1, dtype=float))[0].astype(float)


class _GivenArrivals(ChargedBackend):
    """The charged backend fed a run's own arrivals (per second from its second 0) at a
    fixed host speed, instead of Poisson draws and a drawn speed."""

    def __init__(self, env: PipelineEnv, charges: TestbedCharges, arrivals: np.ndarray):
        super().__init__(env.space, env.process, len(arrivals), charges)
        self.given = np.asarray(arrivals, dtype=float)

    def arrivals(self, t0: float, t1: float) -> np.ndarray:
        return self.given[int(t0) : math.ceil(t1)]


def replay_charged(
    env: PipelineEnv,
    decider: Any,
    arrivals: np.ndarray,
    intervals: int,
    charges: TestbedCharges,
    host_speed: float,
) -> pd.DataFrame:
    """Per-interval rows of ``decider`` controlling the charged model (see module doc).

    ``env`` is the run's environment in the state the testbed controller started from
    (``lab.control.prepare_control``'s second one: its configuration, load history and
    observation scale); ``arrivals`` per second on the controller's clock (at least
    ``intervals × env.interval_s``); ``host_speed`` the run's measured one. An
    interval that a change split is scored by ``blend`` (its L time-weighted, and its
    late share taken on that L). Columns as
    the testbed's ``intervals``: the interval's metrics, ``config`` (what served it),
    ``requests``, ``slo_violations``, ``failed`` (0), ``p95_s`` (NaN), ``decision_ms``
    and ``change_delay_s`` (the model's seconds of the change it served after).
    """
    interval = env.interval_s
    space = env.space
    backend = _GivenArrivals(env, replace(charges, slow_min=1.0), arrivals)
    current = list(env.current)
    backend.reset(space.deployment(current), env.workload, 0)
    backend.host_speed = host_speed
    history = np.asarray(env.history, dtype=float)
    deadline = space.deadline_s
    over_s = charges.request_overhead_ms / 1e3
    rows, before = [], list(current)
    for k in range(intervals):
        t1 = (k + 1) * interval
        delay = change_seconds(before, current, charges, interval) if before != current else 0.0
        w = backend.run(space.deployment(current), current, t1)
        m = w.metrics
        history = np.concatenate([history, w.arrivals])[-HISTORY_S:]
        chosen, decision_ms = decide(env, decider, current, w, history, t1, len(current))
        rows.append(
            {
                "t_s": t1 - interval,
                "predicted_rps": env.predicted,
                **m.as_dict(),
                "requests": float(w.arrivals.sum()),
                "slo_violations": late_share(m.L + over_s, deadline),
                "failed": 0.0,
                "p95_s": np.nan,
                "decision_ms": decision_ms,
                "change_delay_s": delay,
                "config": describe(space, current),
            }
        )
        before, current = current, chosen
    return pd.DataFrame(rows)
