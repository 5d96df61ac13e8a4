"""testbed_knee_floor: one run's noise from repeat pairs, a perfect twin's hit rate, the
committed results' pairs and the sweep's capacity readings."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import testbed_knee_floor as floor


def test_sigma_recovers_one_runs_noise_from_pairs() -> None:
    """Pairs of lognormal runs with log-sd 0.2: the pooled estimate is near 0.2 and its
    90 % interval holds it; with 3 pairs the interval is wide."""
    rng = np.random.default_rng(1)
    d = pd.Series(rng.normal(0, 0.2, 4000) - rng.normal(0, 0.2, 4000))
    s, lo, hi = floor.sigma(d)
    assert abs(s - 0.2) < 0.01 and lo < 0.2 < hi
    _, lo3, hi3 = floor.sigma(d[:3])
    assert hi3 / lo3 > 2.5 > hi / lo


def test_a_perfect_twins_hit_rate_matches_a_simulation() -> None:
    """The closed form against the knee report's comparison simulated: two testbed runs'
    figures averaged, against 8 seeds' figures pooled, each lognormal with log-sd σ."""
    rng = np.random.default_rng(2)
    for s in (0.05, 0.15, 0.3):
        tb = np.exp(rng.normal(0, s, (100_000, floor.TB_REPEATS))).mean(axis=1)
        twin = np.exp(rng.normal(0, s, (100_000, floor.TWIN_SEEDS))).mean(axis=1)
        simulated = float((np.abs(twin / tb - 1) <= 0.10).mean())
        assert abs(floor.hit_rate(s, 0.10) - simulated) < 0.03
    assert floor.hit_rate(1e-4, 0.05) > 0.999
    assert floor.hit_rate(0.1, 0.10) > floor.hit_rate(0.3, 0.10)
    assert math.isnan(floor.hit_rate(float("nan"), 0.10))


def test_committed_results_give_each_sweeps_pair_once(tmp_path) -> None:
    """The pair is read from the column named 'tb p95 per run', wherever it stands; a level
    scored again in another result file counts once; single runs and ρ > 0.9 do not."""
    header = "| ρ | twin ρ | tb p95 | tb p95 per run | other |"
    a = "\n".join(
        [
            "## default: encoder e-large batch 1",
            header,
            "|---|---|---|---|---|",
            "| 0.2 | 0.21 | 20 | 20/24 | x |",
            "| 0.8 | 0.84 | 80 | 83 | x |",
            "| 1.2* | 1.3 | 5000 | 6293/4449 | x |",
            "## batch: encoder e-large batch 8",
            "| ρ | tb p95 per run |",
            "|---|---|",
            "| 0.2 | 20/24 |",
        ]
    )
    (tmp_path / "knee_a.md").write_text(a)
    (tmp_path / "knee_b.md").write_text(a.split("## batch")[0])  # rescored: same pairs
    got = floor.table_pairs([str(tmp_path / "knee_*.md"), str(tmp_path / "knee_a.md")])
    assert sorted(zip(got["deployment"], got["rho"], strict=True)) == [
        ("batch", 0.2),
        ("default", 0.2),
    ]
    assert np.allclose(got["d_p95"], math.log(20 / 24))


def _run(folder: Path, offered: float, served: float, mtime: float) -> None:
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"offered_rps": offered}))
    pd.DataFrame({"second": range(20), "rps": [served] * 20}).to_parquet(
        folder / "per_second.parquet"
    )
    os.utime(folder / "summary.json", (mtime, mtime))


def test_capacity_readings_are_the_backlogged_runs_in_time_order(tmp_path) -> None:
    """The start probe, the backlogged ρ 1.2 runs and the end probe, in time order; a run
    that kept up with its offer reads no capacity; nominal ρ 0.9 is placed against the
    lowest and highest reading."""
    sweep = tmp_path / "knee-s"
    d = sweep / "default"
    d.mkdir(parents=True)
    (d / "capacity.json").write_text(json.dumps({"capacity_rps": 150.0, "share": 0.5}))
    _run(d / "probe", 180, 150, 100)
    _run(d / "rho1.2-0", 180, 130, 200)
    _run(d / "rho1.2-1", 180, 178, 300)  # kept up: not backlogged
    _run(tmp_path / "knee-s-end" / "default" / "probe", 180, 140, 400)
    (got,) = floor.capacity_readings(sweep)
    assert got["reads"] == [("probe", 150.0), ("rho1.2-0", 130.0), ("end probe", 140.0)]
    assert abs(got["spread"] - (150 / 130 - 1)) < 1e-9
    assert np.allclose(got["rho09"], (135 / 150, 135 / 130))


def test_repeats_needed_reach_the_hit_rate() -> None:
    """With the repeats it asks for, a perfect twin with many seeds meets the goal with
    chance ≥ 0.9 (simulated), and with one repeat fewer below it; more noise asks for more."""
    rng = np.random.default_rng(3)
    s, goal = 0.2, 0.10
    n = floor.repeats_needed(s, goal)
    for k, enough in ((n, True), (n - 1, False)):
        tb = np.exp(rng.normal(0, s, (200_000, k)).mean(axis=1))  # the level's figure
        hit = float((np.abs(1 / tb - 1) <= goal).mean())
        assert hit > 0.897 if enough else hit < 0.903
    assert floor.repeats_needed(0.4, goal) > n > floor.repeats_needed(0.05, goal) == 1


def test_twin_errors_are_read_by_column_name(tmp_path) -> None:
    """Each deployment's held-out errors at ρ ≤ 0.9, found by their headers."""
    (tmp_path / "r.md").write_text(
        "\n".join(
            [
                "## default: encoder e-large batch 1",
                "| ρ | tb p50 | p50 err % | p95 err % | p99 err % |",
                "|---|---|---|---|---|",
                "| 0.6 | 18.6 | -7.7 | -14.6 | -12.6 |",
                "| 1.2* | 2895.8 | +12.2 | +5.8 | +9.9 |",
                "## batch: encoder e-large batch 8",
                "| ρ | p99 err % | p95 err % | p50 err % |",
                "|---|---|---|---|",
                "| 0.9 | +12.4 | +4.0 | -9.3 |",
            ]
        )
    )
    got = floor.twin_errors([str(tmp_path / "r.md")])
    assert got[["deployment", "rho", "p50", "p95", "p99"]].values.tolist() == [
        ["default", 0.6, -7.7, -14.6, -12.6],
        ["batch", 0.9, -9.3, 4.0, 12.4],
    ]
