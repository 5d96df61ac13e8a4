"""The gateway's client of one stage replica: coalesces concurrent items into one call.

Items submitted in the same event-loop turn go out as one ``POST /v1/batch`` (at
most ``max_items``), so HTTP costs per call, not per item, at the stage server;
nothing waits for a timer, so an item alone is sent at once.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
import numpy as np


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
    queue_ms: float
    service_ms: float
    batch: int
    variant: str


class ReplicaClient:
    """Sends items to one replica URL, coalescing those that arrive together."""

    def __init__(
        self, session: aiohttp.ClientSession, url: str, timeout_s: float, max_items: int = 64
    ):
        self.session = session
        self.url = url
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.max_items = max_items
        self._pending: list[tuple[np.ndarray, asyncio.Future]] = []
        self._scheduled = False
        self.calls = 0

    async def call(self, row: np.ndarray) -> StageResult:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        self._pending.append((row, fut))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await fut

    def _flush(self) -> None:
        items, self._pending, self._scheduled = self._pending, [], False
        for i in range(0, len(items), self.max_items):
            asyncio.get_running_loop().create_task(self._send(items[i : i + self.max_items]))

    async def _send(self, items: list[tuple[np.ndarray, asyncio.Future]]) -> None:
        rows = np.stack([r for r, _ in items]).astype(np.float32)
        self.calls += 1
        try:
            async with self.session.post(
                self.url + "/v1/batch",
                data=rows.tobytes(),
                headers={"x-shape": f"{rows.shape[0]},{rows.shape[1]}"},
                timeout=self.timeout,
            ) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise StageError(resp.status, body[:200].decode(errors="replace"))
                n, d = (int(v) for v in resp.headers["x-shape"].split(","))
                out = np.frombuffer(body, dtype=np.float32).reshape(n, d)
                timings = resp.headers["x-item-timings"].split(";")
                variant = resp.headers.get("x-variant", "")
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as e:
            _fail(items, ReplicaUnreachable(f"{self.url}: {type(e).__name__}: {e}"))
            return
        except TimeoutError as e:
            _fail(items, e)
            return
        except Exception as e:  # StageError or malformed answer: fail these items only
            _fail(items, e)
            return
        for (_, fut), row, t in zip(items, out, timings, strict=True):
            q, s, b = t.split(",")
            if not fut.done():
                fut.set_result(StageResult(row, float(q), float(s), int(b), variant))


def _fail(items: list[tuple[np.ndarray, asyncio.Future]], exc: BaseException) -> None:
    for _, fut in items:
        if not fut.done():
            fut.set_exception(exc)
