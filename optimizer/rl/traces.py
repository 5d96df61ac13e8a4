"""Load traces for training and testing the load predictor.

A trace is a per-second series of observed arrivals (requests/s): the
workload's rate curve (``twin.workload.rate_at``, the same curve the twin and
Locust follow) with Poisson counts drawn around it, which is what a monitor
that counts requests per second sees. Generated traces cover the three
workload kinds of the paper — steady, fluctuating (sine + noise + bursts) and
step — at random levels; the repository's sample trace is added as a fourth
kind.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from twin.spec import Burst, FluctuatingWorkload, SteadyWorkload, StepWorkload, Workload
from twin.workload import rate_series, read_trace

KINDS = ("steady", "fluctuating", "step")


def random_workload(kind: str, rng: np.random.Generator, horizon_s: float) -> Workload:
    """A workload of ``kind`` with random levels between ~5 and ~200 req/s."""
    if kind == "steady":
        return SteadyWorkload(kind="steady", name="gen", rate_per_s=float(rng.uniform(5, 150)))
    if kind == "fluctuating":
        base = float(rng.uniform(15, 120))
        bursts = [
            Burst(
                at_s=float(rng.uniform(0, horizon_s)),
                duration_s=float(rng.uniform(5, 60)),
                extra_per_s=float(rng.uniform(-0.5, 1.0) * base),
            )
            for _ in range(int(rng.integers(0, 5)))
        ]
        return FluctuatingWorkload(
            kind="fluctuating",
            name="gen",
            base_per_s=base,
            amplitude_per_s=float(rng.uniform(0.1, 0.9) * base),
            period_s=float(rng.uniform(60, 900)),
            noise_sd_per_s=float(rng.uniform(0, 0.1) * base),
            bursts=bursts,
            seed=int(rng.integers(1 << 30)),
        )
    if kind == "step":
        n = int(rng.integers(2, 8))
        return StepWorkload(
            kind="step",
            name="gen",
            levels_per_s=[float(x) for x in rng.uniform(5, 150, size=n)],
            step_s=float(rng.uniform(60, 400)),
        )
    raise ValueError(f"unknown workload kind {kind!r} (kinds: {', '.join(KINDS)})")


def observed(rates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-second Poisson counts around a rate curve (requests/s)."""
    return rng.poisson(np.clip(rates, 0, None)).astype(float)


def generate(n_per_kind: int, horizon_s: float, seed: int) -> list[tuple[str, np.ndarray]]:
    """``n_per_kind`` observed traces of each kind, each ``horizon_s`` seconds long."""
    rng = np.random.default_rng(seed)
    out = []
    for kind in KINDS:
        for _ in range(n_per_kind):
            w = random_workload(kind, rng, horizon_s)
            out.append((kind, observed(rate_series(w, horizon_s), rng)))
    return out


def sample_trace(path: str | Path, seed: int, scale: float = 1.0) -> np.ndarray:
    """Observed counts around a CSV rate trace (``rate_per_s`` column) times ``scale``."""
    rates = read_trace(str(path)) * scale
    return observed(rates, np.random.default_rng(seed))
