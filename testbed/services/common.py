"""What every service shares: argument parsing, health and metrics routes, serving."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from testbed.api import HEALTH_PATH, METRICS_PATH


def base_parser(description: str) -> argparse.ArgumentParser:
    """A parser with the ``--port``/``--host`` every service takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    return p


def common_routes(registry: CollectorRegistry, ready: Callable[[], bool]) -> list[Route]:
    """``GET /healthz`` (200 when ``ready()``) and ``GET /metrics`` for ``registry``."""

    async def healthz(_req: Request) -> Response:
        ok = ready()
        return JSONResponse({"ok": ok}, status_code=200 if ok else 503)

    async def metrics(_req: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return [Route(HEALTH_PATH, healthz), Route(METRICS_PATH, metrics)]


def error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def serve(app: object, host: str, port: int) -> None:
    """Run ``app`` with uvicorn (uvloop + httptools when installed), no access log.

    Services talk to each other and to local clients on a private network, so the
    per-request work of proxy-header rewriting and Server/Date headers is left out.
    """
    import uvicorn

    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        loop="auto",
        http="auto",
        timeout_graceful_shutdown=2,
        proxy_headers=False,
        server_header=False,
        date_header=False,
    )


def wait_healthy(
    url: str, timeout_s: float = 30.0, is_alive: Callable[[], bool] | None = None
) -> None:
    """Poll ``url + /healthz`` until it answers 200; TimeoutError otherwise (s)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if is_alive is not None and not is_alive():
            raise RuntimeError(f"{url} exited before it became healthy")
        try:
            r = httpx.get(url + HEALTH_PATH, timeout=2.0)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as e:
            last = type(e).__name__
        time.sleep(0.1)
    raise TimeoutError(f"{url} not healthy after {timeout_s:.0f} s ({last})")
