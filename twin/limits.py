"""How much work a run implies, checked before it starts.

A scenario can be small and valid field by field yet ask for a run that does
not fit the machine: ``rate_per_s: 3e6`` over an hour is ten billion arrivals.
:func:`check_work` estimates the step executions a run will simulate —
Σ over processes of expected arrivals × parts per execution — from the
workload's closed form (no per-second loop, so it is instant even for an
absurd horizon), and refuses a run above the budget unless forced. ``validate``
calls it with the same defaults as ``simulate``, so a file that validates
also runs.
"""

from __future__ import annotations

import math

import numpy as np

from twin.inputs import SpecError
from twin.spec import (
    Arrivals,
    FluctuatingWorkload,
    PeriodicArrivals,
    PoissonArrivals,
    Scenario,
    SteadyWorkload,
    StepWorkload,
    TraceArrivals,
    TraceWorkload,
    Workload,
)

# Expected step executions in one replication. Measured: ~0.7 KB of memory and
# ~7 µs of CPU each (digits-pipeline, steady-high, 3,000 s: 1.35 M executions,
# 1.0 GB peak RSS, 12.8 s), so this is ~2 GB and well under a minute. A constant,
# not a share of this host's memory, so a file validates the same everywhere.
MAX_EVENTS_PER_REPLICATION = 3_000_000
# Per-second arrays (rates, noise) are built for the whole horizon.
MAX_HORIZON_S = 1_000_000.0
MAX_REPLICATIONS = 10_000


class WorkTooLarge(SpecError):
    """A run above the work budget; ``--force`` runs it anyway."""


def expected_arrivals(
    scenario: Scenario, workload: Workload | None, horizon_s: float
) -> dict[str, float]:
    """Expected (or, for noisy curves, an upper bound of) arrivals per process."""
    from twin.workload import read_trace

    targets: set[str] = set()
    if workload is not None:
        targets = set(workload.processes) or {
            p.name for p in scenario.processes if p.kind == "request"
        }
    out: dict[str, float] = {}
    for p in scenario.processes:
        if p.name in targets and workload is not None:
            out[p.name] = _workload_arrivals(workload, horizon_s, read_trace)
        elif p.arrivals is not None:
            out[p.name] = _own_arrivals(p.arrivals, horizon_s, read_trace)
    return out


def _workload_arrivals(w: Workload, h: float, read_trace) -> float:
    match w:
        case SteadyWorkload():
            return w.rate_per_s * h
        case FluctuatingWorkload():
            # The sine and the noise average out; the floor at min_rate adds at most
            # min_rate; bursts add their extra over the part inside the horizon.
            mean = w.base_per_s + w.min_rate_per_s
            extra = sum(
                max(b.extra_per_s, 0.0) * max(min(b.duration_s, h - b.at_s), 0.0) for b in w.bursts
            )
            return mean * h + extra
        case StepWorkload():
            levels = np.asarray(w.levels_per_s, dtype=float)
            starts = np.arange(len(levels)) * w.step_s
            ends = np.append(starts[1:], math.inf)
            spans = np.clip(np.minimum(ends, h) - starts, 0.0, None)
            return float(levels @ spans)
        case TraceWorkload():
            trace = read_trace(w.path, w.column)
            return _trace_sum(trace, h, w.loop) * w.scale
    raise TypeError(f"unknown workload {w!r}")


def _own_arrivals(a: Arrivals, h: float, read_trace) -> float:
    match a:
        case PoissonArrivals():
            return a.rate_per_s * h
        case PeriodicArrivals():
            return max(h - a.offset_s, 0.0) / a.period_s
        case TraceArrivals():
            return _trace_sum(read_trace(a.path, a.column), h, True) * a.scale
    raise TypeError(f"unknown arrivals {a!r}")


def _trace_sum(trace: np.ndarray, h: float, loop: bool) -> float:
    n = math.ceil(h)
    if not loop or n <= len(trace):
        return float(trace[: min(n, len(trace))].sum())
    full, rest = divmod(n, len(trace))
    return float(trace.sum() * full + trace[:rest].sum())


def expected_events(scenario: Scenario, workload: Workload | None, horizon_s: float) -> float:
    """Expected step executions (parts of split steps counted) in one replication."""
    parts = {p.name: sum(s.max_parallel for s in p.steps) for p in scenario.processes}
    arrivals = expected_arrivals(scenario, workload, horizon_s)
    return float(sum(n * parts[name] for name, n in arrivals.items()))


def check_work(
    scenario: Scenario,
    workload: Workload | None,
    horizon_s: float,
    replications: int = 1,
    *,
    force: bool = False,
    source: str = "",
) -> float:
    """Expected step executions per replication; WorkTooLarge above the budget.

    ``source`` names the scenario file in the message. ``force`` skips the
    budget (the user accepts the memory and time), never the sanity checks.
    """
    where = f"{source}: " if source else ""
    # horizon and replications come from the command line (or the caller), not the file
    if not math.isfinite(horizon_s) or horizon_s <= 0:
        raise SpecError(
            f"horizon (--horizon) must be a finite number of seconds > 0, got {horizon_s}"
        )
    if replications < 1:
        raise SpecError(f"replications (--replications) must be ≥ 1, got {replications}")
    events = expected_events(scenario, workload, horizon_s)
    if force:
        return events
    wname = f"workload {workload.name!r}" if workload is not None else "the processes' arrivals"
    if horizon_s > MAX_HORIZON_S:
        raise WorkTooLarge(
            f"horizon (--horizon) {horizon_s:g} s is above the {MAX_HORIZON_S:g} s limit; "
            "shorten it or pass --force"
        )
    if replications > MAX_REPLICATIONS:
        raise WorkTooLarge(
            f"replications (--replications) {replications} is above the {MAX_REPLICATIONS} "
            "limit; pass --force to run them"
        )
    if not math.isfinite(events) or events > MAX_EVENTS_PER_REPLICATION:
        top = _largest(scenario, workload, horizon_s)
        raise WorkTooLarge(
            f"{where}{wname} over {horizon_s:g} s means about {events:.3g} step executions per "
            f"replication, above the budget of {MAX_EVENTS_PER_REPLICATION:,} (most from {top}); "
            "lower the rate or the horizon, or pass --force"
        )
    return events


def _largest(scenario: Scenario, workload: Workload | None, horizon_s: float) -> str:
    """The process with the most arrivals, and the field that sets its rate."""
    arrivals = expected_arrivals(scenario, workload, horizon_s)
    name = max(arrivals, key=arrivals.__getitem__)
    i, process = next((i, p) for i, p in enumerate(scenario.processes) if p.name == name)
    if workload is not None and name in _targets(scenario, workload):
        j = next((j for j, w in enumerate(scenario.workloads) if w.name == workload.name), None)
        where = f"workloads[{j}]" if j is not None else f"workload {workload.name!r}"
        return f"processes[{i}] {name!r} via {where}.{_RATE_FIELD[type(workload)]}"
    return f"processes[{i}] {name!r}: processes[{i}].arrivals.{_RATE_FIELD[type(process.arrivals)]}"


_RATE_FIELD = {
    PoissonArrivals: "rate_per_s",
    PeriodicArrivals: "period_s",
    TraceArrivals: "path (the trace's rates)",
    SteadyWorkload: "rate_per_s",
    FluctuatingWorkload: "base_per_s",
    StepWorkload: "levels_per_s",
    TraceWorkload: "path (the trace's rates)",
}


def _targets(scenario: Scenario, workload: Workload) -> set[str]:
    return set(workload.processes) or {p.name for p in scenario.processes if p.kind == "request"}
