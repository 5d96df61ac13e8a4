"""The IPA video example follows the rules its header states (cores, capacity, workloads)."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.rl.space import ConfigSpace, Option
from twin.deployment import check
from twin.load import load_scenario
from twin.workload import rate_series

from .conftest import EXAMPLES

IPA_CPU_REQUESTS = (1, 2, 4, 8)  # IPA's profiled cpu_request values
BASE_RPS = 4.0  # IPA video-1.yaml `threshold`: the base allocation must carry this at batch 1


@pytest.fixture(scope="module")
def video():
    return load_scenario(EXAMPLES / "pipelines" / "ipa-video.yaml")


def _capacity(space: ConfigSpace, stage: int, option: Option) -> float:
    """f · b / t(b) in req/s (the analytic model's capacity at cpu_speed 1)."""
    st = space.stages[stage].variants[option.variant].service_time
    return option.replicas * option.batch / (st.batch_mean_ms(option.batch) / 1e3)


def _k_max(space: ConfigSpace) -> float:
    """Largest pipeline throughput with the cheapest variant everywhere (req/s)."""
    per_stage = []
    for k, s in enumerate(space.stages):
        cheapest = min(range(len(s.variants)), key=lambda i, s=s: s.variants[i].cpu_cores)
        per_stage.append(
            max(_capacity(space, k, Option(cheapest, f, b)) for f in s.replicas for b in s.batches)
        )
    return min(per_stage)


def test_space_shape_and_accuracy_order(video):
    space = ConfigSpace(video, "pipeline")
    assert space.n_stages == 2 and space.budget == 10
    for s in space.stages:
        assert len(s.variants) == 5 and s.batches == (1, 2, 4, 8)
        acc = [v.accuracy for v in s.variants]
        assert acc == sorted(acc) and len(set(acc)) == 5  # bigger model, higher accuracy


def test_cores_per_variant_are_ipas_base_allocation(video):
    """w is the smallest profiled cpu_request whose batch-1 throughput reaches 4 req/s,
    with the one-core time t1 = w · mean_ms (time scales as 1/w)."""
    for c in video.components:
        for v in c.variants:
            t1_s = v.cpu_cores * v.service_time.batch_mean_ms(1) / 1e3
            expect = next(w for w in IPA_CPU_REQUESTS if w / t1_s >= BASE_RPS)
            assert v.cpu_cores == expect, (c.name, v.name)


def test_steady_high_needs_most_of_the_cheapest_capacity(video):
    space = ConfigSpace(video, "pipeline")
    k_max = _k_max(space)
    high = video.workload("steady-high").rate_per_s
    assert high == pytest.approx(0.9 * k_max, rel=0.01)
    # No other variant of the bottleneck stage can carry it within the replica cap.
    det = space.stages[0]
    for i in range(1, len(det.variants)):
        best = max(_capacity(space, 0, Option(i, f, b)) for f in det.replicas for b in det.batches)
        assert best < high, det.variants[i].name


def test_cheapest_configuration_at_full_scale_fits(video):
    space = ConfigSpace(video, "pipeline")
    options = [Option(0, s.replicas[-1], s.batches[-1]) for s in space.stages]
    assert space.fits(options)
    assert check(video, space.deployment(options)) == []


def test_workloads_are_chain3x3_scaled_by_one_factor(video, chain):
    factor = video.workload("steady-high").rate_per_s / chain.workload("steady-high").rate_per_s
    for name in ("steady-low", "fluctuating"):
        ours = rate_series(video.workload(name), 1200.0)
        theirs = rate_series(chain.workload(name), 1200.0)
        np.testing.assert_allclose(ours, theirs * factor, rtol=0.02, atol=0.15)
