"""The online controller against a fake gateway and a fake clock (no servers, no sleeping)."""

from __future__ import annotations

import pytest

from optimizer.rl.baselines import GreedyPolicy
from optimizer.rl.env import PipelineEnv
from optimizer.rl.online import OnlineController, parse_gateway
from twin.deployment import check

METRICS = """# HELP gateway_requests_total Requests by status
# TYPE gateway_requests_total counter
gateway_requests_total{{code="200"}} {ok}
gateway_requests_total{{code="503"}} {bad}
# HELP gateway_inflight Requests in progress
# TYPE gateway_inflight gauge
gateway_inflight {inflight}
# HELP gateway_stage_seconds Round trip to a stage
# TYPE gateway_stage_seconds histogram
{stages}
"""


class FakeGateway:
    """Counters that grow at ``rate(t)`` requests/s; each stage takes 5 ms per request."""

    def __init__(self, rate, stages):
        self.rate, self.stages = rate, stages
        self.t = 0.0
        self.ok = 0.0

    def sleep(self, s: float) -> None:
        steps = round(s)
        for _ in range(steps):
            self.ok += self.rate(self.t)
            self.t += 1.0

    def clock(self) -> float:
        return self.t

    def scrape(self) -> str:
        lines = []
        for s in self.stages:
            lines.append(f'gateway_stage_seconds_count{{stage="{s}"}} {self.ok}')
            lines.append(f'gateway_stage_seconds_sum{{stage="{s}"}} {self.ok * 0.005}')
        return METRICS.format(ok=self.ok, bad=0, inflight=0, stages="\n".join(lines))


def test_parse_gateway_sums_codes_and_reads_stages():
    g = FakeGateway(lambda t: 10.0, ["a", "b"])
    g.sleep(3)
    s = parse_gateway(g.scrape())
    assert s.answered == 30 and s.ok == 30 and s.arrived == 30
    assert s.stage_count == {"a": 30, "b": 30}
    assert s.stage_sum_s["b"] == pytest.approx(0.15)


def test_controller_measures_decides_and_applies_feasible_configs(chain):
    env = PipelineEnv(chain, "pipeline", [chain.workload("steady-low")], backend="analytic")
    env.reset(seed=0)
    rate = lambda t: 10.0 if t < 30 else 80.0  # noqa: E731 - a step in load
    gw = FakeGateway(rate, [s.name for s in env.space.stages])
    applied = []
    ctl = OnlineController(env, GreedyPolicy(), gw.scrape, applied.append, gw.clock, gw.sleep)
    rows = ctl.run(60)
    assert len(rows) == 6
    assert rows["offered_rps"].iloc[0] == pytest.approx(10.0)
    assert rows["offered_rps"].iloc[-1] == pytest.approx(80.0)
    assert rows["T"].iloc[-1] == pytest.approx(80.0)
    assert rows["L"].iloc[0] == pytest.approx(3 * 0.005)
    assert applied, "the load step must change Greedy's configuration"
    for dep in applied:
        assert check(chain, dep) == []
    # After the step Greedy's configuration has the capacity for the new load.
    assert rows["capacity_rps"].iloc[-1] >= 80.0
