"""≥ 500 malformed scenario and deployment documents: each is refused cleanly.

Every mutation below is built to make the document invalid (a base document
that validates is mutated in one place), so each must exit non-zero with a
one-paragraph message naming the file — never a traceback.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from twin.cli import app

from .conftest import EXAMPLES

runner = CliRunner()


def _base_scenario() -> dict[str, Any]:
    doc = yaml.safe_load((EXAMPLES / "edge-cloud.yaml").read_text())
    doc["workloads"] = [w for w in doc["workloads"] if w["kind"] != "trace"]
    return doc


BASE = _base_scenario()
BASE_DEPLOYMENT = yaml.safe_load((EXAMPLES / "edge-cloud.deployment.yaml").read_text())

BAD_NUMBERS = [-1, -0.5, "abc", [], {}, None, ".nan", float("inf"), True]
BAD_NAMES = ["", "has space", "a.b", "bad/slash", "x" * 80, "-leading", 12]


def _pick(data: st.DataObject, seq: list[Any]) -> Any:
    return data.draw(st.sampled_from(seq))


def mutate_scenario(doc: dict[str, Any], data: st.DataObject) -> str | dict | list | Any:
    kind = _pick(
        data,
        [
            "drop",
            "number",
            "extra",
            "reference",
            "duplicate",
            "dag",
            "kind",
            "name",
            "top",
            "accuracy",
        ],
    )
    server = _pick(data, doc["servers"])
    comp = _pick(data, doc["components"])
    proc = _pick(data, doc["processes"])
    step = _pick(data, proc["steps"])
    if kind == "drop":
        target, key = _pick(
            data,
            [
                (doc, "name"),
                (doc, "servers"),
                (doc, "processes"),
                (server, "cpu_cores"),
                (server, "ram_gb"),
                (server, "name"),
                (comp, "name"),
                (proc, "steps"),
                (step, "component"),
                (step, "name"),
            ],
        )
        del target[key]
    elif kind == "number":
        target, key = _pick(
            data,
            [
                (server, "cpu_cores"),
                (server, "ram_gb"),
                (server, "count"),
                (server, "bandwidth_mbps"),
                (comp, "max_batch"),
                (comp, "max_replicas"),
                (proc, "deadline_s"),
            ],
        )
        target[key] = _pick(data, BAD_NUMBERS)
        if target[key] is None and key == "deadline_s":
            target[key] = 0  # an absent deadline is allowed; a zero one is not
    elif kind == "extra":
        target = _pick(data, [doc, server, comp, proc, step])
        target[_pick(data, ["colour", "cpu", "ramGB", "replicas_max"])] = 1
    elif kind == "reference":
        if data.draw(st.booleans()):
            step["component"] = "no-such-component"
        else:
            step["depends_on"] = ["no-such-step"]
    elif kind == "duplicate":
        seq = _pick(data, [doc["servers"], doc["components"], doc["processes"]])
        seq.append(copy.deepcopy(seq[0]))
    elif kind == "dag":
        chain = next(p for p in doc["processes"] if len(p["steps"]) >= 2)
        chain["steps"][0]["depends_on"] = [chain["steps"][-1]["name"]]
    elif kind == "kind":
        stage = next(c for c in doc["components"] if c.get("variants"))
        v = _pick(data, stage["variants"])
        v["service_time"] = _pick(
            data, [{"kind": "weibull", "mean_ms": 3}, {"mean_ms": 3}, {"kind": "lognormal"}, "fast"]
        )
    elif kind == "name":
        _pick(data, [server, comp, proc, step])["name"] = _pick(data, BAD_NAMES)
    elif kind == "accuracy":
        stage = next(c for c in doc["components"] if c.get("variants"))
        _pick(data, stage["variants"])["accuracy"] = _pick(data, [1.5, -0.1, "high"])
    else:
        return _pick(data, [[1, 2, 3], "just a string", 42, None])
    return doc


def corrupt_text(text: str, data: st.DataObject) -> str | bytes:
    how = _pick(data, ["truncate", "tab", "colons", "binary", "bracket", "empty"])
    if how == "truncate":
        cut = data.draw(st.integers(10, len(text) - 10))
        return text[:cut] + "\n  - {name: [unclosed\n"
    if how == "tab":
        return text.replace("servers:\n", "servers:\n\t- bad: tab\n", 1)
    if how == "colons":
        return text + "\n: : :\n  - - ]\n"
    if how == "binary":
        return b"\xff\xfe\x00garbage\x81" + text.encode()[:50]
    if how == "bracket":
        return "{" + text
    return ""


def mutate_deployment(doc: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    kind = _pick(
        data,
        [
            "machine",
            "count",
            "component",
            "variant",
            "batch",
            "overload",
            "missing",
            "parallel_key",
            "parallel_max",
            "extra",
            "stage",
        ],
    )
    if kind == "machine":
        doc["allocation"]["gateway"] = {"mars-1": 1}
    elif kind == "count":
        doc["allocation"]["gateway"] = {"onprem-3": _pick(data, [-1, "two", 1.5, None])}
    elif kind == "component":
        doc["allocation"]["ghost"] = {"onprem-1": 1}
    elif kind == "variant":
        doc["stages"]["encoder"] = {"variant": "gigantic"}
    elif kind == "batch":
        doc["stages"]["classifier"] = {"variant": "mlp", "batch": 999}
    elif kind == "overload":
        doc["allocation"]["encoder"] = {"edge-1": data.draw(st.integers(3, 8))}  # 2 cores each
    elif kind == "missing":
        doc["allocation"][_pick(data, sorted(doc["allocation"]))] = {}
    elif kind == "parallel_key":
        doc["parallelism"] = {"nodot": 2}
    elif kind == "parallel_max":
        doc["parallelism"] = {"data-preparation.clean": 50}
    elif kind == "extra":
        doc["replicas"] = 3
    else:
        doc["stages"]["feature-store"] = {"batch": 2}
    return doc


def _check_refused(path: Path, args: list[str]) -> None:
    result = runner.invoke(app, ["validate", str(path), *args])
    out = result.output
    assert result.exit_code == 2, f"exit {result.exit_code} for {path.read_bytes()[:300]!r}:\n{out}"
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in out
    assert out.strip(), "no message"
    assert "\n\n" not in out.strip(), f"not one paragraph:\n{out}"
    assert path.name in out, f"message does not name the file:\n{out}"


def test_the_base_documents_are_valid(tmp_path: Path) -> None:
    sc = tmp_path / "scenario.yaml"
    sc.write_text(yaml.safe_dump(BASE))
    dep = tmp_path / "deployment.yaml"
    dep.write_text(yaml.safe_dump(BASE_DEPLOYMENT))
    assert runner.invoke(app, ["validate", str(sc)]).exit_code == 0
    assert runner.invoke(app, ["validate", str(dep), "--scenario", str(sc)]).exit_code == 0


FUZZ = settings(
    max_examples=220, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(data=st.data())
def test_malformed_scenarios_are_refused(tmp_path: Path, data: st.DataObject) -> None:
    doc = mutate_scenario(copy.deepcopy(BASE), data)
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(doc))
    _check_refused(path, [])


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_corrupt_yaml_is_refused(tmp_path: Path, data: st.DataObject) -> None:
    text = corrupt_text(yaml.safe_dump(BASE), data)
    path = tmp_path / "scenario.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    _check_refused(path, [])


@FUZZ
@given(data=st.data())
def test_malformed_deployments_are_refused(tmp_path: Path, data: st.DataObject) -> None:
    scenario = tmp_path / "scenario.yaml"
    if not scenario.exists():
        scenario.write_text(yaml.safe_dump(BASE))
    doc = mutate_deployment(copy.deepcopy(BASE_DEPLOYMENT), data)
    path = tmp_path / "deployment.yaml"
    path.write_text(yaml.safe_dump(doc))
    _check_refused(path, ["--scenario", str(scenario)])


@pytest.mark.parametrize("missing", ["nope.yaml", "."])
def test_missing_or_wrong_path(tmp_path: Path, missing: str) -> None:
    result = runner.invoke(app, ["validate", str(tmp_path / missing)])
    assert result.exit_code == 2 and "Traceback" not in result.output
