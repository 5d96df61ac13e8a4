"""Open-loop schedule: the twin's arrivals, split across load generators, seeded inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from loadgen.schedule import arrival_schedule, input_order, partition
from twin.evaluate import evaluate
from twin.load import load_deployment, load_scenario
from twin.workload import rate_series, scale_workload

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def scenario():
    return load_scenario(ROOT / "examples" / "digits-pipeline.yaml")


def test_schedule_is_the_twins_replication_zero(scenario):
    dep = load_deployment(ROOT / "examples" / "digits-pipeline.deployment.yaml")
    w = scale_workload(scenario.workload("fluctuating"), 0.2)
    ev = evaluate(scenario, dep, w, horizon_s=30, replications=1, seed=7, keep_records=True)
    twin = np.sort(ev.requests.loc[ev.requests["process"] == "digits", "t_arrive"].to_numpy())
    ours = arrival_schedule(w, "digits", 30, seed=7)
    assert ours.size == twin.size > 100
    assert np.allclose(ours, twin)
    assert not np.allclose(arrival_schedule(w, "digits", 30, seed=8)[:50], ours[:50])


def test_schedule_count_matches_the_curve(scenario):
    w = scenario.workload("steady-high")
    times = arrival_schedule(w, "digits", 60, seed=1)
    expected = rate_series(w, 60).sum()
    assert abs(times.size - expected) < 4 * np.sqrt(expected)  # Poisson: 4 sd
    assert np.all(np.diff(times) >= 0) and times[0] >= 0 and times[-1] < 60


def test_partitions_cover_the_schedule_exactly_once(scenario):
    times = arrival_schedule(scenario.workload("steady-low"), "digits", 20, seed=3)
    parts = [partition(times, i, 3) for i in range(3)]
    pids = np.sort(np.concatenate([p for p, _ in parts]))
    assert np.array_equal(pids, np.arange(times.size))
    for p, t in parts:
        assert np.array_equal(times[p], t)
    with pytest.raises(ValueError):
        partition(times, 3, 3)


def test_input_order_is_seeded_and_cycles_through_every_input():
    a = input_order(10, 25, seed=1)
    assert np.array_equal(a, input_order(10, 25, seed=1))
    assert not np.array_equal(a, input_order(10, 25, seed=2))
    assert sorted(a[:10]) == list(range(10)) and sorted(a[10:20]) == list(range(10))


def test_inputs_come_from_scikit_learn_or_a_checked_file(tmp_path):
    from loadgen.inputs import digits, n_inputs, payload

    assert n_inputs() == 1797
    body = payload("image", 3, 17)
    assert body["id"] == "17" and len(body["image"]) == 64 and max(body["image"]) <= 16
    assert payload("entity", 3, 17) == {"id": "17", "entity_id": 3}
    np.savez(tmp_path / "ok.npz", x=np.ones((2, 64)), y=np.array([1, 2]))
    assert n_inputs(str(tmp_path / "ok.npz")) == 2
    np.savez(tmp_path / "bad.npz", x=np.ones((2, 8)), y=np.array([1, 2]))
    with pytest.raises(ValueError, match="n×64"):
        digits(str(tmp_path / "bad.npz"))
    with pytest.raises(ValueError, match="inputs file"):
        digits(str(tmp_path / "missing.npz"))
