"""CPU limits hold: a stage on an emulated server with half the CPU share serves half as much.

Run: .venv/bin/python benchmarks/testbed_cpu_limits.py [--quota 0.5] [--calls 1500]

The local backend brings up two emulated servers at once, one with ``--quota``
host cores and one with half of it, each running the same stage (denoise,
heaviest variant, batch 8), and both are loaded at the same time. Bounded
closed loops send batches of 8 images straight to each stage server's
``/v1/batch`` (so neither the gateway nor the client limits the rate) — the
half-share server gets half as many calls, so both runs span about the same
time — and measure items/s. Ratio half / full, ideally 0.5.
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
) -> dict[str, tuple[float, float]]:
    """Per server (full, half): items/s of its stage and the share of its quota it used.

    Both emulated servers run at once and are loaded at once, so a busy host's
    drifting load hits both alike.
    """
    shares = {"full": quota, "half": quota / 2}
    sc, dep = one_stage("denoise", variant, quota, batch, 2.0, manifest, servers=shares)
    cap = plan_capacity(sc, factor=1.0)
    with tempfile.TemporaryDirectory() as tmp:
        backend = LocalBackend(state_dir=Path(tmp) / "tb", model_dir=DEFAULT_DIR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            endpoints = backend.up(sc, dep, cap)
        try:
            insts = {i.node: i for i in Controller.load(backend.state_dir).instances.values()}
            urls = {n: endpoints.instance_url(n, i.port) for n, i in insts.items()}
            for f in backend.reserve_procs():  # the client is the load generator: reserve
                Path(f).write_text(str(os.getpid()))
            images = test_images(DEFAULT_DIR)

            async def both(n: int) -> list[float]:
                return await asyncio.gather(
                    *(
                        _hammer(urls[s], images, int(n * shares[s] / quota), batch, 4)
                        for s in shares
                    )
                )

            asyncio.run(both(50))  # warm-up
            usage = {s: endpoints.nodes[s] + "/usage" for s in shares}
            c0 = {s: httpx.get(u).json()["cpu_seconds"] for s, u in usage.items()}
            t0 = time.perf_counter()
            rates = asyncio.run(both(calls))
            t1 = time.perf_counter()
            c1 = {s: httpx.get(u).json()["cpu_seconds"] for s, u in usage.items()}
            return {
                s: (r, (c1[s] - c0[s]) / (t1 - t0) / shares[s])
                for s, r in zip(shares, rates, strict=True)
            }
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
    got = measure(a.quota, a.variant, a.batch, a.calls, manifest)
    (full, full_use), (half, half_use) = got["full"], got["half"]
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
                ["emulated server", "host cores", "items/s", "quota used", "items per CPU-s"],
                [
                    ["full share", a.quota, full, f"{full_use:.0%}", full / (a.quota * full_use)],
                    [
                        "half share",
                        a.quota / 2,
                        half,
                        f"{half_use:.0%}",
                        half / (a.quota / 2 * half_use),
                    ],
                ],
            ),
            "",
            f"**ratio half / full = {ratio:.3f}** (ideal 0.5). A server that used well under "
            "100 % of its quota was short of CPU (or of work) on this busy host; the ratio then "
            "mixes the limit with that shortage, while items per CPU-second used show "
            "whether the work done per unit of CPU stays the same under either quota.",
            "",
            f"Command: `.venv/bin/python benchmarks/testbed_cpu_limits.py --quota {a.quota:g} "
            f"--calls {a.calls}`",
        ]
    )
    write_result("testbed_cpu_limits", text)


if __name__ == "__main__":
    main()
