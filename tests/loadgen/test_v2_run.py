"""``load run --protocol v2``: tensors described in the scenario reach a V2 server."""

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

from loadgen.tensors import body_pool, gateway_serving
from testbed.services import v2
from tests.testbed.helpers import serve_app
from twin.spec import Serving

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-c", "from mlops_twin.cli import main; main()"]


def scenario_file(tmp_path: Path, serving: dict) -> Path:
    doc = {
        "name": "v2-target",
        "servers": [{"name": "srv", "cpu_cores": 1, "ram_gb": 1}],
        "components": [
            {
                "name": "m",
                "variants": [
                    {
                        "name": "1",
                        "accuracy": 1,
                        "cpu_cores": 1,
                        "service_time": {"kind": "constant", "ms": 1},
                    }
                ],
            }
        ],
        "processes": [
            {
                "name": "req",
                "kind": "request",
                "serving": serving,
                "steps": [{"name": "infer", "component": "m"}],
            }
        ],
        "workloads": [{"kind": "steady", "name": "steady", "rate_per_s": 40}],
    }
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def echo_server(seen: list) -> object:
    """A V2 server whose model ``sum`` answers the sum of its two inputs' elements."""
    from starlette.applications import Starlette

    model = v2.ModelInfo(
        "sum", ["7"], [v2.TensorSpec("a", "FP32", (1, 3)), v2.TensorSpec("b", "INT64", (1, 2))], []
    )

    async def infer(_m, _v, inputs, _p):  # type: ignore[no-untyped-def]
        seen.append({k: (a.shape, a.dtype.name, a.tolist()) for k, a in inputs.items()})
        total = sum(float(a.sum()) for a in inputs.values())
        return {"total": np.array([total], dtype=np.float64)}, {}

    return Starlette(routes=v2.routes(lambda: [model], lambda: True, infer))


def test_body_pool_uses_file_rows_and_generated_ranges(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.arange(12, dtype=np.float32).reshape(4, 1, 3))
    serving = Serving.model_validate(
        {
            "model": "sum",
            "inputs": [
                {"name": "a", "shape": [1, 3], "data_file": str(tmp_path / "a.npy")},
                {"name": "b", "shape": [1, 2], "datatype": "INT64", "low": 5, "high": 9},
            ],
        }
    )
    bodies, truth = body_pool(serving, size=8)
    assert truth is None and len(bodies) == 8
    first = json.loads(bodies[5])["inputs"]
    assert first[0] == {"name": "a", "shape": [1, 3], "datatype": "FP32", "data": [3.0, 4.0, 5.0]}
    assert first[1]["datatype"] == "INT64" and all(5 <= x <= 9 for x in first[1]["data"])
    bodies, truth = body_pool(gateway_serving())
    assert len(bodies) == len(truth) == 1797  # the digits, with their labels
    bad = serving.model_copy(
        update={"inputs": [serving.inputs[0].model_copy(update={"shape": [1, 5]})]}
    )
    with pytest.raises(ValueError, match="cannot be split into tensors of shape"):
        body_pool(bad)


def test_load_run_v2_sends_the_scenario_tensors(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.arange(12, dtype=np.float32).reshape(4, 1, 3))
    serving = {
        "model": "sum",
        "version": "7",
        "inputs": [
            {"name": "a", "shape": [1, 3], "data_file": "a.npy"},
            {"name": "b", "shape": [1, 2], "datatype": "INT64", "low": 1, "high": 3},
        ],
    }
    scenario = scenario_file(tmp_path, serving)
    seen: list = []
    out = tmp_path / "run"
    with serve_app(echo_server(seen)) as url:
        res = subprocess.run(
            [
                *CLI,
                "load",
                "run",
                "-s",
                str(scenario),
                "--shape",
                "steady",
                "--duration",
                "3",
                "--target",
                url,
                "--out",
                str(out),
                "--drain",
                "3",
                "--protocol",
                "v2",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=180,
            env={**os.environ, "ORT_DISABLE_TELEMETRY": "1"},
        )
    assert res.returncode == 0, res.stderr
    req = pd.read_parquet(out / "requests.parquet")
    assert len(req) > 60 and req["ok"].all()
    assert len(seen) == len(req)
    assert all(s["a"][:2] == ((1, 3), "float32") and s["b"][1] == "int64" for s in seen)
    assert {tuple(s["a"][2][0]) for s in seen} <= {(0, 1, 2), (3, 4, 5), (6, 7, 8), (9, 10, 11)}
    assert json.loads((out / "run.json").read_text())["protocol"] == "v2"


def test_load_run_refuses_an_unknown_protocol(tmp_path: Path) -> None:
    scenario = scenario_file(tmp_path, {"model": "m", "inputs": [{"name": "x", "shape": [1]}]})
    res = subprocess.run(
        [
            *CLI,
            "load",
            "run",
            "-s",
            str(scenario),
            "--shape",
            "steady",
            "--target",
            "http://127.0.0.1:9",
            "--out",
            str(tmp_path / "r"),
            "--protocol",
            "grpc",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2 and "--protocol must be 'v1' or 'v2'" in res.stderr
