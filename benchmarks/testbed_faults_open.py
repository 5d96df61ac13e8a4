"""Faults under open-loop load: replica, feature store, registry, whole server.

Called by ``benchmarks/testbed_faults.py --open-loop``. The digits pipeline runs
with each stage on node-1 and node-2 (one replica each). An open-loop client
sends real digit images (Poisson arrivals at ``rate``/s; images, so no request
needs the feature store) through the gateway for ``5 × phase`` seconds. After
the first phase (the baseline), at the start of each later phase SIGKILL goes
to: the encoder replica (the bottleneck stage) on node-2, the feature store,
the registry, then node-2's node agent and every instance on it at once (a
whole emulated server). Per fault: requests answered other than 200 (the
gateway retries what a dead replica did not answer, so every one is a lost
request), and the time until the p95 latency of a sliding 2 s window is back
within 20 % of the baseline p95 (∞ if it never is within the phase). The node
agent restarts a killed replica on its port; nothing restarts the feature
store, the registry or a dead node agent — the survivors carry the load.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
import time
import warnings
from pathlib import Path

import httpx
import numpy as np
import psutil
from _report import machine_line, markdown_table, write_result
from testbed_load import ensure_zoo

from loadgen.host import host_samples
from testbed.backends.local import LocalBackend
from testbed.capacity import plan_capacity
from testbed.controller import Controller
from testbed.zoo.manifest import DEFAULT_DIR, load_testset
from twin.load import load_deployment, load_scenario
from twin.spec import Deployment

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FAULTS = ("replica", "feature store", "registry", "whole server")
WINDOW_S = 2.0


async def _load(
    gateway: str, images: np.ndarray, rate: float, duration: float, seed: int, on_tick
) -> list[tuple[float, float, int | str]]:
    """(t_send, latency s, status) of open-loop Poisson requests."""
    rng = np.random.default_rng(seed)
    records: list[tuple[float, float, int | str]] = []
    limits = httpx.Limits(max_connections=512)
    async with httpx.AsyncClient(timeout=30.0, limits=limits) as client:

        async def one(i: int, t_send: float) -> None:
            body = {"id": str(i), "image": images[i % len(images)].tolist()}
            try:
                r = await client.post(gateway + "/v1/infer", json=body)
                code: int | str = r.status_code
            except httpx.HTTPError as e:
                code = type(e).__name__
            records.append((t_send, time.monotonic() - t_send, code))

        tasks = []
        t0 = time.monotonic()
        t = 0.0
        i = 0
        while t < duration:
            t += rng.exponential(1 / rate)
            await asyncio.sleep(max(t0 + t - time.monotonic(), 0))
            on_tick(time.monotonic() - t0)
            tasks.append(asyncio.create_task(one(i, time.monotonic())))
            i += 1
        await asyncio.gather(*tasks)
    return [(ts - t0, lat, code) for ts, lat, code in records]


def _p95(records: list, t_from: float, t_to: float) -> float:
    lat = [lat for ts, lat, code in records if t_from <= ts < t_to and code == 200]
    return float(np.percentile(lat, 95)) if len(lat) >= 5 else float("nan")


def run_open_loop(rate: float, phase: float, seed: int = 1) -> None:
    ensure_zoo(DEFAULT_DIR)
    sc = load_scenario(EXAMPLES / "digits-pipeline.yaml")
    base = load_deployment(EXAMPLES / "digits-pipeline.deployment.yaml")
    both = {"node-1": 1, "node-2": 1}
    dep = Deployment(
        name="replicated", stages=base.stages, allocation={c: dict(both) for c in base.allocation}
    )
    x, _ = load_testset(DEFAULT_DIR)
    steal0 = _steal()
    with tempfile.TemporaryDirectory() as tmp:
        backend = LocalBackend(state_dir=Path(tmp) / "tb", model_dir=DEFAULT_DIR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            endpoints = backend.up(sc, dep, plan_capacity(sc))
        try:
            ctl = Controller.load(backend.state_dir)
            procs = {p.name: p.pid for p in backend.procs}
            # on node-2, which dies whole later: node-1 keeps one replica of every stage
            victim = next(
                i for i in ctl.instances.values() if i.component == "encoder" and i.node == "node-2"
            )
            node2 = endpoints.nodes["node-2"]
            listing = httpx.get(f"{node2}/instances").json()
            targets = {
                "replica": [next(r["pid"] for r in listing if r["name"] == victim.name)],
                "feature store": [procs["features"]],
                "registry": [procs["registry"]],
            }
            killed_at: dict[str, float] = {}
            restarts: dict[str, int] = {}

            def tick(t: float) -> None:
                k = int(t // phase)
                if 1 <= k <= len(FAULTS) and FAULTS[k - 1] not in killed_at:
                    fault = FAULTS[k - 1]
                    if fault == "whole server":
                        # the agent and its instances at once (SIGKILL, no graceful exit)
                        with contextlib.suppress(httpx.HTTPError):
                            for r in httpx.get(f"{node2}/instances", timeout=2).json():
                                restarts[r["name"]] = r.get("restarts", 0)
                        agent = psutil.Process(procs["node:node-2"])
                        targets[fault] = [agent.pid, *(c.pid for c in agent.children(True))]
                    killed_at[fault] = t
                    for pid in targets[fault]:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)

            records = asyncio.run(
                _load(endpoints.gateway, x, rate, phase * (len(FAULTS) + 1), seed, tick)
            )
        finally:
            backend.down()
    steal = _steal() - steal0
    base_p95 = _p95(records, phase / 4, phase)  # the first quarter warms up
    rows = []
    total_lost = 0
    for k, fault in enumerate(FAULTS, start=1):
        t_kill = killed_at.get(fault, k * phase)
        t_end = (k + 1) * phase
        in_phase = [r for r in records if t_kill <= r[0] < t_end]
        lost = sum(code != 200 for _, _, code in in_phase)
        total_lost += lost
        recover = float("inf")
        t = t_kill
        while t + WINDOW_S <= t_end:
            p = _p95(records, t, t + WINDOW_S)
            if p == p and p <= 1.2 * base_p95:
                recover = t + WINDOW_S - t_kill
                break
            t += 0.25
        rows.append([fault, len(in_phase), lost, _p95(records, t_kill, t_end) * 1000, recover])
    text = "\n".join(
        [
            "# Testbed faults under open-loop load",
            "",
            f"Machine: {machine_line()}; host steal during the run: {steal:.2f} core-s",
            f"Command: `flock /work/bench.lock .venv/bin/python benchmarks/testbed_faults.py "
            f"--open-loop --rate {rate:g} --phase {phase:g}`",
            "",
            f"Digits pipeline, every stage on node-1 and node-2; Poisson image requests at "
            f"{rate:g}/s for {phase * (len(FAULTS) + 1):g} s; a SIGKILL at the start of each "
            f"{phase:g} s phase after the first. The rate is ≈ {rate / 160:.2f} of one node's "
            "estimated capacity (e-large ≈ 160/s on a 0.5-core node, from the zoo's manifest), "
            "so ρ ≈ 0.7 at the bottleneck once node-1 carries the load alone (the encoder "
            "shares node-1 with the other two stages). Baseline p95 (first phase after its "
            "first quarter): "
            f"{base_p95 * 1000:.1f} ms. Replica {victim.name} restarted by node-2's agent "
            f"{restarts.get(victim.name, 'an unknown number of')} time(s) before node-2 died.",
            "",
            markdown_table(
                [
                    "fault (SIGKILL)",
                    "requests in phase",
                    "lost (not 200)",
                    "p95 in phase (ms)",
                    "recovery: p95 ≤ 1.2× baseline (s)",
                ],
                rows,
            ),
            "",
            f"**Lost requests in all: {total_lost}** — no request needed the killed process (image "
            "requests never reach the feature store or registry; the gateway retries an item "
            "a dead replica did not answer on the other replica). Recovery is the end of the "
            f"first sliding {WINDOW_S:g} s window after the kill whose p95 is within 20 % of the "
            "baseline (∞: not within the phase). The node agent restarts a killed replica on "
            "its port; nothing restarts the feature store, the registry or a node agent: the "
            "survivors carry the load.",
        ]
    )
    write_result("testbed_faults_open", text)


def _steal() -> float:
    try:
        return sum(
            v
            for metric, labels, v in host_samples()
            if metric == "host_cpu_seconds_total" and '"steal"' in labels
        )
    except Exception:  # host counters are best effort
        return float("nan")
