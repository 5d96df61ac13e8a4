"""Model registry: ONNX artifacts by name and version, sha256-checked, on disk.

API (bodies are raw bytes for artifacts, JSON otherwise):
    PUT  /models/{name}/{version}   body = artifact, header ``x-sha256`` = its hex digest;
                                    400 when the body's hash differs, 409 when the
                                    version exists with other content
    GET  /models                    {"models": [{name, version, sha256, size_bytes}, ...]}
    GET  /models/{name}             versions of one model, newest last
    GET  /models/{name}/{version}   the artifact (``latest`` = newest version); header
                                    ``x-sha256``; 500 when the stored file no longer
                                    matches its recorded hash (never serves it)

Storage: ``ROOT/registry.sqlite`` (one row per version) and ``ROOT/files/<name>/<version>``.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from testbed.services.common import base_parser, common_routes, error, serve
from testbed.services.guard import (
    MAX_MODEL_BYTES,
    AdminGuard,
    BodyLimit,
    admin_token,
    token_headers,
)

# largest model file accepted (bytes)

SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
COLUMNS = ("name", "version", "sha256", "size_bytes")
SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    name TEXT NOT NULL, version TEXT NOT NULL, sha256 TEXT NOT NULL,
    size_bytes INTEGER NOT NULL, created REAL NOT NULL, seq INTEGER PRIMARY KEY AUTOINCREMENT,
    UNIQUE(name, version)
)
"""


class HashMismatch(ValueError):
    """An artifact's bytes do not match the sha256 it was given or stored with."""


