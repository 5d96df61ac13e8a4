"""Serving overhead: gateway + stage server throughput vs raw onnxruntime, batch 8.

Run: .venv/bin/python benchmarks/testbed_serving.py [--quota 0.1] [--requests 3000] [--repeat 3]

One emulated server (local backend) runs the heaviest denoise variant with
dynamic batching at batch 8; a bounded closed loop of single-image requests goes
through the gateway (the client and the gateway run outside the emulated server,
as in every testbed run). The reference is a bare onnxruntime loop over batches
of 8 with one thread, in its own cgroup with the same CPU quota, run before and
after each served run (``--repeat`` served runs show the spread). Goal: ≥ 0.8.
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
from dataclasses import dataclass
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


@dataclass
class Served:
    """One served run: client-side throughput and latency, server-side counter deltas."""

    rate: float
    failed: int
    p50_ms: float
    p99_ms: float
    d: dict[str, float]
    reserve_cpu_s: float | None

    @property
    def cpu_ms(self) -> float:
        return 1000 * self.d["cpu_s"] / self.d["items"]

    @property
    def model_ms(self) -> float:
        return 1000 * self.d["model_cpu_s"] / self.d["items"]

    @property
    def per_call(self) -> float:
        return self.d["items"] / self.d["calls"] if self.d["calls"] else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quota", type=float, default=0.1, help="host cores of the stage's server")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--variant", default="d-large")
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--max-inflight", type=int, default=2, help="gateway calls per replica")
    ap.add_argument("--repeat", type=int, default=1, help="served runs, each between two raw runs")
    a = ap.parse_args()
    manifest = ensure_zoo(DEFAULT_DIR)
    entry = manifest["models"]["denoise"][a.variant]
    model_file = DEFAULT_DIR / entry["file"]
    confined = cgroups.available()
    sc, dep = one_stage("denoise", a.variant, a.quota, a.batch, 2.0, manifest)
    cap = plan_capacity(sc, factor=1.0)
    n_batches = max(a.requests // a.batch, 50)

    procs: list[str] = []
    cg = None
    if confined:
        # same quota and weight as an emulated server of the local backend
        cg = cgroups.Cgroup.create("bench-serving-raw", a.quota, 2.0, weight=PLATFORM_WEIGHT)
        procs = [str(Path(p) / "cgroup.procs") for p in cg.paths]
    raws: list[tuple[float, float]] = []  # (items/s, CPU s per item)
    served: list[Served] = []
    try:
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
                images = test_images(DEFAULT_DIR)
                (inst,) = Controller.load(backend.state_dir).instances.values()
                stage_url = endpoints.instance_url(inst.node, inst.port)
                reserve = [c for c in backend.cgroups if c.name.endswith("-platform")]
                # Raw runs bracket every served run (the testbed idles meanwhile), so a
                # neighbour's load that comes or goes on this shared host shifts both.
                raws.append(raw_throughput(model_file, DEFAULT_DIR, a.batch, n_batches, procs))
                for f in backend.reserve_procs():  # the client is the load generator: reserve
                    Path(f).write_text(str(os.getpid()))
                closed_loop(endpoints.gateway, images, 200, a.concurrency)  # warm-up
                for _ in range(a.repeat):
                    r0 = reserve[0].cpu_seconds() if reserve else None
                    before = stage_counters(stage_url, endpoints.nodes[inst.node])
                    res = closed_loop(endpoints.gateway, images, a.requests, a.concurrency)
                    after = stage_counters(stage_url, endpoints.nodes[inst.node])
                    r1 = reserve[0].cpu_seconds() if reserve else None
                    lat = np.array(res.latency_s) * 1000
                    served.append(
                        Served(
                            res.throughput(),
                            res.failed,
                            float(np.percentile(lat, 50)),
                            float(np.percentile(lat, 99)),
                            {k: after[k] - before[k] for k in after},
                            None if r0 is None or r1 is None else r1 - r0,
                        )
                    )
                    raws.append(raw_throughput(model_file, DEFAULT_DIR, a.batch, n_batches, procs))
            finally:
                if confined:
                    cgroups.leave(os.getpid())
                backend.down()
    finally:
        if cg is not None:
            cg.remove()
    write_result("testbed_serving", report(a, entry, confined, raws, served))


def report(
    a: argparse.Namespace,
    entry: dict,
    confined: bool,
    raws: list[tuple[float, float]],
    served: list[Served],
) -> str:
    """The markdown report: one row per served run against the raw runs around it."""
    rows = []
    ratios = []
    for k, s in enumerate(served):
        raw = (raws[k][0] + raws[k + 1][0]) / 2
        raw_cpu_ms = 1000 * (raws[k][1] + raws[k + 1][1]) / 2
        ratios.append(s.rate / raw)
        rows.append(
            [
                k + 1,
                f"{raws[k][0]:.1f} / {raws[k + 1][0]:.1f}",
                f"{s.rate:.1f}",
                f"**{s.rate / raw:.3f}**",
                f"{s.p50_ms:.1f}",
                f"{s.p99_ms:.1f}",
                f"{raw_cpu_ms:.3f}",
                f"{s.cpu_ms:.3f}",
                f"{s.model_ms:.3f}",
                f"{s.cpu_ms - s.model_ms:.3f}",
                f"{(s.cpu_ms - s.model_ms) * s.per_call:.2f}",
                f"{s.per_call:.1f}",
                f"{s.d['cpu_s'] / (s.d['t'] * a.quota):.0%}",
            ]
        )
    median = float(np.median(ratios))
    last = served[-1]
    reserve_line = (
        f"The host's reserve (gateway + client + registry + feature store) used "
        f"{last.reserve_cpu_s / last.d['t']:.2f} cores during the last run, "
        f"{1000 * last.reserve_cpu_s / last.d['items']:.2f} ms of CPU per request."
        if last.reserve_cpu_s is not None
        else "No reserve cgroup (unconfined run)."
    )
    spread = f" (runs: {', '.join(f'{r:.3f}' for r in ratios)})" if len(ratios) > 1 else ""
    headers = [
        "run",
        "raw items/s before / after",
        "served items/s",
        "served / raw",
        "p50 ms",
        "p99 ms",
        "raw CPU ms/item",
        "served CPU ms/item",
        "of which model",
        "rest",
        "rest ms/call",
        "items/call",
        "quota used",
    ]
    return "\n".join(
        [
            "# Testbed serving overhead",
            "",
            f"{machine_line()}",
            "",
            f"Model denoise/{a.variant} ({entry['macs']:,} MACs/item), batch {a.batch}, "
            f"CPU quota {a.quota:g} core ({'cgroup, 10 ms period' if confined else 'UNCONFINED'}), "
            f"{a.requests} single-image requests per served run through the gateway, "
            f"{a.concurrency} concurrent clients, loopback. Raw: a bare onnxruntime loop "
            f"over batches of {a.batch}, 1 thread, in its own cgroup with the same quota, "
            "run before and after every served run; the ratio is against their mean.",
            "",
            markdown_table(headers, rows),
            "",
            f"**throughput ratio served / raw = {median:.3f}**"
            f"{' (median)' if len(ratios) > 1 else ''} (goal ≥ 0.8){spread}; failed "
            f"requests: {sum(s.failed for s in served)}.",
            "",
            "CPU per item is what the emulated server's cgroup used (stage server and node "
            "agent) per item served; *of which model* is the thread CPU clock around each "
            "onnxruntime run inside the stage, *rest* everything else (HTTP, batching, "
            "metrics, the node agent). Raw CPU is the raw loop's own process time. Quota use "
            "well below 100 % would mean the stage was starved (client or gateway short of "
            f"CPU on this shared host). Mean batch in the last run: "
            f"{last.d['items'] / max(last.d['batches'], 1):.1f}.",
            "",
            reserve_line,
            "",
            f"Command: `.venv/bin/python benchmarks/testbed_serving.py --quota {a.quota:g} "
            f"--batch {a.batch} --requests {a.requests} --concurrency {a.concurrency} "
            f"--max-inflight {a.max_inflight} --repeat {a.repeat}`",
        ]
    )


if __name__ == "__main__":
    main()
