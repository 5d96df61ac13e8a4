"""The stage server's hand-off between jobs, fitted from the testbed's visits.

On the quiet Compose sweep (default deployment) the encoder's node goes through long
busy periods about 5 % slower than the quota twin (:mod:`calibrate.backlog`). On the
testbed, when the next job already waits, it starts 0.48 ms (mean, ρ 0.4) to 0.79–0.84
ms (ρ 0.9) after the batch before it ended — the answer going out and the next call's
dispatch on the stage server's event loop, which runs the model inline — while the twin
starts it at once. :mod:`calibrate.backlog` gave the twin the testbed's pace by scaling
the node's quota, so its stalls land *inside* the service (service p50 7.2 against the
testbed's 4.5 ms at ρ 0.9) and its p50 overshot (+9.6 %).

Two models of that gap, both :attr:`twin.spec.ServerOverhead.handoff`:

- **Idle** (:func:`fit_handoff`, :func:`with_handoff`): the gap as measured, holding
  the instance but no CPU. Its mean grows with the offered rate, so it is a line in
  the rate over the fit runs (weighted by their gaps), read at the level's rate; its
  shape is the gaps' spread (capped at cv 2: the testbed's starts leave out each
  call's parse, so a quarter of the gaps are negative). Measured
  (``benchmarks/results/compose_handoff9.md``): it does **not** give the twin the
  pace — a binding quota absorbs idle time (the quota that the gap leaves unused is
  spent after it): ρ 0.9's pace 6.77 against 6.73 ms without it and 7.06 on the
  testbed. With the quota scale beside it, ρ 0.8–0.9's p50 get worse (+6.2 and +13.6
  %), and the local s7 sweep's ρ 0.6 p50 goes from +4.4 to +5.5 %. Off by default.
- **CPU** (:func:`fit_pace_handoff`, :func:`with_cpu_handoff`): the gap as the
  server's own CPU on the model's thread, under the node's quota, only while the next
  job waits; its size is fitted to the fit runs' pace in long busy periods, with
  :mod:`calibrate.backlog`'s runs and band (a twin within the runs' spread is left
  alone). The quota stalls it meets land between jobs, as the testbed's do, and light
  load is untouched. On the quiet Compose sweep it fits 0.19 ms at ρ 0.9 only (pace
  7.05 against 7.06 ms; service p50 4.6 against the testbed's 4.5) and gives ρ 0.9
  +7.2/−2.4/−2.4 % (p50/p95/p99) against the quota scale's +9.6/−1.4/−1.6; every other
  level and the local quiet sweeps keep their twin. The default of the knee benchmark.

Both are measured on the backend's own runs, so they are per backend; held out when
the fit runs are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from calibrate.backlog import (
    pace_target,
    run_visits,
    stage_jobs,
    stage_machine,
    twin_backlogged_interval,
)
from twin.spec import Deployment, LognormalServiceTime, Scenario, ServerOverhead

# fewer waited gaps than this in all fit runs: no fit (the twin is left as it is)
MIN_GAPS = 200
# a run's line point counts with at least this many gaps (a light run's mean is noise)
MIN_RUN_GAPS = 50
MAX_CV = 2.0


def handoff_gaps(visits: pd.DataFrame, stage: str) -> np.ndarray:
    """Gaps (ms) between a job's end and the next job's start on ``stage``'s instance,
    for each next job that was already waiting when the job ended (its first item
    arrived before); empty when the stage has none or runs on several instances.

    ``visits``: one row per item and stage visit with ``component``, ``machine``,
    ``t_arrive``, ``t_start`` and ``t_end`` (s); the items of one batch share their
    ``t_start``.
    """
    v = visits[visits["component"].astype(str) == stage]
    if "replica" in v and v["replica"].nunique() > 1:
        return np.array([])
    jobs = stage_jobs(v, stage)
    if jobs is None:
        return np.array([])
    start = jobs["t_start"].to_numpy(dtype=float)
    end = jobs["end"].to_numpy(dtype=float)
    first = jobs["first"].to_numpy(dtype=float)
    waited = first[1:] < end[:-1]
    return 1e3 * (start[1:] - end[:-1])[waited]


def run_handoff_gaps(folder: Path, stage: str) -> np.ndarray:
    """:func:`handoff_gaps` of a load run folder's ``visits.parquet``."""
    visits = run_visits(folder)
    return np.array([]) if visits is None else handoff_gaps(visits, stage)


@dataclass(frozen=True)
class HandoffFit:
    """The hand-off at one offered rate: lognormal ``mean_ms`` and ``cv``."""

    mean_ms: float  # at the rate asked for, from the line
    cv: float  # the fit runs' pooled coefficient of variation
    slope_ms_per_rps: float  # the line's slope (ms per req/s)
    gaps: int  # gaps it comes from

    def service_time(self) -> LognormalServiceTime:
        return LognormalServiceTime(kind="lognormal", mean_ms=self.mean_ms, cv=self.cv)


