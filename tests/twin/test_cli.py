"""The twin's commands as a user runs them: results on stdout, errors without tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from twin.cli import app
from twin.load import dump_yaml, load_deployment, load_scenario

from .conftest import EXAMPLES

runner = CliRunner()
SCENARIO = str(EXAMPLES / "edge-cloud.yaml")
DEPLOYMENT = str(EXAMPLES / "edge-cloud.deployment.yaml")


def test_simulate_json_matches_the_library(tmp_path: Path) -> None:
    from twin.evaluate import evaluate

    args = [
        "simulate",
        SCENARIO,
        "-d",
        DEPLOYMENT,
        "-w",
        "steady-high",
        "--horizon",
        "600",
        "--replications",
        "3",
        "--seed",
        "4",
        "--workers",
        "1",
        "--json",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    direct = evaluate(
        load_scenario(SCENARIO), load_deployment(DEPLOYMENT), "steady-high", 600, 3, 4
    )
    for name, value in zip(
        ("time_mean_s", "time_var_s2", "overruns", "cost"), direct.criteria(), strict=True
    ):
        assert data["criteria"][name]["mean"] == value
    assert data["workload"] == "steady-high" and data["replications"] == 3


def test_simulate_writes_a_run_folder(tmp_path: Path) -> None:
    out = tmp_path / "runs" / "sim"
    args = [
        "simulate",
        SCENARIO,
        "-d",
        DEPLOYMENT,
        "--horizon",
        "900",
        "--replications",
        "2",
        "--workers",
        "1",
        "--out",
        str(out),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} >= {
        "inputs",
        "results.parquet",
        "visits.parquet",
        "requests.parquet",
        "report.md",
        "latency_cdf.png",
    }
    results = pd.read_parquet(out / "results.parquet")
    assert list(results["replication"]) == [0, 1]
    assert "| time_mean_s |" in (out / "report.md").read_text()
    assert not list(tmp_path.joinpath("runs").glob(".sim.*")), "temporary folder left behind"


def test_simulated_deployment_yaml_round_trips(tmp_path: Path) -> None:
    dep = load_deployment(DEPLOYMENT)
    path = tmp_path / "again.yaml"
    path.write_text(dump_yaml(dep))
    assert load_deployment(path) == dep


def test_infeasible_deployment_is_refused_by_simulate(tmp_path: Path) -> None:
    bad = load_deployment(DEPLOYMENT).model_copy(
        update={"allocation": dict(load_deployment(DEPLOYMENT).allocation) | {"trainer": {}}}
    )
    path = tmp_path / "bad.yaml"
    path.write_text(dump_yaml(bad))
    result = runner.invoke(app, ["simulate", SCENARIO, "-d", str(path)])
    assert result.exit_code == 2
    assert "component trainer: no instance" in result.output and "Traceback" not in result.output


def test_unknown_workload_names_the_known_ones() -> None:
    result = runner.invoke(app, ["simulate", SCENARIO, "-d", DEPLOYMENT, "-w", "tsunami"])
    assert result.exit_code == 2 and "steady-low" in result.output


def test_schema_is_json_schema_of_the_spec() -> None:
    result = runner.invoke(app, ["schema"])
    schema = json.loads(result.stdout)
    assert set(schema["required"]) >= {"name", "servers", "components", "processes"}
    assert "Server" in schema["$defs"]
    dep = json.loads(runner.invoke(app, ["schema", "--deployment"]).stdout)
    assert "allocation" in dep["properties"]


def test_scenario_with_a_fitted_table_round_trips(tmp_path: Path) -> None:
    from twin.load import load_scenario as load

    sc = load(EXAMPLES / "digits-pipeline.yaml")
    stage = sc.components[0]
    table = {
        "kind": "table",
        "dist": "gamma",
        "points": {1: {"mean_ms": 1.0, "cv": 0.2}, 8: {"mean_ms": 3.5, "cv": 0.1}},
    }
    variant = stage.variants[0].model_copy(update={"service_time": None})
    fitted = type(stage.variants[0]).model_validate(
        variant.model_dump(exclude={"service_time"}) | {"service_time": table}
    )
    comp = stage.model_copy(update={"variants": [fitted, *stage.variants[1:]]})
    sc2 = sc.model_copy(update={"components": [comp, *sc.components[1:]]})
    path = tmp_path / "fitted.yaml"
    path.write_text(dump_yaml(sc2))
    back = load(path)
    assert back.components[0].variants[0].service_time.points[8].mean_ms == 3.5
