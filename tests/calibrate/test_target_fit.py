"""``calibrate profile --target``'s fit from raw rows (no server needed)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from calibrate.target import SAMPLE_FIELDS, TargetGrid, capacity, fit_target
from twin.spec import Serving, TensorInput

SERVING = Serving(model="m", inputs=[TensorInput(name="x", shape=[1, 4])])


def rows(concurrency: int, n: int, latency_ms: float, seed: int) -> list[tuple]:
    rng = np.random.default_rng(seed)
    lat = latency_ms * rng.lognormal(0, 0.05, n)
    return [(1, concurrency, 0, i / n, float(x), 200) for i, x in enumerate(lat)]


def samples(paced: bool) -> pd.DataFrame:
    # a serial server of 3 ms: 1 client back to back sees 3.5 ms (300/s at 2 clients);
    # a paced client, which finds it idle, 4.8 ms
    out = rows(1, 285, 3.5, 1) + rows(2, 333, 6.0, 2)
    out += rows(0, 150, 4.8, 3) if paced else []
    return pd.DataFrame(out, columns=list(SAMPLE_FIELDS))


@pytest.mark.parametrize(("paced", "overhead_ms"), [(True, 1.8), (False, 0.5)])
def test_overhead_is_read_from_an_idle_server(paced: bool, overhead_ms: float) -> None:
    grid = TargetGrid(batches=(1,), concurrency=(1, 2), cell_s=1.0)
    doc, scenario, _dep, cap = fit_target(samples(paced), SERVING, grid)
    assert set(cap["concurrency"]) == {1, 2}  # the paced rows are no throughput cell
    service = scenario.component("m").variants[0].service_time
    assert service.batch_mean_ms(1) == pytest.approx(3.0, rel=0.02)  # 1 / 333 per s
    assert doc.overheads.per_request.mean_ms == pytest.approx(overhead_ms, rel=0.1)


def test_capacity_ignores_failures_and_the_paced_cell() -> None:
    frame = samples(True)
    frame.loc[:9, "status"] = 503
    cap = capacity(frame, 1.0).set_index("concurrency")
    assert cap.loc[1, "throughput_per_s"] == 275 and cap.loc[2, "throughput_per_s"] == 333
