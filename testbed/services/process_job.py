"""Process job: one execution of a batch process, outside the testbed.

An exported Kubernetes Job/CronJob runs this once per arrival of a batch
process (``data-preparation``, ``retraining`` …). It walks the process's DAG
the way the twin does: a step starts when every step it depends on is done;
its work — ``cpu_work``/``gpu_work`` drawn from the spec's distributions with
the job's seed — is split over ``min(parallelism, max_parallel, instances)``
equal parts (the deployment's computation alignment) and each part is posted
to the component's step workers (``POST /run`` of ``step_worker``) through the
component's Service. Independent steps run at the same time. Data passed
between steps (``data_out_mb``) is not moved: the twin charges it as network
time, here only the work is done.

Prints one JSON line per finished step and a summary line (wall seconds,
deadline met at full scale) and exits 0; exits 1 with a message naming the step and the
endpoint when a worker cannot be reached or refuses. ``--work-scale`` (or
``MLOPS_WORK_SCALE``) multiplies every step's work: 1 runs the spec's full
minutes, a smoke test uses 0.001.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np

from twin.spec import Deployment, Process, Scenario, Step

WORK_SCALE_ENV = "MLOPS_WORK_SCALE"


def parts_of(process: Process, step: Step, deployment: Deployment) -> int:
    """Instances the step's work is split over (the twin's rule)."""
    want = deployment.parallelism.get(f"{process.name}.{step.name}", 1)
    return max(1, min(want, step.max_parallel, deployment.instances(step.component)))


def draw_work(step: Step, rng: np.random.Generator, scale: float) -> tuple[float, float]:
    """``(cpu_ms, gpu_ms)`` of one execution of ``step`` at speed 1, times ``scale``."""
    from twin.service import make_sampler

    cpu = make_sampler(step.cpu_work, rng)(1) * 1e3 if step.cpu_work else 0.0
    gpu = make_sampler(step.gpu_work, rng)(1) * 1e3 if step.gpu_work else 0.0
    return cpu * scale, gpu * scale


def post_part(url: str, step: str, cpu_ms: float, gpu_ms: float, timeout_s: float) -> dict:
    """One part of a step on a worker; RuntimeError names the step and endpoint."""
    import httpx

    from testbed.services.guard import token_headers

    try:
        r = httpx.post(
            f"{url.rstrip('/')}/run",
            json={"step": step, "cpu_ms": cpu_ms, "gpu_ms": gpu_ms},
            headers=token_headers(),
            timeout=timeout_s,
        )
    except httpx.HTTPError as e:
        raise RuntimeError(f"step {step!r}: {url} did not answer ({type(e).__name__})") from None
    if r.status_code != 200:
        raise RuntimeError(f"step {step!r}: {url} answered {r.status_code}: {r.text[:200]}")
    return r.json()


def run_process(
    scenario: Scenario,
    deployment: Deployment,
    process_name: str,
    endpoints: dict[str, str],
    seed: int,
    scale: float = 1.0,
    say=print,
) -> dict:
    """Run every step of the process once, in dependency order; the summary."""
    process = next((p for p in scenario.processes if p.name == process_name), None)
    if process is None:
        known = ", ".join(p.name for p in scenario.processes)
        raise ValueError(f"no process {process_name!r} in {scenario.name} (known: {known})")
    missing = sorted({s.component for s in process.steps} - set(endpoints))
    if missing:
        raise ValueError(f"no --endpoint for component(s) {missing} of process {process_name!r}")
    rng = np.random.default_rng(seed)
    work = {s.name: draw_work(s, rng, scale) for s in process.steps}
    timeout_s = 60.0 + 2 * max(c + g for c, g in work.values()) / 1e3
    t0 = time.perf_counter()
    done: set[str] = set()
    running: dict[Future, str] = {}
    with ThreadPoolExecutor(max_workers=64) as pool:

        def start(step: Step) -> None:
            k = parts_of(process, step, deployment)
            cpu, gpu = work[step.name]
            url = endpoints[step.component]

            def whole() -> list[dict]:
                with ThreadPoolExecutor(max_workers=k) as parts:
                    futs = [
                        parts.submit(post_part, url, step.name, cpu / k, gpu / k, timeout_s)
                        for _ in range(k)
                    ]
                    return [f.result() for f in futs]

            running[pool.submit(whole)] = step.name

        def ready() -> list[Step]:
            busy = set(running.values())
            return [
                s
                for s in process.steps
                if s.name not in done and s.name not in busy and set(s.depends_on) <= done
            ]

        for s in ready():
            start(s)
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                name = running.pop(fut)
                answers = fut.result()  # a worker's RuntimeError ends the job
                done.add(name)
                cpu, gpu = work[name]
                say(
                    json.dumps(
                        {
                            "step": name,
                            "parts": len(answers),
                            "cpu_ms": round(cpu, 3),
                            "gpu_ms": round(gpu, 3),
                            "end_s": round(time.perf_counter() - t0, 3),
                        }
                    )
                )
            for s in ready():
                start(s)
    wall = time.perf_counter() - t0
    deadline = process.deadline_s
    return {
        "process": process.name,
        "steps": len(done),
        "wall_s": round(wall, 3),
        "deadline_s": deadline,
        # a scaled run's wall time is mostly HTTP, not work: no verdict on the deadline
        "deadline_met": None if deadline is None or scale != 1 else wall <= deadline,
    }


def parse_endpoints(items: list[str]) -> dict[str, str]:
    """``component=URL`` items → a dict; ValueError names a malformed item."""
    out = {}
    for item in items:
        name, sep, url = item.partition("=")
        if not sep or not name or not url.startswith(("http://", "https://")):
            raise ValueError(f"--endpoint expects COMPONENT=http://HOST:PORT, got {item!r}")
        out[name] = url
    return out


def main(argv: list[str] | None = None) -> int:
    # not load_scenario: it reads trace files with pandas, which the serving image lacks;
    # the exported scenario has no workloads and a job reads no arrivals
    from twin.load import SpecError, load_deployment, parse, read_yaml

    p = argparse.ArgumentParser(description="Run one execution of a batch process.")
    p.add_argument("--scenario", type=Path, required=True)
    p.add_argument("--deployment", type=Path, required=True)
    p.add_argument("--process", required=True)
    p.add_argument("--endpoint", action="append", default=[], help="COMPONENT=URL (repeat)")
    p.add_argument("--seed", type=int, default=None, help="default: from the clock")
    p.add_argument("--work-scale", type=float, default=None, help=f"default: ${WORK_SCALE_ENV}")
    a = p.parse_args(argv)
    scale = a.work_scale if a.work_scale is not None else float(os.environ.get(WORK_SCALE_ENV, 1))
    seed = a.seed if a.seed is not None else time.time_ns() % (1 << 32)
    try:
        if not 0 < scale <= 1000:
            raise ValueError(f"work scale must be in (0, 1000], got {scale:g}")
        summary = run_process(
            parse(Scenario, read_yaml(a.scenario), str(a.scenario)),
            load_deployment(a.deployment),
            a.process,
            parse_endpoints(a.endpoint),
            seed,
            scale,
        )
    except (SpecError, ValueError, RuntimeError, OSError) as e:
        print(f"process job failed: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
