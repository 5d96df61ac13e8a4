"""The gateway's calls: items per call from the testbed's stamps, the twin's windows for them,
and the calibrated (and quota) scenario carrying them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from calibrate import calibration as cal
from calibrate.fit import fit_samples
from calibrate.samples import call_sizes, call_windows, twin_samples
from twin.load import load_deployment, load_scenario
from twin.sim import simulate_replication

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "examples" / "digits-pipeline.yaml"
DEPLOYMENT = ROOT / "examples" / "digits-pipeline.deployment.yaml"


def _visits(sizes: dict[str, list[int]]) -> pd.DataFrame:
    """Visits whose calls hold ``sizes[stage]`` items (one server stamp per call)."""
    rows = []
    for stage, calls in sizes.items():
        t = 0.0
        for n in calls:
            t += 0.01
            rows += [
                {"component": stage, "replica_name": f"{stage}-0", "t_server_s": t}
                for _ in range(n)
            ]
    return pd.DataFrame(rows)


def test_call_sizes_counts_one_call_per_replica_and_stamp():
    v = _visits({"den": [1, 1, 2, 1, 1], "enc": [2, 3, 1]})
    got = call_sizes(v)
    assert got == {"den": pytest.approx(6 / 5), "enc": pytest.approx(2.0)}
    # another replica's call at the same instant is another call
    other = v[v["component"] == "enc"].iloc[:1].assign(replica_name="enc-1")
    assert call_sizes(pd.concat([v, other]))["enc"] == pytest.approx(7 / 4)
    # no stamps: nothing to count
    assert call_sizes(v.drop(columns="t_server_s")) == {}
    assert call_sizes(v.assign(t_server_s=np.nan)) == {}


def test_call_windows_add_only_what_the_upstream_calls_do_not_give():
    up = {"den": None, "enc": "den", "cla": "enc"}
    got = call_windows({"den": 1.2, "enc": 1.5, "cla": 1.4}, 100.0, up)
    # first stage: 1 + rate × window; later ones: beyond their upstream's call size
    assert got["den"] == pytest.approx(0.2 / 100 * 1e3)
    assert got["enc"] == pytest.approx(0.3 / 100 * 1e3)
    assert got["cla"] == 0.0  # smaller than its upstream's: no window
    assert call_windows({"den": 1.2}, 0.0, up) == {}


def test_the_window_gives_the_first_stages_calls_in_the_twin():
    # what call_windows says for a first stage, the twin reproduces (Poisson arrivals)
    from tests.twin.test_calls import DEP, _stage

    w = call_windows({"stage": 1.25}, 600.0, {"stage": None})["stage"]
    r = simulate_replication(_stage(call_window_ms=w), DEP, None, 30.0, seed=7)
    assert len(r.visits) / r.calls["stage"] == pytest.approx(1.25, rel=0.03)


def _doc():
    sc, dep = load_scenario(SCENARIO), load_deployment(DEPLOYMENT)
    res = simulate_replication(sc, dep, sc.workload("steady-low"), 30.0, 5)
    samples = twin_samples(res.visits, sc, dep, cpu_share=0.5)
    levels = [
        cal.CallLevel(rate_per_s=30.0, items_per_call={"encoder": 1.1}, window_ms={"encoder": 1.0}),
        cal.CallLevel(
            rate_per_s=120.0, items_per_call={"encoder": 1.5}, window_ms={"encoder": 3.0}
        ),
    ]
    return sc, dep, cal.build(fit_samples(samples), sc, calls_by_rate=levels)


def test_the_calibrated_scenario_takes_the_window_at_its_rate():
    sc, _, doc = _doc()
    at = {r: cal.calibrated_scenario(sc, doc, rate_per_s=r)[0] for r in (10.0, 75.0, 500.0)}
    windows = {r: s.component("encoder").server_overhead.call_window_ms for r, s in at.items()}
    assert windows == {10.0: 1.0, 75.0: pytest.approx(2.0), 500.0: 3.0}
    # no rate: the runs' median; stages without a window keep none
    plain, _ = cal.calibrated_scenario(sc, doc)
    assert plain.component("encoder").server_overhead.call_window_ms == pytest.approx(2.0)
    den = plain.component("denoise").server_overhead
    assert den is None or den.call_window_ms == 0.0


def test_the_calls_survive_the_calibration_file(tmp_path: Path):
    _, _, doc = _doc()
    (tmp_path / "c.yaml").write_text(cal.dump(doc))
    assert cal.load(tmp_path / "c.yaml").overheads.calls_by_rate == doc.overheads.calls_by_rate


def test_the_quota_twin_spends_the_servers_cpu_per_call_with_calls_only():
    from calibrate.quota import StageCpu, quota_scenario

    sc, dep, doc = _doc()
    node = next(iter(dep.allocation["encoder"]))
    variant = dep.stages["encoder"].variant
    cpu = {"encoder": StageCpu("encoder", variant, node, 3.0, 1.0, 0.5, 0.8, 0.0, 1.0, 3)}
    o = quota_scenario(sc, doc, dep, cpu, 1.0, rate_per_s=120.0).component("encoder")
    o = o.server_overhead
    assert (o.call_window_ms, o.per_call_ms, o.per_item_ms) == (3.0, 0.5, 0.0)
    # without calls the fit runs' calls per item carry it per item, as before
    bare = cal.build(doc.fits, sc)
    o = quota_scenario(sc, bare, dep, cpu, 1.0).component("encoder").server_overhead
    assert (o.call_window_ms, o.per_call_ms) == (0.0, 0.0)
    assert o.per_item_ms == pytest.approx(0.5 * 0.8)


def test_onward_visits_leave_their_whole_batchs_answers_out_of_the_overhead():
    from calibrate.cli import _onward_stages
    from calibrate.samples import request_overheads

    sc = load_scenario(SCENARIO)
    assert _onward_stages(sc) == {"denoise", "encoder"}  # the classifier's step is the last
    rng = np.random.default_rng(0)
    rows = []
    for pid in range(500):
        for comp in ("denoise", "encoder", "classifier"):
            n = int(rng.integers(1, 5))
            rows.append({"pid": pid, "component": comp, "batch": n})
    v = pd.DataFrame(rows).assign(queue_s=0.001, service_s=0.002)
    req = pd.DataFrame({"pid": range(500), "ok": True, "t_arrive": 0.0, "t_end": 0.05})
    a = {"denoise": 0.4, "encoder": 0.8, "classifier": 0.6}
    half = request_overheads(req, v, answer_ms=a)["overhead_ms"].to_numpy()
    whole = request_overheads(req, v, answer_ms=a, onward={"denoise", "encoder"})
    # the onward stages' visits lose (n − 1) × answer_ms, the last stage's (n − 1) / 2 as before
    on = v[v["component"] != "classifier"]
    extra = (on["component"].map(a) * (on["batch"] - 1) / 2).groupby(on["pid"]).sum()
    assert np.allclose(half - whole["overhead_ms"].to_numpy(), extra.to_numpy())
