"""Fitting recovers known service-time parameters from data the twin generates."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from calibrate.fit import fit_samples, fit_variant, loglik, share_exponent
from calibrate.samples import twin_samples
from twin.sim import simulate_replication
from twin.spec import (
    Deployment,
    GammaServiceTime,
    LognormalServiceTime,
    Scenario,
    StageConfig,
    TableServiceTime,
)

BATCHES = (1, 4, 8)


def one_stage(service_time: dict, speed: float = 1.0) -> Scenario:
    return Scenario.model_validate(
        {
            "name": "one-stage",
            "servers": [{"name": "node", "cpu_cores": 4, "cpu_speed": speed, "ram_gb": 8}],
            "components": [
                {
                    "name": "stage",
                    "max_batch": 16,
                    "variants": [
                        {"name": "v", "accuracy": 0.9, "cpu_cores": 1, "service_time": service_time}
                    ],
                }
            ],
            "processes": [
                {
                    "name": "infer",
                    "kind": "request",
                    "steps": [{"name": "s", "component": "stage"}],
                }
            ],
            "workloads": [{"kind": "steady", "name": "w", "rate_per_s": 200}],
        }
    )


def twin_data(sc: Scenario, horizon_s: float = 30.0, seed: int = 7) -> pd.DataFrame:
    """Service-time samples at batch sizes 1, 4 and 8 from the twin's own visits."""
    frames = []
    for b in BATCHES:
        dep = Deployment(
            allocation={"stage": {"node": 1}},
            stages={"stage": StageConfig(variant="v", batch=b, batch_timeout_ms=200)},
        )
        res = simulate_replication(sc, dep, sc.workload("w"), horizon_s, seed + b)
        frames.append(twin_samples(res.visits, sc, dep))
    return pd.concat(frames, ignore_index=True)


def mean_tolerance(mean: float, cv: float, n: int) -> float:
    # 4 standard errors of a sample mean: fails by chance about once in 15 000 runs
    return 4 * cv * mean / math.sqrt(n)


def cv_tolerance(cv: float, n: int) -> float:
    # large-sample sd of an estimated cv is about cv·√((1 + 2cv²) / 2n)
    return 4 * cv * math.sqrt((1 + 2 * cv * cv) / (2 * n))


@pytest.mark.parametrize(
    ("kind", "mean_ms", "per_item_ms", "cv"),
    [("lognormal", 2.0, 0.5, 0.3), ("gamma", 1.5, 0.8, 0.5)],
)
def test_parameter_recovery_from_twin_visits(kind, mean_ms, per_item_ms, cv):
    truth = {"kind": kind, "mean_ms": mean_ms, "per_item_ms": per_item_ms, "cv": cv}
    sc = one_stage(truth, speed=2.0)  # speed ≠ 1: samples must be rescaled to speed 1
    data = twin_data(sc)
    counts = data["batch"].value_counts()
    assert set(BATCHES) <= set(counts.index), counts
    (fit,) = fit_samples(data, seed=1)
    true_model = sc.components[0].variants[0].service_time
    for b in BATCHES:
        n = int(counts[b])
        want = true_model.batch_mean_ms(b)
        got = fit.service_time.batch_mean_ms(b)
        assert abs(got - want) <= mean_tolerance(want, cv, n), (b, got, want, n)
        assert abs(fit.service_time.batch_cv(b) - cv) <= cv_tolerance(cv, n), (b, fit)
    assert fit.n == len(data)
    assert fit.batches == BATCHES


def test_one_sample_per_batch_execution():
    sc = one_stage({"kind": "constant", "ms": 1.0})
    dep = Deployment(
        allocation={"stage": {"node": 1}},
        stages={"stage": StageConfig(variant="v", batch=4, batch_timeout_ms=200)},
    )
    res = simulate_replication(sc, dep, sc.workload("w"), 10.0, 3)
    samples = twin_samples(res.visits, sc, dep)
    visits = res.visits.dropna(subset=["t_end"])
    # a batch of b requests is b visit rows but one service-time sample
    assert len(samples) == len(visits.drop_duplicates(["t_start", "replica"]))
    assert samples["batch"].sum() == len(visits)


@pytest.mark.parametrize("kind", ["lognormal", "gamma"])
def test_heldout_likelihood_picks_the_generating_family(kind):
    rng = np.random.default_rng(11)
    n, mean, cv = 6000, 3.0, 0.6
    if kind == "lognormal":
        s = math.sqrt(math.log1p(cv * cv))
        x = mean * np.exp(s * rng.standard_normal(n) - s * s / 2)
    else:
        k = 1 / cv**2
        x = rng.gamma(k, mean / k, n)
    fit = fit_variant(np.ones(n, dtype=int), x, seed=2)
    assert fit.dist == kind, fit.heldout_loglik
    assert fit.service_time.batch_mean_ms(1) == pytest.approx(mean, rel=0.05)


def test_table_wins_when_the_mean_is_not_linear_in_batch():
    # mean(b) jumps from b=4 to b=8 (cache spill): a line cannot follow it
    rng = np.random.default_rng(5)
    means = {1: 1.0, 2: 1.2, 4: 1.6, 8: 6.0}
    batch = np.repeat(list(means), 800)
    x = np.array([means[b] for b in batch]) * rng.lognormal(-0.02, 0.2, batch.size)
    fit = fit_variant(batch, x, seed=0)
    assert fit.structure == "table", fit.heldout_loglik
    assert isinstance(fit.service_time, TableServiceTime)
    for b, m in means.items():
        assert fit.service_time.batch_mean_ms(b) == pytest.approx(m, rel=0.05)


