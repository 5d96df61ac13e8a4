"""Feast and MLflow as the testbed's feature store and registry: real servers, our guard."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from testbed.backends.base import service_argv, service_env
from testbed.platform_venv import ensure_venv
from testbed.services import platform_clients as pc
from testbed.services.common import wait_healthy
from testbed.services.guard import TOKEN_ENV, TOKEN_HEADER
from testbed.services.node_agent import free_port

# the first run builds .venv-platform (~1.5 min); later runs start both servers in ~15 s
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
TOKEN = "test-token-platform"


def psutil_group(pgid: int, wait_s: float) -> list[str]:
    """Command lines still in process group ``pgid`` after up to ``wait_s`` (then killed)."""
    deadline = time.monotonic() + wait_s
    while True:
        left = [p for p in psutil.process_iter(["cmdline"]) if _pgid(p.pid) == pgid]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, 9)
    return [" ".join(p.info["cmdline"] or [])[:120] for p in left]


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


@contextlib.contextmanager
def service(name: str, tmp: Path, **opts: object) -> Iterator[str]:
    port = free_port("127.0.0.1")
    argv = service_argv(name, port, "127.0.0.1", sys.executable, **opts)
    env = service_env({TOKEN_ENV: TOKEN})
    with open(tmp / f"{name}.log", "wb") as log:
        proc = subprocess.Popen(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, 240, is_alive=lambda: proc.poll() is None)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        proc.wait(30)
        # the real server (children in the same group) goes with it
        left = psutil_group(proc.pid, 20.0)
        assert not left, f"{name}: processes left after SIGTERM: {left}"


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    ensure_venv()
    tmp = tmp_path_factory.mktemp("platform")
    with (
        service("features", tmp, repo=tmp / "feast") as feats,
        service("registry", tmp, root=tmp / "mlflow") as reg,
    ):
        yield feats, reg


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)


def test_feast_ingest_online_offline_materialize(platform: tuple[str, str], token: None) -> None:
    feats, _ = platform
    pc.api_of.cache_clear()
    assert pc.api_of(feats) == "feast"
    x = np.arange(3 * 64, dtype=np.float32).reshape(3, 64)
    assert pc.ingest(feats, np.array([10, 11, 12]), x, np.array([1, 2, 3])) == 3
    got = pc.online(feats, [12, 10, 99])
    assert sorted(got) == [10, 12]
    np.testing.assert_array_equal(got[12], x[2])
    tx, ty, nbytes = pc.training_set(feats)
    assert ty.tolist() == [1, 2, 3] and nbytes > 0
    np.testing.assert_array_equal(tx, x)
    pc.materialize(feats)  # offline → online up to now: the rows stay readable
    assert sorted(pc.online(feats, [10, 11, 12])) == [10, 11, 12]
    metrics = httpx.get(f"{feats}/metrics").text
    assert "feast_feature_server_request" in metrics


def test_feast_writes_need_the_token(platform: tuple[str, str]) -> None:
    feats, _ = platform
    body = {"push_source_name": "digits_push", "df": {}, "to": "online"}
    assert httpx.post(f"{feats}/push", json=body).status_code == 401
    r = httpx.post(f"{feats}/materialize-incremental", json={"end_ts": "2020-01-01T00:00:00"})
    assert r.status_code == 401
    read = {"features": ["digits:pixels"], "entities": {"entity_id": [1]}}
    assert httpx.post(f"{feats}/get-online-features", json=read).status_code == 200


def test_mlflow_register_by_alias(platform: tuple[str, str], token: None) -> None:
    _, reg = platform
    pc.api_of.cache_clear()
    assert pc.api_of(reg) == "mlflow"
    a, b = b"model-a" * 1000, b"model-b" * 1000
    first = pc.register_model(reg, "digits.small", a, alias="zoo", metrics={"accuracy": 0.9})
    again = pc.register_model(reg, "digits.small", a, alias="zoo")
    assert again["version"] == first["version"]  # same bytes under the alias: reused
    second = pc.register_model(reg, "digits.small", b, alias="champion")
    assert pc.model_versions(reg, "digits.small") == [first["version"], second["version"]]
    assert pc.fetch_model(reg, "digits.small", "zoo") == (a, first["version"])
    assert pc.fetch_model(reg, "digits.small", "champion")[0] == b
    assert pc.fetch_model(reg, "digits.small", second["version"])[0] == b
    pc.set_alias(reg, "digits.small", "champion", first["version"])
    assert pc.fetch_model(reg, "digits.small", "champion")[0] == a
    with pytest.raises(KeyError):
        pc.fetch_model(reg, "digits.small", "nope")
    assert (
        "mlflow_http_request" in httpx.get(f"{reg}/metrics").text
        or httpx.get(f"{reg}/metrics").status_code == 200
    )


def test_mlflow_writes_need_the_token(platform: tuple[str, str]) -> None:
    _, reg = platform
    r = httpx.post(f"{reg}/api/2.0/mlflow/registered-models/create", json={"name": "x"})
    assert r.status_code == 401
    ok = httpx.post(
        f"{reg}/api/2.0/mlflow/registered-models/create",
        json={"name": "x"},
        headers={TOKEN_HEADER: TOKEN},
    )
    assert ok.status_code == 200
    assert (
        httpx.get(f"{reg}/api/2.0/mlflow/registered-models/get", params={"name": "x"}).status_code
        == 200
    )


def test_trainer_reads_feast_offline_and_registers_in_mlflow(
    platform: tuple[str, str], token: None
) -> None:
    from sklearn.datasets import load_digits

    from testbed.services import trainer

    feats, reg = platform
    pc.api_of.cache_clear()
    x, y = load_digits(return_X_y=True)
    pc.ingest(feats, np.arange(1000, 1000 + 400), x[:400], y[:400])
    out = trainer.run(reg, feats, "digits-retrain", steps=60, seed=0, alias="champion")
    assert out["train_rows"] + out["test_rows"] >= 400  # the earlier test's rows count too
    assert out["accuracy"] > 0.5
    data, version = pc.fetch_model(reg, "digits-retrain", "champion")
    assert version == out["version"]
    assert pc.hashlib.sha256(data).hexdigest() == out["sha256"]
