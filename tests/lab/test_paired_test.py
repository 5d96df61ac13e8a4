"""The deploy-back's decision rule over few paired runs (lab.paired_test)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from lab.paired_test import agreement, paired_test


def test_one_noisy_pair_widens_the_t_interval_but_not_the_rank_test() -> None:
    # six pairs, every one lower by about 1, one of them by 30 (a noisy run's variance)
    d = np.array([-1.0, -1.2, -0.8, -1.1, -0.9, -30.0])
    t = paired_test(d, np.zeros(6))
    assert t.mean == pytest.approx(d.mean())
    hw = stats.t.ppf(0.975, 5) * d.std(ddof=1) / math.sqrt(6)
    assert t.half_width == pytest.approx(hw)
    assert abs(t.mean) < t.half_width  # the t interval holds 0 …
    # … the exact signed-rank test does not: all six ranks on one side, p = 2 / 2^6
    assert t.p_wilcoxon == pytest.approx(2 / 64)
    assert t.p_sign == pytest.approx(2 / 64)
    assert (t.positive, t.negative) == (0, 6)
    # Hodges–Lehmann: the median of the 21 Walsh averages
    walsh = [(d[i] + d[j]) / 2 for i in range(6) for j in range(i, 6)]
    assert t.hodges_lehmann == pytest.approx(float(np.median(walsh)))
    assert t.order == -1


def test_a_pair_of_the_other_sign_leaves_six_pairs_undecided() -> None:
    # five lower, the smallest difference higher: W+ = 1, p = 2 · 2 / 64 = 0.0625
    d = np.array([-2.0, -3.0, -4.0, -5.0, -6.0, 1.0])
    t = paired_test(d, np.zeros(6))
    assert t.p_wilcoxon == pytest.approx(4 / 64)
    assert t.p_sign == pytest.approx(2 * 7 / 64)  # P(≤ 1 of 6) both ways
    assert t.order == 0
    # nine pairs of one sign: p = 2 / 2^9
    assert paired_test(-np.arange(1.0, 10.0), np.zeros(9)).p_wilcoxon == pytest.approx(2 / 512)


def test_ties_margins_and_missing_pairs() -> None:
    # three pairs can never reach 5 % (p ≥ 2 / 8): undecided however large
    assert paired_test(np.array([10.0, 11, 12]), np.zeros(3)).order == 0
    # all zero: nothing to decide
    z = paired_test(np.ones(5), np.ones(5))
    assert (z.p_wilcoxon, z.order) == (1.0, 0)
    # a sure difference within the tie margin (5 % of the second's mean) is a tie
    second = np.full(8, 100.0)
    first = second + np.array([1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5])
    assert paired_test(first, second).order == 1
    assert paired_test(first, second, tie_within=0.05).order == 0
    # a pair where either side is missing is left out
    t = paired_test(np.array([1.0, np.nan, 3.0]), np.array([0.0, 0.0, np.nan]))
    assert t.n == 1 and math.isnan(t.half_width)


def test_the_twin_agrees_only_where_the_testbed_decides() -> None:
    lower = paired_test(-np.arange(1.0, 10.0), np.zeros(9))
    higher = paired_test(np.arange(1.0, 10.0), np.zeros(9))
    undecided = paired_test(np.array([-1.0, 1.0, -2.0, 2.0]), np.zeros(4))
    assert agreement(lower, lower) == "agree"
    assert agreement(higher, lower) == "disagree"
    assert agreement(undecided, lower) == "disagree"  # the twin misses an order
    assert agreement(lower, undecided) == "undecided"  # nothing to check it against
    assert agreement(undecided, undecided) == "undecided"  # a tie in both is no agreement
