"""Fixtures shared by several packages' tests: the model zoo (built once per session or
reused), which the testbed and the calibration tests both run real stage servers on."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
# checkpoint signing keys of the test session stay out of the user's state folder
os.environ.setdefault("MLOPS_TWIN_STATE", tempfile.mkdtemp(prefix="mlops-twin-state-"))


@pytest.fixture(autouse=True)
def _no_leaked_admin_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """``guard.use_token`` puts a testbed's admin token into this process's environment
    (the services and clients it starts inherit it); one test starting a testbed must not
    close the admin routes of the in-process apps of every later test."""
    monkeypatch.delenv("MLOPS_TWIN_ADMIN_TOKEN", raising=False)


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A built model zoo: ``data/models`` when it is complete and intact, else a fresh build."""
    from testbed.zoo.build import DEFAULT_DIR, build, load_manifest, sha256_file

    with contextlib.suppress(FileNotFoundError, KeyError, OSError):
        manifest = load_manifest(DEFAULT_DIR)
        files = [e for v in manifest["models"].values() for e in v.values()]
        if files and all(sha256_file(DEFAULT_DIR / e["file"]) == e["sha256"] for e in files):
            return DEFAULT_DIR
    out = tmp_path_factory.mktemp("zoo")
    build(out)
    return out
