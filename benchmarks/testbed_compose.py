"""How long the compose backend takes, phase by phase, on this machine.

Phases: offline base image (debootstrap + docker import), wheelhouse, image build
(``network: none``), ``compose up``, up → all containers healthy, applying the
digits deployment (model registration, instances, routes), a few hundred real
digit requests through the gateway (latency percentiles, accuracy), ``down``.

``--fresh`` removes the base image, the serving image and the wheelhouse first,
so the figures are those of a new machine that already has a Docker engine
(``compose/ensure-docker.sh``); it holds the backend's build lock meanwhile, but
a testbed already up keeps running on an untagged image. The machine is shared:
its load average is printed with the figures. Usage::

    .venv/bin/python benchmarks/testbed_compose.py [--fresh] [--requests 300]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import httpx
import numpy as np

from testbed.api import INFER_PATH

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_result

ROOT = Path(__file__).resolve().parents[1]


def _run_script(step: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        [str(ROOT / "compose" / "build-base-image.sh"), step],
        check=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    return time.perf_counter() - t0


def send_digits(gateway: str, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """POST each image once, one at a time: (labels, latencies in ms, failures)."""
    labels, lat, failed = [], [], 0
    with httpx.Client(base_url=gateway, timeout=60.0) as client:
        for i, image in enumerate(images):
            t0 = time.perf_counter()
            r = client.post(INFER_PATH, json={"id": str(i), "image": image.tolist()})
            lat.append((time.perf_counter() - t0) * 1e3)
            if r.status_code != 200:
                failed += 1
                labels.append(-1)
            else:
                labels.append(r.json()["label"])
    return np.asarray(labels), np.asarray(lat), failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fresh", action="store_true", help="start without images/wheelhouse")
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()

    from testbed.backends import compose, compose_file
    from testbed.capacity import plan_capacity
    from testbed.zoo import DEFAULT_DIR, load_testset
    from twin.load import load_deployment, load_scenario

    rows: list[tuple[str, str]] = []
    # Under the backend's build lock: a testbed being built meanwhile waits.
    with compose.build_lock():
        if args.fresh:
            images = [compose_file.IMAGE, compose_file.BASE_IMAGE]
            subprocess.run(["docker", "rmi", "-f", *images], check=False, capture_output=True)
            for old in (ROOT / "compose" / "wheels").glob("*"):
                if old.is_dir():
                    shutil.rmtree(old)
                elif old.name != ".lock":
                    old.unlink()
        rows.append(("base image (debootstrap + import)", f"{_run_script('base'):.1f} s"))
        rows.append(("wheelhouse (pip download + project wheel)", f"{_run_script('wheels'):.1f} s"))

    scenario = load_scenario(ROOT / "examples" / "digits-pipeline.yaml")
    deployment = load_deployment(ROOT / "examples" / "digits-pipeline.deployment.yaml")
    scale = plan_capacity(scenario)
    zoo = ROOT / DEFAULT_DIR
    x, y = load_testset(zoo)  # built by `mlops-twin testbed build-models`
    with tempfile.TemporaryDirectory() as tmp:
        backend = compose.ComposeBackend(state_dir=Path(tmp) / "state", model_dir=zoo)
        try:
            endpoints = backend.up(scenario, deployment, scale)
            t = backend.timings
            rows.append(("image build (network none)", f"{t['build_s']:.1f} s"))
            rows.append(("compose up -d", f"{t['up_s']:.1f} s"))
            rows.append(("up → all healthy", f"{t['up_s'] + t['healthy_s']:.1f} s"))
            rows.append(("apply deployment", f"{t['deploy_s']:.1f} s"))
            n = min(args.requests, len(y))
            labels, lat, failed = send_digits(endpoints.gateway, x[:n])
            rows.append(
                (
                    f"{n} sequential digit requests",
                    f"p50 {np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms, "
                    f"accuracy {np.mean(labels == y[:n]):.3f}, failed {failed}",
                )
            )
        finally:
            backend.down()
        rows.append(("compose down (all removed)", f"{backend.timings['down_s']:.1f} s"))

    compose_cmd = " ".join(compose.compose_command())
    engine = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True
    ).stdout.strip()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        "# Compose backend: phase timings",
        "",
        f"Engine {engine}, `{compose_cmd}`, {os.cpu_count()} cores, load average {load}"
        + (" — from a fresh start (no images, no wheelhouse)." if args.fresh else "."),
        "Scenario `examples/digits-pipeline.yaml`, deployment `digits-default`, "
        f"CPU factor {scale.factor:.3g}.",
        "",
        "| phase | time |",
        "|---|---|",
        *[f"| {a} | {b} |" for a, b in rows],
        "",
        "Reproduce: `.venv/bin/python benchmarks/testbed_compose.py"
        + (" --fresh`" if args.fresh else "`"),
    ]
    write_result("testbed_compose", "\n".join(lines))


if __name__ == "__main__":
    main()
