"""A step's work per part (``Step.part_cpu_work``), and how co-located jobs share a quota.

The deploy-back's greedy placement runs the retraining's prepare as one part on a
quarter-core edge box beside ingest; the twin took 7.8 s where the testbed took
2.5 s. The quota sharing is not the cause (the first test: two jobs share it as
CFS does); the cause is work the testbed's jobs do in every part, whatever the
split, which ``cpu_work`` (shared among the parts) cannot say.
"""

from __future__ import annotations

import pandas as pd
import pytest
from pydantic import ValidationError

from tests.twin.test_step_wait import _run, _scenario, _stage_step_scenario, _step, _wall
from twin.spec import Scenario


def test_two_jobs_share_a_quarter_core_quota_fairly_as_cfs_does() -> None:
    # A: 1 s of work from 0 s; B: 0.5 s from 1 s; 2.5 ms of quota per 10-ms period.
    # Alone till 1 s A does 0.25 s; then each gets half: B's 0.5 s takes 4 s (ends
    # at 5 s, less the last period's unused 7.5 ms), A's last 0.25 s then runs alone
    # (ends at 6 s, likewise). First come first served would end A at 4 s, B at 6 s.
    sc = _scenario({"a": _step(1000.0), "b": _step(500.0)}, quota=0.25, offsets={"b": 1.0})
    v = _run(sc).visits.set_index("component")
    assert float(v.loc["b", "t_end"]) == pytest.approx(4.9925, abs=1e-9)
    assert float(v.loc["a", "t_end"]) == pytest.approx(5.9925, abs=1e-9)


def test_every_part_does_its_own_work_beside_its_share_of_the_steps() -> None:
    part = {"kind": "constant", "ms": 200.0}
    # 1 s of shared work and 0.2 s per part: two parts take 0.5 + 0.2 s each …
    v = _run(_scenario({"a": _step(1000.0, part_cpu_work=part, max_parallel=2)}), 2).visits
    assert len(v) == 2
    assert _wall(v).tolist() == pytest.approx([0.7, 0.7], abs=1e-12)
    # … one part 1.0 + 0.2 s (where cpu_work alone would say 0.5 s each, 1 s in one)
    v = _run(_scenario({"a": _step(1000.0, part_cpu_work=part, max_parallel=2)}), 1).visits
    assert _wall(v).tolist() == pytest.approx([1.2], abs=1e-12)
    # it is CPU: at half speed it doubles, and under a quarter-core quota 1.2 s of
    # work is 480 periods (the last one's 2.5 ms from 4.79 s)
    v = _run(_scenario({"a": _step(0.0, part_cpu_work=part)}, speed=0.5)).visits
    assert _wall(v).tolist() == pytest.approx([0.4], abs=1e-12)
    v = _run(_scenario({"a": _step(1000.0, part_cpu_work=part)}, quota=0.25)).visits
    assert _wall(v).tolist() == pytest.approx([4.7925], abs=1e-9)


def test_no_part_work_and_a_zero_one_give_the_same_run() -> None:
    # drawn from a stream of its own: adding it leaves the other draws alone
    work = {"kind": "lognormal", "mean_ms": 300.0, "cv": 0.5}
    plain = {"name": "s", "component": "a", "cpu_work": work}
    zero = {**plain, "part_cpu_work": {"kind": "constant", "ms": 0.0}}
    drawn = {**plain, "part_cpu_work": {"kind": "lognormal", "mean_ms": 100.0, "cv": 0.5}}
    runs = [
        _run(_scenario({"a": s}, period_s=1.0), horizon_s=20.0).visits for s in (plain, zero, drawn)
    ]
    pd.testing.assert_frame_equal(runs[0], runs[1])
    extra = _wall(runs[2]) - _wall(runs[0])
    assert (extra > 0).all()
    assert float(extra.mean()) == pytest.approx(0.1, rel=0.3)


def test_part_work_on_an_inference_stage_is_refused_with_the_field_named() -> None:
    step = {"name": "s", "component": "st", "part_cpu_work": {"kind": "constant", "ms": 5}}
    with pytest.raises(ValidationError, match=r"steps\[0\]\.part_cpu_work: step on inference"):
        Scenario.model_validate(_stage_step_scenario(step))