def fit_handoff(runs: Sequence[tuple[float, np.ndarray]], rate_per_s: float) -> HandoffFit | None:
    """The hand-off at ``rate_per_s`` from the fit runs' (offered rate req/s, gaps ms).

    The mean is a line in the rate, least squares weighted by each run's gaps, read at
    ``rate_per_s`` (one rate among the runs: their pooled mean); never below the
    smallest run mean's half (a line extrapolated far below the runs). None with fewer
    than ``MIN_GAPS`` gaps in all.
    """
    use = [(r, g[np.isfinite(g)]) for r, g in runs]
    # not clipped at 0: a quarter of the testbed's gaps are negative (its start is the
    # call's arrival + queue time, which leaves out the call's own parse), and their mean
    # is still the mean gap (each job's parse shifts its start and its end alike)
    use = [(r, g) for r, g in use if len(g) >= MIN_RUN_GAPS and r > 0]
    n = sum(len(g) for _, g in use)
    if n < MIN_GAPS:
        return None
    pooled = np.concatenate([g for _, g in use])
    mean = float(pooled.mean())
    if mean <= 0:
        return None
    rates = np.array([r for r, _ in use])
    means = np.array([g.mean() for _, g in use])
    counts = np.array([len(g) for _, g in use], dtype=float)
    slope = 0.0
    at = mean
    if np.ptp(rates) > 0:
        slope, icpt = np.polyfit(rates, means, 1, w=np.sqrt(counts))
        at = max(float(icpt + slope * rate_per_s), 0.5 * float(means.min()))
    # the shape is the gaps' spread; it carries the parse-time noise of the starts too, so
    # it is capped (a lognormal of cv 2 has its median at 45 % of its mean)
    return HandoffFit(at, min(float(pooled.std() / mean), MAX_CV), float(slope), n)


def with_handoff(scenario: Scenario, stage: str, fit: HandoffFit, cpu: bool = False) -> Scenario:
    """``scenario`` with ``stage``'s server hand-off set to ``fit`` (its server overhead
    otherwise kept); ``cpu``: the hand-off is the server's CPU (``handoff_cpu``)."""
    update: dict[str, object] = {"handoff": fit.service_time()}
    if cpu:
        update["handoff_cpu"] = True
    comps = []
    for c in scenario.components:
        if c.name == stage:
            o = c.server_overhead or ServerOverhead()
            o = o.model_copy(update=update)
            c = c.model_copy(update={"server_overhead": o})
        comps.append(c)
    if not any(c.name == stage for c in comps):
        raise ValueError(f"with_handoff: the scenario has no component {stage!r}")
    return scenario.model_copy(update={"components": comps})


@dataclass(frozen=True)
class PaceFit:
    """The CPU hand-off (ms at speed 1, between a batch and the next that waits) whose
    twin keeps the fit runs' pace in long busy periods."""

    cpu_ms: float  # 0: the twin's pace is within the band (left as it is)
    testbed_ms: float  # the fit runs' backlogged interval per item (pooled)
    items: int
    twin_ms: tuple[float, ...]  # the twin's interval at each hand-off tried
    band_ms: float = 0.0


def with_cpu_handoff(scenario: Scenario, stage: str, cpu_ms: float) -> Scenario:
    """``scenario`` with ``stage``'s server spending ``cpu_ms`` of CPU (at speed 1, under
    its node's quota) between a batch and the next one that already waits
    (:attr:`twin.spec.ServerOverhead.handoff` with ``handoff_cpu``)."""
    return with_handoff(scenario, stage, HandoffFit(cpu_ms, 0.0, 0.0, 0), cpu=True)


def fit_pace_handoff(
    scenario: Scenario,
    deployment: Deployment,
    stage: str,
    runs: Sequence[tuple[float, float, float, int]],
) -> PaceFit | None:
    """The CPU hand-off whose twin goes through long busy periods at the fit runs' pace
    (:func:`calibrate.backlog.backlogged_interval`): the lever :mod:`calibrate.backlog`
    pulls with the node's quota, pulled instead where the testbed spends it — between
    jobs, only while the next one waits — so light load and the service itself are left
    alone.

    ``runs`` and the band are as :func:`calibrate.backlog.fit_backlog_quota`'s. When the
    quota binds, a job's extra CPU x costs x / quota of wall time, so the first step is
    that and the second a secant step. None without a usable run or quota-bound machine,
    or when the twin is slower than the runs (a hand-off cannot speed it up).
    """
    machine = stage_machine(deployment, stage)
    quota = [
        s.cpu_quota_cores
        for s in scenario.servers
        if machine in s.instance_names() and s.cpu_quota_cores
    ]
    target = pace_target(runs)
    if machine is None or not quota or target is None:
        return None
    goal, band, items, points = target

    def pace(x: float) -> float:
        sc = scenario if x == 0 else with_cpu_handoff(scenario, stage, x)
        return twin_backlogged_interval(sc, deployment, stage, points)

    seen = [pace(0.0)]
    if not np.isfinite(seen[0]):
        return None
    if abs(seen[0] - goal) <= band:
        return PaceFit(0.0, goal, items, tuple(seen), band)
    if seen[0] > goal:
        return None
    xs = [0.0, (goal - seen[0]) * quota[0]]
    seen.append(pace(xs[1]))
    if np.isfinite(seen[1]) and seen[1] != seen[0]:
        x = xs[1] + (goal - seen[1]) * (xs[1] - xs[0]) / (seen[1] - seen[0])
        xs.append(max(x, 0.0))
        seen.append(pace(xs[2]))
    return PaceFit(xs[-1], goal, items, tuple(seen), band)
