"""Dynamic batching: items wait until ``max_batch`` are queued or ``max_wait_ms`` passes.

The batcher owns one worker task. Its model function and limits can be swapped
at any time (:meth:`DynamicBatcher.configure`): the batch being computed
finishes with the old model, the next uses the new one, and no queued item is
dropped. The model runs inline on the event loop by default — on a CPU-limited
server a hand-off to a worker thread costs more than it overlaps — or in one
worker thread (``inline=False``), which keeps the loop answering while a slow
batch runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

RunBatch = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ItemResult:
    """One item's output row and what it went through inside the server (ms)."""

    output: np.ndarray
    queue_ms: float
    service_ms: float
    batch: int
    tag: str


@dataclass
class _Call:
    """The items of one ``submit``: answered together when the last one is done."""

    future: asyncio.Future
    results: list[ItemResult | None]
    left: int


@dataclass
class _Item:
    row: np.ndarray
    t_enqueue: float
    call: _Call
    index: int = field(default=0)


class DynamicBatcher:
    """Forms batches from single items and runs ``run_batch`` on them (see module doc).

    ``observe(batch_size, service_s, queue_s_list)`` is called after each batch
    (for metrics). ``tag`` names the current model (e.g. its variant) and is
    reported with each result.
    """

    def __init__(
        self,
        run_batch: RunBatch,
        max_batch: int,
        max_wait_ms: float,
        tag: str = "",
        observe: Callable[[int, float, list[float]], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        inline: bool = True,
    ):
        self._run = run_batch
        self.max_batch = max_batch
        self.max_wait_ms = max_wait_ms
        self.tag = tag
        self._observe = observe
        self._clock = clock
        self._queue: deque[_Item] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._pool = None if inline else ThreadPoolExecutor(1, thread_name_prefix="infer")
        self.batches = 0

    def configure(
        self,
        run_batch: RunBatch | None = None,
        max_batch: int | None = None,
        max_wait_ms: float | None = None,
        tag: str | None = None,
    ) -> None:
        """Swap model and limits; takes effect from the next batch."""
        if max_batch is not None:
            if max_batch < 1:
                raise ValueError(f"max_batch must be ≥ 1, got {max_batch}")
            self.max_batch = max_batch
        if max_wait_ms is not None:
            if max_wait_ms < 0:
                raise ValueError(f"max_wait_ms must be ≥ 0, got {max_wait_ms}")
            self.max_wait_ms = max_wait_ms
        if run_batch is not None:
            self._run = run_batch
        if tag is not None:
            self.tag = tag
        if self._wakeup is not None:
            self._wakeup.set()

    @property
    def queue_length(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        if self._task is None:
            self._wakeup = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._worker())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for item in self._queue:
            if not item.call.future.done():
                item.call.future.set_exception(RuntimeError("server stopping"))
        self._queue.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    async def submit(self, rows: np.ndarray) -> list[ItemResult]:
        """Queue each row of ``rows`` (n × d); return their results in order."""
        self.start()
        now = self._clock()
        call = _Call(asyncio.get_running_loop().create_future(), [None] * len(rows), len(rows))
        if not len(rows):
            return []
        self._queue.extend(_Item(r, now, call, k) for k, r in enumerate(rows))
        assert self._wakeup is not None
        self._wakeup.set()
        return await call.future

    async def _wait_for_batch(self) -> None:
        """Until the queue holds a full batch or its oldest item waited ``max_wait_ms``."""
        assert self._wakeup is not None
        while not self._queue:
            self._wakeup.clear()
            await self._wakeup.wait()
        loop = asyncio.get_running_loop()
        while len(self._queue) < self.max_batch:
            left = self._queue[0].t_enqueue + self.max_wait_ms / 1000 - self._clock()
            if left <= 0:
                return
            self._wakeup.clear()
            timer = loop.call_later(left, self._wakeup.set)  # cheaper than wait_for
            try:
                await self._wakeup.wait()
            finally:
                timer.cancel()

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wait_for_batch()
            n = min(self.max_batch, len(self._queue))
            batch = [self._queue.popleft() for _ in range(n)]
            run, tag = self._run, self.tag
            t_start = self._clock()
            x = np.stack([i.row for i in batch])
            try:
                if self._pool is None:
                    outputs, service_s = _run_timed(run, x)
                else:
                    outputs, service_s = await loop.run_in_executor(self._pool, _run_timed, run, x)
            except Exception as e:  # a failing model fails its batch's calls, not the server
                for i in batch:
                    if not i.call.future.done():
                        i.call.future.set_exception(e)
                continue
            self.batches += 1
            queue_s = [t_start - i.t_enqueue for i in batch]
            service_ms = service_s * 1000
            for i, q, row in zip(batch, queue_s, outputs, strict=True):
                call = i.call
                call.results[i.index] = ItemResult(row, q * 1000, service_ms, n, tag)
                call.left -= 1
                if call.left == 0 and not call.future.done():
                    call.future.set_result(call.results)
            if self._observe is not None:
                self._observe(n, service_s, queue_s)
            if self._pool is None:
                await asyncio.sleep(0)  # let the loop read new requests between batches


def _run_timed(run: RunBatch, x: np.ndarray) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    y = run(x)
    return y, time.perf_counter() - t0
