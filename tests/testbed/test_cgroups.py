"""cgroup confinement (root only): quota with a 10 ms period, memory limit, clean removal."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testbed import cgroups
from testbed.backends.base import CPU_PERIOD_US

pytestmark = pytest.mark.skipif(not cgroups.available(), reason="needs root and cgroups")


def test_create_confine_remove() -> None:
    cg = cgroups.Cgroup.create("pytest-cg", cpu_cores=0.5, ram_gb=0.25)
    proc = None
    try:
        first = Path(cg.paths[0])
        if cg.version == 1:
            assert (first / "cpu.cfs_period_us").read_text().strip() == str(CPU_PERIOD_US)
            assert (first / "cpu.cfs_quota_us").read_text().strip() == str(CPU_PERIOD_US // 2)
        else:
            assert (first / "cpu.max").read_text().split() == [
                str(CPU_PERIOD_US // 2),
                str(CPU_PERIOD_US),
            ]
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        cg.add(proc.pid)
        assert proc.pid in cg.pids()
        limit = (
            (first / "memory.max")
            if cg.version == 2
            else Path(cg.paths[1]) / ("memory.limit_in_bytes")
        )
        assert int(limit.read_text()) == 256 * 2**20
        assert cg.cpu_seconds() is not None and cg.memory_bytes() is not None
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        cg.remove()
    assert not any(p.endswith("/pytest-cg") for p in cgroups.leftovers())


def test_an_idle_group_is_made_at_the_lowest_share() -> None:
    cg = cgroups.Cgroup.create("pytest-idle", None, None, weight=4.0, idle=True)
    try:
        cpu = Path(cg.paths[0])
        if (cpu / "cpu.idle").exists():
            assert (cpu / "cpu.idle").read_text().strip() == "1"
            assert cg.share() == "idle"
        else:
            f = cpu / ("cpu.weight" if cg.version == 2 else "cpu.shares")
            assert int(f.read_text()) <= 2
            assert cg.share() == "weight"
    finally:
        cg.remove()
    plain = cgroups.Cgroup.create("pytest-plain", None, None)
    try:
        assert plain.share() == "weight"
    finally:
        plain.remove()


SPIN = """
import os, sys, time
os.sched_setaffinity(0, {int(sys.argv[1])})
end = float(sys.argv[2])  # one deadline for both: a starved spinner must not run on alone
while time.time() < end:
    pass
"""


@pytest.mark.slow
def test_an_idle_group_gets_almost_no_cpu_beside_a_busy_sibling() -> None:
    """Two spinning processes on one CPU: the one in the idle group (where a replica
    starts) gets a sliver of what its sibling in a default group gets. In a group of
    the reserve's weight (4× a default group) it would get four times as much."""
    cpu = str(max(os.sched_getaffinity(0)))
    busy = cgroups.Cgroup.create("pytest-busy", None, None)
    idle = cgroups.Cgroup.create("pytest-idler", None, None, idle=True)
    procs = []
    end = str(time.time() + 2.0)
    try:
        for group in (busy, idle):
            proc = subprocess.Popen([sys.executable, "-c", SPIN, cpu, end])
            group.add(proc.pid)  # within the interpreter's start-up, long before the spin
            procs.append(proc)
        for proc in procs:
            proc.wait(30)
        used_busy, used_idle = busy.cpu_seconds(), idle.cpu_seconds()
        assert used_busy is not None and used_idle is not None
        assert used_busy > 0.3  # it ran (other work on the CPU may take a part)
        assert used_idle < 0.1 * used_busy
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        busy.remove()
        idle.remove()
