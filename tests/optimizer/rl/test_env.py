"""The environment (check_env, masks, rewards) and the agent (seeding, expert guidance)."""

from __future__ import annotations

import numpy as np
import pytest
from stable_baselines3.common.env_checker import check_env

from optimizer.rl import agent
from optimizer.rl.env import PipelineEnv


def _env(scenario, backend="analytic", cycle_s=100.0, **kw):
    ws = [scenario.workload(n) for n in ("steady-low", "fluctuating", "steady-high")]
    return PipelineEnv(scenario, "pipeline", ws, backend=backend, cycle_s=cycle_s, **kw)


@pytest.mark.parametrize("backend", ["analytic", "twin"])
def test_check_env_passes(chain2, backend):
    env = _env(chain2, backend, cycle_s=40.0)
    check_env(env, skip_render_check=True)


def test_episode_length_and_reward_on_last_stage(chain):
    env = _env(chain, cycle_s=50.0)
    env.reset(seed=0)
    rewards, infos = [], []
    done = False
    while not done:
        a = int(np.flatnonzero(env.action_masks())[0])
        _, r, term, trunc, info = env.step(a)
        rewards.append(r)
        infos.append(info)
        done = term or trunc
    assert len(rewards) == 5 * env.space.n_stages
    decided = [i for i in infos if i.get("decision_done")]
    assert len(decided) == 5
    # Only the last stage's step of a decision carries the interval's reward.
    assert all(r == 0.0 for r, i in zip(rewards, infos, strict=True) if not i)
    assert decided[-1]["reward"] / env.reward_scale == pytest.approx(rewards[-1])
    assert env.projected == 0


def test_masked_action_is_projected_to_a_feasible_one(chain):
    env = _env(chain, cycle_s=20.0)
    env.reset(seed=0)
    biggest = env.space.stages[0].size - 1  # largest variant, 4 replicas, batch 32: 8 cores
    env.step(biggest)
    env.step(env.space.stages[1].size - 1)  # another 8 cores: over W_max = 9, masked
    assert env.projected == 1
    env.step(0)
    assert env.space.cores(env.current) <= env.space.budget


def test_twin_backend_measures_the_interval(chain):
    env = _env(chain, "twin", cycle_s=30.0)
    env.reset(seed=1, options={"workload": "steady-high"})
    info = {}
    for _ in range(env.space.n_stages):
        _, _, _, _, info = env.step(int(np.flatnonzero(env.action_masks())[-1]))
    assert info["offered_rps"] == pytest.approx(90, rel=0.25)
    assert info["T"] > 0 and info["L"] > 0
    assert info["C"] == pytest.approx(env.space.cores(env.current))


def _actions(scenario, seed):
    env = _env(scenario, cycle_s=60.0)
    model, writer = agent.make_agent(
        env, seed=seed, n_steps=60, batch_size=30, n_epochs=2, width=16, blocks=1
    )
    agent.train(model, writer, 120)
    obs, _ = env.reset(seed=5)
    out = []
    for _ in range(12):
        a = agent.act(model, obs, env.action_masks())
        out.append(a)
        obs, *_ = env.step(a)
    return out, writer


def test_same_seed_same_actions(chain2):
    a, writer = _actions(chain2, seed=3)
    b, _ = _actions(chain2, seed=3)
    assert a == b
    assert writer.rows and "value_loss" in writer.rows[-1]


def test_expert_episodes_execute_the_experts_actions(chain2):
    env = _env(chain2, cycle_s=30.0, expert_every=2)  # episodes 2, 4, … are the expert's
    offered: list[int | None] = []
    original = env.expert_action

    def recording() -> int | None:
        a = original()
        offered.append(a)
        return a

    env.expert_action = recording  # type: ignore[method-assign]
    n = 3 * 3 * env.space.n_stages  # three episodes of three decisions
    model, _ = agent.make_agent(
        env, seed=0, n_steps=n, batch_size=n // 2, n_epochs=1, width=16, blocks=1
    )
    model.learn(total_timesteps=n)
    taken = model.rollout_buffer.actions.reshape(-1).astype(int)
    per_episode = n // 3
    assert all(a is None for a in offered[:per_episode])  # episode 1: the policy acts
    expert = offered[per_episode : 2 * per_episode]
    assert all(a is not None for a in expert)
    assert list(taken[per_episode : 2 * per_episode]) == expert


def test_saved_policy_loads_and_acts_identically(chain2, tmp_path):
    env = _env(chain2, cycle_s=30.0)
    model, writer = agent.make_agent(
        env, seed=1, n_steps=30, batch_size=15, n_epochs=1, width=16, blocks=1
    )
    agent.train(model, writer, 30)
    model.save(tmp_path / "ppo.zip")
    again = agent.load(tmp_path / "ppo.zip")
    obs, _ = env.reset(seed=2)
    mask = env.action_masks()
    assert agent.act(again, obs, mask) == agent.act(model, obs, mask)
    assert mask[agent.act(again, obs, mask)]


def test_twin_window_equals_pipeline_metrics_on_full_records(chain):
    """The backend's incremental reading gives what twin.criteria computes on all records."""
    from twin.criteria import pipeline_metrics

    env = _env(chain, "twin", cycle_s=40.0)
    env.reset(seed=2, options={"workload": "fluctuating"})
    for _ in range(3):
        for _ in range(env.space.n_stages):
            _, _, _, _, info = env.step(int(np.flatnonzero(env.action_masks())[0]))
    visits, requests = env.backend.sim.records()
    t0, t1 = info["t_s"], info["t_s"] + env.interval_s
    offered = ((requests["t_arrive"] >= t0) & (requests["t_arrive"] < t1)).sum() / (t1 - t0)
    m = pipeline_metrics(visits, chain, env.deployment, "pipeline", t0, t1, offered)
    assert info["T"] == pytest.approx(m.T)
    assert info["L"] == pytest.approx(m.L)
    assert info["reward"] == pytest.approx(m.reward)


@pytest.mark.parametrize("backend", ["analytic", "twin"])
def test_reward_cost_weight_is_the_agents_own(chain, backend):
    """β' changes the reward (eq. 7) the env pays, not Q, C or eq. 4's objective."""
    infos = {}
    for beta in (None, 0.7):
        env = _env(chain, backend, cycle_s=20.0, reward_cost=beta)
        env.reset(seed=3, options={"workload": "fluctuating"})
        for _ in range(env.space.n_stages):
            _, r, _, _, info = env.step(int(np.flatnonzero(env.action_masks())[-1]))
        infos[beta] = (info, r, env)
    (base, _, env0), (lean, r, env) = infos[None], infos[0.7]
    w = chain.settings.qos
    assert env0.weights == w and env.weights.reward_cost == 0.7
    assert env.weights.lambda_cost == w.lambda_cost
    assert lean["Q"] == pytest.approx(base["Q"]) and lean["C"] == pytest.approx(base["C"])
    assert lean["objective"] == pytest.approx(base["objective"])
    assert lean["reward"] == pytest.approx(lean["Q"] - 0.7 * lean["C"] - w.reward_batch * lean["B"])
    assert r == pytest.approx(lean["reward"] / env.reward_scale)
    assert env.expert.target == "reward"  # the expert solves the agent's reward


def test_negative_reward_cost_weight_is_refused(chain):
    with pytest.raises(ValueError, match="reward cost weight"):
        _env(chain, reward_cost=-0.1)
