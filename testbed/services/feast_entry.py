"""Feast's feature server with its Prometheus endpoint on a port we choose.

Runs in the platform venv (:mod:`testbed.platform_venv`), never in ours: it
imports feast. ``feast serve --metrics`` always puts the metrics on port 8000,
which two testbeds on one host would share, so this starts Feast's own metrics
server and app (``feast.metrics.start_metrics_server``,
``feast.feature_server.get_app``) with uvicorn in one process.

    python feast_entry.py --repo DIR --port P --metrics-port M [--host H]
"""

from __future__ import annotations

import argparse


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repo", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--metrics-port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    a = p.parse_args()

    import uvicorn
    from feast import FeatureStore
    from feast import metrics as feast_metrics
    from feast.feature_server import get_app

    store = FeatureStore(repo_path=a.repo)
    feast_metrics.start_metrics_server(
        store, port=a.metrics_port, metrics_config=feast_metrics.build_metrics_flags(None)
    )
    # a short registry TTL: definitions applied while the server runs are seen within seconds
    app = get_app(store, registry_ttl_sec=5)
    uvicorn.run(app, host=a.host, port=a.port, access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
