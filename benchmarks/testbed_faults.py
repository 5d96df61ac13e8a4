"""Fault test: kill one replica under load; no request that had not reached it is lost.

Run: .venv/bin/python benchmarks/testbed_faults.py [--requests 2000]
     flock /work/bench.lock .venv/bin/python benchmarks/testbed_faults.py --open-loop

``--open-loop`` (see :mod:`testbed_faults_open`): every stage replicated on two
emulated servers, open-loop load, and in turn SIGKILL of a replica, of the
feature store, of the registry and of a whole emulated server; lost requests
and the time for p95 to come back within 20 % of before, per fault kind.

The digits pipeline runs on the local backend with two denoise replicas on two
emulated servers. A bounded closed loop sends real digits through the gateway;
when a third of them are answered, one denoise replica is killed (SIGKILL). The
gateway marks it dead and retries the items it could not deliver — and, since
inference is idempotent, also the items that were inside the killed process — on
the other replica. Reported: requests sent, answered 200, failed (any other
outcome) and the items the gateway retried.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, markdown_table, write_result
from testbed_load import closed_loop, ensure_zoo

from testbed.backends.local import LocalBackend
from testbed.capacity import plan_capacity
from testbed.controller import Controller
from testbed.zoo.manifest import DEFAULT_DIR, load_testset
from twin.load import load_deployment, load_scenario
from twin.spec import Deployment

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def retries(gateway: str) -> float:
    text = httpx.get(gateway + "/metrics").text
    return sum(float(v) for v in re.findall(r"^gateway_retries_total\{[^}]*\} (\S+)", text, re.M))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--open-loop", action="store_true", help="the open-loop multi-fault run")
    ap.add_argument("--rate", type=float, default=100.0, help="open loop: requests/s")
    ap.add_argument("--phase", type=float, default=15.0, help="open loop: seconds per fault")
    a = ap.parse_args()
    if a.open_loop:
        from testbed_faults_open import run_open_loop

        run_open_loop(a.rate, a.phase)
        return
    ensure_zoo(DEFAULT_DIR)
    sc = load_scenario(EXAMPLES / "digits-pipeline.yaml")
    base = load_deployment(EXAMPLES / "digits-pipeline.deployment.yaml")
    dep = Deployment(
        name="two-denoise",
        stages=base.stages,
        allocation={**base.allocation, "denoise": {"node-1": 1, "node-2": 1}},
    )
    x, _ = load_testset(DEFAULT_DIR)
    with tempfile.TemporaryDirectory() as tmp:
        backend = LocalBackend(state_dir=Path(tmp) / "tb", model_dir=DEFAULT_DIR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            endpoints = backend.up(sc, dep, plan_capacity(sc))
        try:
            ctl = Controller.load(backend.state_dir)
            victim = next(i for i in ctl.instances.values() if i.component == "denoise")
            listing = httpx.get(f"{endpoints.nodes[victim.node]}/instances").json()
            pid = next(r["pid"] for r in listing if r["name"] == victim.name)
            killed = threading.Event()

            def progress(n: int) -> None:
                if n >= a.requests // 3 and not killed.is_set():
                    killed.set()
                    os.kill(pid, signal.SIGKILL)

            before = retries(endpoints.gateway)
            res = closed_loop(endpoints.gateway, x, a.requests, a.concurrency, progress)
            retried = retries(endpoints.gateway) - before
        finally:
            backend.down()
    ok = sum(c == 200 for c in res.codes)
    text = "\n".join(
        [
            "# Testbed fault test: one replica killed under load",
            "",
            machine_line(),
            "",
            f"Digits pipeline, two denoise replicas (node-1, node-2), {a.concurrency} concurrent "
            f"clients; replica {victim.name} (pid {pid}) killed with SIGKILL after "
            f"{a.requests // 3} answers.",
            "",
            markdown_table(
                ["requests", "answered 200", "failed", "items retried by the gateway"],
                [[len(res.codes), ok, res.failed, int(retried)]],
            ),
            "",
            f"**lost requests: {res.failed}** (no request that had not reached the killed replica "
            "may be lost; the gateway also retries those that had).",
            "",
            f"Command: `.venv/bin/python benchmarks/testbed_faults.py --requests {a.requests} "
            f"--concurrency {a.concurrency}`",
        ]
    )
    write_result("testbed_faults", text)
    if res.failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
