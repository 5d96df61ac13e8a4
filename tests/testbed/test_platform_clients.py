"""Clients of the platform services against a stand-in of Feast's feature server REST API."""

from __future__ import annotations

import asyncio

import aiohttp
import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from testbed.services import platform_clients as pc
from testbed.services.gateway import Gateway
from tests.testbed.helpers import serve_app

ROWS = {7: [1.0] * 64, 9: [2.0] * 64}


def fake_feast() -> Starlette:
    """Answers like Feast 0.67's /get-online-features (features in request order + the key)."""

    async def health(_req: Request) -> JSONResponse:
        return JSONResponse({"ok": True, "api": "feast"})

    async def online(req: Request) -> JSONResponse:
        body = await req.json()
        ids = body["entities"]["entity_id"]
        names = ["entity_id"] + [f.split(":")[1] for f in body["features"]]
        results = [{"values": ids, "statuses": ["PRESENT"] * len(ids)}]
        for _ in body["features"]:
            results.append(
                {
                    "values": [ROWS.get(i) for i in ids],
                    "statuses": ["PRESENT" if i in ROWS else "NOT_FOUND" for i in ids],
                }
            )
        return JSONResponse({"metadata": {"feature_names": names}, "results": results})

    return Starlette(
        routes=[
            Route("/healthz", health),
            Route("/get-online-features", online, methods=["POST"]),
        ]
    )


def test_online_reads_and_dispatch() -> None:
    with serve_app(fake_feast()) as url:
        pc.api_of.cache_clear()
        assert pc.api_of(url) == "feast"
        got = pc.online(url, [9, 8, 7])
        assert sorted(got) == [7, 9]
        np.testing.assert_array_equal(got[9], np.full(64, 2.0, np.float32))


def test_gateway_looks_entities_up_in_feast() -> None:
    async def lookups(url: str) -> tuple[np.ndarray, bool]:
        gw = Gateway(features_url=url)
        gw.session = aiohttp.ClientSession()
        try:
            row = await gw.lookup(7)
            try:
                await gw.lookup(8)
            except KeyError:
                return row, True
            return row, False
        finally:
            await gw.session.close()

    with serve_app(fake_feast()) as url:
        row, unknown_refused = asyncio.run(lookups(url))
    np.testing.assert_array_equal(row, np.ones(64, np.float32))
    assert unknown_refused


@pytest.mark.parametrize("ref", ["1", "champion", "latest"])
def test_mlflow_version_refs_are_resolved(ref: str) -> None:
    seen: list[str] = []

    async def get_version(req: Request) -> JSONResponse:
        seen.append(req.url.path)
        return JSONResponse({"model_version": {"version": "1", "source": "s", "tags": []}})

    async def search(req: Request) -> JSONResponse:
        seen.append(req.url.path)
        return JSONResponse({"model_versions": [{"version": "1"}, {"version": "3"}]})

    app = Starlette(
        routes=[
            Route("/api/2.0/mlflow/model-versions/get", get_version),
            Route("/api/2.0/mlflow/registered-models/alias", get_version),
            Route("/api/2.0/mlflow/model-versions/search", search),
        ]
    )
    import httpx

    with serve_app(app) as url, httpx.Client(base_url=url) as c:
        assert pc._version_of(c, "m", ref)["version"] == "1"
    want = {
        "1": ["/api/2.0/mlflow/model-versions/get"],
        "champion": ["/api/2.0/mlflow/registered-models/alias"],
        "latest": ["/api/2.0/mlflow/model-versions/search", "/api/2.0/mlflow/model-versions/get"],
    }
    assert seen == want[ref]