class ModelStore:
    """SQLite index + files; the storage behind the registry service."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.root / "registry.sqlite", check_same_thread=False)
        self.db.execute(SCHEMA)
        self.db.commit()

    def _path(self, name: str, version: str) -> Path:
        return self.root / "files" / name / version

    def put(self, name: str, version: str, data: bytes, sha256: str) -> dict:
        """Store ``data`` if its hash is ``sha256``; HashMismatch otherwise."""
        for v in (name, version):
            if not SAFE.match(v):
                raise ValueError(f"invalid name or version {v!r} (letters, digits, . _ -)")
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256.lower():
            raise HashMismatch(f"sha256 mismatch for {name}/{version}: body is {actual}")
        row = self.get_meta(name, version)
        if row is not None:
            if row["sha256"] != actual:
                raise FileExistsError(f"{name}/{version} exists with sha256 {row['sha256']}")
            return row
        path = self._path(name, version)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        self.db.execute(
            "INSERT INTO models (name, version, sha256, size_bytes, created) VALUES (?,?,?,?,?)",
            (name, version, actual, len(data), time.time()),
        )
        self.db.commit()
        return self.get_meta(name, version)  # type: ignore[return-value]

    def get_meta(self, name: str, version: str) -> dict | None:
        if version == "latest":
            cur = self.db.execute(
                "SELECT name, version, sha256, size_bytes FROM models WHERE name=? "
                "ORDER BY seq DESC LIMIT 1",
                (name,),
            )
        else:
            cur = self.db.execute(
                "SELECT name, version, sha256, size_bytes FROM models WHERE name=? AND version=?",
                (name, version),
            )
        row = cur.fetchone()
        return (
            None
            if row is None
            else dict(zip(("name", "version", "sha256", "size_bytes"), row, strict=False))
        )

    def get(self, name: str, version: str) -> tuple[bytes, dict]:
        """Artifact bytes and metadata; KeyError if absent, HashMismatch if corrupted."""
        meta = self.get_meta(name, version)
        if meta is None:
            raise KeyError(f"{name}/{version}")
        data = self._path(name, meta["version"]).read_bytes()
        if hashlib.sha256(data).hexdigest() != meta["sha256"]:
            raise HashMismatch(f"stored artifact {name}/{meta['version']} is corrupted")
        return data, meta

    def list(self, name: str | None = None) -> list[dict]:
        sql = "SELECT name, version, sha256, size_bytes FROM models"
        args: tuple = ()
        if name is not None:
            sql += " WHERE name=?"
            args = (name,)
        rows = self.db.execute(sql + " ORDER BY seq", args).fetchall()
        return [
            dict(zip(("name", "version", "sha256", "size_bytes"), r, strict=False)) for r in rows
        ]


def create_app(root: Path) -> Starlette:
    store = ModelStore(root)
    reg = CollectorRegistry()
    served = Counter("registry_requests", "Registry requests", ["op", "code"], registry=reg)

    async def list_all(_req: Request) -> Response:
        return JSONResponse({"models": store.list()})

    async def list_one(req: Request) -> Response:
        return JSONResponse({"versions": store.list(req.path_params["name"])})

    async def put(req: Request) -> Response:
        name, version = req.path_params["name"], req.path_params["version"]
        sha = req.headers.get("x-sha256")
        if not sha:
            served.labels("put", "400").inc()
            return error("missing x-sha256 header")
        try:
            meta = store.put(name, version, await req.body(), sha)
        except HashMismatch as e:
            served.labels("put", "400").inc()
            return error(str(e))
        except FileExistsError as e:
            served.labels("put", "409").inc()
            return error(str(e), 409)
        except ValueError as e:
            served.labels("put", "400").inc()
            return error(str(e))
        served.labels("put", "201").inc()
        return JSONResponse(meta, status_code=201)

    async def get(req: Request) -> Response:
        name, version = req.path_params["name"], req.path_params["version"]
        try:
            data, meta = store.get(name, version)
        except KeyError:
            served.labels("get", "404").inc()
            return error(f"no model {name}/{version}", 404)
        except HashMismatch as e:
            served.labels("get", "500").inc()
            return error(str(e), 500)
        served.labels("get", "200").inc()
        headers = {"x-sha256": meta["sha256"], "x-version": meta["version"]}
        return Response(data, media_type="application/octet-stream", headers=headers)

    routes = [
        *common_routes(reg, lambda: True),
        Route("/models", list_all),
        Route("/models/{name}", list_one),
        Route("/models/{name}/{version}", put, methods=["PUT"]),
        Route("/models/{name}/{version}", get, methods=["GET"]),
    ]
    middleware = [
        Middleware(AdminGuard, token=admin_token(), prefixes=("/models",), methods=("PUT",)),
        Middleware(BodyLimit, max_bytes=MAX_MODEL_BYTES),
    ]
    return Starlette(routes=routes, middleware=middleware)


def fetch_model(
    registry_url: str, name: str, version: str, timeout_s: float = 30.0
) -> tuple[bytes, str]:
    """Download an artifact and check its sha256; HashMismatch if it does not match."""
    import httpx

    r = httpx.get(f"{registry_url}/models/{name}/{version}", timeout=timeout_s)
    if r.status_code != 200:
        raise RuntimeError(f"registry: {name}/{version}: HTTP {r.status_code} {r.text[:200]}")
    expected = r.headers.get("x-sha256", "")
    if hashlib.sha256(r.content).hexdigest() != expected:
        raise HashMismatch(f"artifact {name}/{version} does not match its sha256 {expected}")
    return r.content, r.headers.get("x-version", version)


def upload_model(
    registry_url: str, name: str, version: str, data: bytes, timeout_s: float = 30.0
) -> dict:
    """Register ``data`` as ``name/version``; an existing identical version is fine."""
    import httpx

    sha = hashlib.sha256(data).hexdigest()
    r = httpx.put(
        f"{registry_url}/models/{name}/{version}",
        content=data,
        headers={"x-sha256": sha, **token_headers()},
        timeout=timeout_s,
    )
    if r.status_code not in (200, 201):
        raise RuntimeError(
            f"registry refused {name}/{version}: HTTP {r.status_code} {r.text[:200]}"
        )
    return r.json()


def main() -> None:
    p = base_parser("Model registry (ONNX artifacts with sha256).")
    p.add_argument("--root", type=Path, required=True)
    a = p.parse_args()
    serve(create_app(a.root), a.host, a.port)


if __name__ == "__main__":
    main()
