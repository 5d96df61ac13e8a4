"""When the kernel enforces a stage's CPU quota, fitted from how often its items stall.

Under a CFS quota a stage's item *stalls* when its node runs out of the period's quota
while the item runs: it waits for the next period (the stalls end on the 10-ms grid of
the period timer on the testbed). How often that happens at a given load depends on how
late the kernel notices that the quota is used up: at once, or only at the running
thread's next scheduler tick (4 ms at HZ=250), the overrun being paid back from the next
period's quota (``Settings.cpu_quota_tick_ms``). The late check lets most items that
cross the quota finish unstalled; the prompt one stalls them. The quota and capacity are
the same either way, but the tail is not: with the 4-ms check the twin stalled 9–23 % of
the e-large items at ρ 0.4–0.8 where the testbed stalled 19–57 %, and its p95/p99 were
15–50 % short (``benchmarks/results/testbed_knee_stalls.md``).

Which holds on a host is not a constant: a thread is also checked at every interrupt and
scheduling event of its CPU, which a busy host has many of. So :func:`fit_tick` takes it
from the fit runs: for each candidate check interval it simulates the calibrated twin at
each fit run's offered rate and compares the stage's stall share with the run's (an item
stalled: its in-server service above the run's 25th percentile + ``STALL_MS``; the
testbed's ``service_s`` in ``visits.parquet``, the twin's ``t_end − t_start``), and keeps
the interval with the smallest squared difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from twin.sim import simulate_replication
from twin.spec import Deployment, Scenario, SteadyWorkload

STALL_MS = 1.5  # above the unstalled service (25th percentile): a quota stall, not noise
TICK_GRID_MS = (0.0, 1.0, 2.0, 4.0)  # at once … at HZ=250's tick


def stall_share(service_ms: np.ndarray) -> float:
    """Share of items whose service (ms) exceeds the 25th percentile by ``STALL_MS``."""
    s = np.asarray(service_ms, dtype=float)
    s = s[np.isfinite(s)]
    if len(s) == 0:
        return float("nan")
    return float(np.mean(s > np.percentile(s, 25) + STALL_MS))


def visits_stall_share(visits: pd.DataFrame, stage: str) -> float:
    """``stage``'s stall share in a load run's visits (``service_s``); NaN without any."""
    if visits.empty or "service_s" not in visits:
        return float("nan")
    service = visits.loc[visits["component"].astype(str) == stage, "service_s"]
    return stall_share(1e3 * service.to_numpy(dtype=float))


def run_stall_share(folder: Path, stage: str) -> float:
    """``stage``'s stall share in a load run (``visits.parquet``); NaN without visits."""
    f = Path(folder) / "visits.parquet"
    if not f.exists():
        return float("nan")
    return visits_stall_share(pd.read_parquet(f, columns=["component", "service_s"]), stage)


def with_quota_tick(scenario: Scenario, tick_ms: float) -> Scenario:
    """``scenario`` with its CPU quotas enforced ``tick_ms`` after they run out."""
    settings = scenario.settings.model_copy(update={"cpu_quota_tick_ms": float(tick_ms)})
    return scenario.model_copy(update={"settings": settings})


@dataclass(frozen=True)
class TickFit:
    """The fitted check interval and, per candidate, the twin's stall share per fit run."""

    tick_ms: float
    testbed: tuple[float, ...]  # the fit runs' stall shares, in the order given
    twin: dict[float, tuple[float, ...]]  # candidate tick (ms) → the twin's, same order

    def error(self, tick_ms: float) -> float:
        """Sum of squared differences of the stall shares at ``tick_ms``."""
        return float(np.sum((np.array(self.twin[tick_ms]) - np.array(self.testbed)) ** 2))


def twin_stall_share(
    scenario: Scenario, deployment: Deployment, stage: str, rate_per_s: float, seconds: float
) -> float:
    """``stage``'s stall share in the twin at ``rate_per_s`` (two seeds of ``seconds``)."""
    wl = SteadyWorkload(kind="steady", name="stall-fit", rate_per_s=rate_per_s)
    service = []
    for seed in range(2):
        v = simulate_replication(scenario, deployment, wl, seconds, seed).visits
        e = v[v["component"].astype(str) == stage]
        service.append((e["t_end"] - e["t_start"]).to_numpy() * 1e3)
    return stall_share(np.concatenate(service))


def fit_tick(
    scenario: Scenario,
    deployment: Deployment,
    stage: str,
    runs: Sequence[tuple[float, float]],
    seconds: float = 20.0,
    grid: Sequence[float] = TICK_GRID_MS,
) -> TickFit | None:
    """The quota check interval (ms) whose twin stalls ``stage`` as the fit runs do.

    ``scenario``: the calibrated twin with its stages under the quota
    (:func:`calibrate.quota.quota_scenario`); ``runs``: (offered rate req/s, stall share)
    of each fit run (:func:`run_stall_share`); runs at or beyond the stage's capacity
    tell nothing (every item queues) and are best left out. None without a usable run.
    """
    fit = [(r, s) for r, s in runs if np.isfinite(s) and r > 0]
    if not fit:
        return None
    twin: dict[float, tuple[float, ...]] = {}
    for tick in grid:
        sc = with_quota_tick(scenario, tick)
        twin[float(tick)] = tuple(
            twin_stall_share(sc, deployment, stage, r, seconds) for r, _ in fit
        )
    candidates = TickFit(0.0, tuple(s for _, s in fit), twin)
    return replace(candidates, tick_ms=min(twin, key=candidates.error))
