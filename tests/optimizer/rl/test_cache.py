"""The policy cache's key: trace files by content, old (path-holding) keys re-keyed."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from optimizer.rl.cache import (
    REKEYED,
    TrainSettings,
    find_policy,
    legacy_policy_key,
    policy_key,
)
from optimizer.rl.charged import TestbedCharges
from twin.load import load_scenario

ROOT = Path(__file__).resolve().parents[3]
# the view PPO's key under the old scheme, cached in the checkout /work/wt/rl
# (runs/rl-policies/digits-pipeline-testbed-x0p25-load1p4-781c2c647d0f) ...
OLD_VIEW_KEY = "781c2c647d0f"
OLD_CHECKOUT = Path("/work/wt/rl")
# ... and the same policy's key now, wherever the checkout lives
NEW_VIEW_KEY = "a0d6ef3887d8"
WORKLOADS = ("steady-low", "fluctuating", "steady-high")


def _view(root: Path):  # type: ignore[no-untyped-def]
    from lab.control_view import testbed_view

    return testbed_view(
        load_scenario(root / "examples" / "digits-pipeline.yaml"), 0.25, rate_scale=1.4
    )


def _checkout(where: Path) -> Path:
    """A second checkout's examples (the scenario and its trace) at ``where``."""
    shutil.copytree(ROOT / "examples", where / "examples")
    return where


def test_two_checkouts_give_one_key(tmp_path):
    a, b = _view(ROOT), _view(_checkout(tmp_path / "elsewhere"))
    ws_a = [a.workload(n) for n in WORKLOADS]
    ws_b = [b.workload(n) for n in WORKLOADS]
    assert a.workload("trace").path != b.workload("trace").path  # absolute, as loaded
    assert policy_key(a, "digits", ws_a, TrainSettings()) == policy_key(
        b, "digits", ws_b, TrainSettings()
    )
    # the old key held the path, so the two checkouts missed each other's cache
    assert legacy_policy_key(a, "digits", ws_a, TrainSettings()) != legacy_policy_key(
        b, "digits", ws_b, TrainSettings()
    )
    assert policy_key(a, "digits", ws_a, TrainSettings()) == NEW_VIEW_KEY


def test_another_trace_gives_another_key(tmp_path):
    where = _checkout(tmp_path / "edited")
    trace = where / "examples" / "traces" / "sample.csv"
    trace.write_text(trace.read_text().replace("\n0,12.62\n", "\n0,13.0\n", 1))
    assert "0,13.0" in trace.read_text()
    a, b = _view(ROOT), _view(where)
    ws = [a.workload(n) for n in WORKLOADS]
    assert policy_key(a, "digits", ws, TrainSettings()) != policy_key(
        b, "digits", [b.workload(n) for n in WORKLOADS], TrainSettings()
    )


def test_the_old_key_is_reproduced_for_the_checkout_it_was_cached_in():
    view = _view(ROOT)
    ws = [view.workload(n) for n in WORKLOADS]
    moved = (ROOT, OLD_CHECKOUT)
    assert legacy_policy_key(view, "digits", ws, TrainSettings(), moved=moved) == OLD_VIEW_KEY


def _cache_policy(cache: Path, name: str, tag: str) -> Path:
    folder = cache / name
    folder.mkdir(parents=True)
    (folder / "policy.zip").write_text(tag)
    return folder


def test_a_policy_under_the_old_key_is_found_and_re_keyed(tmp_path):
    view = _view(ROOT)
    ws = [view.workload(n) for n in WORKLOADS]
    cache = tmp_path / "cache"
    old = f"{view.name}-{OLD_VIEW_KEY}"
    _cache_policy(cache, old, "view")
    settings = TrainSettings()
    if ROOT != OLD_CHECKOUT:  # the old key names the old checkout's path: found there
        assert find_policy(view, "digits", ws, settings, cache) is None
    found = find_policy(view, "digits", ws, settings, cache, moved_from=(OLD_CHECKOUT,))
    assert found == cache / f"{view.name}-{NEW_VIEW_KEY}"
    assert (found / "policy.zip").read_text() == "view" and not (cache / old).exists()
    assert json.loads((found / REKEYED).read_text()) == {"legacy": old}
    # from now on it is found by its new key alone
    assert find_policy(view, "digits", ws, settings, cache) == found


def test_a_policy_trained_from_a_re_keyed_one_is_found_under_its_old_key(tmp_path):
    """The charged policy's key names the policy it started from: its old key held the
    view policy's old folder name, which the re-keyed folder remembers."""
    view = _view(ROOT)
    ws = [view.workload(n) for n in WORKLOADS]
    cache = tmp_path / "cache"
    _cache_policy(cache, f"{view.name}-{OLD_VIEW_KEY}", "view")
    start = find_policy(view, "digits", ws, TrainSettings(), cache, moved_from=(OLD_CHECKOUT,))
    assert start is not None
    charged = replace(
        TrainSettings(),
        backend="charged",
        charges=TestbedCharges(),
        init_policy=start.name,
        reward_scale=50.0,
    )
    old_charged = legacy_policy_key(view, "digits", ws, charged, cache, moved=(ROOT, OLD_CHECKOUT))
    _cache_policy(cache, f"{view.name}-{old_charged}", "charged")
    found = find_policy(view, "digits", ws, charged, cache, moved_from=(OLD_CHECKOUT,))
    assert found == cache / f"{view.name}-{policy_key(view, 'digits', ws, charged)}"
    assert (found / "policy.zip").read_text() == "charged"


@pytest.mark.parametrize("moved_from", [(), (OLD_CHECKOUT,)])
def test_nothing_cached_is_none(tmp_path, moved_from):
    view = _view(ROOT)
    ws = [view.workload(n) for n in WORKLOADS]
    assert find_policy(view, "digits", ws, TrainSettings(), tmp_path, moved_from) is None
