"""The host table: each run's latency beside how disturbed the host was."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from lab.host_noise import (
    MAX_STEAL_CORES,
    disturbed_requests,
    host_lines,
    host_table,
    undisturbed,
    undisturbed_lines,
)
from loadgen.host import CPU_SECONDS, HOST_TARGET, MODES, PROBE_SECONDS, host_series
from loadgen.run import LoadResult

TICK = os.sysconf("SC_CLK_TCK")


def _result(latency_ms: list[float], steal_per_s: float, probe_ms: list[float]) -> LoadResult:
    """A 4-s run: the host counters every second; steal grows ``steal_per_s`` core-s/s."""
    n = len(latency_ms)
    t = np.linspace(0.1, 3.9, n)
    requests = pd.DataFrame(
        {"t_arrive": t, "t_end": t + np.array(latency_ms) / 1000, "ok": True, "process": "p"}
    )
    rows = []
    for k, probe in enumerate(probe_ms):  # scrapes at t = 0, 1, 2, ...
        for mode in MODES:
            v = {"user": 1.0 * k, "idle": 0.5 * k, "steal": steal_per_s * k}.get(mode, 0.0)
            rows.append((float(k), HOST_TARGET, CPU_SECONDS, json.dumps({"mode": mode}), v))
        rows.append((float(k), HOST_TARGET, PROBE_SECONDS, '{"clock": "cpu"}', probe / 1000))
    metrics = pd.DataFrame(rows, columns=["t", "target", "metric", "labels", "value"])
    return LoadResult(
        t0=0.0,
        requests=requests,
        visits=pd.DataFrame(),
        per_second=pd.DataFrame({"second": range(4)}),
        metrics=metrics,
        batch=pd.DataFrame(),
        summary={"offered_rps": n / 4},
        wall_s=4.0,
    )


def test_each_run_gets_its_latency_steal_and_slow_seconds():
    quiet = _result([10.0] * 19 + [30.0], 0.0, [0.5, 0.5, 0.5, 0.5, 0.5])
    noisy = _result([10.0] * 11 + [40.0] * 9, 0.2, [0.5, 0.5, 1.0, 1.0, 0.5])
    tab = host_table([("fit-0", "fit", quiet), ("steady-low", "held-out", noisy)]).set_index("run")
    assert tab.loc["fit-0", "p50_ms"] == pytest.approx(10.0)
    assert tab.loc["steady-low", "p95_ms"] == pytest.approx(40.0)
    assert tab.loc["fit-0", "steal_pct"] == pytest.approx(0.0)
    assert tab.loc["steady-low", "steal_pct"] == pytest.approx(20.0)
    assert tab.loc["fit-0", "busy_cores"] == pytest.approx(1.0)
    # the common median probe is 0.5 ms; two of the noisy run's four seconds took 1.0
    assert tab.loc["fit-0", "slow_s_pct"] == 0.0
    assert tab.loc["steady-low", "slow_s_pct"] == pytest.approx(50.0)
    assert tab.loc["steady-low", "offered_rps"] == 5.0
    text = "\n".join(host_lines(tab.reset_index()))
    assert "| steady-low | held-out | 5.0 | 10.0 | 40.0 | 1.00 | 20.0 |" in text


def test_runs_without_host_counters_give_no_section():
    r = _result([10.0] * 4, 0.0, [])
    tab = host_table([("a", "fit", r)])
    assert np.isnan(tab.loc[0, "steal_pct"]) and tab.loc[0, "p50_ms"] == pytest.approx(10.0)
    assert host_lines(tab) == []


def test_the_cli_default_is_the_library_default():
    from lab.cli import MAX_STEAL_DEFAULT
    from lab.host_noise import MAX_STEAL_CORES

    assert MAX_STEAL_DEFAULT == MAX_STEAL_CORES


def test_undisturbed_drops_the_requests_and_visits_of_stolen_seconds():
    # steal 0 in (0, 1], 0.3 cores in (1, 2], 0 after; requests every 0.25 s, 10 ms long
    r = _result([10.0] * 16, 0.0, [0.5] * 5)
    steal = r.metrics["labels"] == '{"mode": "steal"}'
    r.metrics.loc[steal, "value"] = [0.0, 0.0, 0.3, 0.3, 0.3]
    t = np.arange(16) * 0.25 + 0.1
    r = replace(
        r,
        requests=r.requests.assign(t_arrive=t, t_end=t + 0.01, pid=range(16)),
        visits=pd.DataFrame({"process": "p", "pid": np.repeat(range(16), 2)}),
    )
    assert host_series(r.metrics)["steal_cores"].tolist() == pytest.approx([0.0, 0.3, 0, 0])
    bad = disturbed_requests(r, MAX_STEAL_CORES)
    assert bad.tolist() == [(1 < x <= 2) or (1 < x + 0.01 <= 2) for x in t]
    clean, share = undisturbed(r, MAX_STEAL_CORES)
    assert share == pytest.approx(bad.mean())
    assert not set(clean.requests["pid"]) & set(np.flatnonzero(bad))
    assert set(clean.visits["pid"]) == set(clean.requests["pid"])
    assert len(clean.visits) == 2 * len(clean.requests)
    # a limit above every second's steal keeps everything
    assert undisturbed(r, 1.0)[1] == 0.0


def test_a_run_mostly_left_out_is_not_judged():
    tab = pd.DataFrame(
        {
            "workload": ["steady-low", "fluctuating"],
            "level": ["held-out", "held-out"],
            "left_out_pct": [10.0, 80.0],
            "testbed_p50_ms": [10.0, 10.0],
            "testbed_p95_ms": [20.0, 20.0],
            "twin_p50_ms": [10.5, 10.5],
            "twin_p95_ms": [21.0, 21.0],
            "p50_error_pct": [5.0, 5.0],
            "p95_error_pct": [5.0, 5.0],
        }
    )
    rows = [line for line in undisturbed_lines(tab, 0.02) if line.startswith("| ")][1:]
    assert rows[0].endswith("| met |")
    assert "not judged: host disturbed" in rows[1]
