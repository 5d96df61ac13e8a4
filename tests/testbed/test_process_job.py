"""Step workers and a process job: a batch process's DAG run over loopback."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import httpx
import pytest

from testbed.services.process_job import main as job_main
from testbed.services.process_job import parse_endpoints, parts_of, run_process
from testbed.services.step_worker import burn_cpu, create_app
from tests.testbed.helpers import serve_app
from twin.load import load_deployment, load_scenario

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_burn_cpu_spends_the_cpu_time_it_is_asked_for():
    import time

    t0 = time.thread_time()
    burn_cpu(30)
    assert 0.030 <= time.thread_time() - t0 < 0.045


def test_worker_refuses_bad_bodies_and_counts_runs():
    with serve_app(create_app("w")) as url:
        for body, field in (
            ({"cpu_ms": -1}, "cpu_ms"),
            ({"gpu_ms": "5"}, "gpu_ms"),
            ({"step": ""}, "step"),
            ({"cpu_ms": 1, "extra": 1}, "unknown keys"),
        ):
            r = httpx.post(f"{url}/run", json=body)
            assert r.status_code == 400 and field in r.json()["error"], (body, r.text)
        r = httpx.post(f"{url}/run", json={"step": "s", "cpu_ms": 5, "gpu_ms": 10})
        assert r.status_code == 200 and r.json()["wall_ms"] >= 15
        assert 'step_runs_total{step="s"} 1.0' in httpx.get(f"{url}/metrics").text


def test_edge_cloud_processes_run_their_dag_on_step_workers(capsys):
    sc = load_scenario(EXAMPLES / "edge-cloud.yaml")
    dep = load_deployment(EXAMPLES / "edge-cloud.deployment.yaml")
    p = sc.process("data-preparation")
    with serve_app(create_app("all", slots=8)) as url:
        endpoints = {c.name: url for c in sc.components}
        lines: list[str] = []
        # 1e-4: the 20 s ingest step burns 2 ms
        summary = run_process(sc, dep, p.name, endpoints, seed=1, scale=1e-4, say=lines.append)
    steps = [json.loads(x) for x in lines]
    assert [s["step"] for s in steps] == ["ingest", "clean", "materialise"]  # the DAG's order
    assert all(a["end_s"] <= b["end_s"] for a, b in itertools.pairwise(steps))
    clean = next(s for s in steps if s["step"] == "clean")
    assert clean["parts"] == parts_of(p, p.step("clean"), dep)
    assert summary["steps"] == 3 and summary["deadline_met"] is None


def test_job_names_the_step_and_endpoint_that_failed(capsys, tmp_path):
    from testbed.services.node_agent import free_port

    dead = f"http://127.0.0.1:{free_port('127.0.0.1')}"
    sc = load_scenario(EXAMPLES / "edge-cloud.yaml")
    argv = ["--scenario", str(EXAMPLES / "edge-cloud.yaml")]
    argv += ["--deployment", str(EXAMPLES / "edge-cloud.deployment.yaml")]
    argv += ["--process", "drift-check", "--work-scale", "0.0001"]
    for c in {s.component for s in sc.process("drift-check").steps}:
        argv += ["--endpoint", f"{c}={dead}"]
    assert job_main(argv) == 1
    err = capsys.readouterr().err
    assert "process job failed: step" in err and dead in err
    assert job_main([*argv[:6], "--process", "nope"]) == 1
    assert "no process 'nope'" in capsys.readouterr().err


def test_endpoint_items_are_checked():
    assert parse_endpoints(["a=http://h:1"]) == {"a": "http://h:1"}
    with pytest.raises(ValueError, match="COMPONENT=http"):
        parse_endpoints(["a:http://h:1"])
