"""A block of policies on one testbed: reset to one start between them, checked."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from lab.control_block import BlockMember, reset, rotated, run_block, start_check, wanted
from lab.control_view import testbed_view as view_of
from optimizer.rl.baselines import GreedyPolicy
from optimizer.rl.cli import make_env
from twin.load import load_scenario
from twin.spec import Deployment


class FakeTestbed:
    """Holds the replicas a deployment asks for; a run leaves requests queued that
    drain one per poll. ``stuck``: ignores the reset to the initial deployment."""

    def __init__(self, stuck: bool = False) -> None:
        self.calls: list[str] = []
        self.rows: list[dict] = []
        self.queued = 0
        self.stuck = stuck
        self.warmed = 0

    def up(self, deployment: Path) -> str:
        self.calls.append("up")
        from twin.load import load_deployment

        self.apply_live(load_deployment(deployment))
        return "targets"

    def down(self) -> None:
        self.calls.append("down")

    def apply_live(self, deployment: Deployment) -> list[dict]:
        if self.stuck and self.rows and deployment.name == "rl-initial":
            return []
        rows = [
            {"stage": s, "node": m, "variant": w["variant"], "batch": w["batch"], "healthy": True}
            for s, w in wanted(deployment).items()
            for m, n in w["nodes"].items()
            for _ in range(n)
        ]
        changed = rows != self.rows
        self.rows = rows
        return [{"kind": "variant", "stage": "encoder", "seconds": 0.1}] if changed else []

    def instances(self) -> list[dict]:
        return [dict(r) for r in self.rows]

    def outstanding(self) -> float:
        left = self.queued
        self.queued = max(self.queued - 1, 0)
        return float(left)

    def warm(self, n: int) -> int:
        self.warmed += n
        return 0


@pytest.fixture(scope="module")
def view():
    return view_of(load_scenario("examples/digits-pipeline.yaml"), 0.25, rate_scale=1.4)


def _members(view, policies, tmp_path):
    ws = [view.workload("steady-low"), view.workload("steady-high")]
    out = []
    for p in policies:
        env = make_env(view, "digits", ws, "analytic", None)
        env.reset(seed=1, options={"workload": "steady-high"})
        run = SimpleNamespace(policy=p)
        out.append(BlockMember(run, env, GreedyPolicy, env, tmp_path / p))
    return out


def _control(tb, targets, m, work):
    """A policy's run: it reconfigures (Greedy at a high load) and leaves a queue."""
    seen = start_check(tb.instances(), wanted(m.env.space.deployment(m.env.current)), 0)
    chosen = m.make_decider().decide(m.env.space, 400.0, m.env.weights)
    tb.apply_live(m.env.space.deployment(chosen, keep=m.env.space.deployment(m.env.current)))
    tb.queued = 3
    return {"policy": m.run.policy, "started": seen["config"], "targets": targets}


def _write(m, measured, work, extra):
    assert work.is_dir()
    return {**measured, **extra}


def test_rotation_gives_every_policy_each_place():
    ps = ["ppo", "ipa", "greedy"]
    assert rotated(ps, 0) == ps
    assert rotated(ps, 1) == ["ipa", "greedy", "ppo"]
    assert rotated(ps, 4) == rotated(ps, 1)
    firsts = {rotated(ps, r)[0] for r in range(3)}
    assert firsts == set(ps)


def test_every_policy_starts_from_the_same_configuration_and_an_empty_queue(view, tmp_path):
    tb = FakeTestbed()
    members = _members(view, ["ppo", "ipa", "greedy"], tmp_path)
    out = run_block(members, tb, _control, _write, block="steady-high-r1", quiet_s=0)
    assert tb.calls == ["up", "down"]  # one testbed for the whole block
    assert [o["policy"] for o in out] == ["ppo", "ipa", "greedy"]
    assert len({str(o["started"]) for o in out}) == 1  # the same start for each
    for k, o in enumerate(out):
        c = o["start_check"]
        assert c["ok"] and c["config_matches"] and c["outstanding"] == 0
        assert c["position"] == k and c["order"] == ["ppo", "ipa", "greedy"]
    # the policies changed the configuration, so every reset after the first undid it
    assert out[0]["start_check"]["reset_changes"] == []
    assert all(o["start_check"]["reset_changes"] for o in out[1:])
    assert tb.warmed == 3 * 40


def test_a_reset_that_does_not_take_stops_the_block(view, tmp_path):
    tb = FakeTestbed(stuck=True)
    with pytest.raises(RuntimeError, match="would not start from the initial"):
        run_block(
            _members(view, ["ppo", "ipa"], tmp_path), tb, _control, _write, block="b", quiet_s=0
        )
    assert tb.calls == ["up", "down"]  # down whatever happens


def test_start_check_sees_batch_replicas_and_queue(view, tmp_path):
    m = _members(view, ["ppo"], tmp_path)[0]
    dep = m.env.space.deployment(m.env.current)
    tb = FakeTestbed()
    tb.apply_live(dep)
    assert reset(tb, dep, quiet_s=0)["ok"]
    rows = tb.instances()
    assert start_check(rows, wanted(dep), 0)["ok"]
    assert not start_check(rows, wanted(dep), 2)["ok"]  # requests still queued
    other = [dict(rows[0], batch=rows[0]["batch"] + 1), *rows[1:]]
    assert not start_check(other, wanted(dep), 0)["config_matches"]
    assert not start_check([*rows, rows[0]], wanted(dep), 0)["config_matches"]  # a replica more
    sick = [dict(rows[0], healthy=False), *rows[1:]]
    assert not start_check(sick, wanted(dep), 0)["ok"]


def test_an_interrupted_block_writes_the_runs_it_measured(view, tmp_path):
    tb = FakeTestbed()
    written = []

    def control(tb_, targets, m, work):
        if m.run.policy == "ipa":
            raise KeyboardInterrupt  # the lock's timeout
        return _control(tb_, targets, m, work)

    def write(m, measured, work, extra):
        written.append(m.run.policy)
        return _write(m, measured, work, extra)

    with pytest.raises(KeyboardInterrupt):
        run_block(_members(view, ["ppo", "ipa", "greedy"], tmp_path), tb, control, write, quiet_s=0)
    assert written == ["ppo"] and tb.calls == ["up", "down"]
