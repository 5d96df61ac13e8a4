"""Hostile requests: each gets a 4xx naming the field; no call can stop a stage."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from testbed.services.batching import DynamicBatcher, QueueFull
from testbed.services.gateway import parse_request
from testbed.services.guard import (
    TOKEN_HEADER,
    AdminGuard,
    BadRequest,
    BodyLimit,
    parse_json,
)
from testbed.services.stage_server import StageConfig, config_changes, parse_rows


def test_a_call_of_the_wrong_width_fails_alone_and_the_batcher_keeps_serving() -> None:
    async def go() -> tuple:
        b = DynamicBatcher(lambda x: x.sum(axis=1, keepdims=True), 8, max_wait_ms=50.0)
        good = asyncio.ensure_future(b.submit(np.ones((2, 4), np.float32)))
        bad = asyncio.ensure_future(b.submit(np.ones((1, 3), np.float32)))
        # before the fix the worker died on this batch and every call hung
        results = await asyncio.wait_for(asyncio.gather(good, bad, return_exceptions=True), 5)
        later = await asyncio.wait_for(b.submit(np.ones((1, 4), np.float32)), 5)
        await b.stop()
        return results, later

    (good, bad), later = asyncio.run(go())
    assert [r.output[0] for r in good] == [4.0, 4.0]
    assert isinstance(bad, ValueError) and "cannot be batched" in str(bad)
    assert later[0].output[0] == 4.0


def test_a_worker_that_dies_of_a_bug_is_restarted_and_queued_calls_are_answered() -> None:
    async def go() -> tuple:
        b = DynamicBatcher(lambda x: x * 2, 4, max_wait_ms=1.0)
        real = b._next_batch
        calls = {"n": 0}

        def flaky() -> object:
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("bug")
            return real()

        b._next_batch = flaky  # type: ignore[method-assign]
        first = asyncio.ensure_future(b.submit(np.ones((1, 1), np.float32)))
        await asyncio.sleep(0.05)
        second = await asyncio.wait_for(b.submit(np.ones((1, 1), np.float32)), 5)
        done = await asyncio.wait_for(first, 5)
        await b.stop()
        return b.restarts, done, second

    restarts, first, second = asyncio.run(go())
    assert restarts == 1
    assert first[0].output[0] == 2.0 and second[0].output[0] == 2.0


def test_a_full_queue_refuses_more_rows() -> None:
    async def go() -> None:
        b = DynamicBatcher(lambda x: x, 1, max_wait_ms=1000.0, max_queue=4)
        b.submit_nowait(np.ones((4, 1), np.float32), lambda _o: None)
        with pytest.raises(QueueFull):
            b.submit_nowait(np.ones((1, 1), np.float32), lambda _o: None)
        await b.stop()

    asyncio.run(go())


def _headers(shape: str, dtype: str = "float32") -> list[tuple[bytes, bytes]]:
    return [(b"x-shape", shape.encode()), (b"x-dtype", dtype.encode())]


@pytest.mark.parametrize(
    ("shape", "body", "dtype", "expect"),
    [
        ("2,4", np.full((2, 4), np.nan, np.float32).tobytes(), "float32", "NaN"),
        ("2,3", np.ones((2, 3), np.float32).tobytes(), "float32", "takes 4"),
        ("2,4", b"\x00" * 7, "float32", "needs 32"),
        ("x,y", b"", "float32", "two integers"),
        ("0,4", b"", "float32", "1 ≤ n"),
        ("2,4", np.ones((2, 4), np.float32).tobytes(), "int8", "x-dtype"),
    ],
)
def test_bad_batches_are_refused_with_the_field(
    shape: str, body: bytes, dtype: str, expect: str
) -> None:
    with pytest.raises(BadRequest, match=expect):
        parse_rows(_headers(shape, dtype), body, 4)


def test_a_good_batch_parses() -> None:
    rows, _, _ = parse_rows(_headers("2,4"), np.ones((2, 4), np.float32).tobytes(), 4)
    assert rows.shape == (2, 4)


@pytest.mark.parametrize(
    ("body", "expect"),
    [
        (b'{"entity_id": 1e400}', "out of range"),
        (b'{"entity_id": NaN}', "NaN"),
        (b"[" * 5000 + b"]" * 5000, "nested"),
        (b'{"entity_id": ' + b"9" * 5000 + b"}", "not valid JSON"),
        (b"\xff\xfe", "UTF-8"),
    ],
)
def test_hostile_json_is_refused(body: bytes, expect: str) -> None:
    with pytest.raises(BadRequest, match=expect):
        parse_json(body)


@pytest.mark.parametrize(
    "body",
    [
        {"entity_id": "5"},
        {"entity_id": True},
        {"entity_id": -1},
        {"entity_id": 2.5},
        {"image": ["1"] * 64},
        {"image": [1.0] * 63},
        {"image": [1e39] * 64},
        {"image": [None] * 64},
        {"id": {"a": 1}, "entity_id": 1},
        [],
    ],
)
def test_bad_inference_requests_are_refused(body: object) -> None:
    with pytest.raises(BadRequest):
        parse_request(body)


def test_admin_config_refuses_nan_unknown_keys_and_out_of_range() -> None:
    c = StageConfig("v", "m", "1", 4, 2.0)
    for bad in (
        {"batch_timeout_ms": float("nan")},
        {"batch": 0},
        {"batch": 10**9},
        {"batch": "8"},
        {"oops": 1},
        {"variant": ""},
        [],
    ):
        with pytest.raises(BadRequest):
            config_changes(c, bad)
    assert config_changes(c, {"batch": 8}).batch == 8


def _app(token: str | None) -> Starlette:
    async def ok(_req: object) -> JSONResponse:
        return JSONResponse({"ok": True})

    return Starlette(
        routes=[Route("/admin/x", ok, methods=["GET", "POST"]), Route("/v", ok, methods=["POST"])],
        middleware=[Middleware(AdminGuard, token=token), Middleware(BodyLimit, max_bytes=100)],
    )


def test_admin_routes_need_the_token_and_bodies_are_capped() -> None:
    client = TestClient(_app("s3cret"))
    assert client.get("/admin/x").status_code == 401
    assert client.get("/admin/x", headers={TOKEN_HEADER: "wrong"}).status_code == 401
    assert client.get("/admin/x", headers={TOKEN_HEADER: "s3cret"}).status_code == 200
    assert client.post("/v", content=b"x" * 50).status_code == 200
    r = client.post("/v", content=b"x" * 500)
    assert r.status_code == 413 and "error" in r.json()


def test_a_path_prefix_gets_its_own_body_cap() -> None:
    # the gateway's admin proxy carries model uploads (MBs) while inference stays capped
    async def ok(_req: object) -> JSONResponse:
        return JSONResponse({"ok": True})

    app = Starlette(
        routes=[Route("/admin/proxy/r", ok, methods=["PUT"]), Route("/v", ok, methods=["POST"])],
        middleware=[Middleware(BodyLimit, max_bytes=100, path_limits=(("/admin/proxy/", 10_000),))],
    )
    client = TestClient(app)
    assert client.put("/admin/proxy/r", content=b"x" * 5_000).status_code == 200
    assert client.put("/admin/proxy/r", content=b"x" * 20_000).status_code == 413
    assert client.post("/v", content=b"x" * 5_000).status_code == 413


# -------------------------------------------------------------------- fuzz

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda kids: (
        st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=8), kids, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(json_values, st.fixed_dictionaries({"entity_id": json_values})))
def test_fuzz_inference_bodies_are_accepted_or_refused_cleanly(body: object) -> None:
    text = json.dumps(body, allow_nan=True).encode()
    try:
        _rid, image, entity = parse_request(parse_json(text))
    except BadRequest as e:
        assert 400 <= e.status < 500
        return
    assert image is None or (image.shape == (64,) and np.isfinite(image).all())
    assert entity is None or (isinstance(entity, int) and entity >= 0)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.text(max_size=12), st.sampled_from(["float32", "float16", "x"]))
def test_fuzz_batch_bodies_are_accepted_or_refused_cleanly(
    body: bytes, shape: str, dtype: str
) -> None:
    try:
        rows, _, _ = parse_rows(_headers(shape, dtype), body, None)
    except BadRequest as e:
        assert e.status == 400
        return
    assert rows.ndim == 2 and np.isfinite(rows).all()


def test_an_oversized_or_unauthorised_body_gets_its_4xx_not_a_connection_reset() -> None:
    import httpx

    from tests.testbed.helpers import serve_app

    async def echo(req):  # type: ignore[no-untyped-def]
        return JSONResponse({"n": len(await req.body())})

    inner = Starlette(
        routes=[Route("/x", echo, methods=["POST"]), Route("/admin/x", echo, methods=["POST"])]
    )
    app = AdminGuard(BodyLimit(inner, max_bytes=1000), token="t")
    big = b"A" * (4 << 20)  # far above the socket buffers: unread, it used to end in a reset
    with serve_app(app) as url, httpx.Client(timeout=10) as client:
        for _ in range(3):
            assert client.post(url + "/x", content=big).status_code == 413
            assert client.post(url + "/admin/x", content=big).status_code == 401
            chunks = (big[i : i + 65536] for i in range(0, len(big), 65536))  # no content-length
            assert client.post(url + "/x", content=chunks).status_code == 413
        assert client.post(url + "/x", content=b"ok").json() == {"n": 2}
