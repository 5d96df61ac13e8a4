"""Batch steps under a machine's CPU quota: single-threaded, so at most one core of it."""

from __future__ import annotations

import pandas as pd
import pytest

from twin.sim import simulate_replication
from twin.spec import Deployment, Scenario

PERIOD_S = 0.010


def _batch(speed: float, quota: float | None, work_ms: float = 1000.0) -> Scenario:
    """One batch process of one step (``work_ms`` at speed 1) on one 2-core machine."""
    server = {"name": "m", "cpu_cores": 2, "cpu_speed": speed, "ram_gb": 4}
    if quota is not None:
        server["cpu_quota_cores"] = quota
    return Scenario.model_validate(
        {
            "name": "batch-quota",
            "servers": [server],
            "components": [{"name": "worker", "always_on": False, "cpu_cores": 1}],
            "processes": [
                {
                    "name": "job",
                    "arrivals": {"kind": "periodic", "period_s": 100, "offset_s": 0},
                    "steps": [
                        {
                            "name": "work",
                            "component": "worker",
                            "cpu_work": {"kind": "constant", "ms": work_ms},
                        }
                    ],
                }
            ],
            "settings": {"cpu_period_ms": PERIOD_S * 1e3},
        }
    )


DEP = Deployment.model_validate({"allocation": {"worker": {"m": 1}}})


def _wall_s(sc: Scenario) -> float:
    v = simulate_replication(sc, DEP, None, 50.0, seed=1).visits
    assert len(v) == 1
    return float(v["t_end"].iloc[0] - v["t_start"].iloc[0])


def _stalled_s(running_s: float, quota: float) -> float:
    """Wall time of ``running_s`` that starts at a period's beginning, ``quota`` cores:
    full periods of ``quota × period`` running each, the last one not waited out."""
    per_period = quota * PERIOD_S
    periods = round(running_s / per_period)
    assert periods * per_period == pytest.approx(running_s)  # whole periods in these cases
    return (periods - 1) * PERIOD_S + per_period


def test_a_quarter_core_quota_makes_a_single_threaded_step_four_times_slower() -> None:
    # 1 s of work at speed 1 under 0.25 cores: 2.5 ms per 10 ms period, 400 periods
    assert _wall_s(_batch(1.0, 0.25)) == pytest.approx(_stalled_s(1.0, 0.25), abs=1e-9)
    assert _stalled_s(1.0, 0.25) == pytest.approx(3.9925)


def test_speed_and_quota_both_limit_the_step() -> None:
    # speed 0.5: 2 s of running time; under 0.25 cores it takes 800 periods
    assert _wall_s(_batch(0.5, 0.25)) == pytest.approx(_stalled_s(2.0, 0.25), abs=1e-9)
    assert _wall_s(_batch(0.5, None)) == pytest.approx(2.0, abs=1e-9)  # speed only


def test_a_quota_of_a_core_or_more_does_not_slow_one_single_threaded_step() -> None:
    # the step runs on one core: a 1.0- or 2.0-core quota is never used up by it
    assert _wall_s(_batch(1.0, 1.0)) == pytest.approx(1.0, abs=1e-9)
    assert _wall_s(_batch(1.0, 2.0)) == pytest.approx(1.0, abs=1e-9)
    assert _wall_s(_batch(1.0, None)) == pytest.approx(1.0, abs=1e-9)


def test_a_step_over_thousands_of_periods() -> None:
    # 6 s of work under a tenth of a core: 6,000 periods, each reserved and later swept
    assert _wall_s(_batch(1.0, 0.1, work_ms=6_000.0)) == pytest.approx(
        _stalled_s(6.0, 0.1), abs=1e-6
    )


def _two_jobs(cores: float, a: tuple[float, float], b: tuple[float, float]) -> pd.DataFrame:
    """Jobs ``a`` and ``b`` (start s, work ms) on one machine of ``cores`` at 0.25 quota."""

    def proc(name: str, offset_s: float, work_ms: float) -> dict:
        return {
            "name": name,
            "arrivals": {"kind": "periodic", "period_s": 100, "offset_s": offset_s},
            "steps": [
                {"name": "s", "component": name, "cpu_work": {"kind": "constant", "ms": work_ms}}
            ],
        }

    sc = Scenario.model_validate(
        {
            "name": "shared-quota",
            "servers": [{"name": "m", "cpu_cores": cores, "ram_gb": 4, "cpu_quota_cores": 0.25}],
            "components": [{"name": n, "always_on": False, "cpu_cores": 1} for n in "ab"],
            "processes": [proc("a", *a), proc("b", *b)],
            "settings": {"cpu_period_ms": PERIOD_S * 1e3},
        }
    )
    dep = Deployment.model_validate({"allocation": {"a": {"m": 1}, "b": {"m": 1}}})
    return simulate_replication(sc, dep, None, 50.0, seed=1).visits.set_index("component")


def test_co_located_steps_share_the_quota_period_by_period() -> None:
    # A (1 s of work) from 0 s and B (0.1 s) from 0.5 s on one machine, 0.25 cores:
    # until 0.5 s A has every period; then B and A alternate periods until B is done
    v = _two_jobs(2, (0.0, 1000.0), (0.5, 100.0))
    # period 50 is A's (reserved as its slice of period 49 ended); B runs 2.5 ms in
    # each of periods 51, 53, … 129: 40 periods
    assert float(v.loc["b", "t_end"]) == pytest.approx(1.29 + 0.0025, abs=1e-9)
    # A loses those 40 periods: 400 + 40 periods in all
    assert float(v.loc["a", "t_end"]) == pytest.approx(_stalled_s(1.0, 0.25) + 0.4, abs=1e-9)


def test_under_a_quota_jobs_do_not_wait_for_a_core() -> None:
    # one core, two one-core jobs: the quota, not the core count, limits them (a
    # cgroup's threads run on any host core), so B shares from its start: its 200
    # periods of 2.5 ms are every other one from period 771 (A holds 770) to 1169
    v = _two_jobs(1, (0.0, 4000.0), (7.7, 500.0))
    assert float(v.loc["b", "t_end"]) == pytest.approx(11.69 + 0.0025, abs=1e-9)
