"""Open-loop arrivals: the Poisson schedule the twin draws, released on time.

Why open loop: Locust users are closed loops (send, wait for the answer, send
again), so a slow system would slow the load down and hide its own latency
(coordinated omission). The twin's arrivals are an open Poisson process. We
therefore pre-generate the arrival times with the *same* named random stream
the simulator uses for replication 0 (``twin.sim.stream(seed, 0, ARRIVALS,
process)``), so the testbed and the twin see identical arrival instants. One
releaser greenlet puts each arrival on a queue at its time; a pool of users
(sized by :class:`loadgen.profile.LoadProfile`) takes them off and sends them.
A request's latency is measured from its *scheduled* time, so any delay in
the load generator itself (all users busy) counts against the system and is
also reported as ``lag_s``.

With several load-generator processes, process ``i`` of ``n`` takes arrivals
``i, i+n, …``: the union is exactly the schedule.
"""

from __future__ import annotations

import numpy as np

from twin.sim import STREAM_ARRIVALS, stream
from twin.spec import Workload
from twin.workload import poisson_times, rate_series


def arrival_schedule(workload: Workload, process: str, duration_s: float, seed: int) -> np.ndarray:
    """Sorted arrival times (s from run start) of ``process`` under ``workload``.

    Identical to the simulator's arrivals in replication 0 with the same seed.
    """
    rng = stream(seed, 0, STREAM_ARRIVALS, process)
    return poisson_times(rate_series(workload, duration_s), rng, duration_s)


def partition(times: np.ndarray, index: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``(pids, times)`` that load-generator process ``index`` of ``count`` sends."""
    if not 0 <= index < count:
        raise ValueError(f"partition index {index} not in [0, {count})")
    pids = np.arange(index, times.size, count, dtype=np.int64)
    return pids, times[pids]


def input_order(n_inputs: int, n_requests: int, seed: int) -> np.ndarray:
    """Which input (index into the input set) request ``pid`` sends: seeded, cycling."""
    if n_inputs < 1:
        raise ValueError("need at least one input")
    rng = np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(0, 99)))
    reps = -(-max(n_requests, 1) // n_inputs)
    return np.concatenate([rng.permutation(n_inputs) for _ in range(reps)])[:n_requests]
