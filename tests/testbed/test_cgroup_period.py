"""The CFS period knob of the local backend's groups (an A/B switch; unset: 10 ms)."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed import cgroups
from testbed.backends.base import CPU_PERIOD_US


def test_the_period_is_10_ms_unless_the_switch_names_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(cgroups.PERIOD_ENV, raising=False)
    assert cgroups.period_us() == CPU_PERIOD_US == 10_000
    monkeypatch.setenv(cgroups.PERIOD_ENV, "100000")
    assert cgroups.period_us() == 100_000


@pytest.mark.parametrize("bad", ["abc", "500", "2000000", "-1"])
def test_a_period_out_of_range_is_refused_with_the_variable_named(
    monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    monkeypatch.setenv(cgroups.PERIOD_ENV, bad)
    with pytest.raises(ValueError, match=cgroups.PERIOD_ENV):
        cgroups.period_us()


@pytest.mark.skipif(not cgroups.available(), reason="needs root and cgroups")
def test_a_group_takes_the_switched_period_with_its_quota_scaled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(cgroups.PERIOD_ENV, "100000")
    cg = cgroups.Cgroup.create("pytest-cg-period", cpu_cores=0.5, ram_gb=None)
    try:
        first = Path(cg.paths[0])
        if cg.version == 2:
            assert (first / "cpu.max").read_text().split() == ["50000", "100000"]
        else:
            assert (first / "cpu.cfs_period_us").read_text().strip() == "100000"
            assert (first / "cpu.cfs_quota_us").read_text().strip() == "50000"
    finally:
        cg.remove()
