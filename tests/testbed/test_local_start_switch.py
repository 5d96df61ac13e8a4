"""The local backend's switch between starting replicas outside their node's quota
(the default) and inside it (the behaviour before the start cgroup, for A/B runs)."""

from __future__ import annotations

import pytest

from testbed.backends.local import START_OUTSIDE_ENV, start_outside


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
