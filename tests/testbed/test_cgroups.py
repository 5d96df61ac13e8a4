"""cgroup confinement (root only): quota with a 10 ms period, memory limit, clean removal."""

from __future__ import annotations

import subprocess
import sys
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
