"""Feature store: an online store of entity feature vectors (SQLite).

API (JSON):
    POST /ingest              {"entities": [{"id": int, "features": [float...], "label": int?}]}
                              upserts; answers {"ingested": n}
    GET  /entities/{id}       {"id", "features", "label"}; 404 when unknown
    POST /lookup              {"ids": [...]} → {"entities": [...]} (unknown ids left out)
    GET  /export?limit=N      every entity (for the trainer), ordered by id
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from testbed.services.common import base_parser, common_routes, error, serve
from testbed.services.guard import AdminGuard, BodyLimit, admin_token, parse_json, strict_int

# the controller ingests the whole test set in one call
INGEST_BYTES = 32 << 20

SCHEMA = """
CREATE TABLE IF NOT EXISTS features (
    entity_id INTEGER PRIMARY KEY, vector BLOB NOT NULL, dim INTEGER NOT NULL,
    label INTEGER, updated REAL NOT NULL
)
"""


class FeatureTable:
    """The online store: float32 vectors by integer entity id."""

    def __init__(self, path: Path | str):
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(SCHEMA)
        self.db.commit()

    def ingest(self, entities: list[dict[str, Any]]) -> int:
        """Upsert entities ``{"id", "features", "label"?}``; ValueError on a bad row."""
        rows = []
        now = time.time()
        for i, e in enumerate(entities):
            try:
                vec = np.asarray(e["features"], dtype=np.float32).ravel()
                label = e.get("label")
                rows.append(
                    (
                        int(e["id"]),
                        vec.tobytes(),
                        len(vec),
                        None if label is None else int(label),
                        now,
                    )
                )
            except (KeyError, TypeError, ValueError) as ex:
                raise ValueError(f"entities[{i}]: {ex}") from None
        self.db.executemany(
            "INSERT INTO features (entity_id, vector, dim, label, updated) VALUES (?,?,?,?,?) "
            "ON CONFLICT(entity_id) DO UPDATE SET vector=excluded.vector, dim=excluded.dim, "
            "label=excluded.label, updated=excluded.updated",
            rows,
        )
        self.db.commit()
        return len(rows)

    @staticmethod
    def _row(r: tuple) -> dict[str, Any]:
        return {
            "id": r[0],
            "features": np.frombuffer(r[1], dtype=np.float32).tolist(),
            "label": r[2],
        }

    def get(self, entity_id: int) -> dict[str, Any] | None:
        r = self.db.execute(
            "SELECT entity_id, vector, label FROM features WHERE entity_id=?", (entity_id,)
        ).fetchone()
        return None if r is None else self._row(r)

    def lookup(self, ids: list[int]) -> list[dict[str, Any]]:
        out = []
        for chunk in (ids[i : i + 500] for i in range(0, len(ids), 500)):
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(
                f"SELECT entity_id, vector, label FROM features WHERE entity_id IN ({marks})",
                [int(i) for i in chunk],
            ).fetchall()
            out += [self._row(r) for r in rows]
        return sorted(out, key=lambda e: e["id"])

    def export(self, limit: int | None = None) -> list[dict[str, Any]]:
        sql = "SELECT entity_id, vector, label FROM features ORDER BY entity_id"
        rows = self.db.execute(sql + (f" LIMIT {int(limit)}" if limit else "")).fetchall()
        return [self._row(r) for r in rows]

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM features").fetchone()[0])


def create_app(table: FeatureTable) -> Starlette:
    reg = CollectorRegistry()
    ops = Counter("features_requests", "Feature store requests", ["op", "code"], registry=reg)
    size = Gauge("features_entities", "Entities stored", registry=reg)
    size.set_function(table.count)

    async def ingest(req: Request) -> Response:
        try:
            n = table.ingest(parse_json(await req.body(), max_bytes=INGEST_BYTES)["entities"])
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            ops.labels("ingest", "400").inc()
            return error(f"bad ingestion: {e}")
        ops.labels("ingest", "200").inc()
        return JSONResponse({"ingested": n})

    async def get(req: Request) -> Response:
        try:
            eid = int(req.path_params["id"])
            if not 0 <= eid < 2**63:
                raise ValueError
        except ValueError:
            return error("entity id must be an integer")
        row = table.get(eid)
        if row is None:
            ops.labels("get", "404").inc()
            return error(f"unknown entity {eid}", 404)
        ops.labels("get", "200").inc()
        return JSONResponse(row)

    async def lookup(req: Request) -> Response:
        try:
            body = parse_json(await req.body())
            ids = [strict_int(i, "ids[]", 0, 2**63 - 1) for i in body["ids"]]
        except (KeyError, TypeError, ValueError) as e:
            return error(f"bad lookup: {e}")
        ops.labels("lookup", "200").inc()
        return JSONResponse({"entities": table.lookup(ids)})

    async def export(req: Request) -> Response:
        limit = req.query_params.get("limit")
        try:
            n = strict_int(int(limit), "limit", 0, 10**9) if limit else None
        except ValueError:
            return error("limit must be an integer in [0, 1e9]")
        return JSONResponse({"entities": table.export(n)})

    routes = [
        *common_routes(reg, lambda: True),
        Route("/ingest", ingest, methods=["POST"]),
        Route("/entities/{id}", get),
        Route("/lookup", lookup, methods=["POST"]),
        Route("/export", export),
    ]
    middleware = [
        Middleware(AdminGuard, token=admin_token(), prefixes=("/ingest",)),
        Middleware(BodyLimit, max_bytes=INGEST_BYTES),
    ]
    return Starlette(routes=routes, middleware=middleware)


def main() -> None:
    p = base_parser("Feature store (online, SQLite).")
    p.add_argument("--db", type=Path, required=True)
    a = p.parse_args()
    serve(create_app(FeatureTable(a.db)), a.host, a.port)


if __name__ == "__main__":
    main()
