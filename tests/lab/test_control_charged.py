"""A testbed run's control loop replayed in the charged model (lab.control_charged)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lab.control_charged import control_arrivals, replay_charged, run_host_speed
from lab.control_view import testbed_charges as charges_of
from lab.control_view import testbed_view as view_of
from optimizer.rl.charged import change_seconds, estimate_charged
from optimizer.rl.env import PipelineEnv
from optimizer.rl.space import Option
from twin.load import load_scenario

DIGITS = Path(__file__).resolve().parents[2] / "examples" / "digits-pipeline.yaml"
LARGE = [Option(2, 1, 1), Option(2, 1, 1), Option(2, 1, 1)]  # every stage large, ×1
MEDIUM = [Option(2, 1, 1), Option(1, 1, 1), Option(2, 1, 1)]  # e-medium ×1


@pytest.fixture(scope="module")
def digits():
    return load_scenario(DIGITS)


class Fixed:
    """A decider that answers a fixed plan, one configuration per decision."""

    def __init__(self, plan: list[list[Option]]) -> None:
        self.plan = list(plan)

    def decide(self, space, load_rps, weights):  # type: ignore[no-untyped-def]
        return self.plan.pop(0) if len(self.plan) > 1 else self.plan[0]


def test_control_arrivals_count_seconds_from_the_controllers_zero():
    t = np.array([9.0, 10.5, 10.7, 13.2, 29.99, 31.0])  # offset 10: -1, .5, .7, 3.2, 19.99, 21
    counts = control_arrivals(t, 10.0, intervals=2, interval_s=10.0)
    assert len(counts) == 20
    assert counts[0] == 2 and counts[3] == 1 and counts[19] == 1 and counts.sum() == 4


def test_run_host_speed_is_the_heaviest_models_unstalled_wall(digits):
    enc = digits.component("encoder").variants[2]  # e-large, the heaviest
    ms = enc.service_time.batch_mean_ms(1)
    wall = np.full(40, ms / 0.8 / 1e3)
    wall[:25] *= 1.5  # most visits straddle a quota stall: the low quantile is unstalled
    visits = pd.DataFrame(
        {
            "component": ["encoder"] * 40 + ["classifier"] * 30 + ["denoise"] * 3,
            # a light model's wall is mostly the call's fixed cost: not the probe
            "variant": [enc.name] * 40 + ["c-linear"] * 30 + ["d-large"] * 3,
            "batch": [1] * 73,
            "service_s": [*wall, *([1e-4] * 30), 1.0, 1.0, 1.0],  # 3 d-large: too few
        }
    )
    assert run_host_speed(visits, digits) == pytest.approx(0.8)
    light = visits[visits["variant"] == "c-linear"]
    c = digits.component("classifier").variants[0]
    assert run_host_speed(light, digits) == pytest.approx(
        max(0.2, c.service_time.batch_mean_ms(1) / 0.1)
    )
    assert np.isnan(run_host_speed(visits.iloc[-3:], digits))


def test_the_replay_scores_the_charged_model_on_the_controllers_clock(digits):
    view = view_of(digits, 0.25, rate_scale=1.4)
    charges = charges_of(digits, 0.25)

    def replay(h: float):
        env = PipelineEnv(view, "digits", [view.workload("steady-high")], backend="analytic")
        env.reset(seed=1, options={"workload": "steady-high", "initial": list(LARGE)})
        arrivals = np.full(30, 120.0)
        return env, replay_charged(env, Fixed([MEDIUM]), arrivals, 3, charges, h)

    env, rows = replay(0.9)
    space = env.space
    assert len(rows) == 3 and list(rows["t_s"]) == [0.0, 10.0, 20.0]
    # the initial configuration serves the first interval, the decision the next ones
    assert rows["config"].iloc[0].startswith("d-large×1/b1 e-large×1/b1")
    assert "e-medium×1" in rows["config"].iloc[1]
    assert rows["change_delay_s"].iloc[1] == pytest.approx(
        change_seconds(LARGE, MEDIUM, charges, 10.0)
    )
    # an interval without a change is the charged model at the run's host speed
    stages = {st.name for st in space.stages}
    first = {k: dict(v) for k, v in space.deployment(LARGE).allocation.items() if k in stages}
    placed = space.place_near(MEDIUM, first)  # the replicas stay where they ran
    want = estimate_charged(space, MEDIUM, placed, 120.0, env.weights, charges, 0.9, 10.0).metrics
    assert rows["objective"].iloc[2] == pytest.approx(want.objective)
    assert rows["requests"].iloc[2] == 1200.0 and (rows["failed"] == 0).all()
    # a slower host costs the loaded configuration latency
    _, slow = replay(0.6)
    assert slow["L"].iloc[0] > rows["L"].iloc[0]
    assert slow["slo_violations"].iloc[0] >= rows["slo_violations"].iloc[0]
