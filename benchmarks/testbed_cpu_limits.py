"""CPU limits hold: a stage on an emulated server with half the CPU share serves half as much.

Run: .venv/bin/python benchmarks/testbed_cpu_limits.py [--quota 0.5] [--calls 1500]

The local backend brings up one emulated server with ``--quota`` host cores, then
one with half of it, each running the same stage (denoise, heaviest variant,
batch 8). A bounded closed loop sends batches of 8 images straight to the stage
server's ``/v1/batch`` (so neither the gateway nor the client limits the rate)
and measures items/s. Ratio half / full, ideally 0.5.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import aiohttp
import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, markdown_table, write_result
from testbed_load import ensure_zoo, one_stage, test_images

from testbed import cgroups
from testbed.backends.local import LocalBackend
from testbed.capacity import plan_capacity
from testbed.controller import Controller
from testbed.zoo.manifest import DEFAULT_DIR


async def _hammer(url: str, images: np.ndarray, calls: int, batch: int, conc: int) -> float:
    """Items/s over a bounded number of ``/v1/batch`` calls (after 10 % warm-up)."""
    done: list[float] = []
    it = iter(range(calls))
    async with aiohttp.ClientSession() as s:

        async def worker() -> None:
            for i in it:
                rows = images[(i * batch) % (len(images) - batch) :][:batch]
                async with s.post(
                    url + "/v1/batch",
                    data=rows.tobytes(),
                    headers={"x-shape": f"{batch},{rows.shape[1]}"},
                ) as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"stage answered {r.status}")
                done.append(time.perf_counter())

        await asyncio.gather(*(worker() for _ in range(conc)))
    done.sort()
    k = len(done) // 10
    return (len(done) - k - 1) * batch / (done[-1] - done[k])


def measure(
    quota: float, variant: str, batch: int, calls: int, manifest: dict
) -> tuple[float, float]:
    """Items/s of the stage and the share of its quota its server used meanwhile."""
    sc, dep = one_stage("denoise", variant, quota, batch, 2.0, manifest)
    cap = plan_capacity(sc, factor=1.0)
    with tempfile.TemporaryDirectory() as tmp:
        backend = LocalBackend(state_dir=Path(tmp) / "tb", model_dir=DEFAULT_DIR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            endpoints = backend.up(sc, dep, cap)
        try:
            ctl = Controller.load(backend.state_dir)
            (inst,) = ctl.instances.values()
            url = endpoints.instance_url(inst.node, inst.port)
            for f in backend.reserve_procs():  # the client is the load generator: reserve
                Path(f).write_text(str(os.getpid()))
            images = test_images(DEFAULT_DIR)
            asyncio.run(_hammer(url, images, 50, batch, 4))  # warm-up
            usage = endpoints.nodes[inst.node] + "/usage"
            c0, t0 = httpx.get(usage).json()["cpu_seconds"], time.perf_counter()
            rate = asyncio.run(_hammer(url, images, calls, batch, 4))
            c1, t1 = httpx.get(usage).json()["cpu_seconds"], time.perf_counter()
            return rate, (c1 - c0) / (t1 - t0) / quota
        finally:
            if cgroups.available():
                cgroups.leave(os.getpid())
            backend.down()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quota", type=float, default=0.5, help="host cores of the full server")
    ap.add_argument("--variant", default="d-large")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--calls", type=int, default=1500)
    a = ap.parse_args()
    manifest = ensure_zoo(DEFAULT_DIR)
    confined = cgroups.available()
    full, full_use = measure(a.quota, a.variant, a.batch, a.calls, manifest)
    half, half_use = measure(a.quota / 2, a.variant, a.batch, a.calls, manifest)
    ratio = half / full
    how = "cgroup quota with a 10 ms period" if confined else "UNCONFINED (no root)"
    text = "\n".join(
        [
            "# Testbed CPU limits",
            "",
            machine_line(),
            "",
            f"Stage denoise/{a.variant}, batch {a.batch}, {a.calls} calls of {a.batch} items, "
            f"4 concurrent, {how}.",
            "",
            markdown_table(
                ["emulated server", "host cores", "items/s", "quota used"],
                [
                    ["full share", a.quota, full, f"{full_use:.0%}"],
                    ["half share", a.quota / 2, half, f"{half_use:.0%}"],
                ],
            ),
            "",
            f"**ratio half / full = {ratio:.3f}** (ideal 0.5). A server that used well under "
            "100 % of its quota was short of CPU on a busy host, which pushes the ratio up.",
            "",
            f"Command: `.venv/bin/python benchmarks/testbed_cpu_limits.py --quota {a.quota:g} "
            f"--calls {a.calls}`",
        ]
    )
    write_result("testbed_cpu_limits", text)


if __name__ == "__main__":
    main()
