"""rl control's pieces without servers: testbed view, change kinds, latency per interval,
the twin replay of a control loop, and the policy cache key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lab.control import side_by_side, summarise
from lab.control_measure import interval_latency, per_interval
from lab.control_twin import TwinReplay, change_delay_s, change_kinds, replay
from lab.control_view import replica_speed
from lab.control_view import testbed_view as view_of
from optimizer.rl.baselines import GreedyPolicy
from optimizer.rl.cache import TrainSettings, policy_key
from optimizer.rl.cli import make_env
from optimizer.rl.space import Option
from twin.criteria import stage_capacity_rps
from twin.load import load_deployment, load_scenario

SCENARIO = "examples/digits-pipeline.yaml"


@pytest.fixture(scope="module")
def scenario():
    return load_scenario(SCENARIO)


def test_view_scales_speed_by_the_quota_and_adds_server_cpu(scenario):
    view = view_of(scenario, 0.25)
    assert view.servers[0].cpu_speed == pytest.approx(0.5)  # 2 cores × 0.25, one thread
    assert replica_speed(8, 1.0, 0.5) == 1.0  # a single-threaded replica uses ≤ one core
    dep = load_deployment("examples/digits-pipeline.deployment.yaml")
    full = stage_capacity_rps(scenario, dep, "encoder")
    seen = stage_capacity_rps(view, dep, "encoder")
    # half the speed and the server's own CPU on top of the model's 2.77 ms
    assert seen < full / 2
    assert view.component("encoder").server_overhead is not None
    assert view.process("digits").request_overhead is not None


def test_view_scales_rates(scenario):
    view = view_of(scenario, 0.25, rate_scale=1.5)
    assert view.workload("steady-high").rate_per_s == pytest.approx(
        1.5 * scenario.workload("steady-high").rate_per_s
    )
    with pytest.raises(ValueError):
        view_of(scenario, 0.0)


def test_change_kinds_follow_the_controller():
    a = [Option(0, 1, 1), Option(2, 1, 1)]
    assert change_kinds(a, a) == []
    got = change_kinds(a, [Option(1, 1, 1), Option(2, 1, 4)])
    assert got == ["variant", "batch", "routes"]
    kinds = change_kinds(a, [Option(0, 3, 1), Option(2, 1, 1)])
    assert kinds == ["replica-start", "replica-start", "routes"]
    assert change_delay_s(kinds, {"replica-start": 1.5, "routes": 0.1}) == pytest.approx(3.1)


def test_interval_latency_counts_unanswered_as_violations():
    req = pd.DataFrame(
        {
            "t_arrive": [0.1, 0.2, 0.3, 0.4, 5.0],
            "t_end": [0.15, 0.25, 0.5, np.nan, 5.01],
        }
    )
    got = interval_latency(req, 0.0, 1.0, deadline_s=0.1)
    assert got["requests"] == 4 and got["failed"] == 1
    assert got["slo_violations"] == pytest.approx(2 / 4)  # 0.2 s over, one unanswered
    assert got["p50_s"] == pytest.approx(0.05)
    rows = per_interval(req, [0.0, 4.0], 2.0, 0.1)
    assert rows["requests"].tolist() == [4.0, 1.0]


def test_twin_replay_of_a_control_loop(scenario):
    view = view_of(scenario, 0.25, rate_scale=1.4)
    ws = [view.workload("steady-low"), view.workload("steady-high")]
    env = make_env(view, "digits", ws, "analytic", None)
    env.reset(seed=1, options={"workload": "steady-high"})
    spec = TwinReplay(env, ws[1], 1, 45.0, 2.0, 3, {"replica-start": 1.0, "routes": 0.05})
    rows, requests = replay(spec, GreedyPolicy())
    assert len(rows) == 3
    assert rows["requests"].sum() > 0.8 * 1.4 * 140 * 30
    assert (rows["p95_s"] > 0).all()
    # same seed, same arrivals: the requests are the load run's schedule
    from loadgen.schedule import arrival_schedule

    sched = arrival_schedule(ws[1], "digits", 45.0, 1)
    got = np.sort(requests["t_arrive"].to_numpy())  # the twin ran until the last interval
    assert got[-1] >= 2.0 + 3 * 10 - 1
    assert np.allclose(got, sched[: got.size])


def test_side_by_side_and_summary():
    cols = ["offered_rps", "Q", "C", "V", "T", "L", "E", "p95_s", "slo_violations"]
    base = {c: [1.0, 2.0] for c in cols} | {"t_s": [0.0, 10.0], "config": ["a", "b"]}
    extra = {
        "objective": [1.0, 1.0],
        "reward": [1.0, 1.0],
        "requests": [10.0, 30.0],
        "failed": [0.0, 0.0],
        "decision_ms": [1.0, 1.0],
        "apply_s": [0.0, 0.5],
    }
    tb = pd.DataFrame(base | extra)
    tw = pd.DataFrame(base | extra).assign(Q=[5.0, 6.0])
    sbs = side_by_side(tb, tw)
    assert sbs["Q_twin"].tolist() == [5.0, 6.0] and sbs["Q_testbed"].tolist() == [1.0, 2.0]
    s = summarise(tb.assign(slo_violations=[0.1, 0.5]))
    assert s["slo_violations"] == pytest.approx((1 + 15) / 40)
    assert s["reconfigurations"] == 1


def test_policy_key_changes_with_what_the_policy_was_trained_on(scenario):
    ws = list(scenario.workloads[:3])
    a = policy_key(scenario, "digits", ws, TrainSettings())
    assert a == policy_key(scenario, "digits", ws, TrainSettings())
    assert a != policy_key(scenario, "digits", ws, TrainSettings(steps=10))
    assert a != policy_key(view_of(scenario, 0.25), "digits", ws, TrainSettings())


def test_a_new_configuration_keeps_replicas_where_they_run(scenario):
    from optimizer.rl.space import ConfigSpace

    space = ConfigSpace(view_of(scenario, 0.25), "digits")
    now = [Option(2, 1, 1), Option(2, 2, 1), Option(2, 1, 1)]
    more = [Option(2, 2, 1), Option(2, 2, 1), Option(2, 2, 1)]
    running = space.deployment(now)
    fresh = space.deployment(more)
    near = space.deployment(more, keep=running)
    assert sum(near.allocation["denoise"].values()) == 2  # the same configuration
    for stage, per in running.allocation.items():
        for machine, n in per.items():
            assert near.allocation[stage].get(machine, 0) >= n  # nothing moved
    moved = sum(
        max(n - fresh.allocation[s].get(m, 0), 0)
        for s, per in running.allocation.items()
        for m, n in per.items()
    )
    assert moved > 0  # packing from scratch would have moved some (the churn we avoid)


def _fake_load_run(folder, rng, e_large_ms=6.0, overhead_ms=5.0, n=600):
    """A load-run folder of a d-large → e-large → c-deep run at 50/s with known times."""
    folder = Path(folder)
    folder.mkdir(parents=True)
    times = {"denoise": ("d-large", 1.0), "encoder": ("e-large", e_large_ms)}
    times["classifier"] = ("c-deep", 0.3)
    visits, requests = [], []
    for pid in range(n):
        t = pid / 50.0
        start = t
        for comp, (variant, ms) in times.items():
            service = rng.lognormal(np.log(ms / 1e3), 0.1)
            visits.append(
                {
                    "pid": pid,
                    "component": comp,
                    "variant": variant,
                    "batch": 1,
                    "replica_name": f"{comp}-node-1-1",
                    "t_start": start,
                    "queue_s": 0.0,
                    "service_s": round(service, 7),
                    "hop_s": 0.0005,
                }
            )
            start += service + 0.0005
        over = rng.lognormal(np.log(overhead_ms / 1e3), 0.2)
        requests.append(
            {
                "pid": pid,
                "t_arrive": t,
                "t_send": t,
                "t_end": start + over,
                "t_response": start + over,
                "ok": True,
            }
        )
    pd.DataFrame(visits).to_parquet(folder / "visits.parquet")
    pd.DataFrame(requests).to_parquet(folder / "requests.parquet")
    (folder / "run.json").write_text('{"t0_unix_s": 0.0, "duration_s": 12.0}')
    return folder


def test_replay_twin_is_calibrated_on_other_runs(scenario, tmp_path):
    from lab.control_calibrate import calibrated_twin, load_result

    rng = np.random.default_rng(0)
    runs = [(_fake_load_run(tmp_path / f"r{i}", rng), scenario.workloads[0]) for i in range(2)]
    sc, calibration = calibrated_twin(scenario, Path(SCENARIO), runs, factor=0.25)
    assert {f.variant for f in calibration.fits} == {"d-large", "e-large", "c-deep"}
    enc = {v.name: v.service_time for v in sc.component("encoder").variants}
    # served: the measured wall time (6 ms), not the manifest's 2.8 ms at the 0.5-core share
    assert enc["e-large"].mean_ms + enc["e-large"].per_item_ms == pytest.approx(6.0, rel=0.1)
    # not served: the view's time, the manifest's at the replica's share (0.5 core)
    manifest = {v.name: v.service_time for v in scenario.component("encoder").variants}
    assert enc["e-small"].mean_ms == pytest.approx(manifest["e-small"].mean_ms / 0.5)
    over = sc.process("digits").request_overhead
    assert over is not None and over.mean_ms == pytest.approx(6.5, rel=0.25)  # 5 ms + 3 hops
    with pytest.raises(ValueError, match="not a finished load run"):
        load_result(tmp_path / "missing")


def _agent_run(folder, rate, seconds=20.0, per_call_ms=0.4, idle_cores=0.02):
    """Visits of e-large on node-1 at ``rate``/s and that node agent's CPU counter:
    the manifest's model CPU + ``per_call_ms`` per visit + ``idle_cores``."""
    folder = Path(folder)
    folder.mkdir(parents=True)
    t_end = np.arange(0.0, seconds, 1.0 / rate)
    pd.DataFrame(
        {
            "replica_name": "encoder-node-1-1",
            "variant": "e-large",
            "batch": 1,
            "t_end": t_end,
        }
    ).to_parquet(folder / "visits.parquet")
    model_ms = 2.774  # e-large's manifest time of a batch of one
    t = np.arange(0.0, seconds + 1.0, 1.0)
    served = np.searchsorted(t_end, t, side="right")
    cpu = served * (model_ms + per_call_ms) / 1e3 + idle_cores * t
    pd.DataFrame(
        {"t": t, "target": "agent:node-1", "metric": "node_cpu_seconds_total", "value": cpu}
    ).to_parquet(folder / "metrics.parquet")
    return folder


