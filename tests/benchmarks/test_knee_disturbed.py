"""testbed_knee leaves out a run that had other work beside it, and refits the twins."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import testbed_knee as knee


def _runs(rest: list[float]) -> pd.DataFrame:
    """Two repeats at each of four levels (and one saturated), with these rest cores."""
    rhos = [0.2, 0.2, 0.4, 0.4, 0.6, 0.6, 0.8, 0.8, 1.2]
    return pd.DataFrame(
        {
            "rho": rhos,
            "run": [f"rho{r}-{i % 2}" for i, r in enumerate(rhos)],
            "offered": [140 * r for r in rhos],
            "rest_cores": rest,
        }
    )


def test_the_quiet_line_finds_the_disturbed_runs() -> None:
    """The s11 batch sweep's rest cores: its first pass at ρ 0.4 and 0.6 ran beside about
    a core of other work; every other run lies on a line rising with the rate."""
    rest = [0.66, 0.36, 1.56, 0.47, 1.33, 0.47, 0.85, 0.59, 3.0]
    others = knee.others_cores(_runs(rest))
    disturbed = others > knee.OTHERS_MAX_CORES
    assert list(disturbed) == [False, False, True, False, True, False, False, False, True]
    assert abs(others.iloc[3]) < 0.1 and 1.0 < others.iloc[2] < 1.2


def test_a_quiet_sweep_keeps_every_run() -> None:
    """Compose s9's default sweep: nothing beside any run."""
    rest = [0.34, 0.27, 0.40, 0.37, 0.45, 0.44, 0.50, 0.52, 0.6]
    assert not (knee.others_cores(_runs(rest)).iloc[:8] > knee.OTHERS_MAX_CORES).any()


def test_a_cache_fitted_on_other_runs_is_emptied(tmp_path) -> None:
    """A held-out twin's caches go when its fit runs change, and stay when they do not
    (a cache from before the record: the runs its calibration names)."""
    (tmp_path / "calibration.yaml").write_text("source: runs/x/rho0.4-0, runs/x/rho0.4-1\n")
    (tmp_path / "quota_tick.json").write_text("{}")
    knee._fresh_cache(tmp_path, ["rho0.4-0", "rho0.4-1"])
    assert (tmp_path / "quota_tick.json").exists()
    assert json.loads((tmp_path / "fit_runs.json").read_text()) == ["rho0.4-0", "rho0.4-1"]
    knee._fresh_cache(tmp_path, ["rho0.4-1"])
    assert not (tmp_path / "quota_tick.json").exists()
    assert not (tmp_path / "calibration.yaml").exists()
    assert json.loads((tmp_path / "fit_runs.json").read_text()) == ["rho0.4-1"]


def test_the_pace_caches_go_when_the_cpu_fits_runs_or_the_model_change(tmp_path) -> None:
    """The pace and tick caches are fitted on the twin that the CPU fit and the model's
    switches made: leaving a run out of the CPU fit alone refits them."""
    fit = ["rho0.4-0", "rho0.4-1"]
    more = {"cpu": ["rho0.4-0", "rho0.4-1", "rho1.2-0"], "answer": True}
    knee._fresh_cache(tmp_path, fit, more)
    (tmp_path / "pace_handoff.json").write_text("{}")
    knee._fresh_cache(tmp_path, fit, dict(more))
    assert (tmp_path / "pace_handoff.json").exists()
    knee._fresh_cache(tmp_path, fit, {**more, "cpu": ["rho0.4-1", "rho1.2-0"]})
    assert not (tmp_path / "pace_handoff.json").exists()
    (tmp_path / "pace_handoff.json").write_text("{}")
    knee._fresh_cache(tmp_path, fit, {**more, "cpu": ["rho0.4-1", "rho1.2-0"], "answer": False})
    assert not (tmp_path / "pace_handoff.json").exists()


def test_a_slower_host_is_found_by_the_models_cpu_per_item() -> None:
    """Compose s14 (fresh machine): the default sweep's second pass ran the same model
    13–20 % slower per item than its first; the batch sweep before it stayed within 7 %."""
    default = pd.DataFrame(
        {
            "item_cpu_ms": [2.991, 3.413, 2.954, 3.371, 2.921, 3.511, 2.949, 3.370, 2.996],
            "run": [
                "0.2-0",
                "0.2-1",
                "0.4-0",
                "0.4-1",
                "0.6-0",
                "0.6-1",
                "0.8-0",
                "0.8-1",
                "0.9-0",
            ],
        }
    )
    slow = knee.host_slow(default) > knee.HOST_SLOW_MAX
    assert list(slow) == [False, True, False, True, False, True, False, True, False]
    batch = pd.DataFrame({"item_cpu_ms": [3.027, 3.117, 3.038, 2.946, 2.918, 2.917, 2.887]})
    assert not (knee.host_slow(batch) > knee.HOST_SLOW_MAX).any()
    # a run without the counters is not judged
    assert knee.host_slow(pd.DataFrame({"item_cpu_ms": [float("nan"), 3.0]})).isna().iloc[0]


def test_item_cpu_is_the_bottlenecks_model_cpu_per_item(tmp_path) -> None:
    rows = []
    for t, items, cpu in ((0.0, 100, 0.3), (30.0, 1100, 3.3)):
        rows += [
            {"target": "encoder-node-2-2", "metric": "stage_items_total", "t": t, "value": items},
            {
                "target": "encoder-node-2-2",
                "metric": "stage_compute_cpu_seconds_total",
                "t": t,
                "value": cpu,
            },
            {"target": "denoise-node-1-1", "metric": "stage_items_total", "t": t, "value": 9e9},
        ]
    pd.DataFrame(rows).to_parquet(tmp_path / "metrics.parquet")
    assert abs(knee._item_cpu_ms(tmp_path) - 3.0) < 1e-9
    assert pd.isna(knee._item_cpu_ms(tmp_path / "missing"))
