"""Service-time samplers compiled from the spec's service-time models.

A sampler maps a batch size to one service time in **seconds** at speed 1.
Random variates are drawn from the stream in blocks: one numpy call per few
thousand samples instead of one per sample, which matters at 10⁵ visits/s.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from twin.spec import (
    ConstantServiceTime,
    ExponentialServiceTime,
    GammaServiceTime,
    LognormalServiceTime,
    ServiceTime,
    TableServiceTime,
)

Sampler = Callable[[int], float]
BLOCK = 4096


class _Block:
    """Standard variates drawn ``BLOCK`` at a time from one generator."""

    __slots__ = ("_buf", "_draw", "_i")

    def __init__(self, draw: Callable[[int], np.ndarray]):
        self._draw = draw
        self._buf: list[float] = []
        self._i = 0

    def next(self) -> float:
        if self._i >= len(self._buf):
            self._buf = self._draw(BLOCK).tolist()
            self._i = 0
        v = self._buf[self._i]
        self._i += 1
        return v


def lognormal_sigma(cv: float) -> float:
    """σ of the underlying normal for a lognormal with coefficient of variation ``cv``."""
    return math.sqrt(math.log1p(cv * cv))


def make_sampler(model: ServiceTime, rng: np.random.Generator) -> Sampler:
    """A function batch size → service time (s) at speed 1, drawing from ``rng``."""
    match model:
        case ConstantServiceTime():
            base, per = model.ms / 1e3, model.per_item_ms / 1e3
            return lambda b: base + per * (b - 1)
        case ExponentialServiceTime():
            base, per = model.mean_ms / 1e3, model.per_item_ms / 1e3
            block = _Block(rng.standard_exponential)
            return lambda b: (base + per * (b - 1)) * block.next()
        case LognormalServiceTime():
            base, per = model.mean_ms / 1e3, model.per_item_ms / 1e3
            if model.cv == 0:
                return lambda b: base + per * (b - 1)
            s = lognormal_sigma(model.cv)
            block = _Block(lambda n: np.exp(s * rng.standard_normal(n) - s * s / 2))
            return lambda b: (base + per * (b - 1)) * block.next()
        case GammaServiceTime():
            base, per = model.mean_ms / 1e3, model.per_item_ms / 1e3
            if model.cv == 0:
                return lambda b: base + per * (b - 1)
            k = 1.0 / (model.cv * model.cv)
            block = _Block(lambda n: rng.standard_gamma(k, n) / k)
            return lambda b: (base + per * (b - 1)) * block.next()
        case TableServiceTime():
            return _table_sampler(model, rng)
    raise TypeError(f"unknown service-time model {model!r}")


def _table_sampler(model: TableServiceTime, rng: np.random.Generator) -> Sampler:
    cache: dict[int, tuple[float, float]] = {}
    normal = _Block(rng.standard_normal)

    def params(b: int) -> tuple[float, float]:
        if b not in cache:
            cache[b] = (model.batch_mean_ms(b) / 1e3, model.batch_cv(b))
        return cache[b]

    if model.dist == "constant":
        return lambda b: params(b)[0]
    if model.dist == "lognormal":

        def lognormal(b: int) -> float:
            mean, cv = params(b)
            if cv == 0:
                return mean
            s = lognormal_sigma(cv)
            return mean * math.exp(s * normal.next() - s * s / 2)

        return lognormal

    def gamma(b: int) -> float:
        mean, cv = params(b)
        if cv == 0:
            return mean
        k = 1.0 / (cv * cv)
        return mean * float(rng.standard_gamma(k)) / k

    return gamma
