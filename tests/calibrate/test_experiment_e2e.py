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


def _leftovers() -> set[int]:
    """PIDs of testbed service processes running now."""
    res = subprocess.run(["pgrep", "-f", "testbed.services"], capture_output=True, text=True)
    return {int(p) for p in res.stdout.split()}


def test_experiment_ci_runs_end_to_end(tmp_path):
    before = _leftovers()
    env = {**os.environ, "ORT_DISABLE_TELEMETRY": "1"}
    out = tmp_path / "exp"
    # the model zoo is built once per checkout (data/models); reuse it when it is there
    built = (ROOT / "data" / "models" / "manifest.json").is_file()
    res = subprocess.run(
        [sys.executable, "-c", "from twin.cli import main; main()", "experiment", "--ci",
         "--out", str(out), "--rate-scale", "0.5", *(["--skip-build"] if built else [])],
        cwd=ROOT, capture_output=True, text=True, timeout=240, env=env,
    )  # fmt: skip
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
    assert _leftovers() <= before  # testbed down left nothing running
