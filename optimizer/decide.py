"""Choosing one allocation from a Pareto front (all criteria minimised).

Every method works on the front's criteria normalised to [0, 1] per column
(ideal → 0, nadir → 1), so seconds², counts and currency are comparable,
as the optimizer concept prescribes. A column that does not vary on the
front carries no preference information and is ignored.

Methods: per-criterion optima, the point closest to the ideal point
(Euclidean), TOPSIS, a weighted sum with user weights, and pymoo's
pseudo-weights. (pymoo's ``CompromiseProgramming`` returns None in current
releases, so it is not used.)
"""

from __future__ import annotations

import numpy as np
from pymoo.mcdm.pseudo_weights import PseudoWeights

from twin.criteria import CRITERIA

METHODS = ("ideal", "topsis", "weights", "pseudo")


def normalise(F: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Front → [0, 1] per column, and a mask of the columns that vary."""
    F = np.atleast_2d(np.asarray(F, dtype=float))
    if F.size == 0:
        raise ValueError("the front is empty: nothing to choose from")
    lo, hi = F.min(axis=0), F.max(axis=0)
    varies = hi - lo > 1e-12 * np.maximum(1.0, np.abs(hi))
    span = np.where(varies, hi - lo, 1.0)
    return np.where(varies, (F - lo) / span, 0.0), varies


def _weights(weights: np.ndarray | list[float] | None, m: int) -> np.ndarray:
    w = np.ones(m) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != (m,) or np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(
            f"weights must be {m} non-negative numbers, not all zero (one per criterion: "
            f"{', '.join(CRITERIA[:m])}); got {weights}"
        )
    return w / w.sum()


def per_criterion_optima(F: np.ndarray) -> dict[str, int]:
    """Index of the best point for each criterion; ties go to the best on the others."""
    Fn, _ = normalise(F)
    out = {}
    for c in range(Fn.shape[1]):
        best = np.flatnonzero(Fn[:, c] <= Fn[:, c].min() + 1e-12)
        out[CRITERIA[c] if c < len(CRITERIA) else str(c)] = int(
            best[np.argmin(Fn[best].sum(axis=1))]
        )
    return out


def closest_to_ideal(F: np.ndarray, weights: np.ndarray | list[float] | None = None) -> int:
    """Index of the point nearest the ideal point (Euclidean on normalised criteria)."""
    Fn, varies = normalise(F)
    w = _weights(weights, Fn.shape[1]) * varies
    return int(np.argmin(np.sqrt(((Fn**2) * w).sum(axis=1))))


def topsis(F: np.ndarray, weights: np.ndarray | list[float] | None = None) -> int:
    """Index of the TOPSIS choice: closest to ideal relative to the anti-ideal.

    Closeness = d⁻ / (d⁺ + d⁻) with d⁺, d⁻ the weighted Euclidean distances
    to the best and worst value of each criterion; the largest wins.
    """
    Fn, varies = normalise(F)
    w = _weights(weights, Fn.shape[1]) * varies
    d_best = np.sqrt((w * Fn**2).sum(axis=1))
    d_worst = np.sqrt((w * (1.0 - Fn) ** 2).sum(axis=1))
    total = d_best + d_worst
    closeness = np.divide(d_worst, total, out=np.ones_like(total), where=total > 0)
    return int(np.argmax(closeness))


def weighted_sum(F: np.ndarray, weights: np.ndarray | list[float] | None = None) -> int:
    """Index of the point with the smallest weighted sum of normalised criteria."""
    Fn, _ = normalise(F)
    w = _weights(weights, Fn.shape[1])
    return int(np.argmin(Fn @ w))


def pseudo_weights(F: np.ndarray, weights: np.ndarray | list[float] | None = None) -> int:
    """Index chosen by pymoo's PseudoWeights (the point whose pseudo-weights match ``weights``)."""
    Fn, varies = normalise(F)
    w = _weights(weights, Fn.shape[1])
    if len(Fn) == 1 or not varies.any():
        return 0
    # PseudoWeights divides by each column's range (drop the constant ones) and
    # by each point's distance to the nadir (a point at the nadir has none:
    # its pseudo-weights are 0/0, so it cannot be matched and is left out).
    sub = w[varies] / w[varies].sum()
    G = Fn[:, varies]
    rows = np.flatnonzero((1.0 - G).sum(axis=1) > 1e-12)
    index = PseudoWeights(sub).do(G[rows])
    if index is None:
        raise RuntimeError("pymoo PseudoWeights returned no choice")
    return int(rows[int(np.asarray(index).ravel()[0])])


def choose(F: np.ndarray, method: str = "ideal", weights: list[float] | None = None) -> int:
    """Index of the chosen point by ``method`` (one of ``METHODS``)."""
    if method == "ideal":
        return closest_to_ideal(F, weights)
    if method == "topsis":
        return topsis(F, weights)
    if method == "weights":
        return weighted_sum(F, weights)
    if method == "pseudo":
        return pseudo_weights(F, weights)
    raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
