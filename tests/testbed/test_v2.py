"""The Open Inference Protocol on the gateway and the stage server, over loopback HTTP."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from testbed.api import decode_timings
from testbed.services import gateway, v2
from tests.testbed.helpers import serve_app
from tests.testbed.test_gateway import image, reg_url, stage_app  # noqa: F401  (fixture)


def test_codec_round_trip_and_errors() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    body = v2.request_body({"x": x}, "r1")
    rid, inputs, params = v2.parse_request(body)
    assert rid == "r1" and params == {}
    np.testing.assert_array_equal(inputs["x"], x)
    assert inputs["x"].dtype == np.float32
    bad = {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]}]}
    with pytest.raises(v2.V2Error, match=r"inputs\[0\].data: 3 elements.*\[2, 2\] needs 4"):
        v2.parse_request(bad)
    with pytest.raises(v2.V2Error, match=r"inputs\[0\].datatype"):
        v2.parse_request({"inputs": [{"name": "x", "shape": [1], "datatype": "F", "data": [1]}]})
    with pytest.raises(v2.V2Error, match="missing shape"):
        v2.parse_request({"inputs": [{"name": "x", "datatype": "FP32", "data": [1]}]})
    assert v2.infer_path("m") == "/v2/models/m/infer"
    assert v2.infer_path("m", "3") == "/v2/models/m/versions/3/infer"


def test_stage_server_speaks_v2(reg_url: str) -> None:  # noqa: F811
    with serve_app(stage_app(reg_url, "double")) as url, httpx.Client(base_url=url) as c:
        assert c.get("/v2/health/ready").status_code == 200
        assert c.get("/v2/health/live").json() == {"live": True}
        meta = c.get("/v2/models/double").json()
        assert meta["name"] == "double" and meta["versions"] == ["1"]
        assert meta["inputs"][0]["datatype"] == "FP32"
        assert c.get("/v2/models/s1/ready").json()["ready"] is True  # the stage's name too
        x = np.arange(2 * 64, dtype=np.float32).reshape(2, 64)
        r = c.post("/v2/models/double/versions/1/infer", json=v2.request_body({"input": x}, "a"))
        assert r.status_code == 200, r.text
        outputs, params = v2.parse_response(r.json())
        np.testing.assert_allclose(outputs["output"], 2 * x)
        assert r.json()["id"] == "a" and r.json()["model_version"] == "1"
        assert params["variant"] == "double" and params["service_ms"] > 0
        assert c.post("/v2/models/double/versions/9/infer", json={}).status_code == 404
        assert c.post("/v2/models/nope/infer", json={}).status_code == 404
        r = c.post("/v2/models/double/infer", content=b"{")
        assert r.status_code == 400 and "JSON" in r.json()["error"]


def test_gateway_speaks_v2_with_stage_timings_in_parameters(reg_url: str) -> None:  # noqa: F811
    gw = gateway.Gateway()
    with (
        serve_app(stage_app(reg_url, "double")) as live,
        serve_app(gateway.create_app(gw)) as gw_url,
        httpx.Client(base_url=gw_url) as c,
    ):
        routes = {"stages": [{"name": "s", "replicas": [{"name": "r0", "url": live}]}]}
        assert c.post("/admin/routes", json=routes).status_code == 200
        meta = c.get("/v2/models/pipeline").json()
        assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 64]}]
        x = np.array([image(3), image(7)], dtype=np.float32)
        r = c.post("/v2/models/pipeline/infer", json=v2.request_body({"image": x}))
        assert r.status_code == 200, r.text
        outputs, params = v2.parse_response(r.json())
        assert outputs["label"].tolist() == [3, 7] and outputs["label"].dtype == np.int64
        rows = v2.row_timings(params)
        assert len(rows) == 2
        (t,) = decode_timings(rows[0])
        assert t.stage == "s" and t.replica == "r0" and t.service_ms > 0
        assert "x-mlops-timings" not in r.headers  # timings travel in the protocol only
        bad = v2.request_body({"image": np.zeros((1, 5), np.float32)})
        r = c.post("/v2/models/pipeline/infer", json=bad)
        assert r.status_code == 400 and "[n, 64]" in r.json()["error"]
        assert c.post("/v1/infer", json={"image": image(1)}).json()["label"] == 1  # v1 stays
