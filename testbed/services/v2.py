"""The Open Inference Protocol (KServe V2, REST) for the gateway and the stage servers.

KServe, Triton, MLServer and Seldon serve this protocol; speaking it lets the
load generator and ``calibrate profile --target`` drive our testbed and a
user's own server with one client. Routes (mounted beside each service's own):

    GET  /v2                                   server metadata
    GET  /v2/health/live, /v2/health/ready     200 when live / ready
    GET  /v2/models/{name}[/versions/{v}]      model metadata (inputs, outputs, versions)
    GET  /v2/models/{name}[/versions/{v}]/ready
    POST /v2/models/{name}[/versions/{v}]/infer
         {"id"?, "parameters"?, "inputs": [{"name", "shape", "datatype", "data"}],
          "outputs"?: [{"name"}]}
      →  {"model_name", "model_version", "id", "parameters", "outputs": [...]}

Per-stage timings travel in the response's ``parameters`` (the protocol's own
extension point), not in a private header: the gateway puts the stage visits
of each row in ``parameters["mlops_timings"]`` (rows joined by ``|``, each in
:func:`testbed.api.encode_timings`'s format) and ``gateway_ms``; a stage server
puts ``queue_ms``, ``service_ms``, ``batch`` and ``variant``. Other servers'
responses simply lack them, and the load generator records client times only.

The codec is a few functions over numpy (JSON tensors, row-major ``data``);
the handlers take duck-typed service objects, so this module imports neither
the gateway nor the stage server.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

PROTOCOL = "v2"
TIMINGS_PARAMETER = "mlops_timings"
ROW_SEPARATOR = "|"
# V2 datatypes (tensor data types of the protocol) → numpy; BYTES is not served here
DATATYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
_NUMPY_TO_V2 = {np.dtype(t).name: k for k, t in DATATYPES.items()}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model: its name, V2 datatype and shape (−1 = any)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass
class ModelInfo:
    """What a service answers about one model it serves."""

    name: str
    versions: list[str]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    platform: str = "mlops-twin"
    aliases: list[str] = field(default_factory=list)  # other names routed to this model

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": self.versions,
            "platform": self.platform,
            "inputs": [t.json() for t in self.inputs],
            "outputs": [t.json() for t in self.outputs],
        }


class V2Error(ValueError):
    """A request the protocol refuses; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------- codec


def datatype_of(array: np.ndarray) -> str:
    """The V2 datatype of a numpy array (ValueError for types V2 has no name for)."""
    try:
        return _NUMPY_TO_V2[array.dtype.name]
    except KeyError:
        raise ValueError(f"no V2 datatype for numpy {array.dtype.name}") from None


def encode_tensor(name: str, array: np.ndarray) -> dict[str, Any]:
    """A V2 tensor (JSON): shape, datatype and the row-major data as a flat list."""
    array = np.asarray(array)
    return {
        "name": name,
        "shape": list(array.shape),
        "datatype": datatype_of(array),
        "data": array.reshape(-1).tolist(),
    }


def decode_tensor(tensor: Any, where: str = "inputs[0]") -> tuple[str, np.ndarray]:
    """``(name, array)`` of a V2 JSON tensor; :class:`V2Error` naming the field otherwise."""
    if not isinstance(tensor, dict):
        raise V2Error(f"{where}: expected an object with name, shape, datatype, data")
    missing = [k for k in ("name", "shape", "datatype", "data") if k not in tensor]
    if missing:
        raise V2Error(f"{where}: missing {', '.join(missing)}")
    name, shape, datatype, data = (tensor[k] for k in ("name", "shape", "datatype", "data"))
    if not isinstance(name, str):
        raise V2Error(f"{where}.name: expected a string")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise V2Error(f"{where}.shape: expected a list of non-negative integers, got {shape!r}")
    dtype = DATATYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise V2Error(f"{where}.datatype: expected one of {', '.join(DATATYPES)}, got {datatype!r}")
    try:
        flat = np.asarray(data, dtype=dtype).reshape(-1)
    except (TypeError, ValueError, OverflowError) as e:
        raise V2Error(f"{where}.data: not {datatype} numbers ({e})") from None
    if flat.size != math.prod(shape):
        raise V2Error(
            f"{where}.data: {flat.size} elements, but shape {shape} needs {math.prod(shape)}"
        )
    if flat.dtype.kind == "f" and not np.isfinite(flat).all():
        raise V2Error(f"{where}.data: NaN or infinite values")
    return name, flat.reshape(shape)


def request_body(
    inputs: dict[str, np.ndarray], request_id: str = "", parameters: dict | None = None
) -> dict[str, Any]:
    """An inference request body (JSON object) for ``inputs`` (name → array)."""
    body: dict[str, Any] = {"inputs": [encode_tensor(n, a) for n, a in inputs.items()]}
    if request_id:
        body["id"] = request_id
    if parameters:
        body["parameters"] = parameters
    return body


