"""MLOps processes on the testbed: scheduling helpers, calibration of cpu_work, step jobs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lab.mlops_run import (
    alone_s,
    batch_processes,
    calibrate,
    fit_cpu_work,
    machines_of,
    per_process,
    quota_servers,
    scaled,
)
from twin.load import load_deployment, load_scenario

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def lab() -> tuple:
    return (
        load_scenario(EXAMPLES / "mlops-lab.yaml"),
        load_deployment(EXAMPLES / "mlops-lab.deployment.yaml"),
    )


def test_schedule_is_scaled_and_steps_are_known(lab: tuple) -> None:
    scenario, deployment = lab
    fast = scaled(scenario, 0.1)
    retrain = next(p for p in fast.processes if p.name == "retraining")
    assert retrain.arrivals.period_s == pytest.approx(30.0)
    assert retrain.arrivals.offset_s == pytest.approx(4.0)
    # deadlines go with the schedule (120 s → 12 s); the request pipeline's latency limit stays
    assert retrain.deadline_s == pytest.approx(12.0)
    assert next(p for p in fast.processes if p.name == "digits").deadline_s == pytest.approx(0.1)
    assert [p.name for p in batch_processes(fast)] == ["feature-refresh", "retraining"]
    assert machines_of(deployment, "data-prep") == ["edge-1", "edge-2"]
    bad = scenario.model_copy(
        update={
            "processes": [
                p.model_copy(update={"steps": [p.steps[0].model_copy(update={"name": "dance"})]})
                if p.name == "feature-refresh"
                else p
                for p in scenario.processes
            ]
        }
    )
    with pytest.raises(ValueError, match=r"feature-refresh\.steps\.dance"):
        batch_processes(bad)


def test_cpu_work_is_fitted_at_speed_one(lab: tuple) -> None:
    scenario, _ = lab
    rows = []
    for pid, wall in enumerate([2.0, 2.2, 1.8, 9.9]):
        # train on an edge box (cpu_speed 0.5), 0.5 s start-up, 0.25 s waiting on the link
        rows.append(
            {
                "process": "retraining",
                "step": "train",
                "pid": pid,
                "machine": "edge-1",
                "t_start": 10.0,
                "t_end": 10.0 + wall,
                "overhead_s": 0.5,
                "transfer_s": 0.25,
                "parts": 1,
            }
        )
    fitted = fit_cpu_work(scenario, pd.DataFrame(rows), {0, 1, 2})  # pid 3 is held out
    train = next(s for p in fitted.processes for s in p.steps if s.name == "train")
    assert train.cpu_work.mean_ms == pytest.approx((2.0 + 0.25) * 0.5 * 1000)
    assert 0.05 < train.cpu_work.cv < 0.2
    ingest = next(s for p in fitted.processes for s in p.steps if s.name == "ingest")
    assert ingest.cpu_work.mean_ms == 1500  # not measured: kept


def test_the_twin_of_the_testbed_runs_at_host_speed_under_its_quotas(lab: tuple) -> None:
    from testbed.capacity import plan_capacity

    scenario, _ = lab
    cap = plan_capacity(scenario, host_cores=2, reserve_cores=0.5)
    quotas = {n.name: n.cpu_cores for n in cap.nodes}
    # core: 2 cores × speed 1 × 0.5; edge: 1 core × speed 0.5 × 0.5
    assert quotas == {"core": 1.0, "edge-1": 0.25, "edge-2": 0.25}
    servers = quota_servers(scenario, quotas).server_of()
    assert {m: (s.cpu_speed, s.cpu_quota_cores) for m, s in servers.items()} == {
        "core": (1.0, 1.0),
        "edge-1": (1.0, 0.25),
        "edge-2": (1.0, 0.25),
    }
    with pytest.raises(ValueError, match="different quotas"):
        quota_servers(scenario, {**quotas, "edge-2": 0.5})
    rows = [
        {
            "process": "retraining",
            "step": "train",
            "pid": 0,
            "machine": m,
            "t_start": 0.0,
            "t_end": wall,
            "overhead_s": 0.5,
            "transfer_s": 0.5,
            "parts": 1,
        }
        for m, wall in [("edge-1", 8.0)]
    ]
    fitted = calibrate(scenario, pd.DataFrame(rows), {0}, quotas)
    train = next(s for p in fitted.processes for s in p.steps if s.name == "train")
    # a single-threaded job gets a quarter of a host core on an edge box: 8 s × 0.25
    assert train.cpu_work.mean_ms == pytest.approx(8.0 * 0.25 * 1000)


def test_time_shared_with_another_job_counts_half() -> None:
    v = pd.DataFrame(
        {
            "machine": ["edge-1", "edge-1", "core", "edge-1"],
            "t_start": [0.0, 4.0, 5.0, 20.0],
            "t_end": [10.0, 6.0, 8.0, 21.0],
        }
    )
    # edge-1 (0.25 cores): the first job shares 4…6 s with the second; the core job is
    # on another machine; the last one is alone
    got = alone_s(v, {"edge-1": 0.25, "core": 1.0})
    assert got.tolist() == pytest.approx([10.0 - 1.0, 1.0, 3.0, 1.0])
    # three jobs on a 2-core quota: each still gets a full core
    w = pd.DataFrame({"machine": ["m"] * 3, "t_start": [0.0, 0.0, 0.0], "t_end": [3.0] * 3})
    assert alone_s(w, {"m": 2.0}).tolist() == pytest.approx([2.0, 2.0, 2.0])


def test_per_process_counts_overruns_like_the_twin() -> None:
    ex = pd.DataFrame(
        {
            "process": ["a", "a", "a"],
            "pid": [0, 1, 2],
            "t_arrive": [0.0, 10.0, 20.0],
            "t_end": [5.0, 22.0, np.nan],
            "deadline_s": [10.0, 10.0, 10.0],
        }
    )
    t = per_process(ex, end_s=25.0)
    assert t.loc["a", "n"] == 3
    assert t.loc["a", "overruns"] == 1  # 12 s > 10 s; the unfinished one is censored at 5 s
    assert t.loc["a", "mean_s"] == pytest.approx((5 + 12 + 5) / 3)


def _job(tmp: Path, kind: str, *args: str) -> dict:
    rec = tmp / f"{kind}.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "testbed.services.step_job",
            "--kind",
            kind,
            "--record",
            str(rec),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(rec.read_text())


def test_prepare_train_evaluate_jobs(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    with open(tmp_path / "rows.bin", "wb") as f:
        np.savez(f, x=x[:600].astype(np.float32), y=y[:600])
    parts = []
    for i in range(2):
        out = tmp_path / f"p{i}.bin"
        rec = _job(
            tmp_path,
            "prepare",
            "--inputs",
            str(tmp_path / "rows.bin"),
            "--out",
            str(out),
            "--part",
            str(i),
            "--parts",
            "2",
            "--augment",
            "1",
            "--link-mbps",
            "40",
        )
        assert rec["detail"]["rows"] == 600  # half the rows, two copies each
        assert rec["transfer_s"] == pytest.approx(rec["bytes_in"] * 8 / 40e6)
        parts.append(str(out))
    rec = _job(
        tmp_path,
        "train",
        "--inputs",
        ",".join(parts),
        "--out",
        str(tmp_path / "m.onnx"),
        "--steps",
        "150",
    )
    assert rec["detail"]["rows"] == 1200 and rec["cpu_s"] > 0
    rec = _job(
        tmp_path, "evaluate", "--inputs", str(tmp_path / "m.onnx"), "--out", str(tmp_path / "e.bin")
    )
    assert rec["detail"]["accuracy"] > 0.6


def _visit(step: str, process: str, pid: int, machine: str, wall: float, cpu: float) -> dict:
    return {
        "process": process,
        "step": step,
        "pid": pid,
        "machine": machine,
        "t_start": 100.0 * pid,
        "t_end": 100.0 * pid + wall,
        "overhead_s": 0.1,
        "transfer_s": 0.0,
        "cpu_s": cpu,
        "parts": 1,
    }


def test_the_time_beyond_a_jobs_cpu_is_fitted_as_its_wait(lab: tuple) -> None:
    scenario, _ = lab
    quotas = {"core": 1.0, "edge-1": 0.25, "edge-2": 0.25}
    rows = [
        # materialize on the core server (a full core): 0.5 s in all, 0.2 s of it CPU
        _visit("materialize", "feature-refresh", 0, "core", 0.4, 0.2),
        _visit("materialize", "feature-refresh", 2, "core", 0.6, 0.2),
        # ingest on an edge box (a quarter core): 2.5 s, 0.25 s of CPU = 1 s there
        _visit("ingest", "feature-refresh", 0, "edge-1", 2.4, 0.25),
        # more CPU than the time allows at a quarter core: no wait, all work
        _visit("register", "retraining", 0, "edge-2", 0.9, 0.5),
    ]
    v = pd.DataFrame(rows)

    def step(sc, name):
        return next(s for p in sc.processes for s in p.steps if s.name == name)

    every = calibrate(scenario, v, {0, 2}, quotas, waits="every")
    m = step(every, "materialize")
    assert m.cpu_work.mean_ms == pytest.approx(200.0)
    assert m.wait.mean_ms == pytest.approx(400.0)  # 0.3 s and 0.5 s
    assert m.wait.cv == pytest.approx(1.4826 * 0.1 / 0.4)  # MAD / median, robust
    i = step(every, "ingest")
    assert i.cpu_work.mean_ms == pytest.approx(250.0)
    assert i.wait.mean_ms == pytest.approx(1500.0)
    r = step(every, "register")
    assert r.wait is None
    assert r.cpu_work.mean_ms == pytest.approx(1.0 * 0.25 * 1000)  # the whole time × rate
    # by default a quarter-core box's rest is the machine's throttling, not a wait
    default = calibrate(scenario, v, {0, 2}, quotas)
    assert step(default, "materialize").wait.mean_ms == pytest.approx(400.0)
    assert step(default, "ingest").wait is None
    assert step(default, "ingest").cpu_work.mean_ms == pytest.approx(2.5 * 0.25 * 1000)
    none = calibrate(scenario, v, {0, 2}, quotas, waits="none")
    assert step(none, "materialize").wait is None
    assert step(none, "materialize").cpu_work.mean_ms == pytest.approx(600.0)
    with pytest.raises(ValueError, match="waits: expected one of"):
        calibrate(scenario, v, {0, 2}, quotas, waits="some")


def test_one_slow_execution_does_not_set_a_steps_spread(lab: tuple) -> None:
    scenario, _ = lab
    quotas = {"core": 1.0, "edge-1": 0.25, "edge-2": 0.25}
    # five materializes on the core server, all CPU; one slowed threefold (warm-up)
    walls = [0.5, 0.51, 0.49, 0.5, 1.5]
    v = pd.DataFrame(
        [
            {**_visit("materialize", "feature-refresh", 2 * i, "core", w, 10.0), "overhead_s": 0.0}
            for i, w in enumerate(walls)
        ]
    )
    fitted = calibrate(scenario, v, {0, 2, 4, 6, 8}, quotas)
    m = next(s for p in fitted.processes for s in p.steps if s.name == "materialize")
    assert m.cpu_work.mean_ms == pytest.approx(1000 * sum(walls) / 5)  # the mean keeps it
    assert m.cpu_work.cv == pytest.approx(1.4826 * 0.01 / 0.5)  # the spread does not


def test_a_split_steps_part_is_fitted_as_work_every_part_does(lab: tuple) -> None:
    scenario, _ = lab
    quotas = {"core": 1.0, "edge-1": 0.25, "edge-2": 0.25}
    # prepare in two parts, each all CPU: 0.5 s on the core server (a full core) and
    # 2.0 s on an edge box (a quarter core): 0.5 s of host-core work each
    rows = [
        {**_visit("prepare", "retraining", 0, "core", 0.4, 0.5), "parts": 2},
        {**_visit("prepare", "retraining", 0, "edge-2", 1.9, 0.5), "parts": 2},
    ]
    v = pd.DataFrame(rows)

    def prepare(sc):
        return next(s for p in sc.processes for s in p.steps if s.name == "prepare")

    each = prepare(calibrate(scenario, v, {0}, quotas))
    assert each.part_cpu_work.mean_ms == pytest.approx(500.0)
    assert each.cpu_work.ms == 0  # nothing the parts share
    assert each.wait is None
    share = prepare(calibrate(scenario, v, {0}, quotas, parts="share"))
    assert share.part_cpu_work is None
    assert share.cpu_work.mean_ms == pytest.approx(1000.0)  # split again in two: 0.5 s each
    # a step measured in one part keeps its cpu_work under either rule
    one = pd.DataFrame([_visit("train", "retraining", 0, "core", 2.9, 3.0)])
    train = next(
        s
        for p in calibrate(scenario, one, {0}, quotas).processes
        for s in p.steps
        if s.name == "train"
    )
    assert train.cpu_work.mean_ms == pytest.approx(3000.0) and train.part_cpu_work is None
    with pytest.raises(ValueError, match="parts: expected one of"):
        calibrate(scenario, v, {0}, quotas, parts="half")


def test_a_jobs_exit_is_fitted_as_work_not_as_a_wait(lab: tuple) -> None:
    scenario, _ = lab
    quotas = {"core": 1.0, "edge-1": 0.25, "edge-2": 0.25}
    # train on the core server: 0.1 s start-up, 3.0 s in its record (2.5 s of CPU),
    # then 0.9 s until the runner sees it gone (the interpreter tearing torch down)
    row = {**_visit("train", "retraining", 0, "core", 3.9, 2.5), "compute_s": 3.0}
    fitted = calibrate(scenario, pd.DataFrame([row]), {0}, quotas)
    train = next(s for p in fitted.processes for s in p.steps if s.name == "train")
    assert train.cpu_work.mean_ms == pytest.approx(3400.0)  # 2.5 s + the 0.9-s exit
    assert train.wait.mean_ms == pytest.approx(600.0)  # 4.0 s in all − 3.4 s of CPU
