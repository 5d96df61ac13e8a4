"""Decision methods on a hand-made front whose answers are worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.decide import (
    choose,
    closest_to_ideal,
    normalise,
    per_criterion_optima,
    pseudo_weights,
    topsis,
    weighted_sum,
)

# Four criteria, five non-dominated points. Column ranges: 10..50, 1..9, 0..4, 1..5.
FRONT = np.array(
    [
        [10.0, 9.0, 4.0, 5.0],  # 0: fastest, worst otherwise
        [50.0, 1.0, 4.0, 5.0],  # 1: least variance
        [50.0, 9.0, 0.0, 5.0],  # 2: no overruns
        [50.0, 9.0, 4.0, 1.0],  # 3: cheapest
        [20.0, 3.0, 1.0, 2.0],  # 4: balanced (normalised 0.25, 0.25, 0.25, 0.25)
    ]
)


def test_normalise_maps_ranges_to_unit() -> None:
    Fn, varies = normalise(FRONT)
    assert varies.all()
    assert np.allclose(Fn.min(axis=0), 0) and np.allclose(Fn.max(axis=0), 1)
    assert np.allclose(Fn[4], 0.25)


def test_per_criterion_optima() -> None:
    assert per_criterion_optima(FRONT) == {
        "time_mean_s": 0,
        "time_var_s2": 1,
        "overruns": 2,
        "cost": 3,
    }


def test_closest_to_ideal_is_the_balanced_point() -> None:
    # distances: corners √3 ≈ 1.73, balanced √(4·0.0625) = 0.5
    assert closest_to_ideal(FRONT) == 4
    assert choose(FRONT, "ideal") == 4


def test_weighted_sum_follows_weights() -> None:
    assert weighted_sum(FRONT) == 4  # equal weights: 1.0 vs 3.0 for corners
    assert weighted_sum(FRONT, [0, 0, 0, 1]) == 3  # cost only
    assert weighted_sum(FRONT, [100, 1, 1, 1]) == 0  # time dominates: 3/103 < 1.0/… for 4
    assert choose(FRONT, "weights", [0, 1, 0, 0]) == 1


def test_topsis() -> None:
    # balanced: d+ = 0.5, d- = √(4·0.5625) = 1.5 → 0.75; corners: d+ = √3, d- = 1 → 0.37
    assert topsis(FRONT) == 4
    assert topsis(FRONT, [0, 0, 1, 0]) == 2


def test_pseudo_weights() -> None:
    # pseudo-weight of a corner is 1 on its own criterion; the balanced point's are all ¼
    assert pseudo_weights(FRONT, [0.25, 0.25, 0.25, 0.25]) == 4
    assert pseudo_weights(FRONT, [1, 0, 0, 0]) == 0
    assert pseudo_weights(FRONT, [0, 0, 0, 1]) == 3


def test_constant_column_is_ignored() -> None:
    F = FRONT.copy()
    F[:, 2] = 7.0  # overruns identical everywhere
    Fn, varies = normalise(F)
    assert not varies[2] and np.all(Fn[:, 2] == 0)
    assert pseudo_weights(F, [0, 0, 1, 1]) == 3  # reduces to cost only
    assert closest_to_ideal(F) == 4


def test_bad_inputs_are_explained() -> None:
    with pytest.raises(ValueError, match="4 non-negative"):
        weighted_sum(FRONT, [1, 1])
    with pytest.raises(ValueError, match="method must be"):
        choose(FRONT, "compromise")
    with pytest.raises(ValueError, match="empty"):
        normalise(np.empty((0, 4)))
