"""rl_start_stall: a replica start's anatomy tells queueing while the replica starts from
queueing after it is routed, and reads its first request and the host's idle CPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import rl_start_stall as rss

OFF = 0.5


def _run(folder: Path, stall: tuple[float, float], start: bool = True) -> None:
    """A 30-s run: a hop every 10 ms at each of two stages, 1 ms queue, except 40 ms in
    ``stall`` (load time); a replica start decided at control 20 s that took 1.5 s and
    is routed (first request to ``c-new``) at load 22.1 s; idle CPU 0.3 cores, 0 in 21-22."""
    (folder / "load").mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"offset_s": OFF}))
    if start:
        pd.DataFrame(
            {"t_s": [20.0, 20.0], "kind": ["replica-start", "routes"], "stage": ["c", ""]}
        ).assign(seconds=[1.5, 0.05]).to_parquet(folder / "changes.parquet")
    t = np.arange(0.0, 30.0, 0.01)
    rows = []
    for stage in ("a", "c"):
        q = np.where((t >= stall[0]) & (t < stall[1]), 0.040, 0.001)
        name = np.where((stage == "c") & (t >= 22.1) & (np.arange(len(t)) % 2 == 0), "c-new", stage)
        svc = np.full(len(t), 0.0002)
        if start and stage == "c":
            svc[np.argmax(name == "c-new")] = 0.005  # its first batch is cold
        rows.append(
            pd.DataFrame(
                {
                    "t_arrive": t,
                    "t_start": t + q,
                    "replica_name": name,
                    "queue_s": q,
                    "service_s": svc,
                    "hop_s": 0.002,
                    "batch": 1,
                }
            )
        )
    pd.concat(rows).to_parquet(folder / "load" / "visits.parquet")
    ts = np.arange(0.0, 31.0, 1.0)
    idle = np.cumsum(np.where((ts > 21) & (ts <= 22), 0.0, 0.3))
    pd.DataFrame(
        {
            "t": ts,
            "target": "host",
            "metric": "host_cpu_seconds_total",
            "labels": json.dumps({"mode": "idle"}),
            "value": idle,
        }
    ).to_parquet(folder / "load" / "metrics.parquet")


def test_queueing_before_the_route_is_counted_while_starting(tmp_path: Path) -> None:
    ppo, ipa = tmp_path / "fluctuating-ppo-r1", tmp_path / "fluctuating-ipa-r1"
    _run(ppo, (21.0, 21.6))
    _run(ipa, (50.0, 51.0), start=False)
    (row,) = rss.anatomy_table([ppo]).to_dict("records")
    assert row["replica"] == "c-new"
    assert abs(row["routed_after_s"] - (22.1 - 20.5)) < 0.02
    assert abs(row["queue_start_max_ms"] - 40.0) < 0.5
    assert row["queue_after_route_max_ms"] < 2.0
    assert abs(row["queue_start_worst_at_s"] - (21.0 - 22.1)) < 0.21
    assert row["first_service_ms"] == 5.0 and abs(row["next_service_ms"] - 0.2) < 1e-6
    assert abs(row["idle_before_cores"] - 0.3) < 1e-6 and row["idle_during_min_cores"] == 0.0
    # the IPA run of the same block had no stall in the same windows
    assert row["control_queue_start_max_ms"] < 2.0


def test_queueing_after_the_route_is_not_counted_while_starting(tmp_path: Path) -> None:
    _run(tmp_path / "r", (22.25, 23.0))
    (row,) = rss.start_anatomy(tmp_path / "r")
    assert row["queue_start_max_ms"] < 2.0
    assert abs(row["queue_after_route_max_ms"] - 40.0) < 0.5
    assert np.isnan(row["control_queue_start_max_ms"])


def test_a_run_without_a_replica_start_has_no_rows(tmp_path: Path) -> None:
    _run(tmp_path / "r", (21.0, 21.6), start=False)
    assert rss.start_anatomy(tmp_path / "r") == []
