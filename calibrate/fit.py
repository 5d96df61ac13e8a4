"""Service-time models fitted to raw per-batch service times.

Input is one row per *batch execution* of a stage (``SAMPLE_COLUMNS``), built
from raw per-visit records — the twin's visits or the testbed's per-request
timings — never from aggregated percentiles. For each stage × variant × CPU
share four candidate models are fitted by maximum likelihood on a training
split and scored by their log-likelihood on the held-out rows:

* ``lognormal`` or ``gamma`` family, and
* ``linear`` structure (mean = m₁ + per_item·(b−1), one cv: the spec's own
  ``LognormalServiceTime``/``GammaServiceTime``) or ``table`` structure (mean
  and cv per measured batch size: the spec's ``TableServiceTime``).

The winner is refitted on all rows. Every result is a spec ``ServiceTime``, so
the twin consumes it unchanged (see :mod:`calibrate.calibration`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import optimize, stats

from twin.spec import (
    GammaServiceTime,
    LognormalServiceTime,
    ServiceTime,
    TablePoint,
    TableServiceTime,
)

SAMPLE_COLUMNS = ("component", "variant", "batch", "cpu_share", "service_ms")
DISTS = ("lognormal", "gamma")
STRUCTURES = ("linear", "table")
CV_BOUNDS = (1e-3, 5.0)


@dataclass(frozen=True)
class VariantFit:
    """The chosen model of one stage × variant × CPU share and how it was chosen."""

    component: str
    variant: str
    cpu_share: float
    n: int  # batch executions used
    batches: tuple[int, ...]  # batch sizes measured
    dist: str
    structure: str
    service_time: ServiceTime
    heldout_loglik: dict[str, float] = field(default_factory=dict)  # candidate → mean nats/row


# --------------------------------------------------------------------------- likelihood


def _mean_cv(model: ServiceTime, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sizes, inverse = np.unique(batch, return_inverse=True)
    means = np.array([model.batch_mean_ms(int(b)) for b in sizes])
    cvs = np.array([model.batch_cv(int(b)) for b in sizes])
    return means[inverse], cvs[inverse]


def _logpdf(dist: str, x: np.ndarray, mean: np.ndarray, cv: np.ndarray) -> np.ndarray:
    cv = np.clip(cv, *CV_BOUNDS)
    mean = np.maximum(mean, 1e-9)
    if dist == "lognormal":
        s2 = np.log1p(cv * cv)
        return stats.lognorm.logpdf(x, s=np.sqrt(s2), scale=mean * np.exp(-s2 / 2))
    if dist == "gamma":
        k = 1.0 / (cv * cv)
        return stats.gamma.logpdf(x, a=k, scale=mean / k)
    raise ValueError(f"unknown distribution {dist!r} (known: {', '.join(DISTS)})")


def loglik(model: ServiceTime, batch: np.ndarray, service_ms: np.ndarray) -> np.ndarray:
    """Log density (nats) of each service time (ms) at its batch size under ``model``."""
    dist = getattr(model, "dist", getattr(model, "kind", ""))
    mean, cv = _mean_cv(model, np.asarray(batch))
    return _logpdf(dist, np.asarray(service_ms, dtype=float), mean, cv)


# --------------------------------------------------------------------------- fitting


def _moments(dist: str, x: np.ndarray) -> tuple[float, float]:
    """Maximum-likelihood mean (ms) and cv of one batch size's service times."""
    if x.size < 2 or np.ptp(x) <= 0:
        return float(np.mean(x)), CV_BOUNDS[0]
    if dist == "lognormal":
        logs = np.log(x)
        s2 = float(np.var(logs))  # the MLE of σ² (ddof 0)
        return float(np.exp(logs.mean() + s2 / 2)), math.sqrt(math.expm1(s2))
    a, _, scale = stats.gamma.fit(x, floc=0)
    return float(a * scale), 1.0 / math.sqrt(a)


def fit_table(dist: str, batch: np.ndarray, service_ms: np.ndarray) -> TableServiceTime:
    """Mean and cv per measured batch size (maximum likelihood, ``dist`` family)."""
    points = {}
    for b in np.unique(batch):
        mean, cv = _moments(dist, service_ms[batch == b])
        points[int(b)] = TablePoint(mean_ms=max(mean, 1e-6), cv=float(np.clip(cv, *CV_BOUNDS)))
    return TableServiceTime(kind="table", dist=dist, points=points)  # type: ignore[arg-type]


