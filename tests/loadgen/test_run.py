"""End to end: Locust workers against a fake gateway honouring testbed.api's contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from fake_gateway import FakeGateway

from loadgen.run import LoadRun, execute
from loadgen.schedule import arrival_schedule
from twin.load import load_scenario
from twin.workload import scale_workload

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "examples" / "digits-pipeline.yaml"
CLI = [sys.executable, "-c", "from mlops_twin.cli import main; main()"]


def test_cli_run_logs_every_request_and_writes_the_run_folder(tmp_path):
    out = tmp_path / "run"
    images = np.arange(5 * 64, dtype=float).reshape(5, 64) % 17
    np.savez(tmp_path / "inputs.npz", x=images, y=np.array([4, 3, 2, 1, 0]))
    with FakeGateway(fail_every=25) as gw:
        res = subprocess.run(
            [
                *CLI,
                "load",
                "run",
                "-s",
                str(SCENARIO),
                "--shape",
                "fluctuating",
                "--duration",
                "6",
                "--rate-scale",
                "0.4",
                "--target",
                gw.url,
                "--out",
                str(out),
                "--seed",
                "5",
                "--drain",
                "5",
                "--metrics",
                f"gateway={gw.url}",
                "--scrape-interval",
                "0.5",
                "--inputs-file",
                str(tmp_path / "inputs.npz"),
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=180,
            env={**os.environ, "ORT_DISABLE_TELEMETRY": "1"},
        )
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    for name in ("requests", "visits", "per_second", "metrics"):
        assert (out / f"{name}.parquet").is_file()
    for name in ("prometheus.yml", "summary.json", "run.json", "report.md"):
        assert (out / name).is_file()

    req = pd.read_parquet(out / "requests.parquet")
    sc = load_scenario(SCENARIO)
    schedule = arrival_schedule(scale_workload(sc.workload("fluctuating"), 0.4), "digits", 6, 5)
    assert len(req) == schedule.size > 100  # every scheduled request, none invented
    assert np.allclose(req["t_arrive"], schedule)
    assert (req["status"] != -1).all()  # all answered: nothing lost in the load generator
    failed = int((req["status"] == 503).sum())
    assert failed == len(req) // 25  # the gateway fails every 25th request it receives
    assert summary["failures"] == failed and summary["ok"] == len(req) - failed
    ok = req[req["ok"]]
    assert (ok["t_end"] > ok["t_arrive"]).all()
    # the file's images were sent: the fake labels each by its pixel sum, truth comes from y
    assert (ok["label"] == images.sum(axis=1)[ok["input"]].astype(int) % 10).all()
    assert (ok["truth"] == 4 - ok["input"]).all() and set(ok["input"]) == set(range(5))
    assert ok["lag_s"].median() < 0.05  # released on time (loose: the machine is shared)

    visits = pd.read_parquet(out / "visits.parquet")
    assert len(visits) == 3 * len(ok)
    assert np.allclose(
        visits["t_end"] - visits["t_start"], np.tile([0.001, 0.002, 0.0005], len(ok))
    )

    per = pd.read_parquet(out / "per_second.parquet")
    assert per["offered"].sum() == len(req)
    assert per["rps"].sum() + per["failures"].sum() <= len(req)
    assert per["rps"].sum() >= len(ok) - 5 * 6  # answers after the last second are not binned

    metrics = pd.read_parquet(out / "metrics.parquet")
    up = metrics[metrics["metric"] == "up"]
    assert len(up) >= 6 and (up["value"] == 1).all()
    served = metrics[metrics["metric"] == "gateway_requests_total"]
    assert served.groupby("labels")["value"].max().sum() == len(req)

    prom = yaml.safe_load((out / "prometheus.yml").read_text())
    assert prom["scrape_configs"][0]["static_configs"][0]["targets"] == [gw.url[7:]]
    meta = json.loads((out / "run.json").read_text())
    assert meta["workload"]["base_per_s"] == pytest.approx(0.4 * 80)


def test_two_workers_share_one_schedule_and_a_dead_target_counts_as_failures(tmp_path):
    sc = load_scenario(SCENARIO)
    w = scale_workload(sc.workload("steady-low"), 0.5)
    with FakeGateway() as gw:
        run = LoadRun(sc, w, gw.url, duration_s=4, seed=2, workers=2, drain_s=3, inputs="entity")
        result = execute(run, tmp_path / "raw")
    req = result.requests
    assert len(req) == arrival_schedule(w, "digits", 4, 2).size
    assert req["ok"].all()
    raw = [pd.read_parquet(tmp_path / "raw" / f"worker-{i}.parquet") for i in range(2)]
    assert sorted(np.concatenate([r["pid"] for r in raw])) == list(range(len(req)))
    assert set(raw[0]["pid"] % 2) == {0} and set(raw[1]["pid"] % 2) == {1}
    assert (req["label"] == req["input"] % 10).all()  # entity ids reached the gateway

    dead = LoadRun(sc, w, "http://127.0.0.1:9", duration_s=2, seed=2, drain_s=2, timeout_s=2)
    result = execute(dead, tmp_path / "dead")
    assert len(result.requests) > 0 and not result.requests["ok"].any()
    assert result.requests["error"].str.contains("onnect").all()
