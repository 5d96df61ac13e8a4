"""The gateway opens a connection to a replica new to its routes before the first item."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import numpy as np

from testbed.services.gateway import Gateway
from tests.testbed.test_fast_http import serve_stage


def _counting_session() -> tuple[aiohttp.ClientSession, dict[str, int]]:
    seen = {"created": 0, "reused": 0}
    trace = aiohttp.TraceConfig()

    async def created(*_a) -> None:  # type: ignore[no-untyped-def]
        seen["created"] += 1

    async def reused(*_a) -> None:  # type: ignore[no-untyped-def]
        seen["reused"] += 1

    trace.on_connection_create_end.append(created)
    trace.on_connection_reuseconn.append(reused)
    return aiohttp.ClientSession(trace_configs=[trace]), seen


def test_a_new_replicas_first_item_reuses_the_pre_opened_connection(tmp_path: Path) -> None:
    async def run(url: str) -> dict[str, int]:
        gw = Gateway()
        gw.session, seen = _counting_session()
        try:
            gw.set_routes([{"name": "double", "replicas": [{"name": "s1", "url": url}]}])
            assert gw.warming, "a new replica gets a pre-open"
            await asyncio.gather(*gw.warming)
            after_preopen = dict(seen)
            x = np.ones(64, np.float32)
            res = await gw.clients[url].call(x)
            np.testing.assert_allclose(res.output, 2 * x)
            # the same replica again: no second pre-open
            gw.set_routes([{"name": "double", "replicas": [{"name": "s1", "url": url}]}])
            assert not gw.warming
            return {**after_preopen, "created_total": seen["created"], "reused": seen["reused"]}
        finally:
            await gw.session.close()

    with serve_stage(tmp_path) as url:
        seen = asyncio.run(run(url))
    assert seen["created"] == 1  # the pre-open connected
    assert seen["created_total"] == 1  # the first item did not
    assert seen["reused"] >= 1


def test_a_pre_open_to_a_dead_replica_is_harmless() -> None:
    async def run() -> bool:
        gw = Gateway()
        await gw.open()
        try:
            gw.set_routes([{"name": "x", "replicas": [{"name": "r", "url": "http://127.0.0.1:9"}]}])
            (task,) = gw.warming
            return await task
        finally:
            await gw.close()

    assert asyncio.run(run()) is False