def test_node_cpu_recovers_the_servers_cpu_beside_the_model(scenario, tmp_path):
    from lab.control_calibrate import NodeCpu, node_cpu

    runs = [_agent_run(tmp_path / f"r{r}", r) for r in (20, 50, 100)]
    fit = node_cpu(runs, scenario)
    assert fit.rows == 3
    assert fit.per_call_ms == pytest.approx(0.4, abs=0.02)
    assert fit.idle_cores == pytest.approx(0.02, abs=0.005)
    # runs without node-agent counters: the knee benchmark's defaults
    assert node_cpu([tmp_path / "none"], scenario) == NodeCpu()


def test_quota_twin_puts_every_node_under_its_quota(scenario, tmp_path):
    from lab.control_calibrate import NodeCpu, calibrated_twin, quota_twin

    rng = np.random.default_rng(0)
    runs = [(_fake_load_run(tmp_path / f"r{i}", rng), scenario.workloads[0]) for i in range(2)]
    cal_sc, _ = calibrated_twin(scenario, Path(SCENARIO), runs, factor=0.25)
    cpu = NodeCpu(per_call_ms=0.4, idle_cores=0.05, host_speed=0.9)
    sc = quota_twin(cal_sc, scenario, 0.25, cpu)
    for s in sc.servers:  # 2 cores × 0.25: 0.5 host cores less the idle, in running time
        assert s.cpu_quota_cores == pytest.approx((0.5 - 0.05) / 0.9)
        assert s.cpu_speed == pytest.approx(0.9)
    enc = sc.component("encoder")
    # every variant at its manifest (full-core) time: the quota, not the time, slows it
    assert enc.variants == scenario.component("encoder").variants
    assert enc.server_overhead is not None and enc.server_overhead.concurrent
    assert enc.server_overhead.per_item_ms == pytest.approx(0.4)
    before = cal_sc.process("digits").request_overhead.mean_ms
    after = sc.process("digits").request_overhead.mean_ms
    assert after == pytest.approx(before - 3 * 0.4 / 0.9)  # three hops' server CPU moved


