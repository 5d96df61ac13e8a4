"""Stage server: one ONNX model variant behind dynamic batching.

API:
    POST /v1/batch      body = rows (C order), header ``x-shape: n,d`` and ``x-dtype``
                        (float32, the default, or float16 to halve the bytes); answers the
                        output rows the same way, with ``x-item-timings``
                        ``queue_ms,service_ms,batch;...`` (one per row), ``x-variant``
                        and ``x-received-unix`` (when the call was queued, Unix s)
    V2 (Open Inference Protocol): the model under its registry name, stage name or variant;
                        per-call timings in the response's parameters (testbed.services.v2)
    GET  /admin/config  {"variant", "model", "version", "batch", "batch_timeout_ms"}
    POST /admin/config  any of those keys; a new model is fetched from the registry and
                        checked (sha256) before it replaces the old one: queued and
                        in-flight items are served, none dropped. 409 if the fetch fails.

Metrics (``/metrics``): per-item latency and queue-time histograms, batch compute
time and size, items, calls, queue length, config changes, and the CPU time of the
model runs (``stage_compute_cpu_seconds``) apart from the server's own.

A running server answers ``/v1/batch`` through :mod:`testbed.services.fast_http`
(uvicorn's parser, no ASGI layer, one socket write, no task per call) and every
other route through Starlette; ``create_app`` serves all of them as plain ASGI too.

The model comes from the registry (``--registry``, ``--model`` ``--version``) or a
file (``--model-file``, for benchmarks). onnxruntime runs with ``--threads`` intra-op
threads (1 by default: under a CPU quota more threads only spin).

The model runs in one worker thread, apart from the event loop (as Triton's model
instance runs apart from its HTTP front end): calls that arrive while a batch is
computed are read and queued at once, so an item's ``queue_ms`` is its whole wait
for the model, and each batch is answered as soon as it is computed. ``--inline``
runs the model on the loop instead (cheaper per batch for very light models, but
calls then wait unread in the socket while a batch runs, which no timing sees).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from testbed.services.batch_metrics import BatchHistogram
from testbed.services.batching import DEFAULT_MAX_QUEUE, CallResult, DynamicBatcher, QueueFull
from testbed.services.common import base_parser, common_routes, error, serve
from testbed.services.fast_http import Buffer, Headers, Respond, fast_protocol
from testbed.services.guard import (
    MAX_BATCH_BYTES,
    MAX_ROWS,
    AdminGuard,
    BadRequest,
    BodyLimit,
    admin_token,
    bounded_number,
    overloaded,
    parse_json,
    strict_int,
)
from testbed.services.v2 import stage_routes

# element types accepted on the wire; answers use the request's type
WIRE_DTYPES = {"float32": np.float32, "float16": np.float16}
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
BATCH_PATH = "/v1/batch"


@dataclass
class StageConfig:
    """What the server runs now."""

    variant: str
    model: str
    version: str
    batch: int
    batch_timeout_ms: float


def make_runner(model_bytes: bytes, threads: int, cpu: Counter | None = None) -> Any:
    """A function rows → outputs over an onnxruntime session with ``threads`` threads.

    ``cpu`` (seconds) counts the CPU time of the runs (the calling thread's clock,
    all of it with one intra-op thread), so the server's own CPU can be told apart
    from the model's.
    """
    from testbed.zoo.manifest import ort_session

    sess = ort_session(model_bytes, threads)
    model_input = sess.get_inputs()[0]
    in_name = model_input.name
    # rows arrive flat (n, d); a model that takes images gets them in its own shape
    item = tuple(model_input.shape[1:])
    shape = item if len(item) > 1 and all(isinstance(d, int) for d in item) else None
    clock = time.thread_time

    def run(x: np.ndarray) -> np.ndarray:
        c0 = clock()
        x = np.ascontiguousarray(x, dtype=np.float32)
        if shape is not None:
            x = x.reshape(len(x), *shape)
        y = sess.run(None, {in_name: x})[0]
        if cpu is not None:
            cpu.inc(clock() - c0)
        return y

    # The width a row must have (None when the model takes any): checked per call,
    # so a call of the wrong width is refused alone instead of failing a batch.
    dims = list(model_input.shape[1:])
    run.row_width = math.prod(dims) if dims and all(isinstance(d, int) for d in dims) else None  # type: ignore[attr-defined]
    warm_up(sess, in_name, dims)
    return run


def warm_up(sess: Any, in_name: str, dims: list[Any]) -> None:
    """One inference on zeros before the model takes traffic: onnxruntime allocates and
    plans on its first run (several times a normal run's latency), so a replica that is
    routed to, or a variant swapped in, starts warm. Skipped for free input dimensions."""
    if dims and all(isinstance(d, int) for d in dims):
        sess.run(None, {in_name: np.zeros((1, *dims), dtype=np.float32)})


class StageServer:
    """The stage's state: config, model loader, batcher and metrics."""

    def __init__(
        self,
        name: str,
        config: StageConfig,
        threads: int,
        registry_url: str | None,
        model_file: Path | None = None,
    ):
        self.name = name
        self.config = config
        self.threads = threads
        self.registry_url = registry_url
        self.model_file = model_file
        self.reg = CollectorRegistry()
        lab = ["variant"]
        # per-item histograms take a batch of observations at once (batch_metrics)
        self.m_latency = BatchHistogram(
            "stage_request_latency_seconds",
            "Item time in server",
            lab,
            buckets=LATENCY_BUCKETS,
            registry=self.reg,
        )
        self.m_queue = BatchHistogram(
            "stage_queue_seconds",
            "Item wait for its batch",
            lab,
            buckets=LATENCY_BUCKETS,
            registry=self.reg,
        )
        self.m_service = BatchHistogram(
            "stage_service_seconds",
            "Compute time of a batch",
            lab,
            buckets=LATENCY_BUCKETS,
            registry=self.reg,
        )
        self.m_batch = BatchHistogram(
            "stage_batch_size", "Items per batch", lab, buckets=BATCH_BUCKETS, registry=self.reg
        )
        self.m_items = Counter("stage_items", "Items served", lab, registry=self.reg)
        self.m_calls = Counter("stage_calls", "HTTP calls to /v1/batch", registry=self.reg)
        self.m_compute_cpu = Counter(
            "stage_compute_cpu_seconds", "CPU time of the model runs", registry=self.reg
        )
        self.m_qlen = Gauge("stage_queue_length", "Items waiting for a batch", registry=self.reg)
        self.m_switch = Counter(
            "stage_config_changes", "Live configuration changes", registry=self.reg
        )
        self.m_qlen.set_function(lambda: self.batcher.queue_length if self.batcher else 0)
        self.m_refused = Counter(
            "stage_refused_calls", "Calls refused because the queue was full", registry=self.reg
        )
        self.m_restarts = Gauge(
            "stage_worker_restarts", "Batch worker restarts after a bug", registry=self.reg
        )
        self.m_restarts.set_function(lambda: self.batcher.restarts if self.batcher else 0)
        self.max_queue = DEFAULT_MAX_QUEUE
        self.inline = False  # the model runs in a worker thread (see the module doc)
        self.batcher: DynamicBatcher | None = None
        self._children: dict[str, tuple] = {}
        self._switch_lock = asyncio.Lock()

    def _observe(self, n: int, service_s: float, waits: list[tuple[float, int]]) -> None:
        v = self.batcher.tag if self.batcher else ""
        children = self._children.get(v)
        if children is None:  # labels() per batch costs as much as the observation
            metrics = (self.m_batch, self.m_service, self.m_items, self.m_queue, self.m_latency)
            children = self._children[v] = tuple(m.labels(v) for m in metrics)
        batch, service, items, queue, latency = children
        batch.observe(n)
        service.observe(service_s)
        items.inc(n)
        for q, k in waits:
            queue.observe(q, k)
            latency.observe(q + service_s, k)

    def load_bytes(self, model: str, version: str) -> bytes:
        if self.model_file is not None and self.registry_url is None:
            return self.model_file.read_bytes()
        from testbed.services.platform_clients import fetch_model

        if self.registry_url is None:
            raise RuntimeError("no --registry and no --model-file")
        data, _ = fetch_model(self.registry_url, model, version)
        return data

    async def start(self) -> None:
        data = await asyncio.to_thread(self.load_bytes, self.config.model, self.config.version)
        run = await asyncio.to_thread(make_runner, data, self.threads, self.m_compute_cpu)
        c = self.config
        self.batcher = DynamicBatcher(
            run,
            c.batch,
            c.batch_timeout_ms,
            c.variant,
            self._observe,
            max_queue=self.max_queue,
            inline=self.inline,
        )
        self.batcher.start()

    def row_width(self) -> int | None:
        """Values per row the current model takes (None: not fixed)."""
        run = self.batcher._run if self.batcher is not None else None
        return getattr(run, "row_width", None)

    def retry_after_s(self) -> float:
        """About how long the queue takes to drain (s), for ``Retry-After``."""
        b = self.batcher
        if b is None or not b.batches:
            return 1.0
        return b.queue_length / max(b.max_batch, 1) * max(b.max_wait_ms, 1.0) / 1000

    async def reconfigure(self, changes: dict[str, Any]) -> StageConfig:
        """Apply a partial config; a model change is loaded fully before the swap."""
        async with self._switch_lock:
            c = self.config
            new = config_changes(c, changes)
            run = None
            if (new.model, new.version) != (c.model, c.version):
                data = await asyncio.to_thread(self.load_bytes, new.model, new.version)
                run = await asyncio.to_thread(make_runner, data, self.threads, self.m_compute_cpu)
            assert self.batcher is not None
            self.batcher.configure(run, new.batch, new.batch_timeout_ms, new.variant)
            self.config = new
            self.m_switch.inc()
            return new


def config_changes(c: StageConfig, changes: Any) -> StageConfig:
    """``c`` with the changes of a ``POST /admin/config`` body; BadRequest names a bad key."""
    if not isinstance(changes, dict):
        raise BadRequest("body must be a JSON object")
    unknown = sorted(set(changes) - set(StageConfig.__dataclass_fields__))
    if unknown:
        raise BadRequest(f"unknown keys {unknown}; known: {list(StageConfig.__dataclass_fields__)}")
    for key in ("variant", "model", "version"):
        value = changes.get(key, getattr(c, key))
        if not isinstance(value, str) or not 0 < len(value) <= 200:
            raise BadRequest(f"{key} must be a non-empty string of at most 200 characters")
    return StageConfig(
        variant=changes.get("variant", c.variant),
        model=changes.get("model", c.model),
        version=changes.get("version", c.version),
        batch=strict_int(changes.get("batch", c.batch), "batch", 1, MAX_ROWS),
        batch_timeout_ms=bounded_number(
            changes.get("batch_timeout_ms", c.batch_timeout_ms), "batch_timeout_ms", 0, 10_000
        ),
    )


async def _read_body(receive: Receive, max_bytes: int = MAX_BATCH_BYTES) -> bytes | None:
    """The request body (None if the client went away first); BadRequest (413) past
    ``max_bytes``."""
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > max_bytes:
            raise BadRequest(f"body is larger than {max_bytes} bytes", 413)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def item_timings(result: CallResult) -> str:
    """The ``x-item-timings`` header: ``queue_ms,service_ms,batch`` per row, ``;``-joined.

    Rows that went through a batch together share all three values: each run of
    them is formatted once.
    """
    parts: list[str] = []
    for r in result.runs:
        parts.extend(itertools.repeat(f"{r.queue_ms:.4f},{r.service_ms:.4f},{r.batch}", r.count))
    return ";".join(parts)


def _error(message: str, status: int) -> tuple[int, Headers, list[bytes]]:
    return (
        status,
        [(b"content-type", b"application/json")],
        [json.dumps({"error": message}).encode()],
    )


def start_batch(server: StageServer, headers: Headers, body: bytes, respond: Respond) -> None:
    """``POST /v1/batch``: request headers (lower-case names) and body; calls
    ``respond(status, headers without content-length, body buffers)`` once, when
    the rows are computed (or at once for a bad request).

    The output rows go out as views of the model's batch outputs, not copied into
    one array and then into bytes. Independent of the HTTP layer: served by
    :mod:`testbed.services.fast_http` in a running stage server (no task per
    call), and by the ASGI app through :func:`answer_batch`.
    """
    assert server.batcher is not None
    # the server's own clock: the gateway's send time plus a hop does not say when the
    # call reached the queue (the receive delay varies by call)
    received = time.time()
    try:
        rows, dtype, dtype_name = parse_rows(headers, body, server.row_width())
    except BadRequest as e:
        respond(*_error(f"bad batch: {e}", e.status))
        return
    server.m_calls.inc()

    def done(outcome: CallResult | BaseException) -> None:
        if isinstance(outcome, BaseException):  # model error (e.g. wrong input width)
            respond(*_error(f"inference failed: {outcome}", 500))
            return
        try:
            answer = _batch_answer(outcome, len(rows), dtype, dtype_name, received)
        except Exception as e:  # e.g. a switch mid-call changed the output width
            answer = _error(f"inference failed: {type(e).__name__}: {e}", 500)
        respond(*answer)

    try:
        server.batcher.submit_nowait(rows, done)
    except QueueFull:
        server.m_refused.inc()
        status, out_headers, body_ = overloaded("stage queue", server.retry_after_s())
        respond(status, out_headers, [body_])


def parse_rows(headers: Headers, body: bytes, width: int | None) -> tuple[np.ndarray, type, bytes]:
    """The rows of a ``/v1/batch`` call, checked: ``x-shape`` ``n,d`` with
    1 ≤ n ≤ MAX_ROWS and d the model's row width, a known ``x-dtype``, a body of
    exactly n·d elements, finite values. BadRequest names what is wrong."""
    h = dict(headers)
    shape = h.get(b"x-shape")
    if shape is None:
        raise BadRequest("header x-shape (n,d) is missing")
    try:
        n, d = (int(v) for v in shape.split(b","))
    except ValueError:
        raise BadRequest("header x-shape must be two integers n,d") from None
    if not 1 <= n <= MAX_ROWS or d < 1:
        raise BadRequest(f"header x-shape: need 1 ≤ n ≤ {MAX_ROWS} rows and d ≥ 1")
    if width is not None and d != width:
        raise BadRequest(f"header x-shape: rows have {d} values, the model takes {width}")
    dtype_name = h.get(b"x-dtype", b"float32")
    dtype = WIRE_DTYPES.get(dtype_name.decode("latin-1"))
    if dtype is None:
        raise BadRequest(f"header x-dtype must be one of {', '.join(WIRE_DTYPES)}")
    need = n * d * np.dtype(dtype).itemsize
    if len(body) != need:
        raise BadRequest(f"body has {len(body)} bytes; x-shape {n},{d} needs {need}")
    rows = np.frombuffer(body, dtype=dtype).reshape(n, d)
    if not np.isfinite(rows).all():
        raise BadRequest("rows hold NaN or infinite values")
    return rows, dtype, dtype_name


def _batch_answer(
    result: CallResult, n: int, dtype: type, dtype_name: bytes, received: float
) -> tuple[int, Headers, list[Buffer]]:
    runs = result.runs
    chunks: list[Buffer] = [
        memoryview(np.ascontiguousarray(r.outputs, dtype=dtype)).cast("B") for r in runs
    ]
    widths = {math.prod(r.outputs.shape[1:]) for r in runs}
    if len(widths) != 1:
        raise ValueError(f"rows of one call have output widths {sorted(widths)}")
    out_headers = [
        (b"content-type", b"application/octet-stream"),
        (b"x-shape", f"{n},{widths.pop()}".encode()),
        (b"x-dtype", dtype_name),
        (b"x-item-timings", item_timings(result).encode()),
        (b"x-variant", runs[-1].tag.encode()),
        (b"x-received-unix", f"{received:.6f}".encode()),
    ]
    return 200, out_headers, chunks


async def answer_batch(
    server: StageServer, headers: Headers, body: bytes
) -> tuple[int, Headers, list[Buffer]]:
    """:func:`start_batch` awaited: status, response headers and body buffers."""
    future: asyncio.Future = asyncio.get_running_loop().create_future()

    def respond(status: int, out_headers: Headers, chunks: list[Buffer]) -> None:
        if not future.done():
            future.set_result((status, out_headers, chunks))

    start_batch(server, headers, body, respond)
    return await future


async def _asgi_batch(server: StageServer, scope: Scope, receive: Receive, send: Send) -> None:
    """``POST /v1/batch`` as a bare ASGI handler (routed before Starlette's layers)."""
    try:
        body = await _read_body(receive)
    except BadRequest as e:
        status, headers, chunks = _error(str(e), e.status)
        await _send(send, status, b"".join(chunks), headers)
        return
    if body is None:
        return
    try:
        status, headers, chunks = await answer_batch(server, scope["headers"], body)
    except Exception as e:  # what Starlette's error middleware did: a 500, no crash
        status, headers, chunks = _error(f"internal error: {type(e).__name__}: {e}", 500)
    await _send(send, status, b"".join(chunks), headers)


def create_app(server: StageServer) -> ASGIApp:
    """The stage server's ASGI app: ``/v1/batch`` bare, everything else through Starlette."""

    async def get_config(_req: Request) -> Response:
        return JSONResponse({"name": server.name, **server.config.__dict__})

    async def set_config(req: Request) -> Response:
        try:
            new = await server.reconfigure(parse_json(await req.body()))
        except BadRequest as e:
            return error(str(e), e.status)
        except ValueError as e:
            return error(str(e))
        except Exception as e:  # fetch or hash failure: keep serving the old model
            return error(f"switch refused, still serving {server.config.variant}: {e}", 409)
        return JSONResponse({"name": server.name, **new.__dict__})

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette):  # type: ignore[no-untyped-def]
        await server.start()
        yield
        if server.batcher is not None:
            await server.batcher.stop()

    routes = [
        *common_routes(server.reg, lambda: server.batcher is not None),
        Route("/admin/config", get_config, methods=["GET"]),
        Route("/admin/config", set_config, methods=["POST"]),
        *stage_routes(server),  # the Open Inference Protocol (testbed.services.v2)
    ]
    rest = AdminGuard(BodyLimit(Starlette(routes=routes, lifespan=lifespan)), admin_token())

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == BATCH_PATH:
            if scope["method"] != "POST":
                status, headers, chunks = _error("use POST", 405)
                await _send(send, status, b"".join(chunks), headers)
                return
            await _asgi_batch(server, scope, receive, send)
            return
        await rest(scope, receive, send)

    return app


