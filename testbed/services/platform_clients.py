"""Clients of the platform services, whichever implementation answers.

The local backend runs Feast and MLflow (:mod:`features_feast`, :mod:`registry_mlflow`);
the Compose image still runs the hand-written SQLite services (:mod:`feature_store`,
:mod:`registry`). A service tells which it is in ``GET /healthz`` (``api``); callers
(controller, stage servers, trainer, process steps) use these functions and never
care. Feast and MLflow are reached over their REST APIs with httpx: their Python
clients need the platform venv's pins.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import io
import time
from typing import Any

import httpx
import numpy as np

from testbed.services.guard import token_headers

PUSH_CHUNK_ROWS = 500
MLFLOW_API = "/api/2.0/mlflow"
ARTIFACTS_API = "/api/2.0/mlflow-artifacts/artifacts"
MODEL_FILE = "model/model.onnx"
REGISTRY_EXPERIMENT = "model-registry"


class HashMismatch(ValueError):
    """A downloaded artifact does not match the sha256 it was registered with."""


@functools.lru_cache(maxsize=32)
def api_of(url: str) -> str:
    """``feast``, ``mlflow`` or ``builtin``: what the service at ``url`` speaks."""
    r = httpx.get(f"{url}/healthz", timeout=10)
    try:
        return str(r.json().get("api", "builtin"))
    except ValueError:
        return "builtin"


def _check(r: httpx.Response, what: str) -> dict[str, Any]:
    if r.status_code >= 400:
        raise RuntimeError(f"{what}: HTTP {r.status_code} {r.text[:300]}")
    return r.json() if r.content else {}


# ---------------------------------------------------------------- feature store


def ingest(url: str, ids: np.ndarray, x: np.ndarray, y: np.ndarray | None) -> int:
    """Write feature rows (online and offline); the number written."""
    ids = np.asarray(ids, dtype=np.int64)
    x = np.asarray(x, dtype=np.float32)
    with httpx.Client(timeout=120, headers=token_headers()) as c:
        if api_of(url) != "feast":
            rows = [
                {"id": int(i), "features": x[k].tolist()}
                | ({} if y is None else {"label": int(y[k])})
                for k, i in enumerate(ids)
            ]
            return int(
                _check(c.post(f"{url}/ingest", json={"entities": rows}), "ingest")["ingested"]
            )
        now = dt.datetime.now(dt.UTC).isoformat()
        for lo in range(0, len(ids), PUSH_CHUNK_ROWS):
            sl = slice(lo, lo + PUSH_CHUNK_ROWS)
            df = {
                "entity_id": ids[sl].tolist(),
                "pixels": x[sl].tolist(),
                "label": (np.zeros(len(ids[sl]), int) - 1 if y is None else y[sl]).tolist(),
                "event_timestamp": [now] * len(ids[sl]),
            }
            body = {"push_source_name": "digits_push", "df": df, "to": "online_and_offline"}
            _check(c.post(f"{url}/push", json=body), "feast push")
    return len(ids)


def materialize(url: str) -> None:
    """Feast: load the offline store into the online store up to now (no-op otherwise)."""
    if api_of(url) != "feast":
        return
    end = dt.datetime.now(dt.UTC).isoformat()
    r = httpx.post(
        f"{url}/materialize-incremental",
        json={"end_ts": end},
        headers=token_headers(),
        timeout=300,
    )
    _check(r, "feast materialize-incremental")


def online(url: str, ids: list[int]) -> dict[int, np.ndarray]:
    """Online feature vectors of ``ids`` that the store knows."""
    if api_of(url) != "feast":
        r = httpx.post(f"{url}/lookup", json={"ids": ids}, timeout=60)
        return {
            e["id"]: np.asarray(e["features"], np.float32) for e in _check(r, "lookup")["entities"]
        }
    body = {"features": ["digits:pixels"], "entities": {"entity_id": list(map(int, ids))}}
    data = _check(httpx.post(f"{url}/get-online-features", json=body, timeout=60), "feast read")
    names = data["metadata"]["feature_names"]
    col = data["results"][names.index("pixels")]
    return {
        int(i): np.asarray(v, np.float32)
        for i, v, s in zip(ids, col["values"], col["statuses"], strict=True)
        if s == "PRESENT"
    }


def training_set(url: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Labelled rows (latest per entity) from the offline store: x, y, bytes transferred."""
    if api_of(url) != "feast":
        r = httpx.get(f"{url}/export", timeout=120)
        rows = [e for e in _check(r, "export")["entities"] if e.get("label") is not None]
        x = np.asarray([e["features"] for e in rows], np.float32).reshape(len(rows), -1)
        return x, np.asarray([e["label"] for e in rows], np.int64), len(r.content)
    import pyarrow.parquet as pq

    r = httpx.get(f"{url}/offline/digits", timeout=300)
    if r.status_code != 200:
        raise RuntimeError(f"offline store: HTTP {r.status_code} {r.text[:200]}")
    df = pq.read_table(io.BytesIO(r.content)).to_pandas()
    df = (
        df[df["label"] >= 0]
        .sort_values("event_timestamp")
        .drop_duplicates("entity_id", keep="last")
    )
    df = df.sort_values("entity_id")
    x = np.stack(df["pixels"].to_numpy()).astype(np.float32) if len(df) else np.zeros((0, 64))
    return x, df["label"].to_numpy(np.int64), len(r.content)