def test_change_steps_follow_the_controllers_order(scenario):
    from lab.control_twin import change_steps
    from optimizer.rl.space import ConfigSpace

    space = ConfigSpace(view_of(scenario, 0.25), "digits")
    stages = [s.name for s in space.stages]
    old_opts = [Option(2, 1, 1), Option(0, 1, 1), Option(2, 1, 1)]
    new_opts = [Option(2, 1, 1), Option(2, 3, 4), Option(2, 1, 1)]
    old = space.deployment(old_opts)
    new = space.deployment(new_opts, keep=old)
    secs = {"variant": 0.2, "replica-start": 1.5, "routes": 0.01}
    steps = change_steps(old, new, stages, secs)
    assert [round(t, 3) for t, _ in steps] == [0.2, 3.21]
    switched = steps[0][1]
    # the kept replica runs the new variant and batch first, on the old replica count
    assert switched.stages["encoder"] == new.stages["encoder"]
    assert switched.allocation == old.allocation
    assert steps[-1][1] == new
    assert change_steps(old, old, stages, secs) == []
    more = space.deployment([Option(2, 1, 1), Option(2, 2, 1), Option(2, 1, 1)])
    fewer = space.deployment([Option(2, 1, 1)] * 3, keep=more)
    down = change_steps(more, fewer, stages, secs)
    assert [t for t, _ in down] == [pytest.approx(0.01)]  # only the routes: no dip


