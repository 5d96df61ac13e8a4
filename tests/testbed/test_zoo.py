"""Model zoo pieces that need no training: shapes, cost spans, service-time fit, noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from testbed.zoo.build import fit_service_time
from testbed.zoo.data import add_noise
from testbed.zoo.manifest import pipeline_key
from testbed.zoo.models import DIMS, REFERENCE, STAGES, VARIANTS, count_macs


def test_variants_chain_and_span_cost() -> None:
    x = torch.rand(3, DIMS["denoise"][0]) * 16
    for stage in STAGES:
        outs = []
        macs = []
        for make in VARIANTS[stage].values():
            m = make().eval()
            with torch.no_grad():
                outs.append(m(x))
            macs.append(count_macs(m, DIMS[stage][0]))
        assert all(o.shape == (3, DIMS[stage][1]) for o in outs)
        assert max(macs) >= 5 * min(macs), (
            f"{stage} variants span only {max(macs) / min(macs):.1f}×"
        )
        assert macs == sorted(macs), "variants are listed from cheapest to costliest"
        x = outs[-1]
    assert list(REFERENCE.values()) == [list(v)[-1] for v in VARIANTS.values()]


def test_fit_service_time_recovers_a_line() -> None:
    lat = {b: {"median_ms": 0.5 + 0.25 * (b - 1), "cv": 0.1} for b in (1, 2, 4, 8, 16, 32)}
    st = fit_service_time(lat)
    assert st["mean_ms"] == pytest.approx(0.5)
    assert st["per_item_ms"] == pytest.approx(0.25)
    assert st["cv"] == pytest.approx(0.1)


def test_noise_is_seeded_and_bounded() -> None:
    img = np.full((5, 64), 8.0, dtype=np.float32)
    a = add_noise(img, np.random.default_rng(1))
    b = add_noise(img, np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    assert a.min() >= 0 and a.max() <= 16
    assert (a.reshape(5, 8, 8) == 0).sum() >= 5 * 9  # one zeroed 3×3 patch per image


def test_pipeline_key_order() -> None:
    assert pipeline_key({"classifier": "c", "denoise": "d", "encoder": "e"}) == "d/e/c"
