"""Gateway and stage server over real loopback HTTP: routing, retries, live switch."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from testbed.api import TIMINGS_HEADER, decode_timings
from testbed.services import gateway, registry, stage_server
from testbed.services.node_agent import free_port
from testbed.services.registry import HashMismatch, fetch_model, upload_model
from testbed.services.routing import Picker, Replica, StageRoute
from tests.testbed.helpers import serve_app


def scale_model(factor: float, dim: int = 64) -> bytes:
    """An ONNX model y = factor · x over (batch, dim) float32."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", dim])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", dim])
    k = helper.make_tensor("k", TensorProto.FLOAT, [1], [factor])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "k"], ["y"])], "scale", [x], [y], [k])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def stage_app(registry_url: str, model: str, batch: int = 4) -> object:
    cfg = stage_server.StageConfig(model, model, "1", batch, 1.0)
    return stage_server.create_app(stage_server.StageServer("s1", cfg, 1, registry_url))


@pytest.fixture
def reg_url(tmp_path: Path):  # type: ignore[no-untyped-def]
    with serve_app(registry.create_app(tmp_path / "reg")) as url:
        upload_model(url, "double", "1", scale_model(2.0))
        upload_model(url, "triple", "1", scale_model(3.0))
        yield url


def image(i: int) -> list[float]:
    x = np.zeros(64, dtype=np.float32)
    x[i] = 16.0
    return x.tolist()


def test_picker_least_outstanding_and_dead() -> None:
    clock = [0.0]
    p = Picker(dead_s=1.0, clock=lambda: clock[0])
    a, b, c = Replica("a", "u1", outstanding=2), Replica("b", "u2", 1), Replica("c", "u3", 1)
    route = StageRoute("s", [a, b, c])
    assert p.pick(route).name in {"b", "c"}
    p.mark_dead(b)
    p.mark_dead(c)
    assert p.pick(route).name == "a"
    assert p.pick(route, exclude={"a"}).name == "b"  # all left are dead: least recently failed
    assert p.pick(route, exclude={"a", "b", "c"}) is None
    clock[0] = 2.0
    assert p.pick(route).name in {"b", "c"}


def test_stage_server_batches_and_switches_live(reg_url: str) -> None:
    with serve_app(stage_app(reg_url, "double")) as url, httpx.Client(base_url=url) as c:
        x = np.arange(3 * 64, dtype=np.float32).reshape(3, 64)
        r = c.post("/v1/batch", content=x.tobytes(), headers={"x-shape": "3,64"})
        assert r.status_code == 200
        np.testing.assert_allclose(np.frombuffer(r.content, np.float32).reshape(3, 64), 2 * x)
        timings = r.headers["x-item-timings"].split(";")
        assert len(timings) == 3 and r.headers["x-variant"] == "double"
        assert (
            c.post(
                "/admin/config", json={"model": "triple", "variant": "t", "batch": 8}
            ).status_code
            == 200
        )
        r = c.post("/v1/batch", content=x.tobytes(), headers={"x-shape": "3,64"})
        np.testing.assert_allclose(np.frombuffer(r.content, np.float32).reshape(3, 64), 3 * x)
        assert r.headers["x-variant"] == "t"
        # an unknown model is refused and the old one keeps serving
        assert c.post("/admin/config", json={"model": "nope"}).status_code == 409
        assert c.get("/admin/config").json()["model"] == "triple"
        metrics = c.get("/metrics").text
        assert "stage_batch_size_bucket" in metrics and "stage_queue_length" in metrics


def test_stage_refuses_artifact_with_wrong_hash(tmp_path: Path) -> None:
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    async def liar(_req):  # type: ignore[no-untyped-def]
        return Response(scale_model(2.0), headers={"x-sha256": hashlib.sha256(b"x").hexdigest()})

    app = Starlette(routes=[Route("/models/{n}/{v}", liar)])
    with serve_app(app) as url, pytest.raises(HashMismatch):
        fetch_model(url, "double", "1")


def test_gateway_retries_dead_replica_and_reports_timings(reg_url: str) -> None:
    dead = f"http://127.0.0.1:{free_port('127.0.0.1')}"  # nothing listens there
    gw = gateway.Gateway(dead_s=60.0)
    with (
        serve_app(stage_app(reg_url, "double")) as live,
        serve_app(gateway.create_app(gw)) as gw_url,
        httpx.Client(base_url=gw_url) as c,
    ):
        routes = {
            "stages": [
                {
                    "name": "s",
                    "replicas": [{"name": "dead", "url": dead}, {"name": "live", "url": live}],
                }
            ]
        }
        assert c.post("/admin/routes", json=routes).status_code == 200
        for i in range(20):
            r = c.post("/v1/infer", json={"id": str(i), "image": image(i)})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["label"] == i and body["id"] == str(i)
            (t,) = decode_timings(r.headers[TIMINGS_HEADER])
            assert t.replica == "live" and t.stage == "s" and t.variant == "double"
            assert body["stages"][0]["replica"] == "live"
        state = c.get("/admin/routes").json()["stages"][0]["replicas"]
        assert next(r for r in state if r["name"] == "dead")["failures"] >= 1
        assert "gateway_retries_total" in c.get("/metrics").text
        assert c.post("/v1/infer", json={"image": [1, 2]}).status_code == 400
        assert c.post("/v1/infer", content=b"{").status_code == 400
        # no live replica left: 503 with a message
        c.post(
            "/admin/routes",
            json={"stages": [{"name": "s", "replicas": [{"name": "dead", "url": dead}]}]},
        )
        r = c.post("/v1/infer", json={"image": image(0)})
        assert r.status_code == 503 and "no replica" in r.json()["error"]
