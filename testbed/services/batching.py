"""Dynamic batching: items wait until ``max_batch`` are queued or ``max_wait_ms`` passes.

The batcher owns one worker task. Its model function and limits can be swapped
at any time (:meth:`DynamicBatcher.configure`): the batch being computed
finishes with the old model, the next uses the new one, and no queued item is
dropped. The model runs inline on the event loop by default — on a CPU-limited
server a hand-off to a worker thread costs more than it overlaps — or in one
worker thread (``inline=False``), which keeps the loop answering while a slow
batch runs.

Items are queued as slices of the arrays they were submitted in, not one object
per row: a batch is one slice (no copy) when a call's rows fill it, or the
concatenation of a few; results go back into one array per call. Per-item
Python work made up a large share of the stage server's own CPU at batch 8
(profiled), and this keeps the work per batch and per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

RunBatch = Callable[[np.ndarray], np.ndarray]
# observe(batch size, compute time of the batch in s, [(queue time in s, items), ...]):
# the items of one queued slice share their queue time
log = logging.getLogger(__name__)
# done(result or exception) of a call
Done = Callable[["CallResult | BaseException"], None]
# inline, at most this many full batches run back to back before their answers go out
MAX_BATCHES_AHEAD = 4
Observe = Callable[[int, float, list[tuple[float, int]]], None]


@dataclass(frozen=True)
class ItemResult:
    """One item's output row and what it went through inside the server (ms)."""

    output: np.ndarray
    queue_ms: float
    service_ms: float
    batch: int
    tag: str


class Run(NamedTuple):
    """``count`` consecutive rows of a call that went through the same batch (ms).

    A named tuple: one is made per batch and call, and a frozen dataclass takes
    several times longer to build.
    """

    count: int
    queue_ms: float
    service_ms: float
    batch: int
    tag: str
    outputs: np.ndarray  # the rows' outputs (a view of the batch's output)


@dataclass
class CallResult:
    """The answers to one :meth:`DynamicBatcher.submit_array`: what the rows went
    through and their outputs, as runs of rows that shared a batch, in row order."""

    runs: list[Run]

    @property
    def outputs(self) -> np.ndarray:
        """Output row k for input row k (one array; a copy unless one batch held all)."""
        if len(self.runs) == 1:
            return self.runs[0].outputs
        return np.concatenate([r.outputs for r in self.runs])

    def per_row(self, field: str) -> np.ndarray:
        """One value of a :class:`Run` field per row, e.g. ``per_row("queue_ms")``."""
        return np.repeat([getattr(r, field) for r in self.runs], [r.count for r in self.runs])

    def items(self) -> list[ItemResult]:
        """The same answers as one :class:`ItemResult` per row."""
        return [
            ItemResult(row, r.queue_ms, r.service_ms, r.batch, r.tag)
            for r in self.runs
            for row in r.outputs
        ]


class QueueFull(RuntimeError):
    """The batcher already holds ``max_queue`` rows: answer 503 and let the client retry."""


# rows a batcher holds before it refuses more (about 64 full batches of 16)
DEFAULT_MAX_QUEUE = 1024


class _Call:
    """The rows of one submit: answered together when the last one is computed."""

    __slots__ = ("done", "left", "runs")

    def __init__(self, done: Done, n: int):
        self.done: Done | None = done
        self.left = n
        # Batches are formed in queue order, so a call's runs arrive in row order;
        # outputs stay views of the batch outputs (no copy into a per-call array).
        self.runs: list[Run] = []

    def fill(self, rows: np.ndarray, q_ms: float, s_ms: float, n: int, tag: str) -> None:
        """The call's next rows, computed in a batch of ``n`` by model ``tag`` (ms)."""
        k = len(rows)
        self.runs.append(Run(k, q_ms, s_ms, n, tag, rows))
        self.left -= k
        if self.left == 0:
            self._finish(CallResult(self.runs))

    def fail(self, exc: BaseException) -> None:
        self._finish(exc)

    def _finish(self, outcome: CallResult | BaseException) -> None:
        done, self.done = self.done, None  # answered once: a failed call may have more rows
        if done is None:
            return
        try:
            done(outcome)
        except Exception:  # the caller's bug must not stop the worker
            log.exception("batch call callback failed")


