"""The model registry service: MLflow's tracking server and model registry behind our guard.

``mlflow server`` from the platform venv with its backend store on SQLite
(``ROOT/mlflow.db``), artifacts proxied by the server into ``ROOT/artifacts``,
one worker, and Prometheus metrics (``--expose-prometheus``). This process
forwards to it (:mod:`testbed.services.upstream`): MLflow's REST API unchanged,
every write method (POST/PUT/PATCH/DELETE) behind the testbed's admin token,
``GET /healthz`` with ``api`` = ``mlflow``, ``GET /metrics`` = MLflow's metrics.

Clients (stage servers, trainer, controller) use :mod:`testbed.services.platform_clients`:
a model is registered from a run whose artifacts hold ``model/model.onnx``, and
loaded by registered name and alias (or version number).
"""

from __future__ import annotations

import sys
from pathlib import Path

from testbed.platform_venv import ensure_venv, platform_env
from testbed.services.common import base_parser
from testbed.services.node_agent import free_port
from testbed.services.upstream import (
    WRITE_METHODS,
    Upstream,
    create_proxy_app,
    run_behind_guard,
)

API = "mlflow"


def upstream(root: Path, host: str = "127.0.0.1") -> Upstream:
    """MLflow's server keeping its state in ``root`` on a free internal port (not started)."""
    bin_dir = ensure_venv()
    root.mkdir(parents=True, exist_ok=True)
    (root / "prometheus").mkdir(exist_ok=True)
    port = free_port(host)
    argv = [
        str(bin_dir / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--serve-artifacts",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
        "--expose-prometheus",
        str(root / "prometheus"),
    ]
    return Upstream(argv, platform_env(), f"http://{host}:{port}", "/health", root / "mlflow.log")


def main() -> None:
    p = base_parser("Model registry: MLflow tracking server + model registry behind our guard.")
    p.add_argument("--root", type=Path, required=True)
    a = p.parse_args()
    try:
        up = upstream(a.root.resolve())
    except (RuntimeError, OSError) as e:
        print(f"model registry failed to start: {e}", file=sys.stderr)
        sys.exit(1)
    run_behind_guard(up, lambda: create_proxy_app(up, API, ("/",), WRITE_METHODS), a.host, a.port)


if __name__ == "__main__":
    main()
