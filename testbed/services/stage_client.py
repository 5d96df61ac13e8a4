"""The gateway's client of one stage replica: adaptive coalescing of items into calls.

At most ``max_inflight`` calls (``POST /v1/batch``) are outstanding per replica.
Items that arrive while those are busy wait in the gateway and leave together, up
to ``max_items`` per call, as soon as a call returns; while a call is in flight,
only whole multiples of the stage's ``batch`` leave, so the server forms full
batches. An item that finds the replica idle leaves at once (no timer), so at
low load nothing waits; at high load the stage server parses one HTTP request
per many items instead of one per item.
The time an item waits here is added to its ``queue_ms`` (it is queueing for the
stage); the server's dynamic batching then forms batches of the configured size.
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
        max_items: int = 64,
        max_inflight: int = 2,
        batch: int = 1,
        wire_dtype: str = "float32",
    ):
        self.session = session
        self.url = url
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.max_items = max_items
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
        while self._pending and self._inflight < self.max_inflight:
            n = min(len(self._pending), self.max_items)
            if self._inflight:  # busy: send whole batches only, the rest goes next
                n -= n % self.batch
                if n == 0:
                    break  # the call in flight flushes again when it returns
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
                    StageResult(row, waited_ms + float(q), float(s), int(b), variant)
                )


def _fail(items: list[_Pending], exc: BaseException) -> None:
    for item in items:
        if not item.future.done():
            item.future.set_exception(exc)
