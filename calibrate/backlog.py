"""The bottleneck's pace inside long busy periods, fitted from the testbed's visits.

Near the knee a stage's tail is made by its long busy periods: one job after another,
each waiting for the one before. How fast the stage gets through them is what sets the
queue. The quota twin (:mod:`calibrate.quota`) takes that pace from the node's CPU
counters (CPU per item, the quota, the bound factor); on the local quiet sweeps its pace
is within their runs' spread, on Compose it was not. On the coordinator's quiet Compose
sweep (default deployment, ρ 0.9, own 0.84; ``benchmarks/results/
compose_knee_split9_off.md``) the encoder's queue made the whole p95 gap (its queue p95
82 ms against the twin's 55), not the per-request overhead (the same mean, 7.8 against
7.9 ms) nor its coupling with the stage time. Replaying the testbed's own arrivals
through a single FIFO server with its own per-job occupancies gives its queue back (p95
86 against 87 ms); scaling those occupancies to the twin's mean gives the twin's (53
against 55). Per position in a busy period the testbed's encoder takes 6.9–7.3 ms per
item from the ninth job on, the twin 6.5–6.8 ms: the twin runs its long
busy periods 5 % too fast, although its capacity at saturation is lower than the node's.

So this module measures that pace directly, per run: the start-to-start interval per
item of the jobs at position ``MIN_POSITION`` or later of a busy period whose next job
was already waiting (:func:`backlogged_interval`), and :func:`fit_backlog_quota`
scales the stage's node quota in the twin until the twin's interval, simulated at the
fit runs' rates, is the fit runs' (one multiplicative step per iteration: when the quota
binds the interval goes as 1 / quota). It leaves the twin alone when its pace is within
``BAND_SE`` standard errors of the runs' (their run-to-run spread / √runs). With 2 the
local quiet s7 sweep's twins were scaled by ×0.963 (twin 7.26 against 7.54 ± 0.23 ms),
which raised its ρ 0.6 p50 error from +4.4 to +7.6 %; with 3 no local twin is scaled,
and on the quiet Compose sweep only ρ 0.9's held-out twin is (×0.952: 6.70 against
7.06 ± 0.24 ms; the other levels' twins are 6.89–6.91 against 7.06 ± 0.16–0.32, just
inside). The pace is measured on the backend's own runs, so it is per backend by
construction; held out when the fit runs are.

The knee benchmark now pulls the same pace with the server's CPU between jobs instead
(:func:`calibrate.handoff.fit_pace_handoff`, same runs and band), which leaves the
service and light load alone; ``KNEE_PACE=quota`` keeps this quota scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from twin.sim import simulate_replication
from twin.spec import Deployment, Scenario, SteadyWorkload

# a job this deep in a busy period runs with its period's spare quota spent (the first
# jobs of a busy period run faster: 4.2–4.8 ms per e-large item against 7 from the ninth)
MIN_POSITION = 9
# a run counts only with this many backlogged items: in a light run the few busy periods
# that reach the ninth job are mostly the slow spells that made them long (the quiet
# Compose sweep's ρ 0.6 runs: 116–157 items at 7.2–7.3 ms against 2300–6300 items at
# 6.95–7.16 ms at ρ 0.8–0.9; the local s7 sweep's ρ 0.4–0.6 runs: 285–514 items), so
# their pace is biased slow
MIN_RUN_ITEMS = 1000
# the twin's pace is left as it is within this many standard errors of the fit runs'
# pooled pace (run-to-run spread / √runs): a difference the runs cannot tell from noise
# (3, not 2: see the module doc)
BAND_SE = 3.0
# a factor outside this range is not a pace mismatch but a broken fit (e.g. another stage
# is the bottleneck in the runs)
FACTOR_RANGE = (0.8, 1.25)


VISIT_COLUMNS = ["component", "machine", "t_arrive", "t_start", "t_end"]


def stage_jobs(visits: pd.DataFrame, stage: str) -> pd.DataFrame | None:
    """``stage``'s jobs (batches) in start order: ``t_start``, ``first`` (its first item's
    arrival), ``end`` and ``items`` (s, s, s, count); None when the stage has no visit or
    runs on more than one machine.

    ``visits``: one row per item and stage visit with ``component``, ``machine``,
    ``t_arrive``, ``t_start`` and ``t_end`` (s): a testbed run's ``visits.parquet`` or a
    twin replication's visits. The items of one batch share their ``t_start``.
    """
    v = visits[visits["component"].astype(str) == stage]
    if v.empty or v["machine"].astype(str).nunique() != 1:
        return None
    return (
        v.groupby("t_start", sort=True)
        .agg(first=("t_arrive", "min"), end=("t_end", "max"), items=("t_arrive", "size"))
        .reset_index()
    )


def run_visits(folder: Path) -> pd.DataFrame | None:
    """A load run folder's ``visits.parquet`` (the columns :func:`stage_jobs` reads);
    None when the run has none."""
    f = Path(folder) / "visits.parquet"
    return pd.read_parquet(f, columns=VISIT_COLUMNS) if f.exists() else None


def busy_positions(first: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per job in start order, from its first item's arrival and its end (s): whether it
    waited (its first item came before the job ahead of it ended) and its position in
    its busy period (1: it found the server idle)."""
    waited = np.r_[False, first[1:] < end[:-1]]
    period = np.cumsum(~waited)
    return waited, pd.Series(period).groupby(period).cumcount().to_numpy() + 1


