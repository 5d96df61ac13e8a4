"""A platform server we did not write (Feast, MLflow), run behind our guard.

The service process starts the real server as its child on an internal port,
waits for the server's own health route, then listens on the service port and
forwards every request to it unchanged, except that:

- write routes need the testbed's admin token (:class:`~testbed.services.guard.AdminGuard`):
  neither Feast's feature server nor MLflow's tracking server has a token check
  that fits the testbed (Feast's auth is OIDC/Kubernetes, MLflow's basic-auth
  needs users for readers too), so the guard stays ours;
- ``GET /healthz`` answers for the server (``{"ok", "api"}``; ``api`` tells
  clients which protocol they talk to) and ``GET /metrics`` is the server's own
  Prometheus text.

Written by hand because it is only a forwarding loop (~100 lines) and the
guard must be the same code as every other service's. The child is in this
process's group (``testbed down`` stops the group) and gets SIGTERM should this
process die first.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import psutil
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from testbed.api import HEALTH_PATH, METRICS_PATH
from testbed.services.guard import AdminGuard, BodyLimit, admin_token

# model artifacts pass through the registry's proxy
MAX_BODY_BYTES = 1 << 30
HOP_HEADERS = {
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "content-encoding",
    "x-admin-token",
}
WRITE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the service process dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Upstream:
    """The real server as a child process: start, health, stop (with its children)."""

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str],
        url: str,
        health_path: str,
        log_path: Path,
        metrics_url: str | None = None,
        cwd: Path | None = None,
    ):
        self.argv, self.env, self.url = argv, env, url.rstrip("/")
        self.health_path = health_path
        self.log_path = Path(log_path)
        self.metrics_url = metrics_url or f"{self.url}{METRICS_PATH}"
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 180.0) -> None:
        """Start the child and wait until its health route answers 200."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # safe: called before this process starts threads
            )
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.argv[0]} exited with code {self.proc.returncode}; see {self.log_path}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + self.health_path, timeout=2).status_code == 200:
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{self.url} not healthy after {timeout_s:.0f} s")
            time.sleep(0.25)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the child and everything it started; SIGKILL what is left after ``grace_s``."""
        if self.proc is None:
            return
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            procs = []
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.terminate()
        _, alive = psutil.wait_procs(procs, timeout=grace_s)
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


def create_proxy_app(
    upstream: Upstream,
    api: str,
    guard_prefixes: tuple[str, ...],
    guard_methods: tuple[str, ...] | None = None,
    extra_routes: list[Route] | None = None,
) -> Starlette:
    """The service's app: health, metrics, ``extra_routes``, and everything else forwarded."""
    client = httpx.AsyncClient(base_url=upstream.url, timeout=300.0)

    async def healthz(_req: Request) -> Response:
        try:
            ok = (await client.get(upstream.health_path, timeout=5)).status_code == 200
        except httpx.HTTPError:
            ok = False
        return JSONResponse({"ok": ok, "api": api}, status_code=200 if ok else 503)

    async def metrics(_req: Request) -> Response:
        try:
            r = await client.get(upstream.metrics_url, timeout=10)
        except httpx.HTTPError as e:
            return JSONResponse({"error": f"metrics unavailable: {type(e).__name__}"}, 502)
        return Response(r.content, r.status_code, media_type=r.headers.get("content-type"))

    async def forward(req: Request) -> Response:
        headers = {k: v for k, v in req.headers.items() if k.lower() not in HOP_HEADERS}
        try:
            r = await client.request(
                req.method,
                req.url.path,
                params=req.url.query or None,
                headers=headers,
                content=await req.body(),
            )
        except httpx.HTTPError as e:
            return JSONResponse({"error": f"{api} server unreachable: {type(e).__name__}"}, 502)
        out = {k: v for k, v in r.headers.items() if k.lower() not in HOP_HEADERS}
        return Response(r.content, r.status_code, headers=out)

    methods = ["GET", "HEAD", "OPTIONS", *WRITE_METHODS]
    routes = [
        Route(HEALTH_PATH, healthz),
        Route(METRICS_PATH, metrics),
        *(extra_routes or []),
        Route("/{path:path}", forward, methods=methods),
    ]
    middleware = [
        Middleware(AdminGuard, token=admin_token(), prefixes=guard_prefixes, methods=guard_methods),
        Middleware(BodyLimit, max_bytes=MAX_BODY_BYTES),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan)


def run_behind_guard(
    upstream: Upstream, app_factory: Callable[[], Starlette], host: str, port: int
) -> None:
    """Start ``upstream``, serve the proxy on ``host:port`` until SIGTERM, stop ``upstream``."""
    from testbed.services.common import serve

    upstream.start()
    try:
        serve(app_factory(), host, port)
    finally:
        upstream.stop()