def test_staged_replay_shows_the_dip_of_a_switch_before_its_starts(scenario):
    from optimizer.rl.baselines import Policy

    class Heavier(Policy):
        """Light encoder for the first decision, then e-large×3 (a heavier switch)."""

        def __init__(self):
            self.n = 0

        def decide(self, space, load_rps, weights):
            self.n += 1
            if self.n == 1:
                return [Option(2, 1, 1), Option(0, 1, 1), Option(2, 1, 1)]
            return [Option(2, 1, 1), Option(2, 3, 1), Option(2, 1, 1)]

    view = view_of(scenario, 0.25, rate_scale=1.4)
    ws = [view.workload("steady-low"), view.workload("steady-high")]
    p95 = {}
    for staged in (False, True):
        env = make_env(view, "digits", ws, "analytic", None)
        env.reset(seed=1, options={"workload": "steady-high"})
        secs = {"variant": 0.2, "replica-start": 3.0, "routes": 0.01}
        spec = TwinReplay(env, ws[1], 1, 45.0, 2.0, 3, secs, staged=staged)
        rows, _ = replay(spec, Heavier())
        p95[staged] = rows["p95_s"].iloc[2]
    # e-large×1 carries the load alone for 6 s while two replicas start: a queue
    assert p95[True] > 2 * p95[False]


def test_replay_draws_the_overhead_of_the_running_configurations_class(scenario):
    from lab.control_calibrate import overhead_class
    from optimizer.rl.baselines import Policy
    from twin.spec import ConstantServiceTime

    class LightThenHeavy(Policy):
        """e-tiny-ish encoder for the first decision, then e-large (another class)."""

        def __init__(self):
            self.n = 0

        def decide(self, space, load_rps, weights):
            self.n += 1
            return [Option(2, 1, 1), Option(0 if self.n == 1 else 2, 2, 1), Option(2, 1, 1)]

    view = view_of(scenario, 0.25, rate_scale=1.0)
    ws = [view.workload("steady-low"), view.workload("steady-high")]
    env = make_env(view, "digits", ws, "analytic", None)
    env.reset(seed=1, options={"workload": "steady-low"})
    const = {
        c: ConstantServiceTime(kind="constant", ms=ms) for c, ms in [("light", 1), ("heavy", 80)]
    }
    secs = {"variant": 0.2, "replica-start": 0.5, "routes": 0.01}
    spec = TwinReplay(env, ws[0], 1, 45.0, 2.0, 3, secs, overheads=const, classify=overhead_class)
    rows, _ = replay(spec, LightThenHeavy())
    assert overhead_class(rows["config"].iloc[1]) == "light"
    assert overhead_class(rows["config"].iloc[2]) == "heavy"
    # light runs all of interval 1: no request waits 80 ms; heavy from ~1 s into interval 2
    assert rows["p95_s"].iloc[1] < 0.06
    assert rows["p50_s"].iloc[2] > 0.08
    # without the classes every interval draws the scenario's one overhead
    env.reset(seed=1, options={"workload": "steady-low"})
    plain, _ = replay(TwinReplay(env, ws[0], 1, 45.0, 2.0, 3, secs), LightThenHeavy())
    assert plain["p50_s"].iloc[2] < 0.08


