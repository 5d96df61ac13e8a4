"""Step worker: an instance of an MLOps component that runs batch steps' work.

The placement model's batch steps (ingest, clean, train, evaluate, drift test …)
are CPU/GPU work done by instances of a component on a machine. This service is
such an instance outside the testbed, e.g. in an exported Kubernetes Deployment:
it holds the instance's place (its pod reserves what the twin reserved) and does
the work a process job hands it.

    POST /run        {"step": NAME, "cpu_ms": X, "gpu_ms": Y} → burns ``X`` ms of
                     CPU time (thread CPU time, so throttling and contention show
                     as wall time above X), then waits ``Y`` ms for the GPU part
                     (no GPU kernel is run: the wait stands for it); answers
                     {"step", "cpu_ms", "gpu_ms", "wall_ms"}.
    GET  /healthz    200 once listening.
    GET  /metrics    step_runs_total, step_wall_seconds (histogram), step_running.

At most ``--slots`` runs work at once (default 1: one instance, one core's worth
of work at a time); the rest wait. ``POST /run`` is behind the admin token when
``MLOPS_TWIN_ADMIN_TOKEN`` is set, like every route that spends a server's CPU
on request.
"""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from testbed.services.common import base_parser, common_routes, error, serve
from testbed.services.guard import (
    AdminGuard,
    BadRequest,
    BodyLimit,
    admin_token,
    bounded_number,
    parse_json,
)

RUN_PATH = "/run"
MAX_WORK_MS = 24 * 3600 * 1e3  # one step's work of a day at most
WALL_BUCKETS = (0.01, 0.1, 1, 5, 15, 60, 300, 900, 3600)


def burn_cpu(cpu_ms: float) -> None:
    """Spin until this thread has used ``cpu_ms`` of CPU time."""
    end = time.thread_time() + cpu_ms / 1e3
    x = 0
    while time.thread_time() < end:
        for _ in range(2000):  # a few µs of arithmetic between clock reads
            x = (x * 1103515245 + 12345) & 0xFFFFFFFF


def parse_run(body: bytes) -> tuple[str, float, float]:
    """``(step, cpu_ms, gpu_ms)`` of a ``POST /run`` body; BadRequest names a bad field."""
    doc = parse_json(body)
    if not isinstance(doc, dict):
        raise BadRequest("body must be a JSON object with step, cpu_ms, gpu_ms")
    unknown = sorted(set(doc) - {"step", "cpu_ms", "gpu_ms"})
    if unknown:
        raise BadRequest(f"unknown keys {unknown}; known: ['step', 'cpu_ms', 'gpu_ms']")
    step = doc.get("step", "step")
    if not isinstance(step, str) or not 0 < len(step) <= 200:
        raise BadRequest("step must be a non-empty string of at most 200 characters")
    cpu = bounded_number(doc.get("cpu_ms", 0.0), "cpu_ms", 0.0, MAX_WORK_MS)
    gpu = bounded_number(doc.get("gpu_ms", 0.0), "gpu_ms", 0.0, MAX_WORK_MS)
    return step, cpu, gpu


def create_app(name: str, slots: int = 1) -> Starlette:
    """The worker's app; ``slots`` runs at once."""
    if slots < 1:
        raise ValueError(f"slots must be ≥ 1, got {slots}")
    reg = CollectorRegistry()
    runs = Counter("step_runs", "Step runs finished", ["step"], registry=reg)
    wall = Histogram(
        "step_wall_seconds", "Wall time of a run", ["step"], buckets=WALL_BUCKETS, registry=reg
    )
    running = Gauge("step_running", "Runs working now", registry=reg)
    gate = asyncio.Semaphore(slots)

    async def run(req: Request) -> Response:
        try:
            step, cpu_ms, gpu_ms = parse_run(await req.body())
        except BadRequest as e:
            return error(str(e), e.status)
        t0 = time.perf_counter()
        async with gate:
            running.inc()
            try:
                await asyncio.to_thread(burn_cpu, cpu_ms)
                await asyncio.sleep(gpu_ms / 1e3)
            finally:
                running.dec()
        took = time.perf_counter() - t0
        runs.labels(step).inc()
        wall.labels(step).observe(took)
        return JSONResponse(
            {
                "worker": name,
                "step": step,
                "cpu_ms": cpu_ms,
                "gpu_ms": gpu_ms,
                "wall_ms": round(took * 1e3, 3),
            }
        )

    routes = [*common_routes(reg, lambda: True), Route(RUN_PATH, run, methods=["POST"])]
    middleware = [
        Middleware(BodyLimit),
        Middleware(AdminGuard, token=admin_token(), prefixes=(RUN_PATH,), methods=("POST",)),
    ]
    return Starlette(routes=routes, middleware=middleware)


def main() -> None:
    p = base_parser("Step worker: runs batch steps' CPU/GPU work for a process job.")
    p.add_argument("--name", default="worker", help="component (and machine) it stands for")
    p.add_argument("--slots", type=int, default=1, help="runs at once")
    a = p.parse_args()
    serve(create_app(a.name, a.slots), a.host, a.port)


if __name__ == "__main__":
    main()
