"""The gateway's client of one stage replica: items go to the replica's own queue at once.

Each item leaves as soon as it arrives; items of one event-loop turn leave together,
at most the stage's ``batch`` per call (``POST /v1/batch``), so a call never holds
more than one batch and each item is answered when *its* batch is computed. The
queue is the stage server's (its dynamic batcher, as in Triton): the gateway does
not hold items back. ``max_inflight`` only caps the calls outstanding per replica
(a safety limit, large by default); items beyond it wait here and that wait is
added to their ``queue_ms``.

Why not coalesce many items into one call while the replica is busy (what this
client did before): a call is answered when its last item is computed, so the
first items of a 40-item call waited for 39 others — a bulk-service queue that
neither FIFO queueing theory nor the twin describes, and at the knee it doubled
the tail. With heavy stages the HTTP parse per call (≈ 0.35 ms of the stage's
quota) is small next to the model (≈ 3 ms), and it is counted in the twin as the
stage server's CPU per call (``Component.server_overhead``).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp
import numpy as np

# aiohttp's default request headers the stage server does not read
SKIP_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


class ReplicaUnreachable(ConnectionError):
    """The call failed at the transport level (dead replica, reset, refused)."""


class StageError(RuntimeError):
    """The replica answered with an error status."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


@dataclass(frozen=True)
class StageResult:
    output: np.ndarray
    queue_ms: float  # waiting at the gateway for a call slot + in the server for a batch
    service_ms: float
    batch: int
    variant: str
    received_unix: float | None = None  # when the server queued the call (its clock, s)


@dataclass
class _Pending:
    row: np.ndarray
    future: asyncio.Future
    t_enqueue: float


class ReplicaClient:
    """Sends items to one replica URL (see module doc)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        timeout_s: float,
        max_items: int | None = None,
        max_inflight: int = 256,
        batch: int = 1,
        wire_dtype: str = "float32",
    ):
        self.session = session
        self.url = url
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.max_items = max_items  # items per call; None: the stage's batch
        self.max_inflight = max_inflight
        # float16 halves the bytes per hop (a denoised 32×32 image is 4 KB in float32);
        # it did not measurably cut the stage's CPU here, so float32 stays the default
        self.wire_dtype = np.dtype(wire_dtype)
        self.batch = max(int(batch), 1)  # the stage's batch size, when the controller says
        self._pending: list[_Pending] = []
        self._inflight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task] = set()
        self.calls = 0

    async def preopen(self, timeout_s: float = 5.0) -> bool:
        """Open a keep-alive connection to the replica ahead of its first item (one
        ``GET /healthz``), so that item does not pay for the TCP connect and the
        server's accept (4-42 ms on the loaded testbed, ``rl_start_stall.py``). True when
        the replica answered; a failure is harmless (the first call connects)."""
        from testbed.api import HEALTH_PATH

        try:
            async with self.session.get(
                self.url + HEALTH_PATH,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
                skip_auto_headers=SKIP_HEADERS,
            ) as resp:
                await resp.read()
                return resp.status == 200
        except (TimeoutError, aiohttp.ClientError):
            return False

    async def call(self, row: np.ndarray) -> StageResult:
        loop = asyncio.get_running_loop()
        item = _Pending(row, loop.create_future(), time.perf_counter())
        self._pending.append(item)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)  # items of this loop turn leave together
        return await item.future

    def _flush(self) -> None:
        self._scheduled = False
        loop = asyncio.get_running_loop()
        per_call = self.max_items or self.batch
        while self._pending and self._inflight < self.max_inflight:
            n = min(len(self._pending), per_call)
            chunk, self._pending = self._pending[:n], self._pending[n:]
            self._inflight += 1
            task = loop.create_task(self._send(chunk))
            self._tasks.add(task)  # keep a reference until done (tasks are weakly held)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, items: list[_Pending]) -> None:
        t_send = time.perf_counter()
        try:
            await self._post(items, t_send)
        finally:
            self._inflight -= 1
            if self._pending and not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)

    async def _post(self, items: list[_Pending], t_send: float) -> None:
        rows = np.stack([i.row for i in items]).astype(self.wire_dtype)
        for attempt in range(2):
            try:
                await self._post_once(items, rows, t_send)
                return
            except aiohttp.ServerDisconnectedError as e:
                # a pooled keep-alive connection the server closed as we sent on it: the
                # replica is alive, so try once more (on a fresh connection) before calling
                # it unreachable; inference is idempotent, so a repeat is harmless
                if attempt == 1:
                    _fail(items, ReplicaUnreachable(f"{self.url}: {type(e).__name__}: {e}"))

    async def _post_once(self, items: list[_Pending], rows: np.ndarray, t_send: float) -> None:
        """One call: a server disconnect is raised for a retry, other failures fail the items."""
        self.calls += 1
        try:
            async with self.session.post(
                self.url + "/v1/batch",
                data=rows.tobytes(),
                headers={
                    "x-shape": f"{rows.shape[0]},{rows.shape[1]}",
                    "x-dtype": rows.dtype.name,
                },
                timeout=self.timeout,
                # every header is parsed in Python by the stage, from its CPU quota
                skip_auto_headers=SKIP_HEADERS,
            ) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise StageError(resp.status, body[:200].decode(errors="replace"))
                n, d = (int(v) for v in resp.headers["x-shape"].split(","))
                dtype = np.dtype(resp.headers.get("x-dtype", "float32"))
                out = np.frombuffer(body, dtype=dtype).astype(np.float32).reshape(n, d)
                timings = resp.headers["x-item-timings"].split(";")
                variant = resp.headers.get("x-variant", "")
                received = resp.headers.get("x-received-unix")
        except aiohttp.ServerDisconnectedError:
            raise
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as e:
            _fail(items, ReplicaUnreachable(f"{self.url}: {type(e).__name__}: {e}"))
            return
        except Exception as e:  # timeout, StageError, malformed answer: these items fail
            _fail(items, e)
            return
        for item, row, t in zip(items, out, timings, strict=True):
            q, s, b = t.split(",")
            waited_ms = (t_send - item.t_enqueue) * 1000
            if not item.future.done():
                item.future.set_result(
                    StageResult(
                        row,
                        waited_ms + float(q),
                        float(s),
                        int(b),
                        variant,
                        float(received) if received else None,
                    )
                )


def _fail(items: list[_Pending], exc: BaseException) -> None:
    for item in items:
        if not item.future.done():
            item.future.set_exception(exc)
