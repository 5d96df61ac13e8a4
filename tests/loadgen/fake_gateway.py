"""A tiny gateway implementing ``testbed.api``'s contract, for loadgen tests.

Three stages with fixed timings, a label that is the pixel sum mod 10, every
``fail_every``-th request answered 503, and ``/metrics`` with a request counter
and a queue gauge. Runs uvicorn in a thread on 127.0.0.1 (free port); ``stop()``
shuts it down.
"""

from __future__ import annotations

import socket
import threading
import time

import uvicorn
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    ProcessCollector,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from testbed.api import (
    HEALTH_PATH,
    INFER_PATH,
    METRICS_PATH,
    TIMINGS_HEADER,
    StageTiming,
    encode_timings,
)

STAGES = (
    StageTiming("denoise", "denoise-0", "d-small", 1, 0.5, 1.0, 0.2),
    StageTiming("encoder", "encoder-0", "e-medium", 1, 0.25, 2.0, 0.2),
    StageTiming("classifier", "classifier-0", "c-mlp", 1, 0.0, 0.5, 0.2),
)


def make_app(fail_every: int = 0) -> Starlette:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)  # process_cpu_seconds_total, resident memory
    served = Counter("gateway_requests", "requests answered", ["status"], registry=registry)
    queue = Gauge("gateway_queue_length", "requests in flight", registry=registry)
    count = {"n": 0}

    async def infer(request: Request) -> Response:
        body = await request.json()
        count["n"] += 1
        if fail_every and count["n"] % fail_every == 0:
            served.labels("503").inc()
            return JSONResponse({"error": "no healthy replica"}, status_code=503)
        if "image" in body:
            label = int(sum(body["image"])) % 10
        elif "entity_id" in body:
            label = int(body["entity_id"]) % 10
        else:
            return JSONResponse({"error": "need image or entity_id"}, status_code=400)
        queue.set(1)
        served.labels("200").inc()
        return JSONResponse(
            {"id": body.get("id"), "label": label, "stages": [], "gateway_ms": 4.0},
            headers={TIMINGS_HEADER: encode_timings(list(STAGES))},
        )

    async def health(_: Request) -> Response:
        return PlainTextResponse("ok")

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

    return Starlette(
        routes=[
            Route(INFER_PATH, infer, methods=["POST"]),
            Route(HEALTH_PATH, health),
            Route(METRICS_PATH, metrics),
        ]
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeGateway:
    """``with FakeGateway() as gw: gw.url``: serves until the block ends."""

    def __init__(self, fail_every: int = 0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            make_app(fail_every), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> FakeGateway:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("fake gateway did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
