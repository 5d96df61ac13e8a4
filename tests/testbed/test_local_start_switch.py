"""The local backend's switches for where replicas start: outside their node's quota
(the default) or inside it (the behaviour before the start cgroup), and, outside, in a
start group of their own at the lowest CPU share (the default) or in the host's reserve
(for A/B runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed import cgroups
from testbed.backends.local import (
    START_CPU_CORES,
    START_CPU_ENV,
    START_GROUP_ENV,
    START_OUTSIDE_ENV,
    LocalBackend,
    start_cpu,
    start_group,
    start_outside,
)


@pytest.mark.parametrize(
    ("value", "outside"), [(None, True), ("1", True), ("0", False), (" 0 ", False)]
)
def test_replicas_start_outside_unless_the_switch_says_0(
    monkeypatch: pytest.MonkeyPatch, value: str | None, outside: bool
) -> None:
    if value is None:
        monkeypatch.delenv(START_OUTSIDE_ENV, raising=False)
    else:
        monkeypatch.setenv(START_OUTSIDE_ENV, value)
    assert start_outside() is outside


@pytest.mark.parametrize(
    ("outside", "group", "where"),
    [
        (None, None, "idle"),
        ("1", "idle", "idle"),
        ("1", " Reserve ", "reserve"),
        ("0", "idle", "inside"),
        ("0", None, "inside"),
    ],
)
def test_replicas_start_in_the_idle_start_group_unless_switched(
    monkeypatch: pytest.MonkeyPatch, outside: str | None, group: str | None, where: str
) -> None:
    for env, value in ((START_OUTSIDE_ENV, outside), (START_GROUP_ENV, group)):
        if value is None:
            monkeypatch.delenv(env, raising=False)
        else:
            monkeypatch.setenv(env, value)
    assert start_group() == where


def test_a_bad_start_group_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(START_OUTSIDE_ENV, raising=False)
    monkeypatch.setenv(START_GROUP_ENV, "nice")
    with pytest.raises(ValueError, match=START_GROUP_ENV):
        start_group()


@pytest.mark.parametrize(
    ("value", "cores"),
    [(None, START_CPU_CORES), ("0.25", 0.25), (" None ", None), ("0", None)],
)
def test_the_start_group_is_uncapped_unless_switched(
    monkeypatch: pytest.MonkeyPatch, value: str | None, cores: float | None
) -> None:
    if value is None:
        monkeypatch.delenv(START_CPU_ENV, raising=False)
    else:
        monkeypatch.setenv(START_CPU_ENV, value)
    assert start_cpu() == cores
    assert START_CPU_CORES is None  # the cap made starts slower and no better (session 7b)


@pytest.mark.parametrize("value", ["lots", "-1", "100"])
def test_a_bad_start_cap_names_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(START_CPU_ENV, value)
    with pytest.raises(ValueError, match=START_CPU_ENV):
        start_cpu()


@pytest.mark.skipif(not cgroups.available(), reason="needs root and cgroups")
@pytest.mark.parametrize(("value", "quota_cores"), [(None, None), ("0.1", 0.1), ("none", None)])
def test_the_idle_start_group_is_capped_only_when_switched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str | None, quota_cores: float | None
) -> None:
    """The A/B knob: a quota on the start group when asked, none by default."""
    if value is None:
        monkeypatch.delenv(START_CPU_ENV, raising=False)
    else:
        monkeypatch.setenv(START_CPU_ENV, value)
    backend = LocalBackend(state_dir=tmp_path / "tb")
    platform = cgroups.Cgroup.create(f"{backend._tag()}-platform", None, None, weight=4.0)
    backend.cgroups.append(platform)
    try:
        name = backend._start_cgroup("idle", platform)
        assert name is not None
        assert _quota_cores(cgroups.Cgroup.open(name)) == quota_cores
        assert _quota_cores(platform) is None  # the reserve path stays uncapped
    finally:
        for cg in backend.cgroups:
            cg.remove()


def _quota_cores(group: cgroups.Cgroup) -> float | None:
    cpu = Path(group.paths[0])
    if group.version == 2:
        quota, period = (cpu / "cpu.max").read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    quota = int((cpu / "cpu.cfs_quota_us").read_text())
    return None if quota < 0 else quota / int((cpu / "cpu.cfs_period_us").read_text())


@pytest.mark.skipif(not cgroups.available(), reason="needs root and cgroups")
def test_the_backend_makes_an_idle_start_group_and_records_it(tmp_path: Path) -> None:
    """What ``up`` hands the node agents as ``--start-cgroup`` per switch: a group of its
    own at the lowest share (removed by ``down`` with the others), the reserve, or none."""
    backend = LocalBackend(state_dir=tmp_path / "tb")
    platform = cgroups.Cgroup.create(f"{backend._tag()}-platform", None, None, weight=4.0)
    backend.cgroups.append(platform)
    try:
        assert backend._start_cgroup("reserve", platform) == platform.name
        assert backend._start_cgroup("inside", platform) is None
        name = backend._start_cgroup("idle", platform)
        assert name is not None and name != platform.name
        group = cgroups.Cgroup.open(name)
        assert Path(group.paths[0]).is_dir()
        assert group.share() == "idle" or _weight(group) <= 2
        # recorded in the state, so `down` (even from another process) removes it
        assert name in (tmp_path / "tb" / "local.json").read_text()
        assert group in backend.cgroups
    finally:
        for cg in backend.cgroups:
            cg.remove()
    assert not any(backend._tag() in p for p in cgroups.leftovers())


def _weight(group: cgroups.Cgroup) -> int:
    cpu = Path(group.paths[0])
    f = cpu / ("cpu.weight" if group.version == 2 else "cpu.shares")
    return int(f.read_text())
