"""Batch processes (e.g. retraining) triggered on the scenario's schedule during a run.

A scenario's batch processes have their own ``arrivals`` (periodic, Poisson,
trace); the twin runs them alongside the request workload. During a load run
the same arrival times (same named random stream as the twin) trigger a *hook*
the testbed provides — for instance running its trainer job — in a thread
pool, and each execution becomes a row of the requests table (``process, pid,
t_arrive, t_end, deadline_s, status, error``). Without a hook nothing is
triggered and the run says so.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pandas as pd

from testbed.client import Hook, command_hook
from twin.sim import STREAM_ARRIVALS, stream
from twin.spec import Scenario
from twin.workload import arrival_times

BatchHook = Hook  # runs one execution of process ``name`` (``pid``); raises on failure

__all__ = ["BatchHook", "BatchTrigger", "batch_schedule", "command_hook", "http_hook"]


def batch_schedule(scenario: Scenario, duration_s: float, seed: int) -> list[tuple[float, str]]:
    """``(t_s, process)`` of every batch-process execution in ``[0, duration_s)``, sorted."""
    out: list[tuple[float, str]] = []
    for p in scenario.processes:
        if p.kind != "batch" or p.arrivals is None:
            continue
        rng = stream(seed, 0, STREAM_ARRIVALS, p.name)
        out += [(float(t), p.name) for t in arrival_times(p.arrivals, rng, duration_s)]
    return sorted(out)


def http_hook(url: str, timeout_s: float = 600.0) -> BatchHook:
    """A hook that POSTs ``{"process", "id"}`` to ``url`` and waits for a 2xx answer."""

    def run(name: str, pid: int) -> None:
        httpx.post(url, json={"process": name, "id": pid}, timeout=timeout_s).raise_for_status()

    return run


class BatchTrigger:
    """Fires ``hook`` at each scheduled time (from ``t0``, Unix s) in a background thread."""

    def __init__(
        self,
        schedule: list[tuple[float, str]],
        hook: BatchHook,
        t0: float,
        deadlines: dict[str, float | None] | None = None,
        workers: int = 2,
    ) -> None:
        self.schedule, self.hook, self.t0 = schedule, hook, t0
        self.deadlines = deadlines or {}
        self.rows: list[tuple] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="batch")
        self._thread = threading.Thread(target=self._loop, name="batch-trigger", daemon=True)
        self._futures: list[futures.Future] = []

    def _execute(self, pid: int, name: str, t_sched: float) -> None:
        error = ""
        try:
            self.hook(name, pid)
        except Exception as exc:  # any hook failure is recorded, never fatal to the run
            error = f"{type(exc).__name__}: {exc}"[:200]
        t_end = time.time() - self.t0
        with self._lock:
            deadline = self.deadlines.get(name)
            self.rows.append(
                (
                    name,
                    pid,
                    t_sched,
                    np.nan if error else t_end,
                    np.nan if deadline is None else deadline,
                    t_end,
                    0 if error else 200,
                    error,
                )
            )

    def _loop(self) -> None:
        counts: dict[str, int] = {}
        for t, name in self.schedule:
            wait = self.t0 + t - time.time()
            if wait > 0 and self._stop.wait(wait):
                return  # stopped before this execution was due
            pid = counts.get(name, 0)
            counts[name] = pid + 1
            self._futures.append(self._pool.submit(self._execute, pid, name, t))

    def start(self) -> BatchTrigger:
        self._thread.start()
        return self

    def stop(self, wait_s: float = 60.0) -> pd.DataFrame:
        """Stop triggering, wait up to ``wait_s`` for running executions; returns their rows."""
        self._stop.set()
        self._thread.join(timeout=5)
        futures.wait(self._futures, timeout=wait_s)
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            cols = ["process", "pid", "t_arrive", "t_end", "deadline_s", "t_response"]
            return pd.DataFrame(list(self.rows), columns=[*cols, "status", "error"])