def test_loglik_matches_scipy_lognormal():
    model = LognormalServiceTime(kind="lognormal", mean_ms=2.0, per_item_ms=1.0, cv=0.5)
    x = np.array([1.0, 2.0, 3.5])
    b = np.array([1, 2, 3])
    s = math.sqrt(math.log1p(0.25))
    from scipy import stats

    want = [
        stats.lognorm.logpdf(xi, s=s, scale=(1 + bi) * math.exp(-s * s / 2))
        for xi, bi in zip(x, b, strict=True)
    ]
    assert loglik(model, b, x) == pytest.approx(want)


def test_too_few_samples_is_a_clear_error():
    with pytest.raises(ValueError, match="need at least 8"):
        fit_variant(np.ones(5, dtype=int), np.ones(5), component="c", variant="v")


def test_share_exponent_of_a_quota_scaled_stage():
    rng = np.random.default_rng(0)
    rows = []
    for share in (0.25, 0.5, 1.0):
        x = (2.0 / share) * rng.gamma(16, 1 / 16, 400)
        rows.append(
            pd.DataFrame(
                {"component": "c", "variant": "v", "batch": 1, "cpu_share": share, "service_ms": x}
            )
        )
    fits = fit_samples(pd.concat(rows))
    assert len(fits) == 3
    assert share_exponent(fits)[("c", "v")] == pytest.approx(1.0, abs=0.05)
    assert all(
        isinstance(f.service_time, GammaServiceTime | LognormalServiceTime | TableServiceTime)
        for f in fits
    )


@pytest.mark.parametrize(("kind", "mean_ms", "cv"), [("gamma", 8.0, 0.4), ("lognormal", 5.0, 0.7)])
def test_request_overhead_recovered_from_twin_records(kind, mean_ms, cv):
    """The twin with a known ``request_overhead``; the testbed's subtraction and fit get it back."""
    from calibrate.fit import fit_overhead
    from calibrate.samples import request_overheads

    sc = one_stage({"kind": "lognormal", "mean_ms": 1.0, "per_item_ms": 0.2, "cv": 0.3})
    data = sc.model_dump()
    data["processes"][0]["request_overhead"] = {"kind": kind, "mean_ms": mean_ms, "cv": cv}
    sc = Scenario.model_validate(data)
    dep = Deployment(
        allocation={"stage": {"node": 1}},
        stages={"stage": StageConfig(variant="v", batch=4, batch_timeout_ms=2)},
    )
    res = simulate_replication(sc, dep, sc.workload("w"), 20.0, 5)
    v = res.visits.dropna(subset=["t_end"])
    visits = pd.DataFrame(
        {
            "pid": v["pid"],
            "queue_s": v["t_start"] - v["t_arrive"],
            "service_s": v["t_end"] - v["t_start"],
        }
    )
    requests = res.requests.assign(ok=np.isfinite(res.requests["t_end"]))
    over = request_overheads(requests, visits)
    model, scores = fit_overhead(over["overhead_ms"].to_numpy(), seed=3)
    n = len(over)
    assert n > 3000
    assert model.kind == kind, scores
    assert abs(model.batch_mean_ms(1) - mean_ms) <= mean_tolerance(mean_ms, cv, n)
    assert abs(model.batch_cv(1) - cv) <= cv_tolerance(cv, n)


def test_overhead_levels_give_their_mean_mean_and_within_level_cv():
    from calibrate.fit import fit_overhead

    rng = np.random.default_rng(4)
    s = math.sqrt(math.log1p(0.3**2))
    low = 5.0 * np.exp(s * rng.standard_normal(400) - s * s / 2)
    high = 10.0 * np.exp(s * rng.standard_normal(4000) - s * s / 2)
    x = np.concatenate([low, high])
    levels = np.array(["low"] * low.size + ["high"] * high.size)
    model, scores = fit_overhead(x, levels, seed=1)
    assert model.kind == "lognormal", scores
    # equal weight per level, whatever their sizes; the spread is one level's, not the mixture's
    assert model.batch_mean_ms(1) == pytest.approx(7.5, rel=0.03)
    assert model.batch_cv(1) == pytest.approx(0.3, abs=0.03)
    pooled, _ = fit_overhead(x, seed=1)
    assert pooled.batch_mean_ms(1) > 9.0 and pooled.batch_cv(1) > 0.33
    with pytest.raises(ValueError, match="at least 8"):
        fit_overhead(np.array([1.0] * 20 + [2.0] * 3), np.array([0] * 20 + [1] * 3))


def test_overhead_cv_follows_a_tail_heavier_than_the_bulk():
    from calibrate.fit import fit_overhead

    rng = np.random.default_rng(6)
    s = math.sqrt(math.log1p(0.25**2))
    x = 5.0 * np.exp(s * rng.standard_normal(4000) - s * s / 2)
    x[rng.random(x.size) < 0.03] *= 3.0  # 3 % of requests met a busy host
    bulk, _ = fit_overhead(x[x < 9.0], seed=2)
    model, _ = fit_overhead(x, seed=2)
    assert model.batch_cv(1) > bulk.batch_cv(1) + 0.1
    # the fitted family has the sample's 99th percentile over its median, within 10 %
    sigma = math.sqrt(math.log1p(model.batch_cv(1) ** 2))
    ratio = math.exp(2.3263 * sigma) if model.kind == "lognormal" else None
    if ratio is not None:
        q50, q99 = np.percentile(x, [50, 99])
        assert ratio == pytest.approx(q99 / q50, rel=0.1)
