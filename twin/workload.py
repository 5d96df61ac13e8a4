"""Arrival-rate curves and arrival times: one definition for twin and testbed.

``rate_at(workload, t)`` is a pure function of time, so Locust's
``LoadTestShape.tick()`` and the simulator's arrival generator follow the same
curve. Arrivals are Poisson with a rate that is constant within each second
(trace data is per second anyway), which makes generation exact and vectorised.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import pandas as pd

from twin.spec import (
    Arrivals,
    FluctuatingWorkload,
    PeriodicArrivals,
    PoissonArrivals,
    SteadyWorkload,
    StepWorkload,
    TraceArrivals,
    TraceWorkload,
    Workload,
)

_NOISE_CHUNK = 1024


@functools.lru_cache(maxsize=64)
def _noise_chunk(seed: int, chunk: int) -> np.ndarray:
    return np.random.default_rng([seed, chunk]).standard_normal(_NOISE_CHUNK)


def _noise(seed: int, second: int) -> float:
    return float(_noise_chunk(seed, second // _NOISE_CHUNK)[second % _NOISE_CHUNK])


@functools.lru_cache(maxsize=32)
def read_trace(path: str, column: str = "rate_per_s") -> np.ndarray:
    """Per-second rates from a CSV column (requests/s); errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"trace file {p} not found")
    try:
        frame = pd.read_csv(p)
    except Exception as exc:  # pandas raises many types; all mean "not a usable CSV"
        raise ValueError(f"trace file {p}: not a readable CSV ({exc})") from None
    if column not in frame.columns:
        raise ValueError(f"trace file {p}: no column {column!r} (columns: {list(frame.columns)})")
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)
    if len(values) == 0 or not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError(f"trace file {p}: column {column!r} must hold finite rates ≥ 0")
    return values


def rate_at(workload: Workload, t_s: float) -> float:
    """Offered arrival rate at time ``t_s`` seconds into the run (requests/s)."""
    t_s = max(t_s, 0.0)
    match workload:
        case SteadyWorkload():
            return workload.rate_per_s
        case FluctuatingWorkload():
            rate = workload.base_per_s + workload.amplitude_per_s * math.sin(
                2 * math.pi * t_s / workload.period_s
            )
            if workload.noise_sd_per_s:
                rate += workload.noise_sd_per_s * _noise(workload.seed, int(t_s))
            for b in workload.bursts:
                if b.at_s <= t_s < b.at_s + b.duration_s:
                    rate += b.extra_per_s
            return max(rate, workload.min_rate_per_s)
        case StepWorkload():
            i = min(int(t_s // workload.step_s), len(workload.levels_per_s) - 1)
            return workload.levels_per_s[i]
        case TraceWorkload():
            trace = read_trace(workload.path, workload.column)
            k = int(t_s)
            if k >= len(trace):
                if not workload.loop:
                    return 0.0
                k %= len(trace)
            return float(trace[k]) * workload.scale
    raise TypeError(f"unknown workload {workload!r}")


def rate_series(workload: Workload, horizon_s: float) -> np.ndarray:
    """Rate of each whole second in ``[0, horizon_s)`` (requests/s)."""
    return np.array([rate_at(workload, k) for k in range(math.ceil(horizon_s))], dtype=float)


def poisson_times(rates: np.ndarray, rng: np.random.Generator, horizon_s: float) -> np.ndarray:
    """Sorted arrival times (s) of a Poisson process whose rate is ``rates[k]`` in second k."""
    counts = rng.poisson(rates)
    starts = np.repeat(np.arange(len(rates), dtype=float), counts)
    times = np.sort(starts + rng.random(starts.size))
    return times[times < horizon_s]


def arrival_times(arrivals: Arrivals, rng: np.random.Generator, horizon_s: float) -> np.ndarray:
    """Arrival times (s) in ``[0, horizon_s)`` of a process's own arrival model."""
    match arrivals:
        case PoissonArrivals():
            n = math.ceil(horizon_s)
            return poisson_times(np.full(n, arrivals.rate_per_s), rng, horizon_s)
        case PeriodicArrivals():
            return np.arange(arrivals.offset_s, horizon_s, arrivals.period_s, dtype=float)
        case TraceArrivals():
            trace = read_trace(arrivals.path, arrivals.column) * arrivals.scale
            n = math.ceil(horizon_s)
            rates = np.resize(trace, n) if len(trace) else np.zeros(n)
            return poisson_times(rates, rng, horizon_s)
    raise TypeError(f"unknown arrivals {arrivals!r}")


def scale_workload(workload: Workload, factor: float) -> Workload:
    """The same workload with every rate multiplied by ``factor`` (> 0)."""
    if not factor > 0:
        raise ValueError(f"rate scale must be > 0, got {factor}")
    if factor == 1.0:
        return workload
    match workload:
        case SteadyWorkload():
            return workload.model_copy(update={"rate_per_s": workload.rate_per_s * factor})
        case FluctuatingWorkload():
            bursts = [
                b.model_copy(update={"extra_per_s": b.extra_per_s * factor})
                for b in workload.bursts
            ]
            return workload.model_copy(
                update={
                    "base_per_s": workload.base_per_s * factor,
                    "amplitude_per_s": workload.amplitude_per_s * factor,
                    "noise_sd_per_s": workload.noise_sd_per_s * factor,
                    "min_rate_per_s": workload.min_rate_per_s * factor,
                    "bursts": bursts,
                }
            )
        case StepWorkload():
            levels = [x * factor for x in workload.levels_per_s]
            return workload.model_copy(update={"levels_per_s": levels})
        case TraceWorkload():
            return workload.model_copy(update={"scale": workload.scale * factor})
    raise TypeError(f"unknown workload {workload!r}")
