"""Raw request logs → the twin's record tables, scored by the twin's own criteria."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from loadgen.records import per_second_table, requests_table, run_summary, visits_table
from testbed.api import StageTiming, encode_timings
from twin.criteria import latency_percentiles, placement_criteria
from twin.load import load_deployment, load_scenario
from twin.sim import REQUEST_COLUMNS, VISIT_COLUMNS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def scenario():
    return load_scenario(ROOT / "examples" / "digits-pipeline.yaml")


def _header(q: float = 1.0, s: float = 2.0, h: float = 0.5) -> str:
    return encode_timings(
        [
            StageTiming("denoise", "denoise-a", "d-small", 2, q, s, h),
            StageTiming("encoder", "encoder-b", "e-medium", 4, q, s, h),
            StageTiming("classifier", "classifier-a", "c-mlp", 8, q, s, h),
        ]
    )


def _raw() -> pd.DataFrame:
    # pid 0 ok, pid 1 a 503, pid 2 never answered (absent), pid 3 ok
    return pd.DataFrame(
        {
            "pid": [0, 1, 3],
            "input": [5, 6, 7],
            "t_release": [0.10, 0.20, 0.40],
            "t_send": [0.101, 0.201, 0.402],
            "t_recv": [0.120, 0.210, 0.430],
            "status": [200, 503, 200],
            "error": ["", "HTTPError: 503", ""],
            "timings": [_header(), "", _header(2.0, 3.0, 1.0)],
            "label": [3, -1, 9],
            "truth": [5, 6, 7],
        }
    )


def test_requests_table_has_the_twin_columns_and_every_scheduled_request():
    schedule = np.array([0.1, 0.2, 0.3, 0.4])
    req = requests_table(_raw(), schedule, "digits", 0.1)
    assert list(req.columns[:5]) == list(REQUEST_COLUMNS)
    assert len(req) == 4
    assert req["ok"].tolist() == [True, False, False, True]
    assert np.isnan(req.loc[1, "t_end"]) and np.isnan(req.loc[2, "t_end"])
    assert req.loc[1, "status"] == 503 and req.loc[2, "status"] == -1
    assert req.loc[0, "t_end"] == pytest.approx(0.120)
    assert req.loc[3, "lag_s"] == pytest.approx(0.002)
    assert req["truth"].tolist() == [5, 6, -1, 7]
    summary = run_summary(req, duration_s=1.0, expected=4.0)
    assert summary["failures"] == 2 and summary["achieved_over_offered"] == 0.5
    assert summary["on_time"] == 0.75  # lags 1, 1, 2 ms; the unsent one is late
    assert summary["accuracy"] == 0.0  # labels 3 and 9 vs truth 5 and 7


def test_visits_are_rebuilt_inside_their_request(scenario):
    process = scenario.processes[0]
    vis = visits_table(_raw(), process, {"encoder-b": "node-2"})
    assert list(vis.columns[:11]) == list(VISIT_COLUMNS)
    assert len(vis) == 6  # 3 stages × 2 answered requests
    r0 = vis[vis["pid"] == 0]
    assert r0["step"].tolist() == ["denoise", "encode", "classify"]  # stage → step name
    assert r0["machine"].tolist() == ["denoise-a", "node-2", "classifier-a"]
    assert r0["batch"].tolist() == [2, 4, 8]
    assert np.allclose(r0["t_start"] - r0["t_arrive"], 0.001)
    assert np.allclose(r0["t_end"] - r0["t_start"], 0.002)
    assert np.all(r0["t_arrive"].to_numpy()[1:] >= r0["t_end"].to_numpy()[:-1])
    assert r0["t_arrive"].min() >= 0.101 and r0["t_end"].max() <= 0.120
    # residual client↔gateway time (19 ms − 10.5 ms) split evenly around the stages
    assert r0["t_arrive"].iloc[0] - 0.101 == pytest.approx((0.019 - 0.0105) / 2 + 0.00025)
    assert sorted(vis["replica"].unique()) == [0]


def test_twin_criteria_score_a_loadgen_table(scenario):
    dep = load_deployment(ROOT / "examples" / "digits-pipeline.deployment.yaml")
    req = requests_table(_raw(), np.array([0.1, 0.2, 0.3, 0.4]), "digits", 0.025)
    crit = placement_criteria(req, scenario, dep, horizon_s=1.0, end_s=1.0)
    assert crit["unfinished"] == 2
    # censored at end_s: 0.8 and 0.7 for the two unfinished; 0.02 and 0.03 answered
    assert crit["time_mean_s"] == pytest.approx((0.02 + 0.8 + 0.7 + 0.03) / 4)
    assert crit["overruns"] == 3  # 0.03 > 0.025 plus both unfinished
    assert latency_percentiles(req)["p50"] == pytest.approx(0.025)


def test_a_resent_request_keeps_its_first_send_and_last_answer():
    raw = _raw()
    retry = raw.iloc[[1]].assign(
        attempt=1, t_send=0.205, t_recv=0.23, status=200, error="", timings=_header(), label=6
    )
    raw = pd.concat([raw.assign(attempt=0), retry], ignore_index=True)
    raw.loc[1, "error"] = "HTTPConnectionClosed: connection closed."
    req = requests_table(raw, np.array([0.1, 0.2, 0.3, 0.4]), "digits", None)
    assert req["ok"].tolist() == [True, True, False, True]
    assert req.loc[1, "t_send"] == pytest.approx(0.201) and req.loc[1, "t_end"] == 0.23
    assert req["attempts"].tolist() == [1, 2, 0, 1]


def test_per_second_counts_add_up():
    req = requests_table(_raw(), np.array([0.1, 0.2, 0.3, 1.4]), "digits", None)
    req.loc[3, ["t_send", "t_end", "t_response"]] = [1.402, 1.43, 1.43]
    per = per_second_table(req, 2.0)
    assert per["offered"].tolist() == [3, 1]
    assert per["sent"].tolist() == [2, 1]
    assert per["rps"].tolist() == [1, 1]
    assert per["failures"].tolist() == [1, 0]  # the unanswered one has no response time
    assert per.loc[0, "p50_s"] == pytest.approx(0.02)


def test_visits_carry_the_servers_receive_time_when_reported(scenario):
    process = scenario.processes[0]
    t0 = 1_000_000.0
    stamped = encode_timings(
        [
            StageTiming("denoise", "denoise-a", "d-small", 1, 0.5, 1.0, 0.2, t0 + 0.1015),
            StageTiming("encoder", "encoder-b", "e-medium", 1, 0.5, 2.0, 0.2, t0 + 0.1040),
            StageTiming("classifier", "classifier-a", "c-mlp", 1, 0.5, 0.5, 0.2, t0 + 0.1071),
        ]
    )
    raw = _raw().assign(timings=[stamped, "", _header()])
    vis = visits_table(raw, process, None, t0)
    r0 = vis[vis["pid"] == 0]
    assert np.allclose(r0["t_server_s"], [0.1015, 0.1040, 0.1071])
    # a server that does not report it (older image, V2 path): NaN, the rest unchanged
    assert vis[vis["pid"] == 3]["t_server_s"].isna().all()
    assert visits_table(raw, process)["t_server_s"].isna().all()  # no time zero given
