"""Serving overhead: gateway + stage server throughput vs raw onnxruntime, batch 8.

Run: .venv/bin/python benchmarks/testbed_serving.py [--quota 0.1] [--requests 3000]

One emulated server (local backend) runs the heaviest denoise variant with
dynamic batching at batch 8; a bounded closed loop of single-image requests goes
through the gateway (the client and the gateway run outside the emulated server,
as in every testbed run). The reference is a bare onnxruntime loop over batches
of 8 with one thread, in its own cgroup with the same CPU quota. Goal: ≥ 0.8.
Without root (no cgroups) both run unconfined and the gateway, not the stage, may
be the bottleneck; the report says so.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, markdown_table, write_result
from testbed_load import closed_loop, ensure_zoo, one_stage, raw_throughput, test_images

from testbed import cgroups
from testbed.backends.local import PLATFORM_WEIGHT, LocalBackend
from testbed.capacity import plan_capacity
from testbed.controller import Controller
from testbed.zoo.manifest import DEFAULT_DIR


def stage_counters(stage_url: str, node_url: str) -> dict[str, float]:
    """Cumulative CPU of the node, compute time, items, calls and batches of the stage."""
    text = httpx.get(stage_url + "/metrics").text

    def total(name: str) -> float:
        pat = rf"^{name}(?:\{{[^}}]*\}})? (\S+)$"
        return sum(float(v) for v in re.findall(pat, text, re.M))

    return {
        "t": time.perf_counter(),
        "cpu_s": httpx.get(node_url + "/usage").json()["cpu_seconds"],
        "service_s": total("stage_service_seconds_sum"),
        "items": total("stage_items_total"),
        "calls": total("stage_calls_total"),
        "batches": total("stage_batch_size_count"),
        "model_cpu_s": total("stage_compute_cpu_seconds_total"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quota", type=float, default=0.1, help="host cores of the stage's server")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--variant", default="d-large")
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--max-inflight", type=int, default=2, help="gateway calls per replica")
    a = ap.parse_args()
    manifest = ensure_zoo(DEFAULT_DIR)
    entry = manifest["models"]["denoise"][a.variant]
    model_file = DEFAULT_DIR / entry["file"]
    confined = cgroups.available()
    sc, dep = one_stage("denoise", a.variant, a.quota, a.batch, 2.0, manifest)
    cap = plan_capacity(sc, factor=1.0)

    procs: list[str] = []
    cg = None
    if confined:
        # same quota and weight as an emulated server of the local backend
        cg = cgroups.Cgroup.create("bench-serving-raw", a.quota, 2.0, weight=PLATFORM_WEIGHT)
        procs = [str(Path(p) / "cgroup.procs") for p in cg.paths]
    try:
        n_batches = max(a.requests // a.batch, 50)
        raw, raw_cpu_s = raw_throughput(model_file, DEFAULT_DIR, a.batch, n_batches, procs)
    finally:
        if cg is not None:
            cg.remove()

    with tempfile.TemporaryDirectory() as tmp:
        backend = LocalBackend(
            state_dir=Path(tmp) / "tb",
            model_dir=DEFAULT_DIR,
            gateway_options={"max_inflight": a.max_inflight},
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            endpoints = backend.up(sc, dep, cap)
        try:
            for f in backend.reserve_procs():  # the client is the load generator: reserve
                Path(f).write_text(str(os.getpid()))
            images = test_images(DEFAULT_DIR)
            closed_loop(endpoints.gateway, images, 200, a.concurrency)  # warm-up
            (inst,) = Controller.load(backend.state_dir).instances.values()
            stage_url = endpoints.instance_url(inst.node, inst.port)
            reserve = [c for c in backend.cgroups if c.name.endswith("-platform")]
            r0 = reserve[0].cpu_seconds() if reserve else None
            before = stage_counters(stage_url, endpoints.nodes[inst.node])
            res = closed_loop(endpoints.gateway, images, a.requests, a.concurrency)
            after = stage_counters(stage_url, endpoints.nodes[inst.node])
            r1 = reserve[0].cpu_seconds() if reserve else None
        finally:
            if confined:
                cgroups.leave(os.getpid())
            backend.down()
    d = {k: after[k] - before[k] for k in after}
    # CPU per item: the raw loop's own process time; served: what the server's cgroup used
    raw_cpu_ms = 1000 * raw_cpu_s
    served_cpu_ms = 1000 * d["cpu_s"] / d["items"]
    model_cpu_ms = 1000 * d["model_cpu_s"] / d["items"]
    per_call = d["items"] / d["calls"] if d["calls"] else float("nan")
    util = d["cpu_s"] / (d["t"] * a.quota)
    served = res.throughput()
    reserve_line = (
        f"The host's reserve (gateway + client + registry + feature store) used "
        f"{(r1 - r0) / d['t']:.2f} cores during the run, {1000 * (r1 - r0) / d['items']:.2f} "
        f"ms of CPU per request."
        if r0 is not None and r1 is not None
        else "No reserve cgroup (unconfined run)."
    )
    ratio = served / raw
    lat = np.array(res.latency_s) * 1000
    rows = [
        ["raw onnxruntime (1 thread, batches of 8)", raw, "", ""],
        [
            "gateway + stage server (single-image requests)",
            served,
            f"{np.percentile(lat, 50):.1f}",
            f"{np.percentile(lat, 99):.1f}",
        ],
    ]
    text = "\n".join(
        [
            "# Testbed serving overhead",
            "",
            f"{machine_line()}",
            "",
            f"Model denoise/{a.variant} ({entry['macs']:,} MACs/item), batch {a.batch}, "
            f"CPU quota {a.quota:g} core ({'cgroup, 10 ms period' if confined else 'UNCONFINED'}), "
            f"{a.requests} requests, {a.concurrency} concurrent clients, loopback.",
            "",
            markdown_table(["path", "items/s", "p50 ms", "p99 ms"], rows),
            "",
            f"**throughput ratio served / raw = {ratio:.3f}** (goal ≥ 0.8); "
            f"failed requests: {res.failed}.",
            "",
            f"Inside the emulated server during the run: CPU used {util:.0%} of its quota; "
            f"CPU per item {served_cpu_ms:.3f} ms served vs {raw_cpu_ms:.3f} ms raw, so the "
            f"stage's own serving efficiency is {raw_cpu_ms / served_cpu_ms:.2f}. Of the "
            f"served CPU per item, the model runs took {model_cpu_ms:.3f} ms (thread CPU "
            f"clock around each run) and everything else in the server's cgroup (HTTP, "
            f"batching, metrics, the node agent) {served_cpu_ms - model_cpu_ms:.3f} ms, "
            f"{(served_cpu_ms - model_cpu_ms) * per_call:.2f} ms per call; {per_call:.1f} items per "
            f"gateway→stage call, mean batch {d['items'] / max(d['batches'], 1):.1f}. Quota "
            "use well below 100 % means the stage was starved (client or gateway short of "
            "CPU on this shared host).",
            "",
            reserve_line,
            "",
            f"Command: `.venv/bin/python benchmarks/testbed_serving.py --quota {a.quota:g} "
            f"--batch {a.batch} --requests {a.requests} --concurrency {a.concurrency} "
            f"--max-inflight {a.max_inflight}`",
        ]
    )
    write_result("testbed_serving", text)


if __name__ == "__main__":
    main()
