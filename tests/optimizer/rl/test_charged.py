"""The charged model: node quotas shared across stages, start time, late requests."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from optimizer.rl.backends import ChargedBackend
from optimizer.rl.cache import TrainSettings, policy_key
from optimizer.rl.charged import (
    ChargedExpert,
    TestbedCharges,
    blend,
    change_seconds,
    estimate_charged,
    late_share,
    prior_speeds,
)
from optimizer.rl.env import PipelineEnv
from optimizer.rl.model import estimate
from optimizer.rl.space import ConfigSpace, Option
from twin.spec import Scenario

# d-large ×1, e-large ×2, c-deep ×1: what IPA keeps on the testbed (4 of 6 cores)
IPA = [Option(2, 1, 1), Option(2, 2, 1), Option(2, 1, 1)]
PPO = [Option(2, 1, 1), Option(2, 2, 1), Option(2, 2, 1)]  # plus a 2nd classifier replica


def _view(digits: Scenario) -> Scenario:
    from lab.control_view import testbed_view

    return testbed_view(digits, 0.25, rate_scale=1.4)


def test_the_node_quota_bounds_capacity_by_hand(digits):
    sp = ConfigSpace(_view(digits), "digits")
    ch = TestbedCharges(per_call_ms=0.5, idle_cores=0.0, host_speed=1.0)
    where = sp.place(IPA)
    est = estimate_charged(sp, IPA, where, 100.0, sp.scenario.settings.qos, ch)
    # each encoder node: half the items at (e-large's 2.774 ms + 0.5 ms) on a 0.5-core quota
    per_item_ms = 2.774 + 0.5
    encoder_cap = 0.5 / (0.5 * per_item_ms / 1e3)
    assert est.stages[1].capacity_rps == pytest.approx(encoder_cap, rel=1e-3)
    assert est.metrics.capacity_rps <= encoder_cap + 1e-9


def test_a_replica_beside_a_busy_encoder_takes_its_quota(digits):
    sp = ConfigSpace(_view(digits), "digits")
    w, ch = sp.scenario.settings.qos, TestbedCharges()
    alone = sp.place(IPA)
    crowded = sp.place_near(PPO, alone)
    assert crowded["classifier"] != alone["classifier"]  # the new one lands on an encoder node
    a = estimate_charged(sp, IPA, alone, 180.0, w, ch)
    b = estimate_charged(sp, PPO, crowded, 180.0, w, ch)
    assert b.metrics.capacity_rps < a.metrics.capacity_rps
    assert b.stages[1].latency_s > a.stages[1].latency_s
    # the view gives every replica a core of its own: the 2nd replica only adds capacity
    assert estimate(sp, PPO, 180.0, w).stages[2].capacity_rps > (
        estimate(sp, IPA, 180.0, w).stages[2].capacity_rps
    )
    # a slower host lowers capacity further
    slow = estimate_charged(sp, IPA, alone, 180.0, w, ch, host_speed=0.75)
    assert slow.metrics.capacity_rps < a.metrics.capacity_rps


def test_late_requests_count_as_unmet_load(digits):
    sp = ConfigSpace(_view(digits), "digits")
    w, ch = sp.scenario.settings.qos, TestbedCharges()
    where = sp.place_near(PPO, sp.place(IPA))
    est = estimate_charged(sp, PPO, where, 190.0, w, ch, host_speed=0.75)
    m = est.metrics
    late = m.T * late_share(m.L + ch.request_overhead_ms / 1e3, sp.deadline_s)
    assert late > 1.0
    from twin.criteria import qos

    assert m.Q == pytest.approx(qos(m.V, m.T, m.L, m.E, w) - w.gamma * late)
    assert late_share(0.02, 0.1) == pytest.approx(math.exp(-5))
    assert late_share(0.02, float("inf")) == 0.0


def test_change_seconds_count_switches_then_starts():
    ch = TestbedCharges(start_s=1.5, switch_s=0.1)
    assert change_seconds(IPA, IPA, ch, 10.0) == 0.0
    assert change_seconds(IPA, PPO, ch, 10.0) == pytest.approx(1.5)
    switched = [Option(1, 1, 1), Option(2, 2, 4), Option(2, 1, 1)]
    assert change_seconds(IPA, switched, ch, 10.0) == pytest.approx(0.1 + 2 * 0.1)
    many = [Option(2, 4, 1), Option(2, 4, 1), Option(2, 4, 1)]
    assert change_seconds(IPA, many, ch, 10.0) == 10.0  # capped at the interval


def test_blend_weights_by_time_and_bills_the_new_configuration(digits):
    sp = ConfigSpace(_view(digits), "digits")
    w, ch = sp.scenario.settings.qos, TestbedCharges()
    a = estimate_charged(sp, IPA, sp.place(IPA), 150.0, w, ch).metrics
    b = estimate_charged(sp, PPO, sp.place(PPO), 150.0, w, ch).metrics
    half = blend(a, b, 0.5, w)
    assert half.Q == pytest.approx((a.Q + b.Q) / 2)
    assert half.C == b.C and half.objective == pytest.approx(half.Q - w.lambda_cost * b.C)
    assert blend(a, b, 0.0, w).Q == pytest.approx(b.Q)


def test_charges_reject_bad_values():
    with pytest.raises(ValueError, match="node_quota_cores"):
        TestbedCharges(node_quota_cores=0.0)
    with pytest.raises(ValueError, match="slow_min"):
        TestbedCharges(slow_min=1.5)


def test_the_charged_backend_draws_a_host_and_delays_changes(digits):
    view = _view(digits)
    env = PipelineEnv(
        view, "digits", [view.workload("fluctuating")], backend="charged", cycle_s=40.0
    )
    assert isinstance(env.backend, ChargedBackend)
    assert isinstance(env.expert, ChargedExpert)
    env.reset(seed=3)
    c = env.backend.charges
    assert c.host_speed * c.slow_min <= env.backend.host_speed <= c.host_speed
    assert env.backend.options == env.current
    rewards = []
    for _ in range(4):
        for _k in range(env.space.n_stages):
            _, r, *_ = env.step(int(np.flatnonzero(env.action_masks())[0]))
        rewards.append(r)
    assert all(np.isfinite(rewards))


def test_the_expert_never_scores_below_the_view_solver(digits):
    view = _view(digits)
    env = PipelineEnv(
        view, "digits", [view.workload("steady-high")], backend="charged", cycle_s=40.0
    )
    env.reset(seed=1)
    space, _ = env.context()
    expert = env.expert
    best = expert.decide(space, 190.0, env.weights)
    view_best = expert.solver.decide(space, 190.0, env.weights)
    assert expert.score(space, best, 190.0, env.weights) >= expert.score(
        space, view_best, 190.0, env.weights
    )


def test_the_objective_expert_scores_eq4_and_its_exhaustive_search_bounds_it(digits, monkeypatch):
    view = _view(digits)
    env = PipelineEnv(
        view, "digits", [view.workload("steady-high")], backend="charged", cycle_s=40.0
    )
    env.reset(seed=1)
    space, _ = env.context()
    with pytest.raises(ValueError, match="target"):
        ChargedExpert(env.backend, target="Q")
    ex = ChargedExpert(env.backend, cache_rps=1e-6, target="objective")
    b = env.backend
    here = ex.score(space, list(b.options), 190.0, env.weights)
    m = estimate_charged(
        space, list(b.options), b.placement, 190.0, env.weights, b.charges, b.host_speed, 10.0
    ).metrics
    assert here == pytest.approx(m.objective) and m.objective != pytest.approx(m.reward)
    local = ex.decide(space, 190.0, env.weights)
    # the exhaustive search over a space cut to 4 options per stage (4^3 configurations)
    # that holds the local search's answer: never below it, and at least every one of them
    cut = {k: [local[k], *space.options_of(k)[:3]] for k in range(space.n_stages)}
    monkeypatch.setattr(space, "options_of", lambda k: cut[k])
    best, best_v = ex.exhaustive(space, 190.0, env.weights)
    assert ex.score(space, best, 190.0, env.weights) == best_v
    assert best_v >= ex.score(space, local, 190.0, env.weights) - 1e-9
    for o in cut[1]:
        cand = [local[0], o, local[2]]
        assert best_v >= ex.score(space, cand, 190.0, env.weights) - 1e-9


def test_policy_key_keeps_old_policies_and_changes_with_the_training_twin(digits):
    view = _view(digits)
    ws = [view.workload(n) for n in ("steady-low", "fluctuating", "steady-high")]
    base = TrainSettings()
    old = policy_key(view, "digits", ws, base)
    # the key of the policy cached before the charged twin existed (runs/rl-policies),
    # re-keyed from the checkout it was trained in (test_cache: its old key)
    assert old == "a0d6ef3887d8"  # test_cache.NEW_VIEW_KEY
    charged = replace(base, backend="charged", charges=TestbedCharges())
    assert policy_key(view, "digits", ws, charged) != old
    slower = replace(charged, charges=TestbedCharges(start_s=3.0))
    assert policy_key(view, "digits", ws, slower) != policy_key(view, "digits", ws, charged)
    # the expert's host is in the key only when it is not the old one (the true speed)
    same = replace(charged, expert_host="true")
    assert policy_key(view, "digits", ws, same) == policy_key(view, "digits", ws, charged)
    prior = replace(charged, expert_host="prior")
    assert policy_key(view, "digits", ws, prior) != policy_key(view, "digits", ws, charged)


def test_prior_speeds_are_midpoints_of_the_training_draw():
    c = TestbedCharges(host_speed=0.8, slow_min=0.5)
    hs = prior_speeds(c, points=4)
    assert hs == pytest.approx([0.8 * x for x in (0.5625, 0.6875, 0.8125, 0.9375)])
    assert np.mean(hs) == pytest.approx(0.8 * 0.75)  # the draw's mean
    assert prior_speeds(replace(c, slow_min=1.0)) == pytest.approx([0.8] * 3)


def test_the_prior_expert_scores_the_mean_over_the_draw_and_ignores_the_episode(digits):
    view = _view(digits)
    env = PipelineEnv(
        view, "digits", [view.workload("fluctuating")], backend="charged", cycle_s=40.0
    )
    env.reset(seed=1)
    space, b = env.space, env.backend
    with pytest.raises(ValueError, match="host"):
        ChargedExpert(b, host="guess")
    prior = ChargedExpert(b, cache_rps=1e-6, host="prior")
    true = ChargedExpert(b, cache_rps=1e-6)
    cand = [Option(2, 1, 1), Option(2, 1, 1), Option(2, 1, 1)]  # all large, one replica
    at = []
    for h in prior_speeds(b.charges):
        b.host_speed = h
        at.append(true.score(space, cand, 100.0, env.weights))
    assert prior.score(space, cand, 100.0, env.weights) == pytest.approx(np.mean(at))
    # the true-speed expert's answer at trough load moves with the episode's host speed;
    # the prior's does not (it is what the policy, which cannot see the speed, can learn)
    answers_true, answers_prior = set(), set()
    for h in (b.charges.host_speed, b.charges.host_speed * b.charges.slow_min):
        b.host_speed = h
        answers_true.add(tuple(ChargedExpert(b).decide(space, 100.0, env.weights)))
        answers_prior.add(tuple(ChargedExpert(b, host="prior").decide(space, 100.0, env.weights)))
    assert len(answers_true) == 2 and len(answers_prior) == 1