def backlogged_interval(visits: pd.DataFrame, stage: str) -> tuple[float, int]:
    """Mean start-to-start interval per item (ms) of ``stage``'s jobs at position
    ``MIN_POSITION`` or later of a busy period whose next job was already waiting, and
    their items; (NaN, 0) when the stage has none or runs on more than one machine.

    ``visits``: one row per item and stage visit with ``component``, ``machine``,
    ``t_arrive``, ``t_start`` and ``t_end`` (s): a testbed run's ``visits.parquet`` or a
    twin replication's visits. The items of one batch share their ``t_start``.
    """
    jobs = stage_jobs(visits, stage)
    if jobs is None or len(jobs) < 2:
        return float("nan"), 0
    start = jobs["t_start"].to_numpy(dtype=float)
    end = jobs["end"].to_numpy(dtype=float)
    first = jobs["first"].to_numpy(dtype=float)
    items = jobs["items"].to_numpy(dtype=float)
    waited, position = busy_positions(first, end)
    next_waited = np.r_[waited[1:], False]
    sel = (position >= MIN_POSITION) & next_waited
    if not sel.any():
        return float("nan"), 0
    gap = np.r_[np.diff(start), np.nan][sel]
    n = items[sel]
    return float(1e3 * gap.sum() / n.sum()), int(n.sum())


def run_backlogged_interval(folder: Path, stage: str) -> tuple[float, int]:
    """:func:`backlogged_interval` of a load run folder's ``visits.parquet``."""
    visits = run_visits(folder)
    return (float("nan"), 0) if visits is None else backlogged_interval(visits, stage)


def stage_machine(deployment: Deployment, stage: str) -> str | None:
    """The one machine ``stage`` runs on in ``deployment`` (None: several or none)."""
    where = [m for m, n in deployment.allocation.get(stage, {}).items() if n > 0]
    return where[0] if len(where) == 1 else None


def with_quota_scale(scenario: Scenario, machine: str, factor: float) -> Scenario:
    """``scenario`` with ``machine``'s CPU quota (``Server.cpu_quota_cores``) × ``factor``."""
    servers = []
    for s in scenario.servers:
        if machine in s.instance_names() and s.cpu_quota_cores is not None:
            if s.count != 1:
                raise ValueError(f"with_quota_scale: server {s.name!r} holds {s.count} machines")
            s = s.model_copy(update={"cpu_quota_cores": s.cpu_quota_cores * factor})
        servers.append(s)
    return scenario.model_copy(update={"servers": servers})


