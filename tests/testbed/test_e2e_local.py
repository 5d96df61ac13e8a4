"""End to end on the local backend: real digits through real ONNX stages, live switch, teardown."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from testbed import cgroups
from testbed.api import INFER_PATH, TIMINGS_HEADER, decode_timings
from testbed.backends.local import LocalBackend, Unconfined
from testbed.capacity import plan_capacity
from testbed.zoo.manifest import load_manifest, load_testset, pipeline_key
from twin.load import load_deployment, load_scenario
from twin.spec import Deployment, StageConfig

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def infer(client: httpx.Client, gw: str, i: int, image: np.ndarray) -> httpx.Response:
    return client.post(gw + INFER_PATH, json={"id": str(i), "image": image.tolist()})


@contextlib.contextmanager
def background_load(gw: str, x: np.ndarray, results: list, clients: int = 4) -> Iterator[None]:
    """Closed-loop clients sending digits until the block ends; (status, timings) appended."""
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=30) as c:
            i = 0
            while not stop.is_set():
                r = infer(c, gw, i, x[i % len(x)])
                results.append((r.status_code, r.headers.get(TIMINGS_HEADER, "")))
                i += 1

    threads = [threading.Thread(target=load) for _ in range(clients)]
    for th in threads:
        th.start()
    try:
        yield
    finally:
        stop.set()
        for th in threads:
            th.join(30)


def wait_for(results: list, n: int, timeout_s: float = 120.0) -> None:
    """Block until ``results`` holds ``n`` entries (the load threads append to it)."""
    deadline = time.monotonic() + timeout_s
    while len(results) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(results)} of {n} answers")
        time.sleep(0.02)


def test_local_backend_end_to_end(zoo: Path, tmp_path: Path) -> None:
    scenario = load_scenario(EXAMPLES / "digits-pipeline.yaml")
    dep = load_deployment(EXAMPLES / "digits-pipeline.deployment.yaml")
    manifest = load_manifest(zoo)
    x, y = load_testset(zoo)
    backend = LocalBackend(state_dir=tmp_path / "tb", model_dir=zoo)
    cap = plan_capacity(scenario)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Unconfined)  # non-root CI runs unconfined
        endpoints = backend.up(scenario, dep, cap)
    pids: list[int] = []
    try:
        gw = endpoints.gateway
        procs = [p.process() for p in backend.procs]
        pids = [p.pid for p in procs if p is not None]
        pids += [c.pid for p in procs if p is not None for c in p.children(recursive=True)]
        assert len(pids) >= 3 + 3 + 3  # platform services, node agents, stage instances

        # 1. accuracy of the whole held-out set matches the manifest within binomial noise
        with httpx.Client(timeout=30) as c, ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: infer(c, gw, i, x[i]), range(len(y))))
        assert all(r.status_code == 200 for r in answers)
        labels = np.array([r.json()["label"] for r in answers])
        variants = {s: dep.stages[s].variant for s in manifest["stages"]}
        expected = manifest["pipelines"][pipeline_key(variants)]
        noise = math.sqrt(expected * (1 - expected) / len(y))
        assert abs((labels == y).mean() - expected) <= max(3 * noise, 2 / len(y))
        t = decode_timings(answers[0].headers[TIMINGS_HEADER])
        assert [s.stage for s in t] == ["denoise", "encoder", "classifier"]
        assert [s.variant for s in t] == [variants[s.stage] for s in t]

        # entity lookups through the feature store give the same answer as the image
        with httpx.Client(timeout=30) as c:
            r = c.post(gw + INFER_PATH, json={"id": "e", "entity_id": 7})
            assert r.status_code == 200 and r.json()["label"] == labels[7]

        # 2. a live switch (variants, batch, one more replica) under load fails no request
        new = Deployment(
            name="switched",
            allocation={**dep.allocation, "denoise": {"node-1": 1, "node-2": 1}},
            stages={
                **dep.stages,
                "denoise": StageConfig(variant="d-large", batch=8),
                "classifier": StageConfig(variant="c-deep", batch=4),
            },
        )
        results: list[tuple[int, str]] = []
        with background_load(gw, x, results):
            backend.apply(new)
            wait_for(results, len(results) + 100)
        assert results and all(code == 200 for code, _ in results)
        last = decode_timings(results[-1][1])
        assert last[0].variant == "d-large" and last[2].variant == "c-deep"
        replicas = {decode_timings(h)[0].replica for _, h in results[-60:]}
        status = backend.status()
        assert sum(i.component == "denoise" for i in status.instances) == 2
        assert all(i.healthy for i in status.instances) and status.gateway_healthy
        assert status.services == {"registry": endpoints.registry, "features": endpoints.features}
        assert [n.url for n in status.nodes] == [endpoints.nodes[n.name] for n in status.nodes]
        assert all(n.healthy and n.cpu_seconds is not None for n in status.nodes)
        agents = [rec.process() for rec in backend.procs]
        pids += [c.pid for a in agents if a is not None for c in a.children(recursive=True)]
        assert replicas <= {i.name for i in status.instances if i.component == "denoise"}

        # 3. killing one of the two denoise replicas under load fails no request
        victim = next(i for i in status.instances if i.component == "denoise")
        listing = httpx.get(f"{endpoints.nodes[victim.node]}/instances").json()
        pid = next(r["pid"] for r in listing if r["name"] == victim.name)
        after_kill: list[tuple[int, str]] = []
        with background_load(gw, x, after_kill):
            wait_for(after_kill, 20)
            os.kill(pid, signal.SIGKILL)
            wait_for(after_kill, len(after_kill) + 100)
        assert all(code == 200 for code, _ in after_kill)
        survivors = {decode_timings(h)[0].replica for _, h in after_kill[-30:]}
        assert survivors == {
            i.name for i in status.instances if i.component == "denoise" and i.name != victim.name
        }
    finally:
        backend.down()

    # 4. nothing is left: no process we started, no cgroup of this testbed
    alive = [
        p
        for p in set(pids)
        if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
    ]
    assert alive == []
    assert [g for g in cgroups.leftovers() if backend._tag() in g] == []
