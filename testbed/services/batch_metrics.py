"""Prometheus histograms that take a whole batch of observations in one call.

prometheus-client's ``Histogram.observe`` takes one value per call, under a lock;
the stage server observed queue time and latency for every item, and profiling it
under load (yappi, CPU clock) put those calls first among its own (non-model)
Python functions. :class:`BatchHistogram` keeps the exposition of a
prometheus-client histogram (``<name>_bucket{le=...}``, ``_count``, ``_sum``, the
same labels) and takes a value with a count (the items of one call share their
queue time in a batch) or a whole array at once.
It is a custom collector registered in a :class:`~prometheus_client.CollectorRegistry`,
the way prometheus-client documents for metrics it does not model itself.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator, Sequence

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class HistogramChild:
    """The bucket counts and sum of one label combination."""

    def __init__(self, bounds: np.ndarray):
        self._bounds = bounds
        self._bound_list = bounds.tolist()
        # counts[k]: observations in bucket k (not cumulative); the last one is +Inf.
        # A list, not an array: adding to one element is several times cheaper.
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self._lock = threading.Lock()  # /metrics may be served from another thread

    def observe(self, value: float, count: int = 1) -> None:
        """``count`` observations of ``value`` (in the metric's unit)."""
        k = bisect.bisect_left(self._bound_list, value)  # le is inclusive, like Prometheus
        with self._lock:
            self.counts[k] += count
            self.sum += value * count

    def observe_many(self, values: np.ndarray) -> None:
        """Every element of ``values`` as one observation."""
        values = np.asarray(values, dtype=np.float64).ravel()
        if not values.size:
            return
        hits = np.bincount(
            np.searchsorted(self._bounds, values, side="left"), minlength=len(self.counts)
        )
        total = float(values.sum())
        with self._lock:
            self.counts = [c + int(h) for c, h in zip(self.counts, hits, strict=True)]
            self.sum += total

    def snapshot(self) -> tuple[np.ndarray, float]:
        """Cumulative bucket counts (last = count) and the sum."""
        with self._lock:
            return np.cumsum(self.counts), self.sum


class BatchHistogram(Collector):
    """A labelled histogram with batch updates (see module doc)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
        registry: CollectorRegistry | None = None,
    ):
        bounds = [float(b) for b in buckets if b != float("inf")]
        if bounds != sorted(bounds) or len(set(bounds)) != len(bounds):
            raise ValueError(f"buckets must be strictly increasing, got {list(buckets)}")
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._bounds = np.array(bounds, dtype=np.float64)
        self._les = [floatToGoString(b) for b in bounds] + ["+Inf"]
        self._children: dict[tuple[str, ...], HistogramChild] = {}
        self._lock = threading.Lock()
        if not self.labelnames:
            self._children[()] = HistogramChild(self._bounds)
        if registry is not None:
            registry.register(self)

    def labels(self, *values: str) -> HistogramChild:
        """The child for these label values (created on first use)."""
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            with self._lock:
                child = self._children.setdefault(key, HistogramChild(self._bounds))
        return child

    def observe(self, value: float, count: int = 1) -> None:
        """``count`` observations of ``value`` in the unlabelled histogram."""
        self.labels().observe(value, count)

    def observe_many(self, values: np.ndarray) -> None:
        """A batch of observations of the unlabelled histogram."""
        self.labels().observe_many(values)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            children = list(self._children.items())
        for key, child in children:
            cumulative, total = child.snapshot()
            buckets = [(le, float(c)) for le, c in zip(self._les, cumulative, strict=True)]
            family.add_metric(list(key), buckets, total)
        yield family