def main() -> None:
    p = base_parser("Stage server: one ONNX variant with dynamic batching.")
    p.add_argument("--name", default="stage")
    p.add_argument("--component", default="stage")
    p.add_argument("--registry", default=None)
    p.add_argument("--model", default=None, help="registry name, e.g. denoise.d-small")
    p.add_argument("--version", default="latest")
    p.add_argument("--model-file", type=Path, default=None)
    p.add_argument("--variant", default=None)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--batch-timeout-ms", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--max-queue", type=int, default=DEFAULT_MAX_QUEUE, help="rows queued before 503s"
    )
    p.add_argument(
        "--inline",
        action="store_true",
        help="run the model on the event loop, not in a worker thread",
    )
    a = p.parse_args()
    if a.model is None and a.model_file is None:
        p.error("give --model (with --registry) or --model-file")
    model = a.model or a.model_file.stem
    config = StageConfig(a.variant or model, model, a.version, a.batch, a.batch_timeout_ms)
    server = StageServer(a.name, config, a.threads, a.registry, a.model_file)
    server.max_queue = a.max_queue
    server.inline = a.inline
    try:  # /v1/batch without uvicorn's ASGI layer (fast_http); the rest as usual
        http: object = fast_protocol(
            {
                BATCH_PATH.encode(): lambda headers, body, respond: start_batch(
                    server, headers, body, respond
                )
            },
            max_body_bytes=MAX_BATCH_BYTES,
        )
    except ImportError:  # no httptools: uvicorn's default protocol, same API
        http = "auto"
    serve(create_app(server), a.host, a.port, http=http)


if __name__ == "__main__":
    main()
