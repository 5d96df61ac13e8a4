"""Stage server: one ONNX model variant behind dynamic batching.

API:
    POST /v1/batch      body = rows (C order), header ``x-shape: n,d`` and ``x-dtype``
                        (float32, the default, or float16 to halve the bytes); answers the
                        output rows the same way, with ``x-item-timings``
                        ``queue_ms,service_ms,batch;...`` (one per row) and ``x-variant``
    GET  /admin/config  {"variant", "model", "version", "batch", "batch_timeout_ms"}
    POST /admin/config  any of those keys; a new model is fetched from the registry and
                        checked (sha256) before it replaces the old one: queued and
                        in-flight items are served, none dropped. 409 if the fetch fails.

The model comes from the registry (``--registry``, ``--model`` ``--version``) or a
file (``--model-file``, for benchmarks). onnxruntime runs with ``--threads`` intra-op
threads (1 by default: under a CPU quota more threads only spin).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from testbed.services.batching import DynamicBatcher
from testbed.services.common import base_parser, common_routes, error, serve

# element types accepted on the wire; answers use the request's type
WIRE_DTYPES = {"float32": np.float32, "float16": np.float16}
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass
class StageConfig:
    """What the server runs now."""

    variant: str
    model: str
    version: str
    batch: int
    batch_timeout_ms: float


def make_runner(model_bytes: bytes, threads: int) -> Any:
    """A function rows → outputs over an onnxruntime session with ``threads`` threads."""
    from testbed.zoo.manifest import ort_session

    sess = ort_session(model_bytes, threads)
    in_name = sess.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return sess.run(None, {in_name: np.ascontiguousarray(x, dtype=np.float32)})[0]

    return run


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
        self.m_latency = Histogram(
            "stage_request_latency_seconds",
            "Item time in server",
            lab,
            buckets=LATENCY_BUCKETS,
            registry=self.reg,
        )
        self.m_queue = Histogram(
            "stage_queue_seconds",
            "Item wait for its batch",
            lab,
            buckets=LATENCY_BUCKETS,
            registry=self.reg,
        )
        self.m_service = Histogram(
            "stage_service_seconds",
            "Compute time of a batch",
            lab,
            buckets=LATENCY_BUCKETS,
            registry=self.reg,
        )
        self.m_batch = Histogram(
            "stage_batch_size", "Items per batch", lab, buckets=BATCH_BUCKETS, registry=self.reg
        )
        self.m_items = Counter("stage_items", "Items served", lab, registry=self.reg)
        self.m_calls = Counter("stage_calls", "HTTP calls to /v1/batch", registry=self.reg)
        self.m_qlen = Gauge("stage_queue_length", "Items waiting for a batch", registry=self.reg)
        self.m_switch = Counter(
            "stage_config_changes", "Live configuration changes", registry=self.reg
        )
        self.m_qlen.set_function(lambda: self.batcher.queue_length if self.batcher else 0)
        self.batcher: DynamicBatcher | None = None
        self._children: dict[str, tuple] = {}
        self._switch_lock = asyncio.Lock()

    def _observe(self, n: int, service_s: float, queue_s: list[float]) -> None:
        v = self.batcher.tag if self.batcher else ""
        children = self._children.get(v)
        if children is None:  # labels() per item costs as much as the observation
            metrics = (self.m_batch, self.m_service, self.m_items, self.m_queue, self.m_latency)
            children = self._children[v] = tuple(m.labels(v) for m in metrics)
        batch, service, items, queue, latency = children
        batch.observe(n)
        service.observe(service_s)
        items.inc(n)
        for q in queue_s:
            queue.observe(q)
            latency.observe(q + service_s)

    def load_bytes(self, model: str, version: str) -> bytes:
        if self.model_file is not None and self.registry_url is None:
            return self.model_file.read_bytes()
        from testbed.services.registry import fetch_model

        if self.registry_url is None:
            raise RuntimeError("no --registry and no --model-file")
        data, _ = fetch_model(self.registry_url, model, version)
        return data

    async def start(self) -> None:
        data = await asyncio.to_thread(self.load_bytes, self.config.model, self.config.version)
        run = await asyncio.to_thread(make_runner, data, self.threads)
        c = self.config
        self.batcher = DynamicBatcher(run, c.batch, c.batch_timeout_ms, c.variant, self._observe)
        self.batcher.start()

    async def reconfigure(self, changes: dict[str, Any]) -> StageConfig:
        """Apply a partial config; a model change is loaded fully before the swap."""
        async with self._switch_lock:
            c = self.config
            new = StageConfig(
                variant=str(changes.get("variant", c.variant)),
                model=str(changes.get("model", c.model)),
                version=str(changes.get("version", c.version)),
                batch=int(changes.get("batch", c.batch)),
                batch_timeout_ms=float(changes.get("batch_timeout_ms", c.batch_timeout_ms)),
            )
            if new.batch < 1 or new.batch_timeout_ms < 0:
                raise ValueError("batch must be ≥ 1 and batch_timeout_ms ≥ 0")
            run = None
            if (new.model, new.version) != (c.model, c.version):
                data = await asyncio.to_thread(self.load_bytes, new.model, new.version)
                run = await asyncio.to_thread(make_runner, data, self.threads)
            assert self.batcher is not None
            self.batcher.configure(run, new.batch, new.batch_timeout_ms, new.variant)
            self.config = new
            self.m_switch.inc()
            return new


def create_app(server: StageServer) -> Starlette:
    async def batch(req: Request) -> Response:
        try:
            n, d = (int(v) for v in req.headers["x-shape"].split(","))
            dtype = WIRE_DTYPES[req.headers.get("x-dtype", "float32")]
            rows = np.frombuffer(await req.body(), dtype=dtype).reshape(n, d)
        except (KeyError, ValueError) as e:
            return error(f"bad batch: {e!r}")
        server.m_calls.inc()
        assert server.batcher is not None
        try:
            results = await server.batcher.submit(rows)
        except Exception as e:  # model error (e.g. wrong input width)
            return error(f"inference failed: {e}", 500)
        out = np.stack([r.output for r in results]).astype(dtype)
        timings = ";".join(f"{r.queue_ms:.4f},{r.service_ms:.4f},{r.batch}" for r in results)
        headers = {
            "x-shape": f"{out.shape[0]},{int(np.prod(out.shape[1:]))}",
            "x-dtype": out.dtype.name,
            "x-item-timings": timings,
            "x-variant": results[-1].tag,
        }
        return Response(out.tobytes(), media_type="application/octet-stream", headers=headers)

    async def get_config(_req: Request) -> Response:
        return JSONResponse({"name": server.name, **server.config.__dict__})

    async def set_config(req: Request) -> Response:
        try:
            new = await server.reconfigure(await req.json())
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
        Route("/v1/batch", batch, methods=["POST"]),
        Route("/admin/config", get_config, methods=["GET"]),
        Route("/admin/config", set_config, methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


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
    a = p.parse_args()
    if a.model is None and a.model_file is None:
        p.error("give --model (with --registry) or --model-file")
    model = a.model or a.model_file.stem
    config = StageConfig(a.variant or model, model, a.version, a.batch, a.batch_timeout_ms)
    server = StageServer(a.name, config, a.threads, a.registry, a.model_file)
    serve(create_app(server), a.host, a.port)


if __name__ == "__main__":
    main()