# ---------------------------------------------------------------- model registry


def _mlflow(c: httpx.Client, method: str, path: str, what: str, **kw: Any) -> dict[str, Any]:
    return _check(c.request(method, f"{MLFLOW_API}/{path}", **kw), f"mlflow {what}")


def _experiment_id(c: httpx.Client, name: str) -> str:
    r = c.get(f"{MLFLOW_API}/experiments/get-by-name", params={"experiment_name": name})
    if r.status_code == 200:
        return str(r.json()["experiment"]["experiment_id"])
    r = c.post(f"{MLFLOW_API}/experiments/create", json={"name": name})
    if r.status_code == 200:
        return str(r.json()["experiment_id"])
    # created meanwhile by another client
    r = c.get(f"{MLFLOW_API}/experiments/get-by-name", params={"experiment_name": name})
    return str(_check(r, "experiment")["experiment"]["experiment_id"])


def register_model(
    url: str,
    name: str,
    data: bytes,
    alias: str | None = None,
    experiment: str = REGISTRY_EXPERIMENT,
    params: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Log ``data`` as a run's ``model/model.onnx`` and register it under ``name``.

    Returns ``{"name", "version", "sha256", "run_id"}``. With ``alias``, an existing
    version carrying that alias and the same sha256 is reused (idempotent), and the
    alias is moved to the new version otherwise. Builtin registry: ``alias`` is the version.
    """
    sha = hashlib.sha256(data).hexdigest()
    if api_of(url) != "mlflow":
        from testbed.services.registry import upload_model

        version = alias or sha[:12]
        meta = upload_model(url, name, version, data)
        return {"name": name, "version": meta["version"], "sha256": sha, "run_id": ""}
    with httpx.Client(base_url=url, timeout=300, headers=token_headers()) as c:
        if alias:
            r = c.get(
                f"{MLFLOW_API}/registered-models/alias", params={"name": name, "alias": alias}
            )
            if r.status_code == 200:
                mv = r.json()["model_version"]
                if {t["key"]: t["value"] for t in mv.get("tags", [])}.get("sha256") == sha:
                    return {
                        "name": name,
                        "version": mv["version"],
                        "sha256": sha,
                        "run_id": mv.get("run_id", ""),
                    }
        r = c.post(f"{MLFLOW_API}/registered-models/create", json={"name": name})
        if r.status_code != 200 and "RESOURCE_ALREADY_EXISTS" not in r.text:
            _check(r, "create registered model")
        now_ms = int(time.time() * 1000)
        run = _mlflow(
            c,
            "POST",
            "runs/create",
            "create run",
            json={
                "experiment_id": _experiment_id(c, experiment),
                "start_time": now_ms,
                "run_name": name,
            },
        )["run"]["info"]
        batch: dict[str, Any] = {"run_id": run["run_id"]}
        batch["params"] = [{"key": k, "value": str(v)} for k, v in (params or {}).items()]
        batch["metrics"] = [
            {"key": k, "value": float(v), "timestamp": now_ms, "step": 0}
            for k, v in (metrics or {}).items()
        ]
        batch["tags"] = [{"key": "sha256", "value": sha}]
        _mlflow(c, "POST", "runs/log-batch", "log run", json=batch)
        path = run["artifact_uri"].removeprefix("mlflow-artifacts:/").lstrip("/")
        _check(c.put(f"{ARTIFACTS_API}/{path}/{MODEL_FILE}", content=data), "upload artifact")
        source = run["artifact_uri"] + "/" + MODEL_FILE.rpartition("/")[0]
        body = {
            "name": name,
            "source": source,
            "run_id": run["run_id"],
            "tags": [{"key": "sha256", "value": sha}],
        }
        mv = _mlflow(c, "POST", "model-versions/create", "create version", json=body)[
            "model_version"
        ]
        end = {"run_id": run["run_id"], "status": "FINISHED", "end_time": int(time.time() * 1000)}
        _mlflow(c, "POST", "runs/update", "finish run", json=end)
        if alias:
            set_alias(url, name, alias, mv["version"])
        return {"name": name, "version": mv["version"], "sha256": sha, "run_id": run["run_id"]}


def set_alias(url: str, name: str, alias: str, version: str) -> None:
    """Point ``name@alias`` at ``version`` (MLflow only)."""
    with httpx.Client(base_url=url, timeout=60, headers=token_headers()) as c:
        body = {"name": name, "alias": alias, "version": str(version)}
        _mlflow(c, "POST", "registered-models/alias", "set alias", json=body)


def _version_of(c: httpx.Client, name: str, ref: str) -> dict[str, Any]:
    if ref == "latest":  # the newest version (MLflow reserves the alias name)
        r = c.get(f"{MLFLOW_API}/model-versions/search", params={"filter": f"name='{name}'"})
        found = _check(r, "search versions").get("model_versions", [])
        if not found:
            raise KeyError(f"no model {name}")
        ref = str(max(int(v["version"]) for v in found))
    if ref.isdigit():
        r = c.get(f"{MLFLOW_API}/model-versions/get", params={"name": name, "version": ref})
    else:
        r = c.get(f"{MLFLOW_API}/registered-models/alias", params={"name": name, "alias": ref})
    if r.status_code != 200:
        raise KeyError(f"no model {name}@{ref}: {r.text[:200]}")
    return r.json()["model_version"]


def fetch_model(url: str, name: str, ref: str, timeout_s: float = 60.0) -> tuple[bytes, str]:
    """An artifact by registered name and alias (or version number), sha256-checked;
    returns its bytes and the version number."""
    if api_of(url) != "mlflow":
        from testbed.services.registry import fetch_model as fetch_builtin

        return fetch_builtin(url, name, ref, timeout_s)
    with httpx.Client(base_url=url, timeout=timeout_s) as c:
        mv = _version_of(c, name, ref)
        path = mv["source"].removeprefix("mlflow-artifacts:/").lstrip("/")
        r = c.get(f"{ARTIFACTS_API}/{path}/{MODEL_FILE.rpartition('/')[2]}")
        if r.status_code != 200:
            raise RuntimeError(f"artifact of {name}@{ref}: HTTP {r.status_code}")
    expected = {t["key"]: t["value"] for t in mv.get("tags", [])}.get("sha256")
    if expected and hashlib.sha256(r.content).hexdigest() != expected:
        raise HashMismatch(f"artifact {name}@{ref} does not match its sha256 {expected}")
    return r.content, str(mv["version"])


def model_versions(url: str, name: str) -> list[str]:
    """Version numbers (or builtin version names) of ``name``, oldest first."""
    if api_of(url) != "mlflow":
        r = httpx.get(f"{url}/models/{name}", timeout=30)
        return [str(v["version"]) for v in _check(r, "versions")["versions"]]
    r = httpx.get(
        f"{url}{MLFLOW_API}/model-versions/search", params={"filter": f"name='{name}'"}, timeout=30
    )
    found = _check(r, "search versions").get("model_versions", [])
    return sorted((str(v["version"]) for v in found), key=int)
