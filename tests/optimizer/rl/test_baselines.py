"""Baselines: IPA-style CP-SAT equals enumeration; Greedy is the cheapest that meets load."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from optimizer.rl.baselines import (
    GreedyPolicy,
    IPAPolicy,
    RandomPolicy,
    exhaustive,
    target_value,
)
from optimizer.rl.model import estimate
from optimizer.rl.space import ConfigSpace


@pytest.fixture(scope="module")
def small(chain):
    # 3 stages × 3 variants × 2 replicas × 3 batches = 18³ configurations: enumerable.
    return ConfigSpace(chain, "pipeline", max_replicas=2, batches=(1, 4, 16))


@pytest.mark.parametrize("load", [5.0, 40.0, 90.0, 150.0, 400.0])
@pytest.mark.parametrize("target", ["objective", "reward", "ipa-paper"])
def test_ipa_matches_exhaustive_search(small, chain, load, target):
    # A reward cost weight β' unlike eq. 4's λ, so the targets differ.
    w = chain.settings.qos.model_copy(update={"reward_cost": 0.6})
    got = IPAPolicy(target=target).decide(small, load, w)
    _, best = exhaustive(small, load, w, target=target)
    assert small.deployment(got)
    value = target_value(estimate(small, got, load, w), target, got, small, w)
    # Same optimum up to CP-SAT's integer rounding of the coefficients (1e-5 units).
    assert value == pytest.approx(best, abs=1e-3)


def test_ipa_paper_objective_meets_load_and_deadline(chain):
    space = ConfigSpace(chain, "pipeline")
    w = chain.settings.qos
    for load in (15.0, 90.0):
        got = IPAPolicy(target="ipa-paper").decide(space, load, w)
        est = estimate(space, got, load, w)
        assert min(e.capacity_rps for e in est.stages) >= load
        assert est.metrics.L <= space.deadline_s


def test_a_dearer_reward_cost_weight_buys_cheaper_configurations(chain):
    space = ConfigSpace(chain, "pipeline")
    w = chain.settings.qos.model_copy(update={"reward_cost": 1.0})
    for load in (15.0, 50.0, 90.0):
        ipa = estimate(space, IPAPolicy().decide(space, load, w), load, w).metrics
        lean = estimate(space, IPAPolicy(target="reward").decide(space, load, w), load, w).metrics
        assert lean.C < ipa.C
        assert lean.objective <= ipa.objective + 1e-6  # eq. 4 is what IPA maximises


def test_unknown_target_is_refused():
    with pytest.raises(ValueError, match="unknown target"):
        IPAPolicy(target="accuracy")


@pytest.mark.parametrize("load", [10.0, 60.0, 120.0])
def test_greedy_is_the_cheapest_config_meeting_load(small, chain, load):
    w = chain.settings.qos
    got = GreedyPolicy().decide(small, load, w)
    est = estimate(small, got, load, w).metrics
    assert est.capacity_rps >= load
    cheapest = min(
        sum(s.cost(o) for s, o in zip(small.stages, combo, strict=True))
        for combo in itertools.product(*(small.options_of(k) for k in range(small.n_stages)))
        if small.cores(list(combo)) <= small.budget
        and estimate(small, list(combo), load, w).metrics.capacity_rps >= load
    )
    assert est.C == pytest.approx(cheapest)


def test_greedy_takes_most_capacity_when_load_cannot_be_met(small, chain):
    got = GreedyPolicy().decide(small, 1e5, chain.settings.qos)
    assert small.deployment(got)  # still feasible


def test_random_is_feasible_and_seeded(small, chain):
    w = chain.settings.qos
    a = [RandomPolicy(seed=3).decide(small, 50, w) for _ in range(1)]
    b = [RandomPolicy(seed=3).decide(small, 50, w) for _ in range(1)]
    assert a == b
    rng_policy = RandomPolicy(seed=4)
    seen = {tuple(rng_policy.decide(small, 50, w)) for _ in range(20)}
    assert len(seen) > 10
    for combo in seen:
        assert small.deployment(list(combo))


def test_ipa_beats_greedy_on_predicted_objective(chain):
    space = ConfigSpace(chain, "pipeline")
    w = chain.settings.qos
    for load in (15.0, 50.0, 90.0):
        r_ipa = estimate(space, IPAPolicy().decide(space, load, w), load, w).metrics.objective
        r_greedy = estimate(space, GreedyPolicy().decide(space, load, w), load, w).metrics.objective
        assert r_ipa >= r_greedy - 1e-6
    assert np.isfinite(r_ipa)
