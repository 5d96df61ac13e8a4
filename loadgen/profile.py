"""Load profiles: what a Locust ``LoadTestShape`` does, as pure functions of run time.

The offered rate comes from ``twin.workload.rate_at`` on the scenario's own
workload definition (scaled by ``rate_scale``), so the twin and the testbed see
one curve. Locust's knob is the number of *users*, not a rate: in our open-loop
design (see :mod:`loadgen.schedule`) users are only a pool of senders that take
pre-generated Poisson arrivals off a queue, so the pool must be large enough to
hold every request in flight. It is sized by Little's law over a short look-ahead:
``users(t) = ceil(max rate in [t, t + lookahead] × concurrency_s) + min_users``.
Idle users cost nothing (they block on the queue). When the system's latency
exceeds ``concurrency_s`` at full rate, every sender is busy and arrivals wait in
the queue: that wait is recorded (``lag_s``) and counted in each request's
latency (measured from its scheduled time), so latency stays open-loop-correct,
but the system then sees less than the offered rate — the run's
achieved/offered ratio says so.

This module imports no Locust, so it is testable in any process; the Locust
wrapper is ``loadgen.worker.WorkloadShape``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from twin.spec import Workload
from twin.workload import rate_at, scale_workload

__all__ = ["LoadProfile", "scale_workload"]  # scale_workload: the twin's, re-exported


@dataclass(frozen=True)
class LoadProfile:
    """Offered rate and sender-pool size over one run; every method is pure in ``t_s``.

    ``duration_s`` is the span during which arrivals are generated; the shape
    keeps running for ``drain_s`` more so requests in flight can finish.
    """

    workload: Workload
    duration_s: float
    drain_s: float = 10.0
    concurrency_s: float = 1.0
    min_users: int = 8
    max_users: int = 1000
    lookahead_s: float = 5.0
    spawn_rate: float = 250.0  # users/s; the pool grows ahead of the rate (lookahead)

    def __post_init__(self) -> None:
        if not self.duration_s > 0:
            raise ValueError(f"duration must be > 0 s, got {self.duration_s}")
        if self.drain_s < 0 or self.concurrency_s <= 0 or self.min_users < 1:
            raise ValueError("drain_s ≥ 0, concurrency_s > 0 and min_users ≥ 1 are required")

    def rate(self, t_s: float) -> float:
        """Offered rate at ``t_s`` (requests/s); 0 outside ``[0, duration_s)``."""
        if t_s < 0 or t_s >= self.duration_s:
            return 0.0
        return rate_at(self.workload, t_s)

    def peak_rate(self, t0_s: float, t1_s: float) -> float:
        """Largest per-second rate in ``[t0_s, t1_s]`` (requests/s)."""
        lo, hi = max(math.floor(t0_s), 0), math.floor(min(t1_s, self.duration_s))
        return max((self.rate(k) for k in range(lo, hi + 1)), default=0.0)

    def users(self, t_s: float) -> int:
        """Senders needed at ``t_s``: Little's law over the look-ahead, clamped.

        During the drain the pool stays as it was in the last second of arrivals, so a
        backlog built up under overload is still sent and answered.
        """
        t_s = min(t_s, self.duration_s - 1.0)
        peak = self.peak_rate(t_s, t_s + self.lookahead_s)
        return min(self.max_users, math.ceil(peak * self.concurrency_s) + self.min_users)

    def tick(self, t_s: float) -> tuple[int, float] | None:
        """Locust's ``(user_count, spawn_rate)`` at run time ``t_s``; None ends the run."""
        if t_s >= self.duration_s + self.drain_s:
            return None
        return self.users(t_s), self.spawn_rate
