"""``calibrate profile --target``'s fit from raw rows (no server needed)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from calibrate.target import (
    SAMPLE_FIELDS,
    TargetGrid,
    capacity,
    fit_target,
    overhead_samples,
    saturated_gaps,
)
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
    doc, scenario, _dep, cap, _open = fit_target(samples(paced), SERVING, grid)
    assert set(cap["concurrency"]) == {1, 2}  # the paced rows are no throughput cell
    service = scenario.component("m").variants[0].service_time
    assert service.batch_mean_ms(1) == pytest.approx(3.0, rel=0.02)  # 1 / 333 per s
    assert doc.overheads.per_request.mean_ms == pytest.approx(overhead_ms, rel=0.1)


def test_capacity_ignores_failures_and_the_paced_cell() -> None:
    frame = samples(True)
    frame.loc[:9, "status"] = 503
    cap = capacity(frame, 1.0).set_index("concurrency")
    assert cap.loc[1, "throughput_per_s"] == 275 and cap.loc[2, "throughput_per_s"] == 333


def saturated(n: int, service_ms: np.ndarray, clients: int = 2, batch: int = 1) -> list[tuple]:
    """A closed-loop cell of a busy serial server: answers ``service_ms`` apart."""
    done = np.cumsum(service_ms) / 1e3
    sent = np.concatenate([[0.0] * clients, done[:-clients]])  # each client resends at once
    return [
        (batch, clients, i % clients, float(s), float((d - s) * 1e3), 200)
        for i, (s, d) in enumerate(zip(sent[:n], done[:n], strict=True))
    ]


def test_service_spread_comes_from_a_saturated_server_s_answer_gaps() -> None:
    rng = np.random.default_rng(4)
    service = rng.gamma(1 / 0.3**2, 3.0 * 0.3**2, 900)  # mean 3 ms, cv 0.3
    out = rows(1, 200, 3.5, 1) + rows(0, 150, 4.8, 3)  # the idle latencies' cv is 0.05
    out += saturated(900, service)
    frame = pd.DataFrame(out, columns=list(SAMPLE_FIELDS))
    grid = TargetGrid(batches=(1,), concurrency=(1, 2), cell_s=2.7)
    _doc, scenario, _dep, _cap, _open = fit_target(frame, SERVING, grid)
    fitted = scenario.component("m").variants[0].service_time
    assert fitted.batch_mean_ms(1) == pytest.approx(3.0, rel=0.05)
    cv = fitted.points[1].cv if fitted.kind == "table" else fitted.cv
    assert cv == pytest.approx(0.3, rel=0.15)


def test_cells_that_do_not_saturate_the_server_give_no_gaps() -> None:
    rng = np.random.default_rng(5)
    busy = saturated(600, rng.gamma(25, 0.12, 600))  # 333 per s
    slow = saturated(300, rng.gamma(25, 0.24, 300), clients=4)  # half that: not saturated
    frame = pd.DataFrame(busy + slow, columns=list(SAMPLE_FIELDS))
    cap = capacity(frame, 1.8)
    gaps = saturated_gaps(frame, cap)
    assert set(gaps) == {1} and len(gaps[1]) == 599
    assert gaps[1].mean() == pytest.approx(3.0, rel=0.05)
    assert saturated_gaps(frame, cap, replicas=2)[1].mean() == pytest.approx(6.0, rel=0.05)


def test_overhead_and_service_spread_as_the_idle_latencies_did() -> None:
    rng = np.random.default_rng(6)
    lat = 5.0 + rng.normal(0, 1.2, 4000)
    over = overhead_samples(lat, 3.0, service_var=0.6**2)
    assert over.mean() == pytest.approx(lat.mean() - 3.0, abs=1e-9)
    assert over.var() + 0.6**2 == pytest.approx(lat.var(), rel=1e-9)
    # a service spread wider than the latencies' keeps a tenth of their variance
    assert overhead_samples(lat, 3.0, service_var=9.0).var() == pytest.approx(0.1 * lat.var())


@pytest.mark.parametrize(
    ("dispatch", "component_dispatch", "balancing"),
    [
        ("round_robin", "balanced", "round_robin"),
        ("random", "balanced", "random"),
        ("shared_queue", "shared_queue", "least_outstanding"),
    ],
)
def test_the_server_s_dispatch_becomes_the_twin_s(
    dispatch: str, component_dispatch: str, balancing: str
) -> None:
    grid = TargetGrid(batches=(1,), concurrency=(1, 2), cell_s=1.0)
    _doc, scenario, dep, _cap, _open = fit_target(samples(True), SERVING, grid, 2, 0, dispatch)
    assert scenario.component("m").dispatch == component_dispatch
    assert scenario.settings.load_balancing == balancing
    assert dep.allocation["m"]["server"] == 2


def test_an_unknown_dispatch_is_refused() -> None:
    grid = TargetGrid(batches=(1,), concurrency=(1, 2), cell_s=1.0)
    with pytest.raises(ValueError, match="dispatch must be one of"):
        fit_target(samples(True), SERVING, grid, 2, 0, "fastest")
