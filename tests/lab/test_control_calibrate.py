"""The per-request overhead per configuration class, fitted from control-run folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lab.control_calibrate import AFTER_CHANGE, class_overheads, less_overhead, overhead_class
from twin.spec import LognormalServiceTime

LIGHT = "d-tiny×1/b1 e-small×1/b1 c-linear×1/b1"
HEAVY = "d-large×1/b1 e-large×2/b1 c-deep×1/b1"


def _run(
    folder: Path,
    configs: list[str],
    over_ms: list[float],
    seed: int,
    applied: list[float] | None = None,
) -> Path:
    """A control-run folder: 10-s intervals from load-run time 2 s, 300 requests each,
    one stage visit of 3 ms per request, overhead lognormal around ``over_ms``."""
    rng = np.random.default_rng(seed)
    reqs, visits, pid = [], [], 0
    for k, mean in enumerate(over_ms):
        for t in np.sort(rng.uniform(2 + 10 * k, 12 + 10 * k, 300)):
            over = mean * rng.lognormal(-0.08, 0.4) / 1e3
            reqs.append({"pid": pid, "t_arrive": t, "t_end": t + over + 0.003, "ok": True})
            visits.append({"pid": pid, "queue_s": 0.001, "service_s": 0.002})
            pid += 1
    (folder / "load").mkdir(parents=True)
    pd.DataFrame(reqs).to_parquet(folder / "load" / "requests.parquet")
    pd.DataFrame(visits).to_parquet(folder / "load" / "visits.parquet")
    (folder / "load" / "run.json").write_text(json.dumps({"t0_unix_s": 0.0}))
    t_s = [10.0 * k for k in range(len(configs))]
    applied = applied or [0.0] * len(configs)
    pd.DataFrame({"t_s": t_s, "config": configs, "apply_s": applied}).to_parquet(
        folder / "intervals.parquet"
    )
    summary = {"duration_s": 10.0 * len(configs), "offset_s": 2.0}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_each_class_gets_the_overhead_of_its_intervals(tmp_path: Path) -> None:
    assert overhead_class(LIGHT) == "light" and overhead_class(HEAVY) == "heavy"
    runs = [
        _run(tmp_path / "a", [LIGHT, HEAVY, HEAVY], [5.0, 20.0, 20.0], 1),
        _run(tmp_path / "b", [HEAVY, LIGHT], [20.0, 5.0], 2),
    ]
    got = class_overheads(runs)
    assert set(got) == {"light", "heavy"}
    assert got["light"].mean_ms == pytest.approx(5.0, rel=0.1)
    assert got["heavy"].mean_ms == pytest.approx(20.0, rel=0.1)
    # the quota twin's share of the servers' CPU comes off each mean
    moved = class_overheads(runs, moved_ms=1.5)
    assert moved["heavy"].mean_ms == pytest.approx(got["heavy"].mean_ms - 1.5)
    # a class with too few requests is left out (the replay keeps the pooled overhead)
    assert set(class_overheads(runs, min_requests=700)) == {"heavy"}  # 900 and 600


def test_less_overhead_keeps_a_tenth() -> None:
    o = LognormalServiceTime(kind="lognormal", mean_ms=2.0, cv=0.5)
    assert less_overhead(o, 0.5).mean_ms == pytest.approx(1.5)
    assert less_overhead(o, 5.0).mean_ms == pytest.approx(0.2)


def test_the_interval_after_a_reconfiguration_is_a_class_of_its_own(tmp_path: Path) -> None:
    # a decides a change at the end of its first interval: its second is "after change"
    runs = [
        _run(tmp_path / "a", [HEAVY, LIGHT, LIGHT], [20.0, 50.0, 5.0], 1, [0.8, 0.0, 0.0]),
        _run(tmp_path / "b", [LIGHT, HEAVY], [5.0, 20.0], 2),
    ]
    got = class_overheads(runs, after_change=True)
    assert set(got) == {"light", "heavy", AFTER_CHANGE}
    assert got[AFTER_CHANGE].mean_ms == pytest.approx(50.0, rel=0.1)
    assert got["light"].mean_ms == pytest.approx(5.0, rel=0.1)
    # without the class the change's interval counts as its configuration's
    assert class_overheads(runs)["light"].mean_ms > 15
