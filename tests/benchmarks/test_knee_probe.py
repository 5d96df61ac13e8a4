"""testbed_knee's capacity probe: a probe the load generator could not offer is an error."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import testbed_knee as knee


def _probe_run(folder: Path, offered: float, served: float, lag_s: float) -> None:
    folder.mkdir(parents=True)
    summary = {"duration_s": 15.0, "offered_rps": offered, "lag_p99_s": lag_s}
    (folder / "summary.json").write_text(json.dumps(summary))
    pd.DataFrame({"second": range(15), "rps": [served] * 15}).to_parquet(
        folder / "per_second.parquet"
    )


def test_a_probe_whose_load_generator_fell_behind_stops_the_sweep(tmp_path, monkeypatch) -> None:
    """The Compose variant's probes: 187 and 365/s answered in full and on time, 722/s
    answered in full but offered late (lag p99 167 ms): no ρ 1 can be read from it."""
    monkeypatch.setattr(knee, "OUT", tmp_path)
    d = tmp_path / "variant"
    _probe_run(d / "probe", 187.5, 178.4, 0.004)
    _probe_run(d / "probe-1", 364.7, 367.1, 0.012)
    _probe_run(d / "probe-2", 722.2, 733.8, 0.167)
    with pytest.raises(SystemExit, match="load generator fell behind at 722/s"):
        knee._probe("variant", tmp_path / "sc.yaml", "http://x", [], 0.5, 15.0)


def test_a_backlogged_probe_gives_the_capacity(tmp_path, monkeypatch) -> None:
    """A backlogged probe (served 136 of 187/s) is ρ 1, however late its offers."""
    monkeypatch.setattr(knee, "OUT", tmp_path)
    _probe_run(tmp_path / "default" / "probe", 187.5, 136.0, 0.030)
    assert knee._probe("default", tmp_path / "sc.yaml", "http://x", [], 0.5, 15.0) == 136.0
    cap = json.loads((tmp_path / "default" / "capacity.json").read_text())
    assert cap["probe"]["backlogged"] and cap["capacity_rps"] == 136.0
