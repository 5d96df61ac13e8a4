"""The stage server's /v1/batch through fast_http, next to uvicorn's own routes."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np

from testbed.services import stage_server
from testbed.services.fast_http import fast_protocol
from tests.testbed.helpers import serve_app
from tests.testbed.test_gateway import scale_model


@contextlib.contextmanager
def serve_stage(tmp_path: Path) -> Iterator[str]:
    """A stage server (y = 2x) with the fast protocol, as ``stage_server.main`` runs it."""
    model = tmp_path / "double.onnx"
    model.write_bytes(scale_model(2.0))
    cfg = stage_server.StageConfig("double", "double", "1", 4, 1.0)
    server = stage_server.StageServer("s1", cfg, 1, None, model_file=model)
    routes = {b"/v1/batch": lambda h, b, r: stage_server.start_batch(server, h, b, r)}
    with serve_app(stage_server.create_app(server), http=fast_protocol(routes)) as url:
        yield url


def test_batches_and_other_routes_share_a_keep_alive_connection(tmp_path: Path) -> None:
    with serve_stage(tmp_path) as url, httpx.Client(base_url=url) as c:
        for n in (1, 3, 9):  # 9 rows: batches of 4, 4 and 1
            x = np.arange(n * 64, dtype=np.float32).reshape(n, 64)
            r = c.post("/v1/batch", content=x.tobytes(), headers={"x-shape": f"{n},64"})
            assert r.status_code == 200
            assert r.headers["x-shape"] == f"{n},64" and r.headers["x-variant"] == "double"
            out = np.frombuffer(r.content, np.float32).reshape(n, 64)
            np.testing.assert_allclose(out, 2 * x)
            batches = [int(t.split(",")[2]) for t in r.headers["x-item-timings"].split(";")]
            assert len(batches) == n and max(batches) <= 4
            # a route of uvicorn's own path on the same connection still works
            assert c.get("/healthz").status_code == 200
        assert c.post("/v1/batch", content=b"xx", headers={"x-shape": "1,64"}).status_code == 400
        assert c.post("/v1/batch", content=b"", headers={}).status_code == 400
        metrics = c.get("/metrics").text
        assert "stage_calls_total 3.0" in metrics  # the bad ones are not counted
        assert 'stage_items_total{variant="double"} 13.0' in metrics


def test_connection_close_and_pipelining_refused(tmp_path: Path) -> None:
    with serve_stage(tmp_path) as url:
        port = int(url.rsplit(":", 1)[1])
        body = np.ones((2, 64), np.float32).tobytes()
        head = (
            f"POST /v1/batch HTTP/1.1\r\nhost: x\r\nx-shape: 2,64\r\n"
            f"content-length: {len(body)}\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(head + b"connection: close\r\n\r\n" + body)
            answer = _read_all(s)
        assert answer.startswith(b"HTTP/1.1 200") and b"connection: close" in answer
        assert answer.endswith(np.full((2, 64), 2, np.float32).tobytes())
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall((head + b"\r\n" + body) * 2)  # a second request before the first answer
            answer = _read_all(s)
        assert b"HTTP/1.1 400" in answer  # refused, and the connection closed


def _read_all(s: socket.socket) -> bytes:
    chunks = []
    while chunk := s.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_batch_answer_says_when_the_server_queued_the_call(tmp_path: Path) -> None:
    with serve_stage(tmp_path) as url, httpx.Client(base_url=url) as c:
        x = np.ones((2, 64), dtype=np.float32)
        before = time.time()
        r = c.post("/v1/batch", content=x.tobytes(), headers={"x-shape": "2,64"})
        after = time.time()
        assert r.status_code == 200
        received = float(r.headers["x-received-unix"])
        # queued after the client sent it and before the answer came back
        assert before <= received <= after
