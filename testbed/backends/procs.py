"""Spawning and stopping the local backend's processes, safe against PID reuse."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from testbed.backends.base import service_env


@dataclass(frozen=True)
class ProcRecord:
    """A process we started: enough to find it again in a later CLI call."""

    name: str
    pid: int
    create_time: float
    argv: tuple[str, ...]

    def process(self) -> psutil.Process | None:
        """The live process, or None when it is gone (or the PID now belongs to another)."""
        try:
            p = psutil.Process(self.pid)
            if abs(p.create_time() - self.create_time) > 0.5 or p.status() == "zombie":
                return None
            return p
        except psutil.Error:
            return None

    def to_dict(self) -> dict:
        return asdict(self)


def spawn(
    name: str, argv: list[str], log_path: Path, cgroup_procs: list[str] = ()
) -> tuple[ProcRecord, subprocess.Popen]:
    """Start ``argv`` in its own session, logging to ``log_path``.

    With ``cgroup_procs`` the child writes its own PID into each ``cgroup.procs``
    before exec, so it and everything it starts are confined from the first
    instruction.
    """

    def enter_cgroup() -> None:
        for path in cgroup_procs:
            with open(path, "w") as f:
                f.write(str(os.getpid()))

    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv,
            env=service_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=enter_cgroup if cgroup_procs else None,
        )
    try:
        created = psutil.Process(proc.pid).create_time()
    except psutil.Error:
        created = time.time()
    return ProcRecord(name, proc.pid, created, tuple(argv)), proc


def stop(records: list[ProcRecord], grace_s: float = 8.0) -> list[str]:
    """SIGTERM each process group, SIGKILL what is left after ``grace_s``; names still alive."""
    live = {r.name: r for r in records if r.process() is not None}
    for r in live.values():
        _signal_group(r.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_group_alive(r.pid) for r in live.values()):
        time.sleep(0.05)
    for r in live.values():
        if _group_alive(r.pid):
            _signal_group(r.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(_group_alive(r.pid) for r in live.values()):
        time.sleep(0.05)
    return [n for n, r in live.items() if _group_alive(r.pid)]


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    """Whether any non-zombie process is left in process group ``pgid``."""
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(p.info["pid"]) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return False
