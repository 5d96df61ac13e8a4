"""Workload curves are pure functions of time; samplers have the stated mean and cv."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from twin.service import make_sampler
from twin.spec import (
    FluctuatingWorkload,
    GammaServiceTime,
    LognormalServiceTime,
    StepWorkload,
    TableServiceTime,
    TraceWorkload,
)
from twin.workload import poisson_times, rate_at, rate_series

N = 200_000


def test_fluctuating_is_sinusoid_plus_seeded_noise_plus_bursts() -> None:
    w = FluctuatingWorkload(
        kind="fluctuating",
        name="f",
        base_per_s=50,
        amplitude_per_s=20,
        period_s=100,
        noise_sd_per_s=0,
        bursts=[{"at_s": 10, "duration_s": 5, "extra_per_s": 30}],
    )
    assert rate_at(w, 25) == pytest.approx(70)
    assert rate_at(w, 12) == pytest.approx(50 + 20 * math.sin(2 * math.pi * 0.12) + 30)
    noisy = w.model_copy(update={"noise_sd_per_s": 5.0, "seed": 11})
    # Pure function of time: the same t gives the same value, whatever came before.
    later = [rate_at(noisy, t) for t in (300.5, 3.2, 300.5)]
    assert later[0] == later[2]
    dev = rate_series(noisy, 5000) - rate_series(w, 5000)
    assert abs(dev.std() - 5.0) < 0.3 and abs(dev.mean()) < 0.3


def test_step_and_trace_replay(tmp_path: Path) -> None:
    w = StepWorkload(kind="step", name="s", levels_per_s=[1, 5, 9], step_s=10)
    assert [rate_at(w, t) for t in (0, 9.9, 10, 25, 1e6)] == [1, 1, 5, 9, 9]
    csv = tmp_path / "trace.csv"
    csv.write_text("rate_per_s\n3\n4\n5\n")
    t = TraceWorkload(kind="trace", name="t", path=str(csv), scale=2.0)
    assert [rate_at(t, s) for s in (0, 1.5, 2, 3, 4)] == [6, 8, 10, 6, 8]
    once = t.model_copy(update={"loop": False})
    assert rate_at(once, 3) == 0.0


def test_poisson_times_follow_the_rates() -> None:
    rates = np.array([0.0, 100.0, 10.0] * 2000)
    times = poisson_times(rates, np.random.default_rng(3), len(rates))
    counts = np.histogram(times, np.arange(len(rates) + 1))[0]
    for k, rate in enumerate((0.0, 100.0, 10.0)):
        got = counts[k::3].mean()
        assert abs(got - rate) <= 4 * math.sqrt(max(rate, 1e-9) / 2000) + 1e-12
    assert np.all(np.diff(times) >= 0)


@pytest.mark.parametrize(
    "model",
    [
        LognormalServiceTime(kind="lognormal", mean_ms=8, cv=0.5, per_item_ms=2),
        GammaServiceTime(kind="gamma", mean_ms=8, cv=0.7, per_item_ms=2),
        TableServiceTime(
            kind="table",
            dist="lognormal",
            points={1: {"mean_ms": 8, "cv": 0.5}, 8: {"mean_ms": 22, "cv": 0.3}},
        ),
    ],
)
@pytest.mark.parametrize("batch", [1, 8])
def test_sampler_mean_and_cv(model, batch: int) -> None:
    sample = make_sampler(model, np.random.default_rng(1))
    x = np.array([sample(batch) for _ in range(N)]) * 1e3
    mean, cv = model.batch_mean_ms(batch), model.batch_cv(batch)
    assert mean == pytest.approx(8 + 2 * (batch - 1) if batch == 1 or model.kind != "table" else 22)
    # Tolerances: 5 standard errors of the sample mean and of the sample sd.
    assert abs(x.mean() - mean) < 5 * cv * mean / math.sqrt(N)
    assert abs(x.std() / x.mean() - cv) < 5 * cv * math.sqrt(2 / N) * (1 + cv) + 0.005
