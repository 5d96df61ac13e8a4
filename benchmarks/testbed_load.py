"""Shared by the testbed benchmarks: a bounded closed-loop client, one-stage scenarios,
raw onnxruntime under the same CPU quota as a stage. Not a benchmark itself."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np

from testbed.api import INFER_PATH
from testbed.zoo.manifest import DEFAULT_DIR, load_manifest, load_testset
from twin.load import parse
from twin.spec import Deployment, Scenario

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


def ensure_zoo(model_dir: Path = DEFAULT_DIR) -> dict:
    """The zoo's manifest, building the zoo first when it is missing."""
    try:
        return load_manifest(model_dir)
    except FileNotFoundError:
        from testbed.zoo.build import build

        print("building the model zoo first …", file=sys.stderr)
        return build(model_dir)


@dataclass
class LoadResult:
    codes: list[int]
    t_done: list[float]  # completion times (s, perf_counter)
    latency_s: list[float]

    def throughput(self, skip: float = 0.1) -> float:
        """Completed requests/s after the first ``skip`` fraction (warm-up) of completions."""
        ok = sorted(t for t, c in zip(self.t_done, self.codes, strict=True) if c == 200)
        k = int(len(ok) * skip)
        if len(ok) - k < 2:
            return float("nan")
        return (len(ok) - k - 1) / (ok[-1] - ok[k])

    @property
    def failed(self) -> int:
        return sum(c != 200 for c in self.codes)


async def _closed_loop(
    url: str, images: np.ndarray, n: int, concurrency: int, on_progress=None
) -> LoadResult:  # type: ignore[no-untyped-def]
    res = LoadResult([], [], [])
    counter = iter(range(n))
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as s:

        async def worker() -> None:
            for i in counter:
                body = {"id": str(i), "image": images[i % len(images)].tolist()}
                t0 = time.perf_counter()
                try:
                    async with s.post(url + INFER_PATH, json=body) as r:
                        await r.read()
                        code = r.status
                except aiohttp.ClientError:
                    code = 0
                t1 = time.perf_counter()
                res.codes.append(code)
                res.t_done.append(t1)
                res.latency_s.append(t1 - t0)
                if on_progress is not None:
                    on_progress(len(res.codes))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return res


def closed_loop(
    url: str, images: np.ndarray, n: int, concurrency: int = 32, on_progress=None
) -> LoadResult:  # type: ignore[no-untyped-def]
    """Send ``n`` requests (a bounded run) with ``concurrency`` clients in a closed loop."""
    return asyncio.run(_closed_loop(url, images, n, concurrency, on_progress))


def one_stage(
    stage: str,
    variant: str,
    cpu_cores: float,
    batch: int,
    timeout_ms: float,
    manifest: dict,
    replicas: int = 1,
    servers: dict[str, float] | None = None,
) -> tuple[Scenario, Deployment]:
    """A scenario with one emulated server running one stage of the zoo, and its deployment.

    ``servers`` (name → cores) replaces the single server ``node``; each then runs
    ``replicas`` instances of the stage.
    """
    servers = servers or {"node": cpu_cores}
    variants = []
    for name, e in manifest["models"][stage].items():
        st = e["service_time"]
        variants.append(
            {
                "name": name,
                "accuracy": e["accuracy"],
                "cpu_cores": 0.1,
                "service_time": {
                    "kind": "lognormal",
                    "mean_ms": st["mean_ms"],
                    "per_item_ms": st["per_item_ms"],
                    "cv": st["cv"],
                },
            }
        )
    sc = parse(
        Scenario,
        {
            "name": f"bench-{stage}",
            "servers": [{"name": n, "cpu_cores": c, "ram_gb": 2} for n, c in servers.items()],
            "components": [{"name": stage, "max_batch": 64, "variants": variants}],
            "processes": [
                {"name": "p", "kind": "request", "steps": [{"name": "s", "component": stage}]}
            ],
        },
        "benchmark",
    )
    dep = parse(
        Deployment,
        {
            "name": "bench",
            "allocation": {stage: dict.fromkeys(servers, replicas)},
            "stages": {stage: {"variant": variant, "batch": batch, "batch_timeout_ms": timeout_ms}},
        },
        "benchmark",
    )
    return sc, dep


RAW_SCRIPT = """
import os, sys, time
os.environ["ORT_DISABLE_TELEMETRY"] = "1"
import numpy as np
from testbed.zoo.manifest import ort_session, load_testset
sess = ort_session(sys.argv[1], 1)
x, _ = load_testset(sys.argv[2])
b, n = int(sys.argv[3]), int(sys.argv[4])
batches = [x[i:i + b] for i in range(0, len(x) - b + 1, b)]
for xb in batches[:20]:
    sess.run(None, {"x": xb})
t0, c0 = time.perf_counter(), time.process_time()
for i in range(n):
    sess.run(None, {"x": batches[i % len(batches)]})
print(n * b / (time.perf_counter() - t0), (time.process_time() - c0) / (n * b))
"""


def raw_throughput(
    model_file: Path, model_dir: Path, batch: int, batches: int, cgroup_procs: list[str] = ()
) -> tuple[float, float]:
    """Items/s of a bare onnxruntime loop (1 thread) in its own process and cgroup, and
    its CPU time per item (s)."""

    def enter() -> None:
        for p in cgroup_procs:
            with open(p, "w") as f:
                f.write(str(os.getpid()))

    out = subprocess.run(
        [
            sys.executable,
            "-c",
            RAW_SCRIPT,
            str(model_file),
            str(model_dir),
            str(batch),
            str(batches),
        ],
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=enter if cgroup_procs else None,
        env={**os.environ, "ORT_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1"},
    )
    rate, cpu = out.stdout.strip().splitlines()[-1].split()
    return float(rate), float(cpu)


def test_images(model_dir: Path = DEFAULT_DIR) -> np.ndarray:
    return load_testset(model_dir)[0]