def parse_request(body: Any) -> tuple[str, dict[str, np.ndarray], dict[str, Any]]:
    """``(id, inputs by name, parameters)`` of an inference request; V2Error otherwise."""
    if not isinstance(body, dict):
        raise V2Error("body must be a JSON object with 'inputs'")
    raw = body.get("inputs")
    if not isinstance(raw, list) or not raw:
        raise V2Error("inputs: expected a non-empty list of tensors")
    inputs: dict[str, np.ndarray] = {}
    for i, t in enumerate(raw):
        name, array = decode_tensor(t, f"inputs[{i}]")
        if name in inputs:
            raise V2Error(f"inputs[{i}].name: {name!r} given twice")
        inputs[name] = array
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise V2Error("parameters: expected an object")
    return str(body.get("id", "")), inputs, params


def parse_response(body: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``(outputs by name, parameters)`` of an inference response (V2Error if malformed)."""
    if not isinstance(body, dict) or not isinstance(body.get("outputs"), list):
        raise V2Error("response: expected an object with 'outputs'")
    outputs = dict(decode_tensor(t, f"outputs[{i}]") for i, t in enumerate(body["outputs"]))
    params = body.get("parameters") or {}
    return outputs, params if isinstance(params, dict) else {}


def infer_path(model: str, version: str | None = None) -> str:
    """``/v2/models/{model}[/versions/{version}]/infer``."""
    base = f"/v2/models/{model}"
    return f"{base}/versions/{version}/infer" if version else f"{base}/infer"


def row_timings(parameters: dict[str, Any]) -> list[str]:
    """The gateway's per-row stage timings (``encode_timings`` strings) from ``parameters``."""
    text = parameters.get(TIMINGS_PARAMETER)
    return text.split(ROW_SEPARATOR) if isinstance(text, str) and text else []


# --------------------------------------------------------------------------- routes

# infer(model, version, inputs, parameters) → (outputs by name, response parameters)
InferFn = Callable[
    [ModelInfo, str, dict[str, np.ndarray], dict[str, Any]],
    Awaitable[tuple[dict[str, np.ndarray], dict[str, Any]]],
]


def _error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def routes(
    models: Callable[[], list[ModelInfo]], ready: Callable[[], bool], infer: InferFn
) -> list[Route]:
    """Starlette routes of the protocol over a service's ``models()``, ``ready()`` and ``infer``."""

    def find(req: Request) -> tuple[ModelInfo, str]:
        name = req.path_params["name"]
        version = req.path_params.get("version")
        for m in models():
            if name == m.name or name in m.aliases:
                if version is not None and version not in m.versions:
                    raise V2Error(
                        f"model {name!r} has no version {version!r} (versions: "
                        f"{', '.join(m.versions)})",
                        404,
                    )
                return m, version or m.versions[-1]
        known = ", ".join(m.name for m in models()) or "none"
        raise V2Error(f"unknown model {name!r} (served: {known})", 404)

    async def server_meta(_req: Request) -> Response:
        return JSONResponse({"name": "mlops-twin", "version": "1", "extensions": []})

    async def live(_req: Request) -> Response:
        return JSONResponse({"live": True})

    async def server_ready(_req: Request) -> Response:
        ok = ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def model_meta(req: Request) -> Response:
        try:
            m, _ = find(req)
        except V2Error as e:
            return _error(str(e), e.status)
        return JSONResponse(m.metadata())

    async def model_ready(req: Request) -> Response:
        try:
            m, _ = find(req)
        except V2Error as e:
            return _error(str(e), e.status)
        ok = ready()
        return JSONResponse({"name": m.name, "ready": ok}, status_code=200 if ok else 503)

    async def infer_route(req: Request) -> Response:
        try:
            m, version = find(req)
            try:
                body = json.loads(await req.body())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise V2Error(f"body is not JSON: {e}") from None
            rid, inputs, params = parse_request(body)
            if not ready():
                raise V2Error("not ready", 503)
            outputs, out_params = await infer(m, version, inputs, params)
        except V2Error as e:
            return _error(str(e), e.status)
        wanted = [o.get("name") for o in body.get("outputs") or [] if isinstance(o, dict)]
        if wanted:
            outputs = {k: v for k, v in outputs.items() if k in wanted}
        answer = {
            "model_name": m.name,
            "model_version": version,
            "id": rid,
            "parameters": out_params,
            "outputs": [encode_tensor(k, v) for k, v in outputs.items()],
        }
        return JSONResponse(answer)

    out = [
        Route("/v2", server_meta),
        Route("/v2/health/live", live),
        Route("/v2/health/ready", server_ready),
    ]
    for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        out += [
            Route(base, model_meta),
            Route(f"{base}/ready", model_ready),
            Route(f"{base}/infer", infer_route, methods=["POST"]),
        ]
    return out


# --------------------------------------------------------------------------- the gateway


def _rows(inputs: dict[str, np.ndarray], spec: TensorSpec) -> np.ndarray:
    """The one input as rows of the expected width (a single row may come unbatched)."""
    if len(inputs) != 1:
        raise V2Error(f"expected one input tensor {spec.name!r}, got {sorted(inputs)}")
    (array,) = inputs.values()
    width = spec.shape[-1]
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or (width > 0 and array.shape[1] != width):
        raise V2Error(f"inputs[0].shape: expected [n, {width}], got {list(array.shape)}")
    return array.astype(np.float32, copy=False)


def gateway_model(width: int, name: str = "pipeline") -> ModelInfo:
    """The gateway's one model: the whole pipeline, rows of ``width`` floats → labels."""
    return ModelInfo(
        name=name,
        versions=["1"],
        inputs=[TensorSpec("image", "FP32", (-1, width))],
        outputs=[TensorSpec("label", "INT64", (-1,))],
    )


def gateway_routes(gw: Any, width: int, no_replica: type[Exception]) -> list[Route]:
    """V2 routes of a :class:`testbed.services.gateway.Gateway` (its ``infer(row)``);
    ``no_replica`` is the gateway's "no replica left" error, answered 503 (handed in, so
    this module does not import the gateway that imports it)."""
    from testbed.api import encode_timings

    model = gateway_model(width)

    async def infer(_m: ModelInfo, _v: str, inputs: dict[str, np.ndarray], _p: dict) -> tuple:
        from testbed.services.stage_client import StageError

        rows = _rows(inputs, model.inputs[0])
        t0 = time.perf_counter()
        gw.m_inflight.inc()
        try:
            done = await asyncio.gather(*(gw.infer(r) for r in rows))
        except no_replica as e:
            gw.m_requests.labels("503").inc()
            raise V2Error(str(e), 503) from None
        except TimeoutError:
            gw.m_requests.labels("504").inc()
            raise V2Error("stage timeout", 504) from None
        except StageError as e:
            gw.m_requests.labels("502").inc()
            raise V2Error(str(e), 502) from None
        finally:
            gw.m_inflight.dec()
        gw_ms = (time.perf_counter() - t0) * 1000
        gw.m_requests.labels("200").inc()
        gw.m_latency.observe(gw_ms / 1000)
        labels = np.array([label for label, _ in done], dtype=np.int64)
        timings = ROW_SEPARATOR.join(encode_timings(t) for _, t in done)
        return {"label": labels}, {TIMINGS_PARAMETER: timings, "gateway_ms": gw_ms}

    return routes(lambda: [model], lambda: gw.session is not None, infer)


# --------------------------------------------------------------------------- a stage server


def stage_model(server: Any) -> ModelInfo:
    """A stage server's model: its registry name and version, also reachable as its stage name."""
    c = server.config
    return ModelInfo(
        name=c.model,
        versions=[str(c.version)],
        inputs=[TensorSpec("input", "FP32", (-1, -1))],
        outputs=[TensorSpec("output", "FP32", (-1, -1))],
        platform="onnxruntime",
        aliases=[server.name, c.variant],
    )


def stage_routes(server: Any) -> list[Route]:
    """V2 routes of a :class:`testbed.services.stage_server.StageServer` (its batcher)."""

    async def infer(_m: ModelInfo, _v: str, inputs: dict[str, np.ndarray], _p: dict) -> tuple:
        rows = _rows(inputs, TensorSpec("input", "FP32", (-1, -1)))
        server.m_calls.inc()
        future: asyncio.Future = asyncio.get_running_loop().create_future()

        def done(outcome: Any) -> None:
            if not future.done():
                future.set_result(outcome)

        server.batcher.submit_nowait(rows, done)
        outcome = await future
        if isinstance(outcome, BaseException):
            raise V2Error(f"inference failed: {outcome}", 500)
        runs = outcome.runs
        output = np.concatenate([np.asarray(r.outputs, dtype=np.float32) for r in runs])
        n = sum(r.count for r in runs)
        params = {
            "queue_ms": sum(r.queue_ms * r.count for r in runs) / n,
            "service_ms": sum(r.service_ms * r.count for r in runs) / n,
            "batch": max(r.batch for r in runs),
            "variant": runs[-1].tag,
        }
        return {"output": output.reshape(n, -1)}, params

    return routes(lambda: [stage_model(server)], lambda: server.batcher is not None, infer)