def fit_linear(
    dist: str, batch: np.ndarray, service_ms: np.ndarray
) -> LognormalServiceTime | GammaServiceTime:
    """Mean m₁ + per_item·(b−1) (ms) and one cv, by maximum likelihood."""
    table = fit_table(dist, batch, service_ms)
    sizes = np.array(sorted(table.points))
    means = np.array([table.points[b].mean_ms for b in sizes])
    if sizes.size > 1:
        per0, m0 = np.polyfit(sizes - 1.0, means, 1)
    else:
        per0, m0 = 0.0, means[0]
    m0 = max(float(m0), 0.05 * float(means.min()))
    per0 = max(float(per0), 0.0)
    cv0 = float(np.clip(np.median([p.cv for p in table.points.values()]), *CV_BOUNDS))
    bm1 = batch - 1.0
    free_per = sizes.size > 1

    def nll(theta: np.ndarray) -> float:
        m1, cv = math.exp(theta[0]), math.exp(theta[2])
        per = theta[1] if free_per else 0.0
        mean = m1 + per * bm1
        if np.any(mean <= 0):
            return 1e300
        return -float(np.sum(_logpdf(dist, service_ms, mean, np.full_like(mean, cv))))

    x0 = np.array([math.log(m0), per0, math.log(cv0)])
    bounds = [(math.log(1e-6), math.log(1e7)), (0.0, None), tuple(map(math.log, CV_BOUNDS))]
    res = optimize.minimize(nll, x0, method="L-BFGS-B", bounds=bounds)
    theta = res.x if res.success or nll(res.x) <= nll(x0) else x0
    cls = LognormalServiceTime if dist == "lognormal" else GammaServiceTime
    return cls(
        kind=dist,  # type: ignore[arg-type]
        mean_ms=math.exp(theta[0]),
        per_item_ms=float(theta[1]) if free_per else 0.0,
        cv=math.exp(theta[2]),
    )


def fit_candidate(dist: str, structure: str, batch: np.ndarray, x: np.ndarray) -> ServiceTime:
    """One candidate model: ``dist`` ∈ DISTS, ``structure`` ∈ STRUCTURES."""
    if structure == "linear":
        return fit_linear(dist, batch, x)
    if structure == "table":
        return fit_table(dist, batch, x)
    raise ValueError(f"unknown structure {structure!r} (known: {', '.join(STRUCTURES)})")