class _Batch:
    """Rows taken off the queue to run together, with the model they run on."""

    __slots__ = ("run", "segs", "t_start", "tag", "x")

    def __init__(self, segs: list[_Segment], x: np.ndarray, run: RunBatch, tag: str):
        self.segs = segs
        self.x = x
        self.run = run
        self.tag = tag
        self.t_start = 0.0


class _Segment:
    """The next rows of a call still waiting for a batch."""

    __slots__ = ("call", "rows", "t_enqueue")

    def __init__(self, call: _Call, rows: np.ndarray, t_enqueue: float):
        self.call = call
        self.rows = rows
        self.t_enqueue = t_enqueue


class DynamicBatcher:
    """Forms batches from queued rows and runs ``run_batch`` on them (see module doc).

    ``observe(batch_size, service_s, waits)`` is called after each batch (for
    metrics; ``waits`` lists ``(queue_s, items)`` per queued slice in the batch).
    ``tag`` names the current model (e.g. its variant) and is reported with each
    result.
    """

    def __init__(
        self,
        run_batch: RunBatch,
        max_batch: int,
        max_wait_ms: float,
        tag: str = "",
        observe: Observe | None = None,
        clock: Callable[[], float] = time.perf_counter,
        inline: bool = True,
        max_queue: int = DEFAULT_MAX_QUEUE,
    ):
        self._run = run_batch
        self.max_batch = max_batch
        self.max_wait_ms = max_wait_ms
        self.tag = tag
        self._observe = observe
        self._clock = clock
        self._queue: deque[_Segment] = deque()
        self._queued = 0  # rows in the queue
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._pool = None if inline else ThreadPoolExecutor(1, thread_name_prefix="infer")
        self.batches = 0
        self.max_queue = max_queue
        self.restarts = 0  # times the worker died of a bug and was started again

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
        return self._queued

    def start(self) -> None:
        if self._task is None:
            if self._wakeup is None:
                self._wakeup = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._worker())
            self._task.add_done_callback(self._supervise)

    def _supervise(self, task: asyncio.Task) -> None:
        """Start the worker again if a bug ended it: queued calls must not hang."""
        if task.cancelled() or self._task is not task:
            return
        exc = task.exception()
        log.error("batch worker died (%s: %s); restarting", type(exc).__name__, exc)
        self.restarts += 1
        self._task = None
        self.start()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for seg in self._queue:
            seg.call.fail(RuntimeError("server stopping"))
        self._queue.clear()
        self._queued = 0
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    def submit_nowait(self, rows: np.ndarray, done: Done) -> None:
        """Queue the rows of ``rows`` (n × d); ``done`` gets their :class:`CallResult`
        (or the exception that failed them) on the loop, once, when the last is computed.

        No task or future per call: the stage server's HTTP path answers from ``done``.
        """
        self.start()
        if rows.ndim != 2:
            raise ValueError(f"rows must be a 2-D array (n × d), got {rows.ndim} dimensions")
        if not len(rows):
            done(CallResult([Run(0, 0.0, 0.0, 0, self.tag, rows[:0])]))
            return
        if self._queued + len(rows) > self.max_queue:
            raise QueueFull(f"{self._queued} rows queued (limit {self.max_queue})")
        self._queue.append(_Segment(_Call(done, len(rows)), rows, self._clock()))
        self._queued += len(rows)
        assert self._wakeup is not None
        self._wakeup.set()

    async def submit_array(self, rows: np.ndarray) -> CallResult:
        """Queue the rows of ``rows`` (n × d); return their results as arrays, in order."""
        future = asyncio.get_running_loop().create_future()

        def done(outcome: CallResult | BaseException) -> None:
            if future.done():
                return
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

        self.submit_nowait(rows, done)
        return await future

    async def submit(self, rows: np.ndarray) -> list[ItemResult]:
        """Queue each row of ``rows`` (n × d); return one result per row, in order."""
        return (await self.submit_array(rows)).items()

    async def _wait_for_batch(self) -> None:
        """Until the queue holds a full batch or its oldest item waited ``max_wait_ms``."""
        assert self._wakeup is not None
        while not self._queued:
            self._wakeup.clear()
            await self._wakeup.wait()
        loop = asyncio.get_running_loop()
        while self._queued < self.max_batch:
            left = self._queue[0].t_enqueue + self.max_wait_ms / 1000 - self._clock()
            if left <= 0:
                return
            self._wakeup.clear()
            timer = loop.call_later(left, self._wakeup.set)  # cheaper than wait_for
            try:
                await self._wakeup.wait()
            finally:
                timer.cancel()

    def _take(self, n: int) -> list[_Segment]:
        """The first ``n`` queued rows, as segments (the last one split if needed)."""
        taken: list[_Segment] = []
        while n:
            seg = self._queue[0]
            k = len(seg.rows)
            if k <= n:
                taken.append(self._queue.popleft())
            else:  # split: the head of the segment leaves, the tail keeps its place
                taken.append(_Segment(seg.call, seg.rows[:n], seg.t_enqueue))
                seg.rows, k = seg.rows[n:], n
            n -= k
        return taken

    def _next_batch(self) -> _Batch | None:
        """Take the next batch off the queue (up to ``max_batch`` rows).

        Rows whose shape differs from the batch's first call cannot be stacked
        with it: those calls are failed on their own and the rest still run.
        None when every call taken was failed so.
        """
        n = min(self.max_batch, self._queued)
        segs = self._take(n)
        self._queued -= n
        if len(segs) == 1:
            return _Batch(segs, segs[0].rows, self._run, self.tag)
        shape = segs[0].rows.shape[1:]
        dtype = segs[0].rows.dtype
        good = [s for s in segs if s.rows.shape[1:] == shape and s.rows.dtype == dtype]
        for s in segs:
            if s.rows.shape[1:] != shape or s.rows.dtype != dtype:
                s.call.fail(
                    ValueError(
                        f"rows of shape {s.rows.shape[1:]} cannot be batched with rows of "
                        f"shape {shape}"
                    )
                )
        if not good:
            return None
        x = good[0].rows if len(good) == 1 else np.concatenate([s.rows for s in good])
        return _Batch(good, x, self._run, self.tag)

    def _answer(self, batch: _Batch, outputs: np.ndarray, service_s: float) -> None:
        """Hand each call its rows of a computed batch; metrics."""
        n = len(batch.x)
        if len(outputs) != n:
            self._fail(batch, ValueError(f"model answered {len(outputs)} rows for {n}"))
            return
        self.batches += 1
        service_ms = service_s * 1000
        waits = []
        at = 0
        for seg in batch.segs:
            k = len(seg.rows)
            q = batch.t_start - seg.t_enqueue
            waits.append((q, k))
            seg.call.fill(outputs[at : at + k], q * 1000, service_ms, n, batch.tag)
            at += k
        if self._observe is not None:
            self._observe(n, service_s, waits)

    @staticmethod
    def _fail(batch: _Batch, exc: BaseException) -> None:
        for seg in batch.segs:  # a failing model fails its batch's calls, not the server
            seg.call.fail(exc)

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wait_for_batch()
            if self._pool is not None:
                batch = self._next_batch()
                if batch is None:
                    continue
                batch.t_start = self._clock()
                try:
                    outputs, service_s = await loop.run_in_executor(
                        self._pool, _run_timed, batch.run, batch.x
                    )
                except Exception as e:
                    self._fail(batch, e)
                    continue
                try:
                    self._answer(batch, outputs, service_s)
                except Exception as e:
                    self._fail(batch, e)
                continue
            # Inline: run the full batches already queued back to back, then answer
            # them all and give the loop a turn. Each batch is still one run of at
            # most max_batch rows, timed on its own; the server's Python work between
            # runs (answers, metrics, the loop turn) happens once per few batches,
            # which profiling under a CPU quota showed to be dear after each run.
            done: list[tuple[_Batch, np.ndarray | None, float, Exception | None]] = []
            while self._queued:
                batch = self._next_batch()
                if batch is None:
                    continue
                batch.t_start = self._clock()
                try:
                    outputs, service_s = _run_timed(batch.run, batch.x)
                    done.append((batch, outputs, service_s, None))
                except Exception as e:
                    done.append((batch, None, 0.0, e))
                if self._queued < self.max_batch or len(done) >= MAX_BATCHES_AHEAD:
                    break
            for batch, outputs, service_s, exc in done:
                if exc is not None or outputs is None:
                    self._fail(batch, exc or RuntimeError("no output"))
                    continue
                try:
                    self._answer(batch, outputs, service_s)
                except Exception as e:  # e.g. outputs of an odd shape: fail the batch only
                    self._fail(batch, e)
            await asyncio.sleep(0)  # let the loop send answers and read new requests


def _run_timed(run: RunBatch, x: np.ndarray) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    y = run(x)
    return y, time.perf_counter() - t0