def test_replay_draws_the_after_change_overhead_for_the_interval_after_a_change(scenario):
    from lab.control_calibrate import AFTER_CHANGE, overhead_class
    from optimizer.rl.baselines import Policy
    from twin.spec import ConstantServiceTime

    class OneChange(Policy):
        """One configuration at every decision: a change at the first only."""

        def decide(self, space, load_rps, weights):
            return [Option(2, 1, 1), Option(0, 2, 1), Option(2, 1, 1)]

    view = view_of(scenario, 0.25, rate_scale=1.0)
    ws = [view.workload("steady-low"), view.workload("steady-high")]
    env = make_env(view, "digits", ws, "analytic", None)
    env.reset(seed=1, options={"workload": "steady-low"})
    const = {
        c: ConstantServiceTime(kind="constant", ms=ms)
        for c, ms in [("light", 1), ("heavy", 1), (AFTER_CHANGE, 80)]
    }
    secs = {"variant": 0.2, "replica-start": 0.5, "routes": 0.01}
    spec = TwinReplay(
        env,
        ws[0],
        1,
        45.0,
        2.0,
        3,
        secs,
        overheads=const,
        classify=overhead_class,
        after_change=AFTER_CHANGE,
    )
    rows, _ = replay(spec, OneChange())
    assert rows["change_delay_s"].iloc[0] > 0 and rows["change_delay_s"].iloc[1] == 0
    assert rows["p50_s"].iloc[1] > 0.08  # the interval after the change
    assert rows["p95_s"].iloc[2] < 0.06  # the configuration's class again


def test_rl_control_trains_the_charged_policy_from_the_view_one_when_missing(
    scenario, tmp_path, monkeypatch
):
    """--train-twin charged: the view's policy is found or trained first, then the charged
    one, started from the view's folder, for a third of its steps, on the charged twin."""
    import optimizer.rl.agent as agent
    import optimizer.rl.cache as cache
    from lab.control import ControlOptions, prepare_control
    from optimizer.rl.cli import DEFAULT_WORKLOADS, _workloads

    asked = []

    def fake_cached(view, proc, workloads, predictor, settings, cache_dir, **kw):  # type: ignore[no-untyped-def]
        asked.append((settings, kw.get("moved_from")))
        key = policy_key(view, proc, workloads, settings)
        return Path(cache_dir) / f"{view.name}-{key}", True

    monkeypatch.setattr(cache, "cached_policy", fake_cached)
    monkeypatch.setattr(agent, "load", lambda path: path)
    moved = (Path("/elsewhere"),)
    opts = ControlOptions(
        "ppo", None, "fluctuating", 60.0, 1, 0.25, 1.4, False, 300, tmp_path, "local",
        tmp_path / "state", None, "charged", moved,
    )  # fmt: skip
    ws = _workloads(scenario, DEFAULT_WORKLOADS)
    run, make_decider, _ = prepare_control(scenario, Path(SCENARIO), "digits", opts, None, ws)
    (view, moved1), (charged, moved2) = asked
    assert view.backend == "analytic" and view.steps == 300
    assert charged.backend == "charged" and charged.steps == 100
    seen = [run.view.workload(w.name) for w in ws]
    assert charged.init_policy == f"{run.view.name}-{policy_key(run.view, 'digits', seen, view)}"
    assert moved1 == moved2 == moved
    assert run.training.name.endswith(policy_key(run.view, "digits", seen, charged))
    assert make_decider() == run.training / "policy.zip"
