"""A step's wait (``Step.wait``): time off the machine's CPU that still holds the instance."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest
from pydantic import ValidationError

from twin.sim import simulate_replication
from twin.spec import Deployment, Scenario

PERIOD_S = 0.010


def _step(work_ms: float, wait: dict | None = None, **extra: Any) -> dict:
    step: dict[str, Any] = {
        "name": "s",
        "component": "w",
        "cpu_work": {"kind": "constant", "ms": work_ms},
        **extra,
    }
    if wait is not None:
        step["wait"] = wait
    return step


def _scenario(
    steps: dict[str, dict],
    speed: float = 1.0,
    quota: float | None = None,
    offsets: dict[str, float] | None = None,
    period_s: float = 100.0,
) -> Scenario:
    """One machine (2 cores at ``speed``, ``quota`` cores of CFS quota); per entry of
    ``steps`` a component of the same name and a periodic process of that one step."""
    server: dict[str, Any] = {"name": "m", "cpu_cores": 2, "cpu_speed": speed, "ram_gb": 8}
    if quota is not None:
        server["cpu_quota_cores"] = quota
    offsets = offsets or {}
    return Scenario.model_validate(
        {
            "name": "wait",
            "servers": [server],
            "components": [
                {"name": n, "always_on": False, "cpu_cores": 1, "max_replicas": 2} for n in steps
            ],
            "processes": [
                {
                    "name": n,
                    "arrivals": {
                        "kind": "periodic",
                        "period_s": period_s,
                        "offset_s": offsets.get(n, 0.0),
                    },
                    "steps": [{**s, "component": n}],
                }
                for n, s in steps.items()
            ],
            "settings": {"cpu_period_ms": PERIOD_S * 1e3},
        }
    )


def _run(sc: Scenario, instances: int = 1, horizon_s: float = 50.0) -> Any:
    alloc = {c.name: {"m": instances} for c in sc.components}
    dep = Deployment.model_validate(
        {"allocation": alloc, "parallelism": {f"{p.name}.s": instances for p in sc.processes}}
    )
    return simulate_replication(sc, dep, None, horizon_s, seed=3)


def _wall(v: pd.DataFrame) -> pd.Series:
    return v["t_end"] - v["t_start"]


def _stage_step_scenario(step: dict) -> dict:
    """A scenario (as a dict) whose one request step runs on inference stage 'st'."""
    stage = {
        "name": "st",
        "variants": [
            {
                "name": "v",
                "accuracy": 0.9,
                "cpu_cores": 0.5,
                "service_time": {"kind": "constant", "ms": 1.0},
            }
        ],
    }
    return {
        "name": "x",
        "servers": [{"name": "m", "cpu_cores": 2, "ram_gb": 4}],
        "components": [stage],
        "processes": [{"name": "p", "kind": "request", "steps": [step]}],
    }


def test_the_wait_adds_to_the_step_at_any_speed_and_quota() -> None:
    wait = {"kind": "constant", "ms": 500.0}
    # 1 s of work under a quarter-core quota: 400 periods, 3.9925 s; the wait adds 0.5 s
    v = _run(_scenario({"a": _step(1000.0, wait)}, quota=0.25)).visits
    assert float(_wall(v).iloc[0]) == pytest.approx(0.5 + 3.9925, abs=1e-9)
    # half speed, no quota: the work takes 2 s, the wait still 0.5 s (not 1 s)
    v = _run(_scenario({"a": _step(1000.0, wait)}, speed=0.5)).visits
    assert float(_wall(v).iloc[0]) == pytest.approx(2.5, abs=1e-9)


def test_a_wait_takes_none_of_the_machines_quota() -> None:
    # A: 1 s of work from 0 s under 0.25 cores (alone: 3.9925 s). B from 0.5 s waits
    # 2 s and has no work: A is not slowed at all and B ends at exactly 2.5 s
    a = _step(1000.0)
    alone = _run(_scenario({"a": a}, quota=0.25)).visits
    both = _scenario(
        {"a": a, "b": _step(0.0, {"kind": "constant", "ms": 2000.0})},
        quota=0.25,
        offsets={"b": 0.5},
    )
    v = _run(both).visits.set_index("component")
    assert float(v.loc["a", "t_end"]) == pytest.approx(float(alone["t_end"].iloc[0]), abs=1e-12)
    assert float(v.loc["a", "t_end"]) == pytest.approx(3.9925, abs=1e-9)
    assert float(v.loc["b", "t_end"]) == pytest.approx(2.5, abs=1e-9)
    # the same 2 s as work would have shared the quota with A and delayed it
    as_work = _scenario({"a": a, "b": _step(2000.0)}, quota=0.25, offsets={"b": 0.5})
    v = _run(as_work).visits.set_index("component")
    assert float(v.loc["a", "t_end"]) > 3.9925 + 1.0


def test_the_instance_stays_busy_and_paid_while_it_waits() -> None:
    # one instance, an execution every second, each waiting 1.5 s: the second starts
    # when the first has finished waiting, at 1.5 s, and ends at 3.0 s
    sc = _scenario({"a": _step(0.0, {"kind": "constant", "ms": 1500.0})}, period_s=1.0)
    res = _run(sc, horizon_s=2.0)
    v = res.visits.sort_values("pid")
    assert v["t_start"].tolist()[:2] == pytest.approx([0.0, 1.5], abs=1e-12)
    assert v["t_end"].tolist()[:2] == pytest.approx([1.5, 3.0], abs=1e-12)
    # on demand: the instance is paid for its waits (2 executions × 1.5 s)
    assert float(res.on_demand_busy_s.sum()) == pytest.approx(3.0, abs=1e-12)


def test_every_part_of_a_split_step_waits_the_whole_wait() -> None:
    # 1 s of work split over two instances: 0.5 s each, plus the full 0.5 s wait
    step = _step(1000.0, {"kind": "constant", "ms": 500.0}, max_parallel=2)
    v = _run(_scenario({"a": step}), instances=2).visits
    assert len(v) == 2
    assert _wall(v).tolist() == pytest.approx([1.0, 1.0], abs=1e-12)


def test_no_wait_and_a_zero_wait_give_the_same_run() -> None:
    # the wait draws from a stream of its own: adding one leaves the work's draws alone
    work = {"kind": "lognormal", "mean_ms": 300.0, "cv": 0.5}
    plain = {"name": "s", "component": "a", "cpu_work": work}
    zero = {**plain, "wait": {"kind": "constant", "ms": 0.0}}
    drawn = {**plain, "wait": {"kind": "lognormal", "mean_ms": 100.0, "cv": 0.5}}
    runs = [
        _run(_scenario({"a": s}, quota=0.5, period_s=1.0), horizon_s=20.0).visits
        for s in (plain, zero, drawn)
    ]
    pd.testing.assert_frame_equal(runs[0], runs[1])
    # a drawn wait only adds: every step is longer, by less than its work varies
    extra = _wall(runs[2]) - _wall(runs[0])
    assert (extra > 0).all()
    assert float(extra.mean()) == pytest.approx(0.1, rel=0.3)


def test_bad_waits_are_refused_with_the_field_named() -> None:
    with pytest.raises(ValidationError, match=r"wait"):
        _scenario({"a": _step(100.0, {"kind": "constant", "ms": -1.0})})
    with pytest.raises(ValidationError, match=r"steps\[0\]\.wait: step on inference stage 'st'"):
        Scenario.model_validate(
            _stage_step_scenario(
                {"name": "s", "component": "st", "wait": {"kind": "constant", "ms": 5}}
            )
        )


def test_the_screening_fidelity_refuses_a_wait_it_would_leave_out() -> None:
    from twin.screen import screen

    sc = _scenario({"a": _step(100.0, {"kind": "constant", "ms": 50.0})})
    dep = Deployment.model_validate({"allocation": {"a": {"m": 1}}})
    with pytest.raises(ValueError, match=r"processes\.a\.steps\.s\.wait: the screening"):
        screen(sc, dep, None, 10.0, 1, 1)
