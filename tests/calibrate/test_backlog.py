"""calibrate.backlog: the bottleneck's pace in long busy periods, measured and fitted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from calibrate.backlog import (
    MIN_POSITION,
    backlogged_interval,
    fit_backlog_quota,
    run_backlogged_interval,
    stage_machine,
    twin_backlogged_interval,
    with_quota_scale,
)
from tests.calibrate.test_enforce import _twin


def _visits(starts_ms: list[float], service_ms: float, arrive_ms: list[float]) -> pd.DataFrame:
    s = np.array(starts_ms) / 1e3
    return pd.DataFrame(
        {
            "component": "encoder",
            "machine": "node-2",
            "t_arrive": np.array(arrive_ms) / 1e3,
            "t_start": s,
            "t_end": s + service_ms / 1e3,
        }
    )


def test_only_deep_jobs_of_a_busy_period_count() -> None:
    """A busy period of 12 jobs, all waiting from the start: the first 8 go 4 ms apart
    (spare quota), the rest 7 ms apart; an idle gap, then a lone job. Only jobs from the
    ninth on whose next one waited count: the 9th to 11th, 7 ms each."""
    starts = [4.0 * i for i in range(9)] + [32.0 + 7.0 * i for i in range(1, 4)] + [200.0]
    v = _visits(starts, 3.5, [0.0] * 12 + [199.0])
    ms, n = backlogged_interval(v, "encoder")
    assert n == 12 - MIN_POSITION
    assert abs(ms - 7.0) < 1e-9
    # a stage on two machines has no one pace
    two = v.assign(machine=["node-2", "node-4"] * 6 + ["node-2"])
    assert backlogged_interval(two, "encoder")[1] == 0


def test_batches_count_per_item(tmp_path: Path) -> None:
    """Batches of 4 items sharing their start, 20 ms apart: 5 ms per item."""
    starts = [20.0 * (i // 4) for i in range(4 * 14)]
    v = _visits(starts, 18.0, [0.0] * len(starts))
    v.to_parquet(tmp_path / "visits.parquet")
    ms, n = run_backlogged_interval(tmp_path, "encoder")
    assert abs(ms - 5.0) < 1e-9 and n == 4 * (13 - MIN_POSITION + 1)
    assert run_backlogged_interval(tmp_path / "none", "encoder")[1] == 0


def test_the_fit_gives_the_twin_the_testbeds_pace(tmp_path: Path) -> None:
    """A testbed whose long busy periods run 8 % slower than the quota twin's: the
    fitted quota factor brings the twin's pace to it (without it, 8 % off)."""
    twin, dep = _twin(tmp_path)
    node = stage_machine(dep, "encoder")
    assert node is not None
    runs = [(240.0, 6.0, 1500)]
    base = twin_backlogged_interval(twin, dep, "encoder", runs)
    target = 1.08 * base
    fit = fit_backlog_quota(twin, dep, "encoder", [(240.0, 6.0, target, 1500)])
    assert fit is not None and fit.factor < 0.97
    after = twin_backlogged_interval(with_quota_scale(twin, node, fit.factor), dep, "encoder", runs)
    assert abs(after / target - 1) < 0.02
    assert abs(base / target - 1) > 0.06
    # a run with too few backlogged items (a light run's slow spells): no fit
    assert fit_backlog_quota(twin, dep, "encoder", [(240.0, 6.0, target, 900)]) is None


def test_a_twin_within_the_runs_spread_is_left_alone(tmp_path: Path) -> None:
    """Runs whose paces spread ±10 % around the twin's: no scaling (factor 1)."""
    twin, dep = _twin(tmp_path)
    base = twin_backlogged_interval(twin, dep, "encoder", [(240.0, 6.0, 1500)])
    runs = [(240.0, 6.0, 1.1 * base, 1500), (240.0, 6.0, 0.9 * base, 1500)]
    fit = fit_backlog_quota(twin, dep, "encoder", runs)
    assert fit is not None and fit.factor == 1.0 and fit.band_ms > 0.05 * base
