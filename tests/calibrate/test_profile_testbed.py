"""Profiling the testbed's real stage servers (needs the model zoo; slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from calibrate.fit import fit_samples
from calibrate.profile import Grid, profile_id, run_profile
from twin.load import load_scenario

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "examples" / "digits-pipeline.yaml"


def test_profile_id_depends_on_every_input():
    g = Grid()
    assert profile_id("a", g, "m") == profile_id("a", Grid(), "m")
    assert (
        len(
            {
                profile_id("a", g, "m"),
                profile_id("b", g, "m"),
                profile_id("a", g, "n"),
                profile_id("a", Grid(batches=(1, 2)), "m"),
            }
        )
        == 4
    )


def test_grid_refuses_what_cannot_be_fitted():
    with pytest.raises(ValueError, match="≥ 8"):
        Grid(samples=3)
    with pytest.raises(ValueError, match="> 0"):
        Grid(shares=(0.0,))


@pytest.mark.slow
def test_profile_two_cells_then_fit(tmp_path, zoo):
    grid = Grid(
        batches=(1, 4),
        shares=(0.5,),
        stages=("classifier",),
        variants=("c-mlp",),
        samples=12,
        warmup=2,
    )
    folder = run_profile(load_scenario(SCENARIO), SCENARIO, grid, zoo, tmp_path)
    samples = pd.read_parquet(folder / "samples.parquet")
    assert len(samples) == 24 and set(samples["batch"]) == {1, 4}
    assert (samples["service_ms"] > 0).all()
    # the client's round trip contains the server's own time
    assert (samples["client_ms"] >= samples["service_ms"] + samples["queue_ms"]).all()
    meta = json.loads((folder / "manifest.json").read_text())
    for key in ("scenario_sha256", "models_manifest_sha256", "grid", "environment"):
        assert key in meta
    env = meta["environment"]
    assert env["onnxruntime"] != "not installed" and env["cpu_model"] and env["git_revision"]
    (fit,) = fit_samples(samples)
    assert (fit.component, fit.variant, fit.cpu_share) == ("classifier", "c-mlp", 0.5)
    # nothing is left running: no stage server of this profile survives it
    import psutil

    left = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if "profile-classifier" in " ".join(p.info["cmdline"] or [])
    ]
    assert left == []
