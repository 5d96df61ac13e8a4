"""Backends that start emulated servers: ``local`` (processes + cgroups) and ``compose``."""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import subprocess
from pathlib import Path

from testbed.backends.base import DEFAULT_STATE_DIR, Backend, BackendUnavailable

BACKENDS = {"local": "testbed.backends.local", "compose": "testbed.backends.compose"}


def docker_answers(timeout_s: float = 5.0) -> bool:
    """True when a Docker engine answers ``docker info``."""
    if shutil.which("docker") is None:
        return False
    try:
        done = subprocess.run(
            ["docker", "info"], capture_output=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def get_backend(name: str = "auto", state_dir: Path = DEFAULT_STATE_DIR) -> Backend:
    """The backend called ``name`` (auto: compose when Docker answers, else local)."""
    if name == "auto":
        name = "compose" if docker_answers() and _has_module(BACKENDS["compose"]) else "local"
    if name not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {name!r} (choose auto, local or compose)")
    try:
        module = importlib.import_module(BACKENDS[name])
    except ModuleNotFoundError as e:
        if e.name == BACKENDS[name]:
            raise BackendUnavailable(
                f"the {name} backend is not installed in this checkout ({BACKENDS[name]} "
                "is missing); use --backend local"
            ) from e
        raise
    cls = getattr(module, "BACKEND", None)
    if cls is None:
        raise BackendUnavailable(f"{BACKENDS[name]} defines no BACKEND class")
    return cls(state_dir=state_dir)


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


__all__ = ["BACKENDS", "Backend", "BackendUnavailable", "docker_answers", "get_backend"]
