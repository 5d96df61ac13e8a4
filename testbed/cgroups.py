"""CPU and memory confinement of an emulated server with Linux cgroups (v1 or v2).

Needs root and a writable cgroup hierarchy; :func:`available` says whether this
host has one. Every group lives under one parent (``mlops-twin``) so a left-over
group is easy to find (:func:`leftovers`) and remove.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from testbed.backends.base import CPU_PERIOD_US

ROOT = Path("/sys/fs/cgroup")
PARENT = "mlops-twin"
# Weights are hierarchical: every group here shares the parent's weight against the
# rest of the host, so the parent gets a large one or quotas would not hold on a
# busy host (the groups' own quotas still cap what each can take).
PARENT_WEIGHT = 16.0
# An A/B knob (benchmarks/testbed_knee_slice.py): another CFS period (µs) for every
# node's quota, the quota scaled with it. Unset: CPU_PERIOD_US, as every backend.
PERIOD_ENV = "MLOPS_TWIN_CPU_PERIOD_US"


def period_us() -> int:
    """The CFS period (µs) of the groups made here: ``$MLOPS_TWIN_CPU_PERIOD_US`` or 10 ms."""
    raw = os.environ.get(PERIOD_ENV, "").strip()
    if not raw:
        return CPU_PERIOD_US
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1000 <= value <= 1_000_000:
        raise ValueError(f"{PERIOD_ENV}={raw!r}: expected a period of 1000–1000000 µs")
    return value


def version() -> int | None:
    """2 for the unified hierarchy, 1 for v1 with cpu and memory controllers, else None."""
    if (ROOT / "cgroup.controllers").exists():
        return 2
    if (ROOT / "cpu").is_dir() and (ROOT / "memory").is_dir():
        return 1
    return None


def available() -> bool:
    """Whether groups can be created here (root and a writable hierarchy)."""
    v = version()
    if v is None or os.geteuid() != 0:
        return False
    probe = ROOT / ("cpu" if v == 1 else "") / PARENT
    try:
        probe.mkdir(exist_ok=True)
    except OSError:
        return False
    return os.access(probe, os.W_OK)


@dataclass(frozen=True)
class Cgroup:
    """One emulated server's group; ``paths`` are the directories it was created in."""

    name: str
    version: int
    paths: tuple[str, ...]

    @classmethod
    def create(
        cls,
        name: str,
        cpu_cores: float | None,
        ram_gb: float | None,
        weight: float = 1.0,
        idle: bool = False,
    ) -> Cgroup:
        """Make the group: a quota of ``cpu_cores`` (10 ms period, :func:`period_us`), and
        ``ram_gb`` of memory.

        ``None`` leaves that resource unlimited; ``weight`` scales the group's share
        of contended CPU relative to a default group (1.0), e.g. 4.0 for the
        reserve that the gateway and the load generator run in. ``idle`` gives the
        group the lowest share there is (:meth:`make_idle`), ``weight`` ignored.
        """
        v = version()
        if v is None:
            raise RuntimeError("no cgroup v1 (cpu, memory) or v2 hierarchy under /sys/fs/cgroup")
        period = period_us()
        quota = None if cpu_cores is None else max(round(cpu_cores * period), 1000)
        mem = None if ram_gb is None else int(ram_gb * 1024**3)
        if v == 2:
            parent = ROOT / PARENT
            parent.mkdir(exist_ok=True)
            _write(parent / "cgroup.subtree_control", "+cpu +memory", ok_fail=True)
            _write(parent / "cpu.weight", str(round(100 * PARENT_WEIGHT)), ok_fail=True)
            path = parent / name
            path.mkdir(exist_ok=True)
            if quota is not None:
                _write(path / "cpu.max", f"{quota} {period}")
            if mem is not None:
                _write(path / "memory.max", str(mem))
            _write(path / "cpu.weight", str(min(max(round(100 * weight), 1), 10000)))
            group = cls(name, 2, (str(path),))
            if idle:
                group.make_idle()
            return group
        paths = _v1_paths(name)
        for p in paths:
            p.mkdir(parents=True, exist_ok=True)
        cpu, memory = paths[0], paths[1]
        _write(cpu.parent / "cpu.shares", str(round(1024 * PARENT_WEIGHT)), ok_fail=True)
        if quota is not None:
            _write(cpu / "cpu.cfs_period_us", str(period))
            _write(cpu / "cpu.cfs_quota_us", str(quota))
        if mem is not None:
            _write(memory / "memory.limit_in_bytes", str(mem))
        _write(cpu / "cpu.shares", str(max(round(1024 * weight), 2)))
        group = cls(name, 1, tuple(str(p) for p in paths))
        if idle:
            group.make_idle()
        return group

    def make_idle(self) -> str:
        """Give the group the lowest CPU share: ``cpu.idle`` 1 where the kernel has it
        (5.15+, v1 and v2: the whole group is SCHED_IDLE against its siblings, so it
        runs only on CPU none of them wants, and never preempts them on wake-up), else
        the smallest weight (v2 ``cpu.weight`` 1, v1 ``cpu.shares`` 2). Returns which
        one it set: ``"idle"`` or ``"weight"``."""
        cpu = Path(self.paths[0])
        if (cpu / "cpu.idle").exists():
            _write(cpu / "cpu.idle", "1")
            return "idle"
        if self.version == 2:
            _write(cpu / "cpu.weight", "1")
        else:
            _write(cpu / "cpu.shares", "2")
        return "weight"

    def share(self) -> str:
        """``"idle"`` when the group is SCHED_IDLE (``cpu.idle`` 1), else ``"weight"``."""
        f = Path(self.paths[0]) / "cpu.idle"
        return "idle" if f.exists() and f.read_text().strip() == "1" else "weight"

    def procs_files(self) -> list[str]:
        """The ``cgroup.procs`` files a process writes its PID into to join the group."""
        return [str(Path(p) / "cgroup.procs") for p in self.paths]

    @classmethod
    def open(cls, name: str) -> Cgroup:
        v = version()
        if v == 2:
            return cls(name, 2, (str(ROOT / PARENT / name),))
        return cls(name, 1, tuple(str(p) for p in _v1_paths(name)))

    def add(self, pid: int) -> None:
        """Move process ``pid`` (and its future children) into the group."""
        for p in self.paths:
            _write(Path(p) / "cgroup.procs", str(pid))

    def pids(self) -> list[int]:
        out: set[int] = set()
        for p in self.paths:
            f = Path(p) / "cgroup.procs"
            if f.exists():
                out |= {int(x) for x in f.read_text().split()}
        return sorted(out)

    def cpu_seconds(self) -> float | None:
        """Cumulative CPU time of the group (s)."""
        if self.version == 2:
            stat = Path(self.paths[0]) / "cpu.stat"
            for line in stat.read_text().splitlines():
                if line.startswith("usage_usec"):
                    return int(line.split()[1]) / 1e6
            return None
        for p in self.paths:
            acct = Path(p) / "cpuacct.usage"
            if acct.exists():
                return int(acct.read_text()) / 1e9
        return None

    def memory_bytes(self) -> int | None:
        f = Path(self.paths[0] if self.version == 2 else self.paths[1])
        f = f / ("memory.current" if self.version == 2 else "memory.usage_in_bytes")
        return int(f.read_text()) if f.exists() else None

    def throttled_s(self) -> float | None:
        """Time the group spent throttled by its CPU quota (s)."""
        name = "throttled_usec" if self.version == 2 else "throttled_time"
        f = Path(self.paths[0]) / "cpu.stat"
        if not f.exists():
            return None
        for line in f.read_text().splitlines():
            k, _, v = line.partition(" ")
            if k == name:
                return int(v) / (1e6 if self.version == 2 else 1e9)
        return None

    def remove(self, timeout_s: float = 5.0) -> None:
        """Delete the group once its processes are gone (rmdir fails while busy)."""
        deadline = time.monotonic() + timeout_s
        for p in self.paths:
            path = Path(p)
            while path.exists():
                try:
                    path.rmdir()
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"cgroup {path} still busy: pids {self.pids()}"
                        ) from None
                    time.sleep(0.05)


