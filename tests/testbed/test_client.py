"""The testbed's client contract: what a running testbed's status gives its drivers."""

from __future__ import annotations

import sys

from testbed.client import BackgroundLoad, command_hook, targets_from_status


def test_targets_from_testbed_status():
    status = {
        "backend": "local",
        "factor": 0.25,
        "gateway": "http://127.0.0.1:8000/",
        "nodes": [{"name": "node-1"}, {"name": "node-2"}],
        "instances": [
            {"name": "denoise-0", "component": "denoise", "node": "node-1", "port": 9001},
            {"name": "encoder-0", "component": "encoder", "node": "node-2", "port": 9002},
        ],
    }
    endpoints = {
        "gateway": "http://127.0.0.1:8000",
        "registry": "http://127.0.0.1:8001",
        "features": "http://127.0.0.1:8002",
        "nodes": {"node-1": "http://127.0.0.1:8101", "node-2": "http://127.0.0.1:8102"},
    }
    t = targets_from_status(status, endpoints)
    assert t.gateway == "http://127.0.0.1:8000" and t.factor == 0.25
    assert t.metrics["encoder-0"] == "http://127.0.0.1:9002"
    assert t.metrics["agent:node-1"] == "http://127.0.0.1:8101"
    assert t.metrics["registry"] == "http://127.0.0.1:8001"
    assert t.replica_nodes == {"denoise-0": "node-1", "encoder-0": "node-2"}
    assert t.server_of["denoise-0"] == "node-1" and t.server_of["agent:node-2"] == "node-2"
    assert t.server_of["gateway"] == "platform" and t.batch_hook is not None
    assert targets_from_status(status).batch_hook is None  # no trainer without endpoints


def test_background_load_runs_the_load_cli_and_stops_it(tmp_path):
    load = BackgroundLoad(tmp_path / "s.yaml", "steady-low", "http://127.0.0.1:9", tmp_path, 5.0)
    assert load.argv[:4] == [sys.executable, "-m", "loadgen.cli", "run"]
    assert not load.running()
    load.argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    load.start()
    assert load.running()
    load.stop()
    assert not load.running() and load.proc is not None and load.proc.returncode is not None


def test_command_hook_runs_to_completion(tmp_path):
    flag = tmp_path / "ran"
    command_hook([sys.executable, "-c", f"open({str(flag)!r}, 'w').close()"])("retrain", 0)
    assert flag.is_file()
