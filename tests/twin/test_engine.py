"""Engine behaviour, each checked against a value worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from twin.sim import Simulation, simulate_replication
from twin.spec import ConstantServiceTime, Deployment, Scenario, StageConfig

from .conftest import one_stage


def _dag_scenario(**settings: object) -> Scenario:
    """Two machines in two zones; a fork (a → b, a → c) and a join (b, c → d)."""
    work = {"kind": "constant", "ms": 100}
    return Scenario.model_validate(
        {
            "name": "dag",
            "servers": [
                {"name": "near", "cpu_cores": 8, "ram_gb": 32, "bandwidth_mbps": 800, "zone": "z1"},
                {
                    "name": "far",
                    "cpu_cores": 8,
                    "ram_gb": 32,
                    "bandwidth_mbps": 80,
                    "zone": "z2",
                    "gpus": 1,
                    "gpu_speed": 2.0,
                },
            ],
            "components": [{"name": n, "cpu_cores": 1} for n in "abcd"],
            "processes": [
                {
                    "name": "p",
                    "steps": [
                        {"name": "a", "component": "a", "cpu_work": work, "data_out_mb": 10},
                        {"name": "b", "component": "b", "cpu_work": work, "depends_on": ["a"]},
                        {
                            "name": "c",
                            "component": "c",
                            "cpu_work": {"kind": "constant", "ms": 300},
                            "depends_on": ["a"],
                        },
                        {
                            "name": "d",
                            "component": "d",
                            "gpu_work": work,
                            "depends_on": ["b", "c"],
                            "max_parallel": 4,
                        },
                    ],
                    "arrivals": {"kind": "periodic", "period_s": 100},
                }
            ],
            "settings": {"network": {"intra_zone_latency_ms": 1, "inter_zone_latency_ms": 50}}
            | settings,
        }
    )


def test_dag_fork_join_network_and_gpu() -> None:
    sc = _dag_scenario()
    dep = Deployment(
        allocation={"a": {"near": 1}, "b": {"near": 1}, "c": {"far": 1}, "d": {"far": 1}}
    )
    r = simulate_replication(sc, dep, None, 50, seed=1)
    v = r.visits.set_index("step")
    assert v.loc["a", "t_end"] == pytest.approx(0.1)
    # b runs where a ran: no transfer. c is in another zone: 50 ms + 10 MB·8/80 Mbit/s = 1 s.
    assert v.loc["b", "t_arrive"] == pytest.approx(0.1)
    assert v.loc["c", "t_arrive"] == pytest.approx(0.1 + 0.05 + 1.0)
    assert v.loc["c", "t_end"] == pytest.approx(1.15 + 0.3)
    # The join waits for the later branch (c); d's data from b (0 MB) crosses zones: 50 ms.
    assert v.loc["d", "t_arrive"] == pytest.approx(max(0.2, 1.45) + 0.05)
    # d's GPU work runs on far's GPU of speed 2: 100 ms / 2.
    assert v.loc["d", "t_end"] - v.loc["d", "t_start"] == pytest.approx(0.05)
    assert r.requests["t_end"].iloc[0] == pytest.approx(1.5 + 0.05)


def test_gpu_work_falls_back_to_cpu_with_slowdown() -> None:
    sc = _dag_scenario(gpu_fallback_slowdown=8.0)
    dep = Deployment(allocation={n: {"near": 1} for n in "abcd"})
    v = simulate_replication(sc, dep, None, 50, seed=1).visits.set_index("step")
    assert v.loc["d", "t_end"] - v.loc["d", "t_start"] == pytest.approx(0.1 * 8.0)


def test_step_splits_over_parallel_instances() -> None:
    sc = _dag_scenario()
    dep = Deployment(
        allocation={"a": {"near": 1}, "b": {"near": 1}, "c": {"near": 1}, "d": {"far": 4}},
        parallelism={"p.d": 4},
    )
    v = simulate_replication(sc, dep, None, 50, seed=1).visits
    d = v[v["step"] == "d"]
    assert len(d) == 4 and sorted(d["replica"]) == [0, 1, 2, 3]
    # GPU work of 100 ms split in 4 parts of 12.5 ms at speed 2, all on far's one
    # GPU: the parts take the instance at once and then queue for the GPU.
    start = d["t_start"].min()
    assert np.allclose(sorted(d["t_end"] - start), [0.0125, 0.025, 0.0375, 0.05])


def test_dynamic_batching_waits_for_the_timeout_then_serves_what_is_there() -> None:
    sc = one_stage()
    dep = Deployment(allocation={"stage": {"m": 1}}, stages={"stage": StageConfig(batch=8)})
    v = simulate_replication(sc, dep, None, 60, seed=2).visits
    assert v["batch"].max() <= 8
    assert (v["batch"] == 1).any() and (v["batch"] > 1).any()
    # A batch that is not full starts when its oldest job has waited the 5 ms
    # timeout, or when the replica frees up after that.
    batches = v.groupby("t_start").agg(
        oldest=("t_arrive", "min"), size=("batch", "first"), end=("t_end", "first")
    )
    previous_end = batches["end"].shift(fill_value=0.0)
    partial = batches[batches["size"] < 8]
    expected_start = np.maximum(partial["oldest"] + 0.005, previous_end[partial.index])
    assert np.allclose(partial.index.to_numpy(), expected_start.to_numpy())
    service = (v["t_end"] - v["t_start"]).to_numpy()
    expected = 0.010 + 0.001 * (v["batch"].to_numpy() - 1)
    assert np.allclose(service, expected)


def test_full_batches_start_without_waiting() -> None:
    sc = one_stage(max_batch=4)
    dep = Deployment(
        allocation={"stage": {"m": 1}},
        stages={"stage": StageConfig(batch=4, batch_timeout_ms=10_000)},
    )
    r = simulate_replication(sc, dep, None, 30, seed=3, drain_s=30)
    v = r.visits.dropna(subset=["t_end"])
    # With a 10-s timeout only full batches are served during the run, each
    # starting when its 4th job arrived; the remainder goes once it times out.
    during = v[v["t_start"] < 30]
    assert set(during["batch"]) == {4}
    assert set(v[v["t_start"] >= 30]["batch"]) <= {1, 2, 3}
    v = during
    for _, rows in v.groupby("t_start"):
        assert rows["t_arrive"].max() == pytest.approx(rows["t_start"].iloc[0])


def test_reconfigure_switches_variant_and_retires_replicas_without_losing_jobs() -> None:
    sc = one_stage()
    fast = Deployment(allocation={"stage": {"m": 3}}, stages={"stage": StageConfig()})
    slow = Deployment(allocation={"stage": {"m": 1}}, stages={"stage": StageConfig(variant="slow")})
    sim = Simulation(sc, fast, None, 120, seed=4)
    sim.advance(60)
    sim.reconfigure(slow)
    sim.advance(400)
    visits, requests = sim.records()
    assert requests["t_end"].notna().all(), "a retired replica dropped a job"
    before = visits[visits["t_start"] < 60]
    after = visits[visits["t_start"] > 61]
    assert np.allclose(before["t_end"] - before["t_start"], 0.010)
    assert np.allclose(after["t_end"] - after["t_start"], 0.040)
    assert set(after["replica"]) == {0}
    assert set(before["replica"]) == {0, 1, 2}


def test_reconfigure_adds_replicas_that_take_work() -> None:
    sc = one_stage()
    one = Deployment(allocation={"stage": {"m": 1}})
    three = Deployment(allocation={"stage": {"m": 3}})
    sim = Simulation(sc, one, None, 100, seed=5)
    sim.advance(50)
    sim.reconfigure(three)
    sim.advance(200)
    visits, _ = sim.records()
    late = visits[visits["t_arrive"] > 50]
    assert set(late["replica"]) == {0, 1, 2}


def test_overcommitted_machine_shares_its_cores() -> None:
    work = {"kind": "constant", "ms": 1000}
    sc = Scenario.model_validate(
        {
            "name": "overcommit",
            "servers": [{"name": "m", "cpu_cores": 2, "ram_gb": 8}],
            "components": [{"name": "w", "cpu_cores": 1}],
            "processes": [
                {
                    "name": "p",
                    "steps": [{"name": "s", "component": "w", "cpu_work": work}],
                    "arrivals": {"kind": "periodic", "period_s": 0.001},
                }
            ],
            "settings": {"cpu_overcommit": 2.0},
        }
    )
    dep = Deployment(allocation={"w": {"m": 4}}, load_balancing="round_robin")
    r = simulate_replication(sc, dep, None, 0.0035, seed=1, drain_s=10)  # 4 jobs
    ends = sorted(r.visits["t_end"])
    # Four 1-s jobs on two cores: two finish at ~1 s, two at ~2 s.
    assert ends[1] < 1.01 and ends[2] > 1.99


def test_unfinished_executions_are_recorded_as_such() -> None:
    sc = one_stage(
        variants=[
            {
                "name": "v",
                "accuracy": 0.9,
                "cpu_cores": 1,
                "service_time": {"kind": "constant", "ms": 100},
            }
        ]
    )
    dep = Deployment(allocation={"stage": {"m": 1}})  # 20/s offered, 10/s capacity
    r = simulate_replication(sc, dep, None, 20, seed=1, drain_s=1)
    assert r.requests["t_end"].isna().sum() > 100
    assert r.end_s == pytest.approx(21)


def test_records_since_reads_each_window_like_a_filtered_full_read() -> None:
    sc = one_stage()
    dep = Deployment(allocation={"stage": {"m": 1}}, stages={"stage": StageConfig(variant="slow")})
    sim = Simulation(sc, dep, None, 120, seed=6)
    windows = []
    for t in range(10, 130, 10):
        sim.advance(t)
        windows.append((t - 10, *sim.records(since_s=t - 10)))
    full_visits, full_requests = sim.records()
    for t0, visits, requests in windows:
        # Only rows already finished before t0 are left out, whatever finished later.
        assert not (visits["t_end"] < t0).any()
        assert not (requests["t_end"] < t0).any()
        # Every row finished in [t0, t0 + 10) is in the window read at t0 + 10.
        done = full_visits[(full_visits["t_end"] >= t0) & (full_visits["t_end"] < t0 + 10)]
        assert set(done["pid"]) <= set(visits["pid"])
        arrived = full_requests[
            (full_requests["t_arrive"] >= t0) & (full_requests["t_arrive"] < t0 + 10)
        ]
        assert set(arrived["pid"]) <= set(requests["pid"])
    assert len(full_requests) > 100
    # Going back in time re-reads from the start rather than trusting the cursor.
    again, _ = sim.records(since_s=0)
    assert len(again) == len(full_visits)


def _with_overhead(sc: Scenario, overhead: dict | None) -> Scenario:
    data = sc.model_dump()
    data["processes"][0]["request_overhead"] = overhead
    return Scenario.model_validate(data)


def test_request_overhead_delays_the_first_step_and_holds_no_capacity() -> None:
    sc = one_stage()
    dep = Deployment(allocation={"stage": {"m": 1}})
    base = simulate_replication(sc, dep, None, 60, seed=7)
    const = simulate_replication(
        _with_overhead(sc, {"kind": "constant", "ms": 3}), dep, None, 60, seed=7
    )
    # Arrivals are the same stream; each stage visit starts exactly 3 ms later.
    assert np.allclose(const.requests["t_arrive"], base.requests["t_arrive"])
    first = const.visits.groupby("pid")["t_arrive"].min().sort_index()
    arrive = const.requests.set_index("pid")["t_arrive"].sort_index()
    assert np.allclose(first - arrive, 0.003)
    # A pure delay: with constant service and a constant shift the batches are the
    # same, so every request takes exactly 3 ms longer.
    lat_base = (base.requests["t_end"] - base.requests["t_arrive"]).to_numpy()
    lat_const = (const.requests["t_end"] - const.requests["t_arrive"]).to_numpy()
    assert np.allclose(lat_const - lat_base, 0.003)
    # A random overhead has its own stream: the stage's service draws don't move.
    rand = simulate_replication(
        _with_overhead(sc, {"kind": "lognormal", "mean_ms": 2, "cv": 0.5}), dep, None, 60, seed=7
    )
    extra = (rand.visits.groupby("pid")["t_arrive"].min().sort_index() - arrive) * 1e3
    assert 1.8 < extra.mean() < 2.2
    assert 0.4 < extra.std() / extra.mean() < 0.6


def test_set_request_overhead_moves_only_later_arrivals() -> None:
    sc = _with_overhead(one_stage(), {"kind": "constant", "ms": 3})
    dep = Deployment(allocation={"stage": {"m": 1}})
    sim = Simulation(sc, dep, None, 40, seed=7)
    sim.start()
    sim.advance(20)
    sim.set_request_overhead(sc.processes[0].name, ConstantServiceTime(kind="constant", ms=9))
    sim.advance(40)
    visits, requests = sim.records()
    first = visits.groupby("pid")["t_arrive"].min()
    req = requests.set_index("pid").loc[first.index]
    extra_ms = 1e3 * (first - req["t_arrive"])
    before = req["t_arrive"] < 20
    assert before.sum() > 50 and (~before).sum() > 50
    assert np.allclose(extra_ms[before], 3) and np.allclose(extra_ms[~before], 9)
    sim.set_request_overhead(sc.processes[0].name, None)  # no overhead: allowed
    with pytest.raises(ValueError, match="no process"):
        sim.set_request_overhead("nope", None)