@dataclass(frozen=True)
class BacklogFit:
    """The quota scale whose twin keeps the fit runs' pace in long busy periods."""

    factor: float  # × the stage's node quota (1: the twin's pace is within the band)
    testbed_ms: float  # the fit runs' backlogged interval per item (pooled)
    items: int  # backlogged items it comes from
    twin_ms: tuple[float, ...]  # the twin's pooled interval before each step, then after
    band_ms: float = 0.0  # ± around testbed_ms where the twin is left as it is


def twin_backlogged_interval(
    scenario: Scenario,
    deployment: Deployment,
    stage: str,
    runs: Sequence[tuple[float, float, int]],
    seed: int = 0,
) -> float:
    """The twin's backlogged interval per item (ms) at the fit runs' rates: one
    replication per (rate req/s, seconds, the run's backlogged items), each run's
    interval weighted by the testbed's items, as the testbed's pool is."""
    num = den = 0.0
    for i, (rate, seconds, weight) in enumerate(runs):
        wl = SteadyWorkload(kind="steady", name="backlog-fit", rate_per_s=rate)
        v = simulate_replication(scenario, deployment, wl, seconds, seed + i).visits
        ms, n = backlogged_interval(v, stage)
        if n:
            num, den = num + weight * ms, den + weight
    return num / den if den else float("nan")


def pace_target(
    runs: Sequence[tuple[float, float, float, int]],
) -> tuple[float, float, int, list[tuple[float, float, int]]] | None:
    """The fit runs' pooled pace (ms per item), the band around it (ms) where a twin is
    left as it is, their backlogged items, and the (rate req/s, seconds, items) to
    simulate the twin at; from (rate, seconds, interval ms, items) per run, of which only
    runs with ``MIN_RUN_ITEMS`` backlogged items count. None without such a run."""
    use = [
        (r, s, ms, n) for r, s, ms, n in runs if n >= MIN_RUN_ITEMS and np.isfinite(ms) and r > 0
    ]
    items = sum(n for *_, n in use)
    if not use:
        return None
    target = sum(ms * n for _, _, ms, n in use) / items
    paces = [ms for *_, ms, _ in use]
    band = BAND_SE * float(np.std(paces, ddof=1)) / np.sqrt(len(paces)) if len(paces) > 1 else 0.0
    return target, band, items, [(r, s, n) for r, s, _, n in use]


def fit_backlog_quota(
    scenario: Scenario,
    deployment: Deployment,
    stage: str,
    runs: Sequence[tuple[float, float, float, int]],
    steps: int = 2,
) -> BacklogFit | None:
    """The factor on ``stage``'s node quota whose twin goes through long busy periods at
    the fit runs' pace (:func:`backlogged_interval`).

    ``scenario``: the twin with the stage's node under a quota
    (:func:`calibrate.quota.quota_scenario`); ``runs``: (offered rate req/s, seconds,
    backlogged interval ms, its items) of each fit run below the stage's capacity
    (:func:`run_backlogged_interval`); only runs with ``MIN_RUN_ITEMS`` backlogged items
    count. None without such a run, without a single quota-bound machine for the stage,
    or when the factor falls outside ``FACTOR_RANGE``.
    """
    machine = stage_machine(deployment, stage)
    quota = [s for s in scenario.servers if machine in s.instance_names() and s.cpu_quota_cores]
    got = pace_target(runs)
    if machine is None or not quota or got is None:
        return None
    target, band, items, points = got
    factor, seen = 1.0, []
    for i in range(steps):
        ms = twin_backlogged_interval(
            with_quota_scale(scenario, machine, factor), deployment, stage, points
        )
        seen.append(ms)
        if not np.isfinite(ms):
            return None
        if i == 0 and abs(ms - target) <= band:
            return BacklogFit(1.0, target, items, (ms,), band)
        factor *= ms / target
    seen.append(
        twin_backlogged_interval(
            with_quota_scale(scenario, machine, factor), deployment, stage, points
        )
    )
    if not FACTOR_RANGE[0] <= factor <= FACTOR_RANGE[1]:
        return None
    return BacklogFit(factor, target, items, tuple(seen), band)
