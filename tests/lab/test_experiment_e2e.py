"""`mlops-twin experiment --ci` end to end on the real local testbed (≤ 2 minutes)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("testbed.cli") is None, reason="the testbed CLI is not there yet"
    ),
]


def _leftovers(ports: set[int], marker: str) -> list[str]:
    """Testbed service processes still running that this run started.

    Other work on the machine may run testbeds too, so only processes listening on
    one of this run's ports or naming its state folder count.
    """
    res = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True)
    mine = []
    for line in res.stdout.splitlines():
        if "testbed.services" not in line:
            continue
        args = line.split()
        port = args[args.index("--port") + 1] if "--port" in args[:-1] else ""
        if (port.isdigit() and int(port) in ports) or marker in line:
            mine.append(line)
    return mine


def test_experiment_ci_runs_end_to_end(tmp_path):
    env = {**os.environ, "ORT_DISABLE_TELEMETRY": "1"}
    out = tmp_path / "exp"
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            "from mlops_twin.cli import main; main()",
            "experiment",
            "--ci",
            "--out",
            str(out),
            "--rate-scale",
            "0.5",
            "--state-dir",
            str(tmp_path / "state"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=480,
        env=env,  # + a zoo build if none
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "| steady-high |" in res.stdout
    summary = json.loads((out / "summary.json").read_text())
    rows = {r["workload"]: r for r in summary["table"]}
    assert set(rows) == {"steady-low", "fluctuating", "steady-high"}
    for r in rows.values():
        assert r["achieved_over_offered"] > 0.5  # real answers came back
        assert r["twin_p50_ms"] > 0 and r["testbed_p50_ms"] > 0
    visits = pd.read_parquet(out / "load" / "steady-low" / "visits.parquet")
    assert set(visits["component"].astype(str)) == {"denoise", "encoder", "classifier"}
    for png in ("rps.png", "latency.png", "latency_cdf.png", "cpu.png"):
        assert (out / png).is_file()
    # calibrate → validate: the twin compared is the one fitted on the fit runs
    assert summary["calibrated"] is True
    assert (
        "## Calibrated twin vs testbed (held-out workloads)"
        in res.stdout + (out / "report.md").read_text()
    )
    calibrated = (out / "calibrated-scenario.yaml").read_text()
    assert "request_overhead" in calibrated
    # testbed down left nothing running: every service this run scraped is gone
    meta = json.loads((out / "load" / "steady-low" / "run.json").read_text())
    ports = {int(u.rsplit(":", 1)[1].split("/")[0]) for u in meta["metrics_targets"].values()}
    assert len(ports) >= 7  # gateway, registry, features, 3 node agents, ≥ 3 stages
    assert _leftovers(ports, str(tmp_path / "state")) == []
