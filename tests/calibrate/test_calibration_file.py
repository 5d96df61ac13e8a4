"""Calibration files: fit → file → calibrated scenario that the twin runs unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from calibrate import calibration as cal
from calibrate.cli import app
from calibrate.fit import fit_samples
from calibrate.samples import twin_samples
from twin.evaluate import evaluate
from twin.load import SpecError, load_deployment, load_scenario
from twin.sim import simulate_replication
from twin.spec import GammaServiceTime, LognormalServiceTime, TableServiceTime

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "examples" / "digits-pipeline.yaml"
DEPLOYMENT = ROOT / "examples" / "digits-pipeline.deployment.yaml"
runner = CliRunner()


@pytest.fixture(scope="module")
def samples() -> pd.DataFrame:
    """Twin-generated samples of the example deployment's three stage variants."""
    sc, dep = load_scenario(SCENARIO), load_deployment(DEPLOYMENT)
    res = simulate_replication(sc, dep, sc.workload("steady-low"), 120.0, 5)
    return twin_samples(res.visits, sc, dep, cpu_share=0.5)


def test_cli_fit_writes_a_file_and_a_calibrated_scenario(tmp_path, samples):
    table = tmp_path / "samples.parquet"
    samples.to_parquet(table)
    calib, scen = tmp_path / "cal.yaml", tmp_path / "calibrated.yaml"
    args = [
        "fit",
        str(table),
        "-s",
        str(SCENARIO),
        "-o",
        str(calib),
        "--scenario-out",
        str(scen),
        "--json",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {(f["component"], f["variant"]) for f in data["fits"]} == {
        ("denoise", "d-small"),
        ("encoder", "e-large"),
        ("classifier", "c-mlp"),
    }
    doc = cal.load(calib)
    assert doc.scenario_sha256 == cal.file_sha256(SCENARIO)
    new = load_scenario(scen)
    old = load_scenario(SCENARIO)
    for f in doc.fits:
        fitted = new.component(f.component).variant(f.variant).service_time
        truth = old.component(f.component).variant(f.variant).service_time
        assert fitted == f.service_time
        # The example's deployment batches, so b=1 is rare: compare where data is.
        b = max(f.batches, key=lambda x: (samples["batch"] == x).sum())
        assert fitted.batch_mean_ms(b) == pytest.approx(truth.batch_mean_ms(b), rel=0.1)
    # Unprofiled variants keep their service time.
    assert new.component("denoise").variant("d-tiny") == old.component("denoise").variant("d-tiny")
    # and the twin runs the calibrated scenario unchanged
    ev = evaluate(new, load_deployment(DEPLOYMENT), "steady-low", 30.0, 1, 1)
    assert ev.criteria()[0] > 0


def test_cli_fit_refuses_fits_for_unknown_variants(tmp_path, samples):
    bad = samples.assign(variant="nope")
    table = tmp_path / "samples.csv"
    bad.to_csv(table, index=False)
    result = runner.invoke(
        app, ["fit", str(table), "-s", str(SCENARIO), "-o", str(tmp_path / "c.yaml")]
    )
    assert result.exit_code == 2
    assert "not in scenario" in result.output and "Traceback" not in result.output


def test_share_scaling_and_overheads(samples):
    sc = load_scenario(SCENARIO)
    two = pd.concat([samples, samples.assign(cpu_share=1.0, service_ms=samples.service_ms / 2)])
    doc = cal.build(
        fit_samples(two), sc, overheads={"hop_ms": 0.3, "request_ms": 1.0, "n_requests": 50}
    )
    assert doc.version == cal.FORMAT and doc.overheads.per_request is None
    assert doc.share_exponent["encoder/e-large"] == pytest.approx(1.0, abs=1e-6)
    at_half = cal.service_time_at(doc, "encoder", "e-large", 0.5)
    at_quarter = cal.service_time_at(doc, "encoder", "e-large", 0.25)
    assert at_quarter.batch_mean_ms(4) == pytest.approx(2 * at_half.batch_mean_ms(4))
    new, untouched = cal.calibrated_scenario(sc, doc, {"encoder": 0.25})
    assert "encoder/e-small" in untouched and "encoder/e-large" not in untouched
    # no fitted overhead distribution: the scenario's network and processes stay as they were
    assert new.settings.network == sc.settings.network
    assert all(p.request_overhead is None for p in new.processes)
    # round trip through YAML keeps every model exactly
    assert cal.Calibration.model_validate(cal.yaml.safe_load(cal.dump(doc))) == doc


def test_scale_service_time_keeps_cv():
    ln = LognormalServiceTime(kind="lognormal", mean_ms=2, per_item_ms=1, cv=0.4)
    tb = TableServiceTime(kind="table", points={1: {"mean_ms": 1, "cv": 0.2}, 4: {"mean_ms": 3}})
    for m in (ln, tb):
        s = cal.scale_service_time(m, 3.0)
        assert s.batch_mean_ms(3) == pytest.approx(3 * m.batch_mean_ms(3))
        assert s.batch_cv(3) == pytest.approx(m.batch_cv(3))


def test_registered_in_the_umbrella_command():
    import subprocess
    import sys

    argv = [sys.executable, "-c", "from mlops_twin.cli import main; main()", "calibrate", "--help"]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "fit" in res.stdout and "apply" in res.stdout


def test_testbed_rows_collapse_to_one_sample_per_batch_execution():
    from calibrate.samples import testbed_samples

    # two batches of 3 with the same (fixed) timing, then one batch of 1
    visits = pd.DataFrame(
        {
            "component": ["c"] * 7,
            "variant": ["v"] * 7,
            "replica_name": ["r"] * 7,
            "batch": [3, 3, 3, 3, 3, 3, 1],
            "service_s": [0.002] * 6 + [0.001],
            "t_start": [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 2.0],
        }
    )
    s = testbed_samples(visits, 0.5)
    assert sorted(s["batch"]) == [1, 3, 3]
    assert (s["cpu_share"] == 0.5).all()


def test_calibrated_scenario_carries_the_overhead_and_the_twin_spends_it(samples, tmp_path):
    import numpy as np

    sc, dep = load_scenario(SCENARIO), load_deployment(DEPLOYMENT)
    model = GammaServiceTime(kind="gamma", mean_ms=12.0, cv=0.3)
    doc = cal.build(fit_samples(samples), sc, overheads={"n_requests": 10}, per_request=model)
    new, _ = cal.calibrated_scenario(sc, doc)
    request = [p for p in new.processes if p.kind == "request"]
    assert request and all(p.request_overhead == model for p in request)
    assert all(p.request_overhead is None for p in new.processes if p.kind != "request")
    assert new.settings.network.intra_zone_latency_ms == 0.0  # the overhead holds the hops
    # the calibrated scenario round-trips through its YAML, overhead included
    path = tmp_path / "calibrated.yaml"
    path.write_text(cal.dump_model(new, exclude_defaults=True))
    assert load_scenario(path) == new
    # the twin's latencies hold the overhead: ≈ 12 ms more than without it
    without, _ = cal.calibrated_scenario(sc, doc.model_copy(update={"overheads": cal.Overheads()}))
    lat = []
    for s in (new, without):
        ev = evaluate(s, dep, "steady-low", 30.0, 1, 4, keep_records=True)
        r = ev.requests[ev.requests["process"].astype(str) == request[0].name].dropna()
        lat.append(float(np.mean(r["t_end"] - r["t_arrive"])) * 1e3)
    assert lat[0] - lat[1] == pytest.approx(12.0, abs=1.0)


def test_format_1_files_are_refused_with_a_hint(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("kind: mlops-twin-calibration\nscenario: s\nfits: []\n")
    with pytest.raises(SpecError, match=r"format-1.*refit"):
        cal.load(path)


def test_overhead_levels_by_offered_rate():
    over = pd.DataFrame(
        {"rate_per_s": [15.0] * 4 + [90.0] * 4, "overhead_ms": [10, 10, 10, 10, 20, 20, 20, 20]}
    )
    levels = cal.overhead_levels(over)
    assert [lv.rate_per_s for lv in levels] == [15.0, 90.0]
    assert [lv.mean_ms for lv in levels] == [10.0, 20.0]
    assert cal.overhead_levels(over.assign(rate_per_s=float("nan"))) == []


def test_request_overheads_subtract_stage_time():
    from calibrate.samples import request_overheads
    from twin.spec import SteadyWorkload

    requests = pd.DataFrame(
        {"pid": [0, 1], "ok": [True, False], "t_arrive": [1.0, 2.0], "t_end": [1.050, float("nan")]}
    )
    visits = pd.DataFrame({"pid": [0, 0], "queue_s": [0.002, 0.003], "service_s": [0.001, 0.004]})
    w = SteadyWorkload(kind="steady", name="w", rate_per_s=42)
    out = request_overheads(requests, visits, w)
    assert out["overhead_ms"].tolist() == pytest.approx([40.0])
    assert out["rate_per_s"].tolist() == [42.0]


def test_dispatch_lag_is_queue_time_beyond_the_twins_batching():
    from calibrate.samples import dispatch_lag, request_overheads

    sc, dep = load_scenario(SCENARIO), load_deployment(DEPLOYMENT)
    enc = dep.stages["encoder"].model_copy(update={"batch": 4})  # encoder: batch 4, 2 ms
    dep = dep.model_copy(update={"stages": {**dep.stages, "encoder": enc}})
    # pid 0 alone in a batch (timed out after 2.5 ms); pids 1-4 a full batch of 4
    visits = pd.DataFrame(
        {
            "pid": [0, 1, 2, 3, 4],
            "component": ["encoder"] * 5,
            "replica_name": ["e-0"] * 5,
            "batch": [1, 4, 4, 4, 4],
            "service_s": [0.001, 0.002, 0.002, 0.002, 0.002],
            "queue_s": [0.0025, 0.003, 0.002, 0.001, 0.0004],
            "t_start": [0.0, 1.0, 1.0, 1.0, 1.0],
        }
    )
    lag = dispatch_lag(visits, sc, dep)
    assert lag.tolist() == pytest.approx([0.0005, 0.0004, 0.0004, 0.0004, 0.0004])
    requests = pd.DataFrame(
        {"pid": range(5), "ok": [True] * 5, "t_arrive": [0.0] * 5, "t_end": [0.010] * 5}
    )
    plain = request_overheads(requests, visits)
    moved = request_overheads(requests, visits, lag_s=lag)
    assert (moved["overhead_ms"] - plain["overhead_ms"]).tolist() == pytest.approx(
        [0.5, 0.4, 0.4, 0.4, 0.4]
    )
    assert moved["lag_ms"].tolist() == pytest.approx([0.5, 0.4, 0.4, 0.4, 0.4])


def test_overhead_at_a_rate_follows_the_fit_levels(samples):
    sc = load_scenario(SCENARIO)
    model = GammaServiceTime(kind="gamma", mean_ms=9.0, cv=0.3)
    levels = [
        cal.RateLevel(rate_per_s=15, n=100, mean_ms=6.0, p50_ms=6, p95_ms=9),
        cal.RateLevel(rate_per_s=90, n=600, mean_ms=12.0, p50_ms=11, p95_ms=18),
    ]
    doc = cal.build(
        fit_samples(samples), sc, overheads={"n_requests": 700}, per_request=model, by_rate=levels
    )
    at = cal.overhead_at(doc, 52.5)
    assert at.batch_mean_ms(1) == pytest.approx(9.0) and at.batch_cv(1) == pytest.approx(0.3)
    # outside the levels: the nearest level's mean, not the line's
    assert cal.overhead_at(doc, 165).batch_mean_ms(1) == pytest.approx(12.0)
    assert cal.overhead_at(doc, 0).batch_mean_ms(1) == pytest.approx(6.0)
    new, _ = cal.calibrated_scenario(sc, doc, rate_per_s=165)
    assert new.processes[0].request_overhead.batch_mean_ms(1) == pytest.approx(12.0)
    top = cal.RateLevel(rate_per_s=120, n=600, mean_ms=20.0, p50_ms=18, p95_ms=30)
    three = [*doc.overheads.by_rate, top]
    bent = doc.model_copy(update={"overheads": doc.overheads.model_copy(update={"by_rate": three})})
    assert cal.overhead_at(bent, 105).batch_mean_ms(1) == pytest.approx(16.0)  # between 90 and 120
    one = doc.model_copy(update={"overheads": doc.overheads.model_copy(update={"by_rate": []})})
    assert cal.overhead_at(one, 165) == model  # one level: nothing to follow


def test_server_cpu_only_for_stages_alone_on_their_servers(samples):
    sc = load_scenario(SCENARIO)
    doc = cal.build(fit_samples(samples), sc)
    doc = doc.model_copy(
        update={
            "cpu": [
                cal.CpuModel(server="node-1", idle_cores=0.01, per_visit_ms=0.25),
                cal.CpuModel(server="node-2", idle_cores=0.01, per_visit_ms=0.30),
            ]
        }
    )
    alloc = {"denoise": {"node-1": 1}, "encoder": {"node-2": 2}, "classifier": {"node-2": 1}}
    cpu = cal.server_cpu_of(doc, alloc)
    assert set(cpu) == {"denoise"} and cpu["denoise"].per_item_ms == pytest.approx(0.25)
    new, _ = cal.calibrated_scenario(sc, doc, shares=0.5, server_cpu=cpu)
    assert new.component("denoise").server_overhead.per_item_ms == pytest.approx(0.5)
    assert new.component("encoder").server_overhead is None


def test_dispatch_lag_leaves_the_queue_behind_a_busy_replica_to_the_twin():
    from calibrate.samples import dispatch_lag

    sc, dep = load_scenario(SCENARIO), load_deployment(DEPLOYMENT)
    enc = dep.stages["encoder"].model_copy(update={"batch": 2})
    dep = dep.model_copy(update={"stages": {**dep.stages, "encoder": enc}})
    # batch A (pids 0, 1) runs 0–10 ms; batch B's items came at 2 and 4 ms, waited for
    # the replica, and started 0.5 ms after it was free: only that 0.5 ms is lag
    visits = pd.DataFrame(
        {
            "pid": [0, 1, 2, 3],
            "component": ["encoder"] * 4,
            "replica_name": ["e-0"] * 4,
            "batch": [2, 2, 2, 2],
            "service_s": [0.010, 0.010, 0.003, 0.003],
            "queue_s": [0.0, 0.0, 0.0085, 0.0065],
            "t_start": [0.0, 0.0, 0.0105, 0.0105],
        }
    )
    assert dispatch_lag(visits, sc, dep).tolist() == pytest.approx([0.0, 0.0, 0.0005, 0.0005])
    # a stage of batch 1 has no batching timer: no lag, whatever its queue
    one = dep.model_copy(
        update={"stages": {**dep.stages, "encoder": enc.model_copy(update={"batch": 1})}}
    )
    alone = visits.assign(batch=1, t_start=[0.0, 0.0105, 0.0205, 0.0240])
    assert dispatch_lag(alone, sc, one).tolist() == pytest.approx([0.0] * 4)


def test_overhead_at_a_rate_takes_the_levels_shape_when_asked(samples):
    """The quiet Compose default sweep's levels: mean 7.28 / median 6.76 ms at 27/s (cv
    0.40), 7.88 / 6.85 at 109/s (cv 0.57); the pooled fit had cv 0.45."""
    sc = load_scenario(SCENARIO)
    model = LognormalServiceTime(kind="lognormal", mean_ms=7.4, cv=0.45)
    levels = [
        cal.RateLevel(rate_per_s=27.2, n=800, mean_ms=7.28, p50_ms=6.76, p95_ms=11.6),
        cal.RateLevel(rate_per_s=108.8, n=6000, mean_ms=7.88, p50_ms=6.85, p95_ms=15.0),
    ]
    doc = cal.build(
        fit_samples(samples), sc, overheads={"n_requests": 6800}, per_request=model, by_rate=levels
    )
    low, high = ((7.28 / 6.76) ** 2 - 1) ** 0.5, ((7.88 / 6.85) ** 2 - 1) ** 0.5
    assert cal.overhead_at(doc, 122).cv == pytest.approx(0.45)  # pooled unless asked
    assert cal.overhead_at(doc, 122, shape=True).cv == pytest.approx(high)  # held outside
    assert cal.overhead_at(doc, 68.0, shape=True).cv == pytest.approx((low + high) / 2)
    at = cal.overhead_at(doc, 122, shape=True)
    # the lognormal with that cv has the level's median back
    assert at.mean_ms / (1 + at.cv**2) ** 0.5 == pytest.approx(6.85)
    new, _ = cal.calibrated_scenario(sc, doc, rate_per_s=122, overhead_shape=True)
    assert new.processes[0].request_overhead.cv == pytest.approx(high)
