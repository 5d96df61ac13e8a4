"""Model registry: sha256 checked on upload and on download, persisted across restarts."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest

from testbed.services.registry import HashMismatch, ModelStore, create_app
from tests.testbed.helpers import serve_app

DATA = b"not really onnx, but bytes are bytes"
SHA = hashlib.sha256(DATA).hexdigest()


def test_put_get_and_persist(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    meta = store.put("denoise.d-tiny", "1", DATA, SHA)
    assert meta["sha256"] == SHA and meta["size_bytes"] == len(DATA)
    store.put("denoise.d-tiny", "2", DATA + b"!", hashlib.sha256(DATA + b"!").hexdigest())
    again = ModelStore(tmp_path)  # a restarted registry sees the same versions
    data, meta = again.get("denoise.d-tiny", "latest")
    assert meta["version"] == "2" and data == DATA + b"!"
    assert [m["version"] for m in again.list("denoise.d-tiny")] == ["1", "2"]


def test_mismatching_hash_is_refused(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    with pytest.raises(HashMismatch):
        store.put("m", "1", DATA, "0" * 64)
    assert store.list() == []


def test_corrupted_artifact_is_not_served(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.put("m", "1", DATA, SHA)
    (tmp_path / "files" / "m" / "1").write_bytes(b"tampered")
    with pytest.raises(HashMismatch):
        store.get("m", "1")


def test_http_api(tmp_path: Path) -> None:
    with serve_app(create_app(tmp_path)) as url, httpx.Client(base_url=url) as c:
        bad = c.put("/models/m/1", content=DATA, headers={"x-sha256": "ab" * 32})
        assert bad.status_code == 400 and "mismatch" in bad.json()["error"]
        assert c.put("/models/m/1", content=DATA).status_code == 400  # no hash given
        ok = c.put("/models/m/1", content=DATA, headers={"x-sha256": SHA})
        assert ok.status_code == 201
        other = hashlib.sha256(b"other").hexdigest()
        clash = c.put("/models/m/1", content=b"other", headers={"x-sha256": other})
        assert clash.status_code == 409
        got = c.get("/models/m/1")
        assert got.content == DATA and got.headers["x-sha256"] == SHA
        assert c.get("/models/m/9").status_code == 404
        assert c.get("/healthz").status_code == 200
        assert b"registry_requests" in c.get("/metrics").content
