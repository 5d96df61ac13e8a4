"""Fitting emulated servers onto the host: one factor, refusals with reasons."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.capacity import MIN_QUOTA_CORES, Oversubscribed, plan_capacity
from twin.load import load_scenario

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def digits():  # type: ignore[no-untyped-def]
    return load_scenario(EXAMPLES / "digits-pipeline.yaml")


def test_factor_fits_host_minus_reserve(digits) -> None:  # type: ignore[no-untyped-def]
    cap = plan_capacity(digits, host_cores=2, reserve_cores=0.5)
    total_spec = sum(s.cpu_cores * s.cpu_speed * s.count for s in digits.servers)
    assert cap.factor == pytest.approx(1.5 / total_spec)
    assert sum(n.cpu_cores for n in cap.nodes) == pytest.approx(1.5)
    assert [n.name for n in cap.nodes] == digits.server_instances()
    assert all(n.ram_gb == digits.servers[0].ram_gb for n in cap.nodes)


def test_never_scales_up(digits) -> None:  # type: ignore[no-untyped-def]
    assert plan_capacity(digits, host_cores=64, reserve_cores=1).factor == 1.0


def test_explicit_oversubscription_is_refused(digits) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Oversubscribed, match=r"oversubscribed.*use a factor"):
        plan_capacity(digits, host_cores=2, reserve_cores=0.5, factor=0.5)
    ok = plan_capacity(digits, host_cores=2, reserve_cores=0.5, factor=0.2)
    assert ok.factor == 0.2


def test_no_room_and_tiny_quota_are_refused(digits) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Oversubscribed, match="no CPU left"):
        plan_capacity(digits, host_cores=1, reserve_cores=1)
    small = digits.model_copy(
        update={"servers": [digits.servers[0].model_copy(update={"count": 40})]}
    )
    with pytest.raises(Oversubscribed, match=f"smallest quota of {MIN_QUOTA_CORES:g}"):
        plan_capacity(small, host_cores=2, reserve_cores=0.5)
