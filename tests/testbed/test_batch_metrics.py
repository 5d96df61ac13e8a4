"""Batch-updated histograms expose what prometheus-client's Histogram would."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from testbed.services.batch_metrics import BatchHistogram

BUCKETS = (0.001, 0.01, 0.1, 1.0)


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple], float]:
    """name, labels → value, without the ``_created`` series (a timestamp)."""
    out = {}
    for family in registry.collect():
        for s in family.samples:
            if not s.name.endswith("_created"):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_same_exposition_as_prometheus_histogram() -> None:
    rng = np.random.default_rng(1)
    # bucket bounds themselves are included (le is inclusive), beyond the last goes to +Inf
    values = np.concatenate([rng.exponential(0.05, 500), [0.001, 0.01, 1.0, 5.0]])
    ref_reg, new_reg = CollectorRegistry(), CollectorRegistry()
    ref = Histogram("h", "doc", ["variant"], buckets=BUCKETS, registry=ref_reg)
    new = BatchHistogram("h", "doc", ["variant"], buckets=BUCKETS, registry=new_reg)
    for v in values:
        ref.labels("a").observe(v)
    new.labels("a").observe_many(values[:300])
    for v in values[300:]:
        new.labels("a").observe(v)
    ref.labels("b").observe(0.5)
    ref.labels("b").observe(0.5)
    ref.labels("b").observe(0.5)
    new.labels("b").observe(0.5, count=3)
    got, want = samples(new_reg), samples(ref_reg)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key
    text = generate_latest(new_reg).decode()
    assert 'h_bucket{le="+Inf",variant="a"} 504.0' in text
    assert "# TYPE h histogram" in text


def test_unlabelled_and_bad_buckets() -> None:
    reg = CollectorRegistry()
    h = BatchHistogram("u", "doc", buckets=(1, 2), registry=reg)
    h.observe(1.5)
    h.observe_many(np.array([0.5, 3.0]))
    assert samples(reg)[("u_count", ())] == 3
    assert samples(reg)[("u_bucket", (("le", "1.0"),))] == 1
    with pytest.raises(ValueError, match="increasing"):
        BatchHistogram("v", "doc", buckets=(2, 1))
    with pytest.raises(ValueError, match="labels"):
        BatchHistogram("w", "doc", ["variant"]).labels()
