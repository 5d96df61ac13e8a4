"""Serving overhead: gateway + stage server throughput vs raw onnxruntime, batch 8.

Run: .venv/bin/python benchmarks/testbed_serving.py [--quota 0.1 0.2 0.3 0.4] [--repeat 3]

One emulated server (local backend) runs the heaviest denoise variant with
dynamic batching at batch 8; a bounded closed loop of single-image requests goes
through the gateway (the client and the gateway run outside the emulated server,
as in every testbed run). The reference is a bare onnxruntime loop over batches
of 8 with one thread, in its own cgroup with the same CPU quota, run before and
after each served run (``--repeat`` served runs show the spread). Goal: ≥ 0.8,
read at the largest quota of the sweep at which the stage is still the bottleneck
(the report explains why the smallest quotas are a throttling regime).
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


# The stage counts as the bottleneck (so the throughput measures its serving, not
# the gateway or the client) when it used at least this share of its quota.
BOTTLENECK_QUOTA_USE = 0.95


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quota",
        type=float,
        nargs="+",
        default=[0.1, 0.2, 0.3, 0.4],
        help="host cores of the stage's server; several values make a sweep",
    )
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--variant", default="d-large")
    ap.add_argument("--requests", type=int, default=6000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--max-inflight", type=int, default=2, help="gateway calls per replica")
    ap.add_argument("--repeat", type=int, default=3, help="served runs, each between two raw runs")
    a = ap.parse_args()
    manifest = ensure_zoo(DEFAULT_DIR)
    entry = manifest["models"]["denoise"][a.variant]
    confined = cgroups.available()
    sweep = [(q, *measure(a, q, manifest, confined)) for q in a.quota]
    write_result("testbed_serving", report(a, entry, confined, sweep))


def measure(
    a: argparse.Namespace, quota: float, manifest: dict, confined: bool
) -> tuple[list[tuple[float, float]], list[Served]]:
    """Raw runs bracketing ``a.repeat`` served runs with the stage's server at ``quota``."""
    entry = manifest["models"]["denoise"][a.variant]
    model_file = DEFAULT_DIR / entry["file"]
    sc, dep = one_stage("denoise", a.variant, quota, a.batch, 2.0, manifest)
    cap = plan_capacity(sc, factor=1.0)
    n_batches = max(a.requests // a.batch, 50)
    procs: list[str] = []
    cg = None
    if confined:
        # same quota and weight as an emulated server of the local backend
        cg = cgroups.Cgroup.create("bench-serving-raw", quota, 2.0, weight=PLATFORM_WEIGHT)
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
    return raws, served


def report(
    a: argparse.Namespace,
    entry: dict,
    confined: bool,
    sweep: list[tuple[float, list[tuple[float, float]], list[Served]]],
) -> str:
    """The markdown report: one row per served run against the raw runs around it."""
    rows = []
    summary = []
    headline: tuple[float, float] | None = None  # (quota, median ratio)
    for quota, raws, served in sweep:
        ratios = []
        uses = []
        for k, s in enumerate(served):
            raw = (raws[k][0] + raws[k + 1][0]) / 2
            raw_cpu_ms = 1000 * (raws[k][1] + raws[k + 1][1]) / 2
            ratios.append(s.rate / raw)
            use = s.d["cpu_s"] / (s.d["t"] * quota)
            uses.append(use)
            rows.append(
                [
                    f"{quota:g}",
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
                    f"{use:.0%}",
                    "—" if s.reserve_cpu_s is None else f"{s.reserve_cpu_s / s.d['t']:.2f}",
                ]
            )
        median = float(np.median(ratios))
        bottleneck = confined and min(uses) >= BOTTLENECK_QUOTA_USE
        if bottleneck and (headline is None or quota > headline[0]):
            headline = (quota, median)
        summary.append(
            f"- quota {quota:g} core: served / raw median **{median:.3f}** "
            f"(runs: {', '.join(f'{r:.3f}' for r in ratios)}); "
            f"stage {'is' if bottleneck else 'is NOT'} the bottleneck "
            f"(quota use ≥ {BOTTLENECK_QUOTA_USE:.0%} in every run: "
            f"{'yes' if bottleneck else 'no'}); failed requests: "
            f"{sum(s.failed for s in served)}"
        )
    if headline is None:
        verdict = (
            "**No quota in the sweep kept the stage the bottleneck**: the ratio then "
            "measures the gateway or the client, not the stage's serving (goal ≥ 0.8)."
        )
    else:
        verdict = (
            f"**throughput ratio served / raw = {headline[1]:.3f}** (median) at "
            f"{headline[0]:g} core, the largest quota of the sweep at which the stage is "
            f"still the bottleneck (goal ≥ 0.8)."
        )
    headers = [
        "quota (cores)",
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
        "reserve cores",
    ]
    batch_ms = entry["service_time"]["mean_ms"] + entry["service_time"]["per_item_ms"] * a.batch
    return "\n".join(
        [
            "# Testbed serving overhead",
            "",
            f"{machine_line()}",
            "",
            f"Model denoise/{a.variant} ({entry['macs']:,} MACs/item), batch {a.batch}, "
            f"CPU quota swept over {', '.join(f'{q:g}' for q in a.quota)} core "
            f"({'cgroup, 10 ms period' if confined else 'UNCONFINED'}), "
            f"{a.requests} single-image requests per served run through the gateway, "
            f"{a.concurrency} concurrent clients, gateway max in-flight calls per replica "
            f"{a.max_inflight}, loopback. Raw: a bare onnxruntime loop over batches of "
            f"{a.batch}, 1 thread, in its own cgroup with the same quota, run before and "
            "after every served run; each ratio is against their mean.",
            "",
            verdict,
            "",
            *summary,
            "",
            markdown_table(headers, rows),
            "",
            "Why a sweep: the client and the gateway run outside the stage's server and "
            "need about 0.55 ms of CPU per request, so on this 2-core host the stage must "
            "be held to a fraction of a core to stay the bottleneck — only then does the "
            "throughput measure the stage's serving, which is what the goal is about. The "
            "issue's comparison is on the same model and threads with no quota; the largest "
            "quota that keeps the stage the bottleneck is the nearest this host can come to "
            "it. Small quotas cut batches: a batch of "
            f"{a.batch} takes about {batch_ms:.1f} ms by the manifest, and a quota of q "
            "cores allows q × 10 ms per 10 ms period, so at 0.1 core every batch is "
            "interrupted and resumes with cold caches. Medians per quota of CPU per item "
            "(ms), raw / served model / served rest: "
            + "; ".join(
                f"{q:g}: {np.median([r[1] for r in raws]) * 1000:.3f} / "
                f"{np.median([s.model_ms for s in served]):.3f} / "
                f"{np.median([s.cpu_ms - s.model_ms for s in served]):.3f}"
                for q, raws, served in sweep
            )
            + ". The calibrated twin sees the quota's effect on service time too: the "
            "profiling grid measures it per CPU share.",
            "",
            "CPU per item is what the emulated server's cgroup used (stage server and node "
            "agent) per item served; *of which model* is the thread CPU clock around each "
            "onnxruntime run inside the stage, *rest* everything else (HTTP, batching, "
            "metrics, the node agent). Raw CPU is the raw loop's own process time. *Reserve "
            "cores*: what the gateway, client, registry and feature store used meanwhile. "
            "Quota use well below 100 % means the stage was starved (client or gateway "
            "short of CPU on this shared host).",
            "",
            f"Command: `.venv/bin/python benchmarks/testbed_serving.py --quota "
            f"{' '.join(f'{q:g}' for q in a.quota)} --batch {a.batch} --requests "
            f"{a.requests} --concurrency {a.concurrency} --max-inflight {a.max_inflight} "
            f"--repeat {a.repeat}`",
        ]
    )


if __name__ == "__main__":
    main()
