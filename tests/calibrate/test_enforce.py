"""calibrate.enforce: when the quota is enforced, fitted from how often items stall."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from calibrate import calibration as cal
from calibrate.enforce import fit_tick, run_stall_share, stall_share, twin_stall_share
from calibrate.fit import fit_variant
from calibrate.quota import quota_scenario, stage_cpu
from tests.calibrate.test_quota import encoder_run
from twin.load import load_deployment, load_scenario

EXAMPLE = Path("examples/digits-pipeline.yaml")
DEPLOYMENT = Path("examples/digits-pipeline.deployment.yaml")


def _twin(tmp_path: Path):
    sc, dep = load_scenario(EXAMPLE), load_deployment(DEPLOYMENT)
    rng = np.random.default_rng(5)
    fit = fit_variant(
        np.ones(40, dtype=int),
        rng.lognormal(np.log(3.3), 0.05, 40),
        component="encoder",
        variant="e-large",
        cpu_share=0.5,
    )
    runs = [encoder_run(tmp_path / n, r, speed=0.95) for n, r in (("a", 30), ("b", 120))]
    cpu = stage_cpu(runs, dep)
    return quota_scenario(sc, cal.build([fit], sc), dep, cpu, 0.5), dep


def test_stall_share_counts_items_above_the_unstalled_service() -> None:
    # 25th percentile 3.0 ms: 4.4 is within 1.5 ms of it, 4.6 and 8 are stalls
    assert stall_share(np.array([3.0, 3.0, 3.0, 3.1, 4.4, 4.6, 8.0, np.nan])) == 2 / 7
    assert np.isnan(stall_share(np.array([])))


def test_a_runs_stall_share_reads_its_stages_visits(tmp_path: Path) -> None:
    v = pd.DataFrame(
        {
            "component": ["encoder"] * 4 + ["denoise"] * 4,
            "service_s": [0.003, 0.003, 0.003, 0.009, 0.001, 0.009, 0.009, 0.009],
        }
    )
    v.to_parquet(tmp_path / "visits.parquet")
    assert run_stall_share(tmp_path, "encoder") == 0.25
    assert np.isnan(run_stall_share(tmp_path / "none", "encoder"))


def test_a_prompt_quota_check_stalls_more_items_than_the_tick(tmp_path: Path) -> None:
    """The testbed's stall share at ρ 0.4–0.8 is twice the 4-ms-tick twin's; checking the
    quota at once is what gives the twin those stalls (capacity unchanged)."""
    twin, dep = _twin(tmp_path)
    at = {}
    for tick in (0.0, 4.0):
        settings = twin.settings.model_copy(update={"cpu_quota_tick_ms": tick})
        sc = twin.model_copy(update={"settings": settings})
        at[tick] = twin_stall_share(sc, dep, "encoder", 80.0, 20.0)
    assert at[0.0] > 1.5 * at[4.0] > 0


def test_the_fit_finds_the_check_interval_that_made_the_stalls(tmp_path: Path) -> None:
    twin, dep = _twin(tmp_path)
    for truth in (0.0, 4.0):
        settings = twin.settings.model_copy(update={"cpu_quota_tick_ms": truth})
        made = twin.model_copy(update={"settings": settings})
        # "testbed" runs: the twin itself at the true interval, twice as long
        runs = [(r, twin_stall_share(made, dep, "encoder", r, 40.0)) for r in (40.0, 90.0)]
        fit = fit_tick(twin, dep, "encoder", runs, seconds=20.0, grid=(0.0, 4.0))
        assert fit is not None and fit.tick_ms == truth
        assert fit.error(truth) < fit.error(4.0 - truth)
    assert fit_tick(twin, dep, "encoder", [(50.0, float("nan"))]) is None