def _v1_paths(name: str) -> list[Path]:
    """cpu, memory and — where it is mounted on its own — cpuacct directories."""
    paths = [ROOT / "cpu" / PARENT / name, ROOT / "memory" / PARENT / name]
    separate_acct = (ROOT / "cpuacct").is_dir() and not (ROOT / "cpu" / "cpuacct.usage").exists()
    if separate_acct:
        paths.append(ROOT / "cpuacct" / PARENT / name)
    return paths


def weighted_parent(name: str, weight: float = PARENT_WEIGHT) -> Path | None:
    """Make (or keep) the top-level group ``name`` with ``weight`` × a default group's
    share of contended CPU; its cpu folder, or None where groups cannot be made.

    For containers (Docker's ``cgroup_parent``): Docker puts them under its own
    ``docker`` group, which has one default share against every other process on
    the host, so on a busy host the containers' quotas would not hold.
    """
    if not available():
        return None
    v = version()
    path = ROOT / name if v == 2 else ROOT / "cpu" / name
    try:
        path.mkdir(exist_ok=True)
        if v == 2:
            _write(path / "cgroup.subtree_control", "+cpu +memory", ok_fail=True)
            _write(path / "cpu.weight", str(min(round(100 * weight), 10000)))
        else:
            _write(path / "cpu.shares", str(round(1024 * weight)))
    except (OSError, RuntimeError):
        return None
    return path


def leave(pid: int) -> None:
    """Move ``pid`` back to the root groups (so the group it was in can be removed)."""
    v = version()
    roots = [ROOT] if v == 2 else [p.parent.parent for p in _v1_paths("x")]
    for r in roots:
        _write(r / "cgroup.procs", str(pid), ok_fail=True)


def leftovers() -> list[str]:
    """Groups under the ``mlops-twin`` parent that still exist."""
    v = version()
    if v is None:
        return []
    parents = [ROOT / PARENT] if v == 2 else [p.parent for p in _v1_paths("x")]
    return sorted(str(c) for p in parents if p.is_dir() for c in p.iterdir() if c.is_dir())


def _write(path: Path, value: str, ok_fail: bool = False) -> None:
    try:
        path.write_text(value)
    except OSError as e:
        if not ok_fail:
            raise RuntimeError(f"cannot write {value!r} to {path}: {e}") from e
