"""The feature store service: Feast's feature server behind the testbed's guard.

A Feast repository (local provider) in ``--repo``:
    feature_store.yaml   registry ``data/registry.db``, SQLite online store
                         ``data/online.db``, file offline store
    definitions.py       entity ``digit`` (join key ``entity_id``), push source
                         ``digits_push`` over the parquet file ``data/digits.parquet``,
                         feature view ``digits``: ``pixels`` (64 float32), ``label``
Started with ``feast apply`` and Feast's feature server (:mod:`feast_entry`, in the
platform venv); this process forwards to it (:mod:`testbed.services.upstream`).

Routes (Feast's own, forwarded): ``POST /push`` (ingest, admin token),
``POST /materialize-incremental`` (batch load offline → online, admin token),
``POST /get-online-features`` (online reads). Ours: ``GET /healthz`` (``api`` =
``feast``), ``GET /metrics`` (Feast's Prometheus metrics), and ``GET /offline/digits``:
the offline store's parquet file as it is, for preparation and training jobs on
other servers (what a shared file system or object store gives them in the field).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from testbed.platform_venv import ensure_venv, platform_env
from testbed.services.common import base_parser, error
from testbed.services.node_agent import free_port
from testbed.services.upstream import Upstream, create_proxy_app, run_behind_guard

API = "feast"
PROJECT = "mlops_twin"
FEATURE_VIEW = "digits"
PUSH_SOURCE = "digits_push"
OFFLINE_FILE = "data/digits.parquet"
FEATURE_STORE_YAML = f"""\
project: {PROJECT}
registry: data/registry.db
provider: local
online_store:
  type: sqlite
  path: data/online.db
offline_store:
  type: file
entity_key_serialization_version: 3
"""
DEFINITIONS = f'''\
"""Feature definitions of the testbed's digits (written by testbed.services.features_feast)."""

from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Array, Float32, Int64

digit = Entity(name="digit", join_keys=["entity_id"], value_type=ValueType.INT64)
digits_file = FileSource(
    name="digits_file", path="{OFFLINE_FILE}", timestamp_field="event_timestamp"
)
digits_push = PushSource(name="{PUSH_SOURCE}", batch_source=digits_file)
digits = FeatureView(
    name="{FEATURE_VIEW}",
    entities=[digit],
    ttl=timedelta(days=3650),
    schema=[Field(name="pixels", dtype=Array(Float32)), Field(name="label", dtype=Int64)],
    source=digits_push,
    online=True,
)
'''
OFFLINE_SCHEMA = pa.schema(
    [
        ("entity_id", pa.int64()),
        ("pixels", pa.list_(pa.float32())),
        ("label", pa.int64()),
        ("event_timestamp", pa.timestamp("us", tz="UTC")),
    ]
)


def write_repo(repo: Path) -> Path:
    """The Feast repository files in ``repo`` (kept when they exist: data survives)."""
    (repo / "data").mkdir(parents=True, exist_ok=True)
    (repo / "feature_store.yaml").write_text(FEATURE_STORE_YAML)
    (repo / "definitions.py").write_text(DEFINITIONS)
    offline = repo / OFFLINE_FILE
    if not offline.exists():
        pq.write_table(OFFLINE_SCHEMA.empty_table(), offline)
    return repo


def feast_apply(repo: Path, bin_dir: Path, log: Path) -> None:
    """``feast apply`` in ``repo`` (registers the definitions, creates the online table)."""
    with open(log, "ab") as out:
        done = subprocess.run(
            [str(bin_dir / "feast"), "apply"],
            cwd=repo,
            env=platform_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    if done.returncode != 0:
        raise RuntimeError(f"feast apply failed in {repo} (code {done.returncode}); see {log}")


def upstream(repo: Path, host: str = "127.0.0.1") -> Upstream:
    """Feast's feature server for ``repo`` on free internal ports (not started)."""
    bin_dir = ensure_venv()
    write_repo(repo)
    log = repo / "feast.log"
    feast_apply(repo, bin_dir, log)
    port, mport = free_port(host), free_port(host)
    entry = Path(__file__).with_name("feast_entry.py")
    argv = [str(bin_dir / "python"), str(entry), "--repo", str(repo), "--host", host]
    argv += ["--port", str(port), "--metrics-port", str(mport)]
    return Upstream(
        argv,
        platform_env(),
        f"http://{host}:{port}",
        "/health",
        log,
        metrics_url=f"http://{host}:{mport}/metrics",
        cwd=repo,
    )


def create_app(up: Upstream, repo: Path) -> object:
    async def offline(_req: Request) -> Response:
        path = repo / OFFLINE_FILE
        if not path.exists():
            return error("the offline store holds no data yet", 404)
        return FileResponse(path, media_type="application/vnd.apache.parquet")

    # /materialize covers /materialize-incremental too
    writes = ("/push", "/write-to-online-store", "/materialize")
    return create_proxy_app(
        up, API, writes, extra_routes=[Route(f"/offline/{FEATURE_VIEW}", offline)]
    )


def main() -> None:
    p = base_parser("Feature store: Feast (local provider) behind the testbed's guard.")
    p.add_argument("--repo", type=Path, required=True)
    a = p.parse_args()
    repo = a.repo.resolve()
    try:
        up = upstream(repo, "127.0.0.1")
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
        print(f"feature store failed to start: {e}", file=sys.stderr)
        sys.exit(1)
    run_behind_guard(up, lambda: create_app(up, repo), a.host, a.port)  # type: ignore[arg-type,return-value]


if __name__ == "__main__":
    main()
