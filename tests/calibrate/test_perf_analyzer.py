"""perf_analyzer CSV import: columns as its documentation gives them (microseconds)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from calibrate import calibration as cal
from calibrate.perf_analyzer import import_csv, lognormal_cv
from twin.load import load_deployment, load_scenario

CLI = [sys.executable, "-c", "from mlops_twin.cli import main; main()"]
HEADER = (
    "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,"
    "Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,"
    "p50 latency,p90 latency,p95 latency,p99 latency,Avg latency,request/response,response wait"
)
# perf_analyzer sorts its rows by throughput, not by level: level 1 is deliberately not first
ROWS = (
    "2,390.1,40,900,1500,30,3000,20,15,5400,6100,6600,7900,5500,0,0",
    "1,240.5,40,850,60,30,3000,20,15,4000,4400,4600,5200,4015,0,0",
)


def write(tmp_path: Path, *rows: str, header: str = HEADER) -> Path:
    path = tmp_path / "pa.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_import_reads_the_lowest_level_in_milliseconds(tmp_path: Path) -> None:
    doc, scenario, dep, summary = import_csv(write(tmp_path, *ROWS), "resnet", "3", batch=2)
    (fit,) = doc.fits
    assert (fit.component, fit.variant, fit.batches) == ("resnet", "3", [2])
    st = fit.service_time
    assert st.batch_mean_ms(2) == pytest.approx(3.05)  # input + infer + output at concurrency 1
    cv = lognormal_cv(4000, 4600)
    assert st.batch_cv(2) == pytest.approx(cv) and 0.05 < cv < 0.15
    assert doc.overheads.per_request.mean_ms == pytest.approx(0.905)  # send + network + recv
    assert summary["level"] == "Concurrency 1" and summary["queue_ms"] == pytest.approx(0.06)
    (proc,) = scenario.processes
    assert proc.request_overhead.mean_ms == pytest.approx(0.905)
    assert proc.serving.model == "resnet" and proc.serving.version == "3"
    assert scenario.component("resnet").variants[0].service_time == st
    assert dep.allocation == {"resnet": {"server": 1}}
    text = cal.dump(doc)
    (tmp_path / "c.yaml").write_text(text)
    assert cal.load(tmp_path / "c.yaml") == doc  # the usual calibration format, read back


def test_cli_writes_a_scenario_the_twin_simulates(tmp_path: Path) -> None:
    out = tmp_path / "cal"
    env = {**os.environ, "ORT_DISABLE_TELEMETRY": "1"}
    res = subprocess.run(
        [
            *CLI,
            "calibrate",
            "import-perf-analyzer",
            str(write(tmp_path, *ROWS)),
            "--model",
            "resnet",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert res.returncode == 0, res.stderr
    sc = load_scenario(out / "scenario.yaml")
    load_deployment(out / "deployment.yaml")
    assert sc.component("resnet").variants[0].name == "default"
    res = subprocess.run(
        [
            *CLI,
            "simulate",
            str(out / "scenario.yaml"),
            "-d",
            str(out / "deployment.yaml"),
            "--workload",
            "steady-50",
            "--horizon",
            "30",
            "--replications",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not a perf_analyzer CSV"),
        ("a,b\n1,2\n", "no load-level column; expected 'Concurrency' or 'Request Rate'"),
        (HEADER.replace("Server Queue,", "") + "\n", "missing column(s) ['Server Queue']"),
        (HEADER + "\n", "no rows"),
        (
            HEADER + "\n" + ROWS[1].replace("3000", "n/a") + "\n",
            "row 2, column 'Server Compute Infer': expected a number ≥ 0, got 'n/a'",
        ),
    ],
)
def test_bad_or_partial_files_get_a_clear_message(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        import_csv(path, "m")
    assert message in str(info.value) and str(path) in str(info.value)


def test_cli_bad_file_is_one_line_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("Concurrency,Inferences/Second\n1,2\n")
    res = subprocess.run(
        [
            *CLI,
            "calibrate",
            "import-perf-analyzer",
            str(path),
            "--model",
            "m",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and "missing column(s)" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "o").exists()


def test_request_rate_rows(tmp_path: Path) -> None:
    header = HEADER.replace("Concurrency", "Request Rate")
    _, _, _, summary = import_csv(write(tmp_path, *ROWS, header=header), "m")
    assert summary["level"] == "Request Rate 1"


# What perf_analyzer 2.60 wrote against MLServer (no Triton statistics extension):
# client-side columns only.
CLIENT_ONLY = (
    "Concurrency,Inferences/Second,Client Send,Client Recv,"
    "p50 latency,p90 latency,p95 latency,p99 latency"
)


def test_client_side_only_file_reads_the_server_from_outside(tmp_path: Path) -> None:
    rows = ("1,416.3,52,0,1949,3562,4624,7054", "2,500.0,60,0,3900,5000,6000,8000")
    doc, _scenario, _dep, summary = import_csv(
        write(tmp_path, *rows, header=CLIENT_ONLY), "digits-forest"
    )
    (fit,) = doc.fits
    # a serial server at 500 requests/s: 2 ms per request, at most the lowest level's p50
    assert fit.service_time.batch_mean_ms(1) == pytest.approx(1.949)
    assert summary["server_times"] is False and summary["queue_ms"] is None
    assert doc.overheads.per_request.mean_ms == pytest.approx(0.052)  # client send + recv
    rows = ("1,200.0,52,0,4000,4500,5000,6000", "4,400.0,60,0,9000,9500,9800,12000")
    doc, _sc, _dep, _s = import_csv(write(tmp_path, *rows, header=CLIENT_ONLY), "m")
    assert doc.fits[0].service_time.batch_mean_ms(1) == pytest.approx(2.5)  # 1 / 400 per s
    assert doc.overheads.per_request.mean_ms == pytest.approx(1.5)  # 4.0 − 2.5


def test_some_server_columns_but_not_all_is_a_partial_file(tmp_path: Path) -> None:
    header = CLIENT_ONLY.replace("Client Recv", "Client Recv,Server Queue")
    with pytest.raises(ValueError, match="missing column"):
        import_csv(write(tmp_path, "1,416.3,52,0,10,1949,3562,4624,7054", header=header), "m")
