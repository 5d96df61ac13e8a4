"""What every service shares: argument parsing, health and metrics routes, serving."""

from __future__ import annotations

import argparse
import contextlib
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


# uvicorn polls for an exit request every 0.1 s; see quiet_server
IDLE_TICK_S = 2.0


def quiet_server(config: object) -> object:
    """A uvicorn server that wakes on an exit signal instead of polling for one.

    uvicorn's main loop wakes ten times a second to check whether it should exit.
    An emulated server pays those wake-ups from its CPU quota in each of its
    processes (the node agent and every instance): an idle node agent used
    ~1.4 ms of CPU per second, 1.4 % of a 0.1-core server (serving benchmark).
    This one sleeps until the exit signal, or ``IDLE_TICK_S`` at most.
    """
    import asyncio

    import uvicorn

    class Server(uvicorn.Server):
        async def main_loop(self) -> None:
            self._wake = asyncio.Event()
            self._loop = asyncio.get_running_loop()
            counter = 0
            should_exit = await self.on_tick(counter)
            while not should_exit:
                counter = (counter + 10) % 864000  # each turn counts as uvicorn's 1 s tick
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), IDLE_TICK_S)
                should_exit = await self.on_tick(counter)

        def handle_exit(self, sig: int, frame: object) -> None:
            super().handle_exit(sig, frame)  # type: ignore[arg-type]
            loop = getattr(self, "_loop", None)
            if loop is not None:  # called as a signal handler: wake the loop safely
                loop.call_soon_threadsafe(self._wake.set)

    return Server(config)  # type: ignore[arg-type]


KEEP_ALIVE_S = 75  # s a service keeps an idle client connection open


def serve(app: object, host: str, port: int, http: object = "auto") -> None:
    """Run ``app`` with uvicorn (uvloop + httptools when installed), no access log.

    Services talk to each other and to local clients on a private network, so the
    per-request work of proxy-header rewriting and Server/Date headers is left out.
    ``http`` is uvicorn's protocol (a name or a class, see ``fast_http``).
    """
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        loop="auto",
        http=http,  # type: ignore[arg-type]
        timeout_graceful_shutdown=2,
        # longer than any client's idle pool (the gateway keeps connections 30 s): when the
        # server closed idle connections first (uvicorn's default is 5 s), a request sent on
        # one as it closed failed, and a stage with one replica answered 503
        timeout_keep_alive=KEEP_ALIVE_S,
        proxy_headers=False,
        server_header=False,
        date_header=False,
    )
    quiet_server(config).run()  # type: ignore[attr-defined]


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
