"""Where evaluations run: inline, a local Dask cluster, or an existing Dask scheduler."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def evaluation_client(workers: int = 0, scheduler: str | None = None) -> Iterator[Any | None]:
    """Yield a ``distributed.Client`` (or None for inline evaluation) and close what it opened.

    ``scheduler`` (``tcp://host:port``) connects to a running cluster and
    leaves it running; ``workers`` > 0 starts a local cluster of that many
    single-threaded worker processes (the twin is pure Python: threads would
    only contend for the GIL) and stops it afterwards. A local cluster must be
    started from a ``if __name__ == "__main__"`` guarded program (the CLI is).
    """
    if scheduler and workers:
        raise ValueError("give either --workers (local cluster) or --scheduler, not both")
    if not scheduler and workers <= 0:
        yield None
        return
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="10s")
        except OSError as exc:
            raise ValueError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
        try:
            yield client
        finally:
            client.close()
        return
    # Leave `host` out: LocalCluster(processes=..., host=...) fails on these machines.
    # Its HTTP server still starts: bind it to loopback on a free port.
    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0"
    )
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
