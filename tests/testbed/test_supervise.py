"""The node agent starts again, on the same port, an instance that died unasked."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx

from testbed.services.node_agent import NodeAgent


def _healthy(port: int, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    return False


def test_a_killed_instance_is_restarted_on_its_port_and_a_stopped_one_is_not(
    tmp_path: Path,
) -> None:
    agent = NodeAgent("n", "127.0.0.1", None, None)
    try:
        inst = agent.start("fs", "features-builtin", {"db": str(tmp_path / "f.db")})
        assert _healthy(inst.port)
        first_pid = inst.proc.pid
        assert agent.revive() == []  # alive: nothing to do
        os.kill(first_pid, signal.SIGKILL)
        inst.proc.wait(5)
        # it lived < STABLE_AFTER_S, so the restart waits one back-off step (1 s)
        died = time.monotonic()
        assert agent.revive(now=died) == []
        assert agent.revive(now=died + 1.01) == ["fs"]
        assert inst.proc.pid != first_pid and inst.restarts == 1
        assert _healthy(inst.port)  # same port: the routes to it stay valid
        assert agent.instances["fs"].info()["restarts"] == 1
        agent.stop("fs", grace_s=2.0)
        assert agent.revive() == []  # stopped on purpose: stays stopped
        assert "fs" not in agent.instances
    finally:
        agent.stop_all()


def test_a_job_that_exited_is_not_started_again(tmp_path: Path) -> None:
    # a step job exits when done (here at once: its input is missing); its runner reads
    # the record, so running it again would do the step twice on the node's quota
    agent = NodeAgent("n", "127.0.0.1", None, None)
    try:
        args = {"kind": "prepare", "record": str(tmp_path / "r.json"), "inputs": "missing"}
        inst = agent.start("job-1", "step", args)
        inst.proc.wait(30)
        now = time.monotonic()
        # a crashed replica would be restarted by the second call (after its back-off)
        assert agent.revive(now=now) == [] and agent.revive(now=now + 3600.0) == []
        assert inst.restarts == 0 and not inst.info()["alive"]
    finally:
        agent.stop_all()
