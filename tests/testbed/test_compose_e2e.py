"""End to end on Docker: the digits pipeline on the compose backend.

Builds the serving image offline (base image by debootstrap, wheels from the
host's wheelhouse, ``network: none``), brings the digits pipeline up (one
container per emulated server), checks the containers are confined and hardened
as rendered, sends real held-out digits through the gateway, changes a variant
live, tears down and checks that no container or network of the project is left.
Skips only when no Docker engine answers (``compose/ensure-docker.sh`` starts one).
"""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from testbed.api import INFER_PATH, TIMINGS_HEADER, decode_timings
from testbed.backends import docker_answers
from testbed.backends.base import CPU_PERIOD_US
from twin.load import load_deployment, load_scenario

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
STAGES = ["denoise", "encoder", "classifier"]
# Run with the venv's python inside a node container; prints what it could do.
CONTAINER_PROBE = r"""
import json, os, socket
from pathlib import Path
cg = Path("/sys/fs/cgroup")
if (cg / "cpu.max").exists():  # cgroup v2
    q, p = (cg / "cpu.max").read_text().split()
else:
    q, p = ((cg / "cpu" / f).read_text() for f in ("cpu.cfs_quota_us", "cpu.cfs_period_us"))
out = {"quota_us": int(q), "period_us": int(p), "uid": os.getuid()}
try:
    open("/opt/venv/probe", "w")
    out["write"] = "written"
except OSError as e:
    out["write"] = e.strerror
try:
    socket.create_connection(("1.1.1.1", 53), timeout=2).close()
    out["egress"] = "connected"
except OSError as e:
    out["egress"] = str(e)
print(json.dumps(out))
"""
# `zoo` (tests/testbed/conftest.py): the built model zoo; the controller uploads it
# to the registry container.


def infer_all(gateway: str, images: np.ndarray, workers: int = 8) -> list[httpx.Response]:
    """POST every image to the gateway from ``workers`` threads (so stages batch)."""
    with httpx.Client(base_url=gateway, timeout=60.0) as client:

        def one(i: int) -> httpx.Response:
            return client.post(INFER_PATH, json={"id": str(i), "image": images[i].tolist()})

        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(one, range(len(images))))


def test_digits_pipeline_on_compose(tmp_path, zoo):
    if not docker_answers():
        pytest.skip("no Docker engine answers `docker info` (compose/ensure-docker.sh starts one)")
    from testbed.backends.compose import ComposeBackend, project_containers, project_networks
    from testbed.backends.compose_file import MACHINE_LABEL, ROLE_LABEL
    from testbed.capacity import plan_capacity
    from testbed.zoo import load_manifest, load_testset, pipeline_key

    manifest = load_manifest(zoo)
    x, y = load_testset(zoo)
    scenario = load_scenario(EXAMPLES / "digits-pipeline.yaml")
    deployment = load_deployment(EXAMPLES / "digits-pipeline.deployment.yaml")
    capacity = plan_capacity(scenario)
    backend = ComposeBackend(state_dir=tmp_path / "state", model_dir=zoo)
    project = backend.project
    try:
        endpoints = backend.up(scenario, deployment, capacity)

        # Confinement and hardening hold at run time, not only in the rendered file.
        containers = project_containers(project)
        assert len(containers) == len(scenario.server_instances()) + 3
        for c in containers:
            hc, name = c["HostConfig"], c["Name"]
            assert c["Config"]["User"] == "10001:10001", name
            assert hc["ReadonlyRootfs"] is True, name
            assert hc["CapDrop"] == ["ALL"], name
            assert "no-new-privileges:true" in hc["SecurityOpt"], name
            ports = {p: b for p, b in (hc["PortBindings"] or {}).items() if b}
            if c["Config"]["Labels"][ROLE_LABEL] == "gateway":
                assert [b["HostIp"] for bs in ports.values() for b in bs] == ["127.0.0.1"]
            else:
                assert not ports, name
            machine = c["Config"]["Labels"].get(MACHINE_LABEL)
            if machine:
                assert hc["CpuPeriod"] == CPU_PERIOD_US, name
                want = capacity.node(machine).cpu_cores * CPU_PERIOD_US
                assert abs(hc["CpuQuota"] - want) <= 1, name
                assert hc["Memory"] == round(capacity.node(machine).ram_gb * 1024) * 2**20
        # Inside a node container: the kernel enforces the quota, the root fs is
        # read-only and the internal network has no way out.
        node = next(c for c in containers if c["Config"]["Labels"].get(MACHINE_LABEL))
        probe = subprocess.run(
            ["docker", "exec", node["Id"], "/opt/venv/bin/python", "-c", CONTAINER_PROBE],
            capture_output=True,
            text=True,
            check=True,
        )
        seen = json.loads(probe.stdout)
        machine = node["Config"]["Labels"][MACHINE_LABEL]
        assert seen["quota_us"] == round(capacity.node(machine).cpu_cores * CPU_PERIOD_US)
        assert seen["period_us"] == CPU_PERIOD_US
        assert "Read-only" in seen["write"]
        assert seen["egress"] != "connected"
        assert seen["uid"] == 10001

        # Real digits through the gateway: every request answered, the three stages
        # visited in order with the deployed variants, the manifest's accuracy.
        responses = infer_all(endpoints.gateway, x)
        assert [r.status_code for r in responses] == [200] * len(x)
        labels = np.array([r.json()["label"] for r in responses])
        variants = {s: deployment.stages[s].variant for s in STAGES}
        for r in responses:
            timings = decode_timings(r.headers[TIMINGS_HEADER])
            assert [t.stage for t in timings] == STAGES
            assert {t.stage: t.variant for t in timings} == variants
            assert all(t.service_ms > 0 for t in timings)
        batches = [t.batch for r in responses for t in decode_timings(r.headers[TIMINGS_HEADER])]
        assert max(batches) > 1  # concurrent requests were batched inside the stages
        expected = manifest["pipelines"][pipeline_key(variants)]
        # Same ONNX files and test set as the manifest; only batch composition differs.
        assert abs(float(np.mean(labels == y)) - expected) <= 0.02

        # The feature-store path: entity ids are rows of the test set.
        with httpx.Client(base_url=endpoints.gateway, timeout=60.0) as client:
            for i in range(5):
                r = client.post(INFER_PATH, json={"id": f"e{i}", "entity_id": i})
                assert r.status_code == 200, r.text
                assert r.json()["label"] == labels[i]

        # A variant changed live through the gateway's proxy to the node agents.
        stages = dict(deployment.stages)
        stages["classifier"] = stages["classifier"].model_copy(update={"variant": "c-deep"})
        backend.apply(deployment.model_copy(update={"stages": stages}))
        after = infer_all(endpoints.gateway, x[:32])
        assert [r.status_code for r in after] == [200] * 32
        used = {
            t.variant
            for r in after
            for t in decode_timings(r.headers[TIMINGS_HEADER])
            if t.stage == "classifier"
        }
        assert used == {"c-deep"}

        status = backend.status()
        assert status.gateway_healthy and all(n.healthy for n in status.nodes)
        assert sorted(i.component for i in status.instances if i.healthy) == sorted(STAGES)
    finally:
        backend.down()
        timings = ", ".join(f"{k} {v:.1f}" for k, v in backend.timings.items())
        print(f"compose e2e phases (s): {timings}")
    assert project_containers(project) == []
    assert project_networks(project) == []
    assert not (tmp_path / "state" / "compose-state.json").exists()