def _split(batch: np.ndarray, holdout: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean test mask: ``holdout`` of the rows of every batch size, at least one each."""
    test = np.zeros(batch.size, dtype=bool)
    for b in np.unique(batch):
        idx = np.flatnonzero(batch == b)
        if idx.size < 4:
            continue  # too few to hold any out; all train
        k = max(1, round(holdout * idx.size))
        test[rng.choice(idx, size=k, replace=False)] = True
    return test


def fit_variant(
    batch: np.ndarray,
    service_ms: np.ndarray,
    *,
    component: str = "",
    variant: str = "",
    cpu_share: float = 1.0,
    holdout: float = 0.3,
    seed: int = 0,
) -> VariantFit:
    """Choose and fit the service-time model of one stage × variant × CPU share.

    ``batch`` are batch sizes, ``service_ms`` the service times (ms) of whole
    batches, one row per batch execution. Candidates are scored on a held-out
    ``holdout`` fraction (seeded); the winner is refitted on all rows.
    """
    batch = np.asarray(batch, dtype=np.int64)
    x = np.asarray(service_ms, dtype=float)
    keep = np.isfinite(x) & (x > 0) & (batch >= 1)
    batch, x = batch[keep], x[keep]
    if x.size < 8:
        raise ValueError(
            f"{component}/{variant} at CPU share {cpu_share:g}: {x.size} usable service "
            "times; need at least 8 (profile longer)"
        )
    test = _split(batch, holdout, np.random.default_rng(seed))
    if not test.any():
        test = np.zeros_like(test)
        test[:: max(2, int(1 / holdout))] = True
    scores: dict[str, float] = {}
    for dist in DISTS:
        for structure in STRUCTURES:
            model = fit_candidate(dist, structure, batch[~test], x[~test])
            scores[f"{dist}/{structure}"] = float(np.mean(loglik(model, batch[test], x[test])))
    best = max(scores, key=lambda k: scores[k])
    dist, structure = best.split("/")
    return VariantFit(
        component=component,
        variant=variant,
        cpu_share=float(cpu_share),
        n=int(x.size),
        batches=tuple(int(b) for b in np.unique(batch)),
        dist=dist,
        structure=structure,
        service_time=fit_candidate(dist, structure, batch, x),
        heldout_loglik=scores,
    )


def fit_samples(samples: pd.DataFrame, holdout: float = 0.3, seed: int = 0) -> list[VariantFit]:
    """Fit every stage × variant × CPU share in a samples table (``SAMPLE_COLUMNS``)."""
    missing = [c for c in SAMPLE_COLUMNS if c not in samples]
    if missing:
        raise ValueError(f"samples lack columns {missing} (need {', '.join(SAMPLE_COLUMNS)})")
    fits = []
    groups = samples.groupby(["component", "variant", "cpu_share"], observed=True, sort=True)
    for (component, variant, share), rows in groups:
        fits.append(
            fit_variant(
                rows["batch"].to_numpy(),
                rows["service_ms"].to_numpy(),
                component=str(component),
                variant=str(variant),
                cpu_share=float(share),
                holdout=holdout,
                seed=seed,
            )
        )
    if not fits:
        raise ValueError("no service-time samples to fit")
    return fits


def fit_overhead(
    overhead_ms: np.ndarray,
    levels: np.ndarray | None = None,
    holdout: float = 0.3,
    seed: int = 0,
) -> tuple[LognormalServiceTime | GammaServiceTime, dict[str, float]]:
    """One distribution of per-request overheads (ms), for ``Process.request_overhead``.

    Lognormal and gamma (at batch size 1: a mean and a cv) are fitted by
    maximum likelihood on a seeded training split and scored on the held-out
    ``holdout`` fraction, as for service times; the winner is refitted on all
    rows. With ``levels`` (one label per row: the load level it was measured
    at) each level gets its own fit and the result has the levels' mean mean
    and mean cv: the overhead's level moves with load, and pooling the levels
    would both let the level with most rows decide the mean and widen the
    spread by the gap between levels, which no single load shows. Returns the
    model and each family's mean held-out log-likelihood (nats per row).
    """
    x = np.asarray(overhead_ms, dtype=float)
    lv = np.zeros(x.size, dtype=np.int64) if levels is None else pd.factorize(levels)[0]
    keep = np.isfinite(x) & (x > 0)
    x, lv = x[keep], lv[keep]
    sizes = np.bincount(lv) if x.size else np.array([0])
    if sizes[sizes > 0].min() < 8:
        raise ValueError(
            f"{int(sizes[sizes > 0].min())} usable request overheads at a load level; need at "
            "least 8 (run longer)"
        )
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(lv == g) for g in np.unique(lv)]
    tests = []  # one split per level, the same for every family
    for idx in groups:
        test = np.zeros(idx.size, dtype=bool)
        test[rng.choice(idx.size, size=max(1, round(holdout * idx.size)), replace=False)] = True
        tests.append(test)
    scores = {}
    for dist in DISTS:
        total, n = 0.0, 0
        for idx, test in zip(groups, tests, strict=True):
            xs = x[idx]
            ones = np.ones(idx.size, dtype=np.int64)
            model = fit_linear(dist, ones[~test], xs[~test])
            total += float(np.sum(loglik(model, ones[test], xs[test])))
            n += int(test.sum())
        scores[dist] = total / n
    best = max(scores, key=lambda d: scores[d])
    fits = [fit_linear(best, np.ones(idx.size, dtype=np.int64), x[idx]) for idx in groups]
    cls = LognormalServiceTime if best == "lognormal" else GammaServiceTime
    cvs = [max(f.cv, _tail_cv(best, x[idx])) for f, idx in zip(fits, groups, strict=True)]
    model = cls(
        kind=best,  # type: ignore[arg-type]
        mean_ms=float(np.mean([f.mean_ms for f in fits])),
        cv=float(np.mean(cvs)),
    )
    return model, scores


def _tail_cv(dist: str, x: np.ndarray) -> float:
    """The cv at which ``dist`` has ``x``'s ratio of 99th percentile to median.

    The overhead's upper tail (a request that met a busy host) is heavier than the
    family's maximum-likelihood fit to its bulk says, and the twin is judged on
    latency quantiles: a level's cv is the larger of the two.
    """
    if x.size < 100:
        return 0.0
    q50, q99 = np.percentile(x, [50, 99])
    ratio = q99 / q50 if q50 > 0 else 1.0
    if ratio <= 1.0:
        return 0.0
    sigma = math.log(ratio) / stats.norm.ppf(0.99)
    if dist == "lognormal":
        return float(np.clip(math.sqrt(math.expm1(sigma * sigma)), *CV_BOUNDS))

    def gap(cv: float) -> float:
        k = 1.0 / (cv * cv)
        return math.log(stats.gamma.ppf(0.99, k) / stats.gamma.ppf(0.5, k)) - math.log(ratio)

    lo, hi = CV_BOUNDS
    if gap(lo) >= 0 or gap(hi) <= 0:
        return float(lo if gap(lo) >= 0 else hi)
    return float(optimize.brentq(gap, lo, hi))


# --------------------------------------------------------------------------- CPU share


def share_exponent(fits: list[VariantFit]) -> dict[tuple[str, str], float]:
    """η in mean ∝ share^(−η) per stage × variant, from fits at ≥ 2 shares (least squares).

    A single-threaded stage on a CFS quota slows down about in proportion
    (η ≈ 1); measured η says how far the testbed departs from that.
    """
    out: dict[tuple[str, str], float] = {}
    by: dict[tuple[str, str], list[VariantFit]] = {}
    for f in fits:
        by.setdefault((f.component, f.variant), []).append(f)
    for key, group in by.items():
        if len({f.cpu_share for f in group}) < 2:
            continue
        common = set.intersection(*(set(f.batches) for f in group))
        b = min(common) if common else 1
        logs = np.log([f.cpu_share for f in group])
        logm = np.log([f.service_time.batch_mean_ms(b) for f in group])
        slope = np.polyfit(logs, logm, 1)[0]
        out[key] = float(-slope)
    return out
