"""Run folders appear whole or not at all; a failed long run can keep what it measured."""

from __future__ import annotations

import pytest

from twin.runs import atomic_dir


def test_atomic_dir_replaces_the_folder_only_on_success(tmp_path):
    target = tmp_path / "run"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("first")
    assert (target / "a.txt").read_text() == "first"
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("second")
        raise RuntimeError("report failed")
    assert (target / "a.txt").read_text() == "first"  # the old run is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing half-written left


def test_keep_failed_keeps_the_measurements_beside_the_run(tmp_path):
    target = tmp_path / "run"
    for text in ("old", "new"):
        with pytest.raises(KeyError), atomic_dir(target, keep_failed=True) as tmp:
            (tmp / "criteria.csv").write_text(text)
            raise KeyError("time_mean_s")
    assert (tmp_path / "run.failed" / "criteria.csv").read_text() == "new"
    assert not target.exists()
    # an empty folder is not worth keeping
    with pytest.raises(KeyError), atomic_dir(tmp_path / "empty", keep_failed=True):
        raise KeyError("x")
    assert not (tmp_path / "empty.failed").exists()
