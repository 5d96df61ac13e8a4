"""A replica starts in the start cgroup (the host's reserve) and joins its node's cgroup
only once healthy, so its start-up does not spend the node's CPU quota (root only)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from testbed import cgroups
from testbed.services.node_agent import NodeAgent, create_app
from tests.testbed.helpers import serve_app

pytestmark = pytest.mark.skipif(not cgroups.available(), reason="needs root and cgroups")


def _wait(cond, timeout_s: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize("idle", [True, False], ids=["idle-start-group", "reserve"])
def test_a_replica_starts_outside_and_joins_the_node_once_healthy(
    tmp_path: Path, idle: bool
) -> None:
    """In the idle start group (the default) or the host's reserve (the earlier path)."""
    tag = f"pytest-start-{os.getpid()}"
    node = cgroups.Cgroup.create(f"{tag}-node", cpu_cores=0.5, ram_gb=None)
    reserve = cgroups.Cgroup.create(f"{tag}-reserve", None, None, idle=idle)
    agent = NodeAgent("n", "127.0.0.1", 0.5, None, cgroup=node.name, start_cgroup=reserve.name)
    try:
        with serve_app(create_app(agent)) as url:
            inst = agent.start("fs", "features-builtin", {"db": str(tmp_path / "f.db")})
            pid = inst.proc.pid
            # before health: outside the node's quota
            assert pid in reserve.pids() and pid not in node.pids()
            assert inst.info()["confined"] is False
            # the controller's health check goes through the agent; by the time it sees
            # 200 the replica is in the node's group (so it is never routed to unconfined)
            assert _wait(lambda: _healthy(f"{url}/instances/fs/http/healthz"))
            assert pid in node.pids() and pid not in reserve.pids()
            assert inst.info()["confined"] is True

            # a replica the agent restarts starts outside too; the agent's own
            # supervision moves it once healthy, with nobody asking
            os.kill(pid, signal.SIGKILL)
            assert _wait(lambda: inst.proc.pid != pid)
            assert _wait(lambda: inst.proc.pid in node.pids())
            assert inst.proc.pid not in reserve.pids()
            assert _healthy(f"http://127.0.0.1:{inst.port}/healthz")
    finally:
        agent.stop_all()
        node.remove()
        reserve.remove()
    assert not any(tag in p for p in cgroups.leftovers())


def test_a_job_runs_in_its_nodes_cgroup_from_its_start(tmp_path: Path) -> None:
    """A step job never answers /healthz: started in the reserve it would run its whole
    life outside the node's quota (an edge box's quarter core would not hold)."""
    tag = f"pytest-job-{os.getpid()}"
    node = cgroups.Cgroup.create(f"{tag}-node", cpu_cores=0.5, ram_gb=None)
    reserve = cgroups.Cgroup.create(f"{tag}-reserve", None, None)
    agent = NodeAgent("n", "127.0.0.1", 0.5, None, cgroup=node.name, start_cgroup=reserve.name)
    big = tmp_path / "rows.bin"
    big.write_bytes(b"\0" * 125_000)  # 1 Mbit: read over a 0.1 Mbit/s link, the job waits 10 s
    args = {
        "kind": "prepare",
        "record": str(tmp_path / "rec.json"),
        "out": str(tmp_path / "out.npz"),
        "inputs": str(big),
        "link_mbps": 0.1,
    }
    try:
        inst = agent.start("job-1", "step", args)
        pid = inst.proc.pid
        assert _wait(lambda: pid in node.pids(), 5.0)
        assert pid not in reserve.pids()
        assert inst.info()["confined"] is True
        assert agent.starting() == []  # the supervisor has nothing to move
    finally:
        agent.stop_all()
        node.remove()
        reserve.remove()
    assert not any(tag in p for p in cgroups.leftovers())
