"""The pymoo problem: allocation vectors in, four normalised criteria out.

Objectives are the twin's placement criteria (mean process time, its
variance, deadline overruns, cost), all minimised. They live on very
different scales (seconds², counts, currency), so selection sees them
normalised: ``(F − lo) / (hi − lo)`` with ``lo``/``hi`` the per-criterion
minimum and maximum of the first evaluated batch (the initial population).
The scale is fixed after that batch, so it is part of the checkpoint and a
resumed run normalises exactly as an uninterrupted one.
"""

from __future__ import annotations

import numpy as np
from pymoo.core.problem import Problem

from optimizer.evaluation import Evaluator
from twin.criteria import CRITERIA


class Normaliser:
    """Affine map of raw criteria to roughly [0, 1]; zero ranges map to unit scale."""

    def __init__(self, lo: np.ndarray, hi: np.ndarray) -> None:
        self.lo = np.asarray(lo, dtype=float)
        span = np.asarray(hi, dtype=float) - self.lo
        # A criterion that does not vary yet (e.g. no overruns) keeps its raw
        # unit rather than dividing by zero.
        self.span = np.where(span > 1e-12, span, 1.0)

    @classmethod
    def fit(cls, F: np.ndarray) -> Normaliser:
        """From the per-column minimum and maximum of ``F``."""
        F = np.atleast_2d(F)
        return cls(F.min(axis=0), F.max(axis=0))

    def __call__(self, F: np.ndarray) -> np.ndarray:
        return (np.asarray(F, dtype=float) - self.lo) / self.span


class PlacementProblem(Problem):
    """Minimise the four placement criteria over feasible allocation matrices."""

    def __init__(self, evaluator: Evaluator, normaliser: Normaliser | None = None) -> None:
        genome = evaluator.genome
        xl, xu = genome.bounds()
        super().__init__(n_var=genome.n_var, n_obj=len(CRITERIA), xl=xl, xu=xu, vtype=int)
        self.evaluator = evaluator
        self.genome = genome
        self.normaliser = normaliser

    def _evaluate(self, X: np.ndarray, out: dict, *args, **kwargs) -> None:
        # Raw criteria and CIs stay in the evaluator's cache, keyed by matrix.
        F, _ = self.evaluator.evaluate(X)
        if self.normaliser is None:
            self.normaliser = Normaliser.fit(F)
        out["F"] = self.normaliser(F)
