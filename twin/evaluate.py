"""Evaluation: a pure function of (scenario, deployment, workload, horizon, replications, seed).

Inputs and the returned :class:`Evaluation` are picklable, so the same call
runs inline or in a Dask worker, and the same seed gives the same numbers.
Replication r of every candidate uses the same named random streams (common
random numbers), so differences between candidates are not seed noise.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import pandas as pd

from twin.criteria import CRITERIA, placement_criteria, summarise
from twin.deployment import require_feasible
from twin.limits import check_work
from twin.sim import ReplicationResult, simulate_replication
from twin.spec import Deployment, Scenario, Workload


@dataclass(frozen=True)
class Evaluation:
    """Criteria of one deployment: per replication, and mean ± CI over them."""

    scenario: str
    deployment: str
    workload: str | None
    horizon_s: float
    replications: int
    seed: int
    per_replication: pd.DataFrame
    summary: pd.DataFrame
    events: int
    wall_s: float
    visits: pd.DataFrame | None = field(default=None, repr=False)
    requests: pd.DataFrame | None = field(default=None, repr=False)

    def criteria(self) -> tuple[float, float, float, float]:
        """Means of the four placement criteria, in ``CRITERIA`` order."""
        return tuple(float(self.summary.loc[c, "mean"]) for c in CRITERIA)  # type: ignore[return-value]

    def to_dict(self) -> dict:
        """JSON-ready summary."""
        return {
            "scenario": self.scenario,
            "deployment": self.deployment,
            "workload": self.workload,
            "horizon_s": self.horizon_s,
            "replications": self.replications,
            "seed": self.seed,
            "events": self.events,
            "wall_s": round(self.wall_s, 4),
            "criteria": {
                name: {k: _clean(v) for k, v in row.items()}
                for name, row in self.summary.to_dict(orient="index").items()
            },
        }


def _clean(v: object) -> object:
    if isinstance(v, float) and v != v:  # NaN is not JSON
        return None
    return v


def _replicate(args: tuple) -> tuple[dict[str, float], ReplicationResult]:
    scenario, deployment, w, horizon_s, seed, r, keep = args
    res = simulate_replication(scenario, deployment, w, horizon_s, seed, r, visits=keep)
    row = placement_criteria(
        res.requests, scenario, deployment, horizon_s, res.end_s, res.on_demand_busy_s
    )
    row["replication"] = r
    return row, res


def _map(fn: Callable, items: list, workers: int) -> Iterator:
    """``map`` inline, or over a process pool (results in order either way)."""
    if workers <= 1:
        yield from map(fn, items)
        return
    ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        yield from pool.map(fn, items)


def resolve_workload(scenario: Scenario, workload: str | Workload | None) -> Workload | None:
    """A workload object from its name (None and 'none' mean the processes' own arrivals)."""
    if workload is None or workload == "none":
        return None
    if isinstance(workload, str):
        try:
            return scenario.workload(workload)
        except KeyError as exc:
            raise ValueError(exc.args[0]) from None
    return workload


def evaluate(
    scenario: Scenario,
    deployment: Deployment,
    workload: str | Workload | None = None,
    horizon_s: float = 3600.0,
    replications: int = 10,
    seed: int = 1,
    *,
    keep_records: bool = False,
    check: bool = True,
    on_replication: Callable[[int], None] | None = None,
    workers: int = 1,
    force: bool = False,
) -> Evaluation:
    """Simulate ``replications`` runs and score the deployment.

    ``check`` first rejects an infeasible deployment (InfeasibleDeployment
    names each violated constraint). ``keep_records`` returns the visit and
    request tables with a ``replication`` column. ``on_replication`` is called
    after each replication (for progress bars); it does not affect results.
    ``workers`` > 1 runs replications in that many processes; every
    replication has its own random streams, so the numbers are identical.
    Leave it at 1 inside a Dask worker, which already is the parallelism.
    A run above the work budget of :mod:`twin.limits` raises WorkTooLarge
    unless ``force``.
    """
    if replications < 1:
        raise ValueError(f"replications must be ≥ 1, got {replications}")
    if check:
        require_feasible(scenario, deployment)
    w = resolve_workload(scenario, workload)
    check_work(scenario, w, horizon_s, replications, force=force)
    started = time.perf_counter()
    rows, visits, requests = [], [], []
    events = 0
    jobs = [
        (scenario, deployment, w, horizon_s, seed, r, keep_records) for r in range(replications)
    ]
    for r, (row, res) in enumerate(_map(_replicate, jobs, min(workers, replications))):
        events += res.events
        rows.append(row)
        if keep_records:
            visits.append(res.visits.assign(replication=r))
            requests.append(res.requests.assign(replication=r))
        if on_replication is not None:
            on_replication(r)
    return assemble_evaluation(
        scenario,
        deployment,
        w,
        horizon_s,
        replications,
        seed,
        rows,
        events,
        started,
        visits if keep_records else None,
        requests if keep_records else None,
    )


def assemble_evaluation(
    scenario: Scenario,
    deployment: Deployment,
    workload: Workload | None,
    horizon_s: float,
    replications: int,
    seed: int,
    rows: list[dict],
    events: int,
    started: float,
    visits: list[pd.DataFrame] | None,
    requests: list[pd.DataFrame] | None,
) -> Evaluation:
    """The :class:`Evaluation` of per-replication criteria ``rows`` (one engine's output).

    ``started`` is the ``time.perf_counter()`` reading when the evaluation began (s);
    ``visits``/``requests`` are per-replication record tables, or None when not kept.
    """
    per_rep = pd.DataFrame(rows)
    return Evaluation(
        scenario=scenario.name,
        deployment=deployment.name,
        workload=workload.name if workload is not None else None,
        horizon_s=horizon_s,
        replications=replications,
        seed=seed,
        per_replication=per_rep,
        summary=summarise(per_rep),
        events=events,
        wall_s=time.perf_counter() - started,
        visits=pd.concat(visits, ignore_index=True) if visits is not None else None,
        requests=pd.concat(requests, ignore_index=True) if requests is not None else None,
    )
