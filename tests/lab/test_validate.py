"""The validation loop against a stand-in testbed (a fake gateway honouring testbed.api)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "loadgen"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_gateway import STAGES
from fake_testbed import FakeTestbed

from calibrate import calibration as cal
from lab.validate import METRICS, ValidateConfig, error_pct, run_validation, stage_shares
from twin.load import load_deployment, load_scenario

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "examples" / "digits-pipeline.yaml"
DEPLOYMENT = ROOT / "examples" / "digits-pipeline.deployment.yaml"


def test_stage_shares_follow_the_capacity_plan():
    sc, dep = load_scenario(SCENARIO), load_deployment(DEPLOYMENT)
    assert stage_shares(sc, dep, 0.25) == {"denoise": 0.5, "encoder": 0.5, "classifier": 0.5}


def test_error_pct():
    assert error_pct(110.0, 100.0) == pytest.approx(10.0)
    assert np.isnan(error_pct(1.0, 0.0)) and np.isnan(error_pct(np.nan, 1.0))


@pytest.mark.slow
def test_validation_fits_on_one_run_and_compares_on_others(tmp_path):
    cfg = ValidateConfig(
        SCENARIO,
        DEPLOYMENT,
        workloads=("fluctuating",),
        near_saturation=(),
        fit_rate_scales=(2.5,),
        fit_duration_s=4,
        duration_s=3,
        replications=1,
        drain_s=2,
    )
    testbed = FakeTestbed()
    out = tmp_path / "val"
    tab = run_validation(cfg, testbed, out)
    assert testbed.calls == ["up", "down"]
    assert set(tab["workload"]) == {"fluctuating"}
    assert set(tab["metric"]) == set(METRICS)
    # the fake gateway's fixed in-server times come back out of the fit
    doc = cal.load(out / "calibration.yaml")
    fitted = {f.component: f.service_time.batch_mean_ms(1) for f in doc.fits}
    for st in STAGES:
        assert fitted[st.stage] == pytest.approx(st.service_ms, rel=1e-3)
    assert {f.cpu_share for f in doc.fits} == {1.0}  # node 2 cores × factor 0.5
    assert doc.overheads.per_request is not None and doc.overheads.n_requests > 0
    # the twin answers everything the fake answered, at the offered rate
    thr = tab[tab["metric"] == "throughput_rps"]
    assert (thr["error_pct"].abs() < 35).all(), thr
    report = (out / "report.md").read_text()
    assert "## fluctuating (held-out)" in report and "## Fidelity on held-out runs" in report
    assert (out / "latency_cdf.png").stat().st_size > 5000
    host = pd.read_csv(out / "host.csv")
    assert list(host["run"]) == ["fit-x2p5-0", "fluctuating", "fit-x2p5-1"]
    assert "## The host during each run" in report
    assert "## Fidelity on undisturbed seconds" in report
    for part in ("fit-x2p5-0", "fit-x2p5-1"):  # before and after the held-out run
        assert len(pd.read_parquet(out / "load" / part / "requests.parquet")) > 0
    assert (
        load_scenario(out / "calibrated-scenario.yaml").settings.network.intra_zone_latency_ms == 0
    )


def test_cpu_beyond_batch_compute_is_a_line_in_visits_per_second():
    from lab.compare import twin_cpu_cores
    from lab.fitruns import fit_cpu
    from loadgen.run import LoadResult
    from testbed.client import Targets
    from twin.spec import SteadyWorkload

    sc = load_scenario(SCENARIO)
    idle, per_visit_s, service_s, span = 0.01, 0.0003, 0.0002, 10

    def run(rate: int) -> LoadResult:
        n = rate * span
        visits = pd.DataFrame(
            {
                "machine": ["node-1"] * n,
                "replica_name": ["d-0"] * n,
                "batch": [1] * n,
                "service_s": [service_s] * n,
                "t_start": np.arange(n) / rate,
            }
        )
        cores = idle + rate * (per_visit_s + service_s)
        metrics = pd.DataFrame(
            {
                "t": np.arange(span + 1.0),
                "target": "agent:node-1",
                "metric": "node_cpu_seconds",
                "labels": "{}",
                "value": cores * np.arange(span + 1.0),
            }
        )
        per = pd.DataFrame({"second": range(span)})
        return LoadResult(0.0, pd.DataFrame(), visits, per, metrics, pd.DataFrame(), {}, 0.0)

    w = SteadyWorkload(kind="steady", name="w", rate_per_s=1)
    targets = Targets("http://x", server_of={"agent:node-1": "node-1"})
    (model,) = fit_cpu([(run(10), w), (run(50), w)], targets, sc)
    assert model.server == "node-1" and model.rates == [10.0, 50.0]
    assert model.idle_cores == pytest.approx(idle, abs=1e-9)
    assert model.per_visit_ms == pytest.approx(1e3 * per_visit_s, rel=1e-6)
    # the twin's prediction: its batch compute plus that line at its own visit rate
    tv = pd.DataFrame(
        {
            "replication": 0,
            "component": "denoise",
            "machine": "node-1",
            "replica": 0,
            "t_start": np.arange(100) / 20.0,
            "t_end": np.arange(100) / 20.0 + service_s,
        }
    )
    got = twin_cpu_cores(tv, 1, 5.0, sc, [model])
    assert got == pytest.approx(20 * service_s + idle + 20 * per_visit_s)
    assert twin_cpu_cores(tv, 1, 5.0, sc, []) == pytest.approx(20 * service_s)
