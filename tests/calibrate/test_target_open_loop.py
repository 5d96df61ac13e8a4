"""The open-loop cell of ``calibrate profile --target``: what each request found ahead,
the busy server's answer gaps, and the fit read from them (no server needed)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pytest

from calibrate.target import (
    OPEN,
    SAMPLE_FIELDS,
    TargetGrid,
    busy_gaps,
    choose_fit,
    fit_open_loop,
    fit_target,
    in_flight_at_send,
    open_loop_cell,
)
from twin.evaluate import evaluate
from twin.spec import Deployment, Scenario, Serving, SteadyWorkload, TensorInput

SERVING = Serving(model="m", inputs=[TensorInput(name="x", shape=[1, 4])])


def test_in_flight_counts_earlier_requests_not_yet_answered() -> None:
    # sent at 0, 1, 2, 5 ms (given out of order); answered at 4, 3, 6, 7 ms
    send = np.array([0.002, 0.0, 0.001, 0.005])
    latency_ms = np.array([4.0, 4.0, 2.0, 2.0])
    assert in_flight_at_send(send, latency_ms).tolist() == [2, 0, 1, 1]


def test_busy_gaps_keep_only_answers_of_a_server_with_work_waiting() -> None:
    # answers at 10, 13, 16, 30 ms; the 2nd and 3rd were sent long before the answer
    # before them, the 4th only 1 ms before (it may not have reached the server)
    send = np.array([0.0, 0.001, 0.002, 0.015])
    end = np.array([0.010, 0.013, 0.016, 0.030])
    gaps = busy_gaps(send, (end - send) * 1e3, lead_ms=2.0)
    assert gaps == pytest.approx([3.0, 3.0])


def twin_cell(service_ms: float, cv: float, overhead_ms: float, rate: float) -> pd.DataFrame:
    """An open-loop cell measured on the twin: one FIFO server, gamma service, a pure
    delay in front."""
    sc = Scenario.model_validate(
        {
            "name": "one",
            "servers": [{"name": "s", "cpu_cores": 1.0, "ram_gb": 1.0}],
            "components": [
                {
                    "name": "m",
                    "max_replicas": 1,
                    "variants": [
                        {
                            "name": "default",
                            "accuracy": 1.0,
                            "cpu_cores": 1.0,
                            "service_time": {"kind": "gamma", "mean_ms": service_ms, "cv": cv},
                        }
                    ],
                }
            ],
            "processes": [
                {
                    "name": "infer",
                    "kind": "request",
                    "steps": [{"name": "infer", "component": "m"}],
                    "request_overhead": {"kind": "lognormal", "mean_ms": overhead_ms, "cv": 0.3},
                }
            ],
            "workloads": [{"kind": "steady", "name": "w", "rate_per_s": rate}],
            "settings": {"network": {"intra_zone_latency_ms": 0, "inter_zone_latency_ms": 0}},
        }
    )
    dep = {"name": "d", "allocation": {"m": {"s": 1}}, "stages": {"m": {"variant": "default"}}}
    w = SteadyWorkload(kind="steady", name="w", rate_per_s=rate)
    req = evaluate(sc, Deployment.model_validate(dep), w, 120.0, 1, 3, keep_records=True).requests
    req = req.dropna(subset=["t_end"])
    lat = (req["t_end"] - req["t_arrive"]).to_numpy() * 1e3
    return pd.DataFrame(
        {
            "batch": 1,
            "concurrency": OPEN,
            "client": 0,
            "t_send_s": req["t_arrive"].to_numpy(),
            "latency_ms": lat,
            "status": 200,
        }
    )[list(SAMPLE_FIELDS)]


def closed_loop(service_ms: float, n: int = 400) -> pd.DataFrame:
    """One second of 1 and of 2 clients: ``n`` answers each (a capacity of ``n``/s with
    ``cell_s`` 1), latencies ≈ ``service_ms`` and twice that."""
    rng = np.random.default_rng(0)
    rows = [(1, 1, 0, i / n, float(x), 200) for i, x in enumerate(rng.normal(service_ms, 0.1, n))]
    rows += [
        (1, 2, 0, i / n, float(x), 200) for i, x in enumerate(rng.normal(2 * service_ms, 0.1, n))
    ]
    return pd.DataFrame(rows, columns=list(SAMPLE_FIELDS))


@pytest.mark.parametrize(("service_ms", "cv", "rate"), [(4.0, 0.4, 150.0), (2.0, 1.0, 250.0)])
def test_open_loop_fit_recovers_the_service_and_overhead_the_cell_ran_with(
    service_ms: float, cv: float, rate: float
) -> None:
    cell = twin_cell(service_ms, cv, 1.0, rate)
    grid = TargetGrid(batches=(1,), concurrency=(1, 2), cell_s=1.0, paced_s=0, open_s=120.0)
    # back to back it looked slower (1.25 × S, e.g. stages that overlap only under
    # random arrivals): the closed-loop capacity allows the cell's service time
    closed = closed_loop(1.25 * service_ms, n=int(1e3 / (1.25 * service_ms)))
    doc, scenario, _dep, _cap, info = fit_target(pd.concat([closed, cell]), SERVING, grid)
    service = scenario.component("m").variants[0].service_time
    assert service.batch_mean_ms(1) == pytest.approx(service_ms, rel=0.05)
    assert service.batch_cv(1) == pytest.approx(cv, abs=0.05)
    assert doc.overheads.per_request.mean_ms == pytest.approx(1.0, rel=0.15)
    assert info["rate_per_s"] == pytest.approx(rate, rel=0.05)
    assert info["busy_gaps"] > 1000
    assert not info["service_bounded"]
    # the fitted twin reproduces the cell it was read from, so it is kept, unwarned
    assert info["kept"] == "open_loop" and "warning" not in info
    assert info["check"]["open_loop"]["score"] <= 1


def test_the_open_loop_service_never_implies_less_than_the_closed_loop_capacity() -> None:
    # the cell's server needs 6 ms per request, but 1 and 2 back-to-back clients got
    # 278 answers/s (3.6 ms each): the open-loop service is bounded by the closed loop's
    # (without the bound the fit said 6 ms, a twin that saturates at 167/s)
    cell = twin_cell(6.0, 0.25, 1.0, 130.0)
    grid = TargetGrid(batches=(1,), concurrency=(1, 2), cell_s=1.0, paced_s=0, open_s=120.0)
    closed = closed_loop(3.6, n=278)
    doc, scenario, _dep, _cap, info = fit_target(pd.concat([closed, cell]), SERVING, grid)
    assert info["gap_mean_ms"] == pytest.approx(6.0, rel=0.05)
    assert info["service_bounded"]
    service = scenario.component("m").variants[0].service_time
    assert service.batch_mean_ms(1) == pytest.approx(1e3 / 278, rel=0.01)
    if info["kept"] == "open_loop":  # the rest of an idle request's latency is overhead
        assert doc.overheads.per_request.mean_ms == pytest.approx(7.0 - 3.6, rel=0.15)
    # a twin bounded so cannot reproduce a 6-ms server's queue: the profile says so
    assert "misses the open-loop cell" in info["warning"]
    assert info["check"][info["kept"]]["err_p95"] < -0.15


def _check(e50: float, e95: float) -> dict:
    return {"err_p50": e50, "err_p95": e95, "score": max(abs(e50) / 0.10, abs(e95) / 0.15)}


def test_choose_fit_keeps_the_open_loop_fit_unless_the_closed_loop_one_is_closer() -> None:
    assert choose_fit(_check(0.05, -0.10), _check(0.01, 0.01)) == ("open_loop", "")
    keep, warning = choose_fit(_check(0.05, -0.40), _check(-0.05, -0.10))
    assert keep == "closed_loop" and warning == ""  # the closed-loop fit reproduces the cell
    keep, warning = choose_fit(_check(0.30, -0.40), _check(-0.05, -0.30))
    assert keep == "closed_loop" and "fell back to the closed-loop fit" in warning
    assert "p95 -30 %" in warning
    keep, warning = choose_fit(_check(0.10, -0.30), _check(-0.40, -0.60))
    assert keep == "open_loop" and "p50 +10 %, p95 -30 %" in warning


def test_without_an_open_loop_cell_the_closed_loop_fit_stays() -> None:
    grid = TargetGrid(batches=(1,), concurrency=(1, 2), cell_s=1.0, paced_s=0)
    _doc, scenario, _dep, _cap, info = fit_target(closed_loop(3.0), SERVING, grid)
    assert info == {}
    assert scenario.component("m").variants[0].service_time.batch_mean_ms(1) < 3.1


def test_an_open_loop_cell_where_no_request_found_the_server_idle_is_refused() -> None:
    # a request every ms, each answered 10 ms later: all but the first find some ahead
    n = 500
    cell = pd.DataFrame(
        [(1, OPEN, 0, i / 1e3, 10.0, 200) for i in range(n)], columns=list(SAMPLE_FIELDS)
    )
    grid = TargetGrid(batches=(1,), concurrency=(1, 2), cell_s=1.0, paced_s=0)
    doc, base, _dep, _cap, _info = fit_target(closed_loop(4.0), SERVING, grid)
    with pytest.raises(ValueError, match="1 requests that found none ahead"):
        fit_open_loop(doc, base, cell)


@pytest.mark.parametrize("bad", [{"open_s": -1.0}, {"open_share": 0.0}, {"open_share": 1.0}])
def test_a_bad_open_loop_cell_setting_is_refused(bad: dict) -> None:
    with pytest.raises(ValueError, match="open"):
        TargetGrid(**bad)


class _V2Stub(BaseHTTPRequestHandler):
    """Answers every V2 infer request at once (a stand-in for a user's server)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = json.dumps(
            {
                "model_name": "m",
                "outputs": [{"name": "y", "datatype": "INT64", "shape": [1, 1], "data": [0]}],
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.mark.slow  # the Locust worker takes ~15 s to start, send and drain
def test_the_open_loop_cell_is_sent_by_the_load_generator() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _V2Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        rows = open_loop_cell(url, SERVING, rate_per_s=20.0, seconds=2.0, seed=1)
    finally:
        server.shutdown()
        server.server_close()
    assert 15 <= len(rows) <= 70  # Poisson, 40 expected
    arrivals = [t for t, _lat, _status in rows]
    assert arrivals == sorted(arrivals) and 0 <= arrivals[0] and arrivals[-1] < 2.0
    assert all(status == 200 and 0 < lat < 1000 for _t, lat, status in rows)
