"""Which of two deployments is lower on a criterion, from a few paired runs.

The deploy-back's criteria come from a handful of executions per run: a run's
variance of process time is the variance of five numbers, whose estimate is
heavy-tailed (one execution slowed by the host makes a run's variance several
times its usual). A paired Student-t interval over few pairs is then set by the
one noisy pair: its sd swamps a difference of the same sign in every pair. So the
decision rule is a rank test, which weighs each pair by the rank of its
difference, not its size: the **Wilcoxon signed-rank test** (two-sided, 5 %),
with the direction of its Hodges–Lehmann estimate (the median of the pairs'
Walsh averages) and the deploy-back's tie margin on that estimate. The t
interval and the sign test (the count of pairs of each sign, binomial) are kept
beside it for the report: the sign test assumes no symmetry but needs six pairs
of one sign for 5 %, the t interval assumes normal differences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95  # of the t interval; the tests decide at 1 − LEVEL


@dataclass(frozen=True)
class PairedTest:
    """``first − second`` over paired runs, with three views of whether it is not 0."""

    mean: float
    half_width: float  # of the Student-t interval; NaN with fewer than two pairs
    n: int  # pairs with a finite difference
    hodges_lehmann: float  # median of the Walsh averages (d_i + d_j) / 2, i ≤ j
    p_wilcoxon: float  # two-sided; 1.0 when every difference is 0, NaN without pairs
    p_sign: float  # two-sided binomial test of the non-zero differences' signs
    positive: int  # pairs with first > second
    negative: int  # pairs with first < second
    margin: float = 0.0  # |Hodges–Lehmann| at or below this is a tie however sure

    @property
    def order(self) -> int:
        """The decision rule: +1 first higher, −1 first lower, 0 undecided (Wilcoxon
        p ≥ 5 %, or the Hodges–Lehmann estimate within the tie margin or 0)."""
        if not self.p_wilcoxon < 1.0 - LEVEL:
            return 0
        if not math.isfinite(self.hodges_lehmann) or abs(self.hodges_lehmann) <= self.margin:
            return 0
        return int(np.sign(self.hodges_lehmann))

    def text(self, fmt: str = ".3g") -> str:
        """``mean ± half-width (Wilcoxon p, sign-test p; signs +/−)``."""
        core = f"{self.mean:+{fmt}}"
        if math.isfinite(self.half_width):
            core += f" ± {self.half_width:{fmt}}"
        if self.n < 2:
            return core
        p = f"W p={self.p_wilcoxon:.2g}, sign p={self.p_sign:.2g}"
        return f"{core} ({p}; {self.positive}+/{self.negative}−)"


def paired_test(
    first: np.ndarray, second: np.ndarray, tie_within: float = 0.0, level: float = LEVEL
) -> PairedTest:
    """:class:`PairedTest` of ``first[i] − second[i]``; pairs where either is NaN are
    left out. ``tie_within``: the tie margin as a share of ``second``'s mean.

    The Wilcoxon test is scipy's (exact distribution without zero or tied
    differences, else the normal approximation; zero differences are dropped as
    Wilcoxon did, so a pair that ties says nothing either way).
    """
    from scipy import stats

    a, b = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    keep = np.isfinite(a) & np.isfinite(b)
    d = a[keep] - b[keep]
    n = len(d)
    if n == 0:
        nan = math.nan
        return PairedTest(nan, nan, 0, nan, nan, nan, 0, 0)
    margin = tie_within * abs(float(b[keep].mean()))
    pos, neg = int((d > 0).sum()), int((d < 0).sum())
    walsh = (d[:, None] + d[None, :])[np.triu_indices(n)] / 2.0
    hl = float(np.median(walsh))
    hw = math.nan
    if n > 1:
        hw = float(stats.t.ppf(0.5 + level / 2, n - 1) * d.std(ddof=1) / math.sqrt(n))
    if pos + neg == 0:
        p_w = p_s = 1.0
    else:
        p_w = float(stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)
        p_s = float(stats.binomtest(pos, pos + neg, 0.5).pvalue)
    return PairedTest(float(d.mean()), hw, n, hl, p_w, p_s, pos, neg, margin)


def agreement(twin: PairedTest, testbed: PairedTest) -> str:
    """``agree``, ``disagree`` or ``undecided``: the twin's order against the testbed's,
    each by :attr:`PairedTest.order`. A testbed order the twin reverses or leaves
    undecided disagrees; an undecided testbed is undecided whatever the twin says
    (there is nothing to check it against), and so is a criterion 0 on both sides."""
    if testbed.mean == 0 and twin.mean == 0:
        return "undecided"
    if testbed.order == 0:
        return "undecided"
    return "agree" if twin.order == testbed.order else "disagree"
