"""The exported Kubernetes workloads start: each Deployment's containers run on Docker.

What a cluster would run, minus the cluster: for each example, every exported
Deployment becomes one Compose service (one replica) with the manifest's
command, arguments, environment (its own and the ConfigMap's), user, read-only
root and ``/tmp`` volume; a pod's second container (the step worker) shares the
first one's network, as containers of a pod do; each Service name is a network
alias of the pods it selects, so the names the manifests use resolve. The
readiness probe (``GET /healthz`` on the probed port) is the health check. The
registry gets the stage models before the stage servers start (a cluster's
registry would already hold them: the manifests expect ``component.variant``
there); edge-cloud's stages, which have no models of their own, get the digits
zoo's by position. The test checks that every workload becomes healthy, then
runs each CronJob/Job's container once (``MLOPS_WORK_SCALE`` 0.0001) and checks
it walks its process to the end.

The lab deployment is exported as it runs on the testbed: its registry is MLflow
and its feature store Feast, from the platform image (``compose/Dockerfile.platform``).
Beyond their health checks, a probe container then asks them over their own APIs:
``/healthz`` names ``mlflow`` and ``feast``, a few feature rows pushed to Feast are
read back online, and a stage model seeded into MLflow comes back sha256-checked.

Needs a Docker engine (``compose/ensure-docker.sh``) and builds the serving and
platform images offline like the compose backend (the platform wheels are
downloaded on the host first); marked ``docker`` and ``slow``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from testbed.backends import docker_answers
from testbed.backends.k8s_file import CONFIG_MOUNT, manifests
from twin.load import load_deployment, load_scenario

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
IMAGE = "mlops-twin-export-test:latest"
PLATFORM_IMAGE = "mlops-twin-export-test-platform:latest"
ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ZOO_ORDER = ("denoise", "encoder", "classifier")
# component.variant.onnx -> model "component.variant" (the stage servers load its latest
# version): a run's artifact registered in MLflow, or version "1" of the built-in registry
SEED = """
import os, sys
from testbed.services.platform_clients import api_of, register_model
alias = None if api_of(sys.argv[1]) == "mlflow" else "1"
for f in sorted(os.listdir("/models")):
    data = open(f"/models/{f}", "rb").read()
    register_model(sys.argv[1], f.removesuffix(".onnx"), data, alias=alias)
print("seeded", len(os.listdir("/models")))
"""
# Feast and MLflow over their APIs, through the testbed's clients
PROBE = """
import hashlib, json, sys
import numpy as np
from testbed.services import platform_clients as pc
registry, features, model, sha = sys.argv[1:5]
apis = {"registry": pc.api_of(registry), "features": pc.api_of(features)}
x = np.random.default_rng(0).random((5, 64), dtype=np.float32)
pc.ingest(features, np.arange(5), x, np.arange(5))
got = pc.online(features, list(range(5)))
same = sorted(got) == list(range(5)) and all(np.allclose(got[i], x[i]) for i in got)
data, version = pc.fetch_model(registry, model, "latest")
ok = hashlib.sha256(data).hexdigest() == sha
print(json.dumps({**apis, "online_rows_match": bool(same), "model_sha_ok": ok}))
"""


def compose_cmd() -> list[str]:
    from testbed.backends.compose import compose_command

    return compose_command()


def build_image() -> None:
    """The serving image with this checkout's code (offline, as the compose backend)."""
    import sys

    from testbed.backends.compose_file import BASE_IMAGE, compose_dir

    env = {**os.environ, "PYTHON": sys.executable, "BASE_IMAGE": BASE_IMAGE}
    script = compose_dir() / "build-base-image.sh"
    subprocess.run([str(script), "all"], env=env, check=True, capture_output=True, timeout=900)
    build = ["docker", "build", "-q", "--network", "none", "--build-arg"]
    subprocess.run(
        [*build, f"BASE_IMAGE={BASE_IMAGE}", "-t", IMAGE, str(compose_dir())],
        check=True,
        capture_output=True,
        timeout=600,
    )


def stage_models(scenario, deployment, zoo: Path, out: Path) -> None:
    """``component.variant.onnx`` for each deployed stage (digits zoo files by position)."""
    from twin.deployment import effective_stage

    out.mkdir(mode=0o755)
    stages = [c for c in scenario.components if c.is_stage and deployment.instances(c.name)]
    for i, c in enumerate(stages):
        variant = effective_stage(scenario, deployment, c).variant
        own = zoo / c.name / f"{variant}.onnx"
        family = zoo / ZOO_ORDER[min(i, 2)]
        src = own if own.is_file() else sorted(family.glob("*.onnx"))[0]
        shutil.copy(src, out / f"{c.name}.{variant}.onnx")
        os.chmod(out / f"{c.name}.{variant}.onnx", 0o644)


def healthcheck(probe: dict, startup: dict | None = None) -> dict:
    """The readiness probe as a Compose health check; a start-up probe (Feast, MLflow)
    becomes its start period, as a cluster would not count failures before it passes."""
    port, path = probe["httpGet"]["port"], probe["httpGet"]["path"]
    code = (
        f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}{path}', timeout=2)"
    )
    check = {"test": ["CMD", "python", "-c", code], "interval": "2s", "retries": 60}
    if startup:
        check["start_period"] = f"{startup['periodSeconds'] * startup['failureThreshold']}s"
    return check


def to_compose(docs: list[dict], config_dir: Path, models: Path) -> tuple[dict, list[dict]]:
    """A compose document of the Deployments; the Jobs' containers to run afterwards."""
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    cm_env = {k: v for k, v in cm["data"].items() if ENV_KEY.match(k)}
    for key, text in cm["data"].items():
        if key.endswith(".yaml"):
            (config_dir / key).write_text(text)
            os.chmod(config_dir / key, 0o644)
    services_of: dict[str, list[str]] = {}
    for d in docs:
        if d["kind"] == "Service":
            sel = d["spec"]["selector"]
            for w in docs:
                if (
                    w["kind"] == "Deployment"
                    and sel.items() <= w["spec"]["template"]["metadata"]["labels"].items()
                ):
                    services_of.setdefault(w["metadata"]["name"], []).append(d["metadata"]["name"])
    registry = next(n for n, svcs in services_of.items() if "model-registry" in svcs)
    services: dict[str, dict] = {
        "seed": {
            "image": IMAGE,
            "command": ["python", "-c", SEED, "http://model-registry:8080"],
            "volumes": [f"{models}:/models:ro"],
            "networks": ["pods"],
            "depends_on": {registry: {"condition": "service_healthy"}},
        }
    }
    for d in docs:
        if d["kind"] != "Deployment":
            continue
        name = d["metadata"]["name"]
        for i, c in enumerate(d["spec"]["template"]["spec"]["containers"]):
            sec = c["securityContext"]
            svc = {
                "image": c["image"],
                "command": [*c["command"], *c["args"]],
                "environment": {**cm_env, **{e["name"]: e["value"] for e in c["env"]}},
                "user": f"{sec['runAsUser']}:{sec['runAsGroup']}",
                "read_only": sec["readOnlyRootFilesystem"],
                "cap_drop": ["ALL"],
                "tmpfs": ["/tmp:mode=1777"],
                "healthcheck": healthcheck(c["readinessProbe"], c.get("startupProbe")),
                "labels": {"export-test.workload": name},
            }
            if i == 0:
                svc["networks"] = {"pods": {"aliases": services_of.get(name, [])}}
                if name != registry:
                    svc["depends_on"] = {"seed": {"condition": "service_completed_successfully"}}
                services[name] = svc
            else:  # a second container of the pod: the pod's network namespace
                svc["network_mode"] = f"service:{name}"
                svc["depends_on"] = [name]
                services[f"{name}-{c['name']}"] = svc
    jobs = []
    for d in docs:
        spec = d.get("spec", {})
        if d["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        if d["kind"] in ("Job", "CronJob"):
            (c,) = spec["template"]["spec"]["containers"]
            jobs.append({"name": d["metadata"]["name"], "argv": [*c["command"], *c["args"]]})
    doc = {"services": services, "networks": {"pods": {}}}
    return doc, jobs


def check_platform_apis(network: str, models: Path) -> None:
    """Feast and MLflow answer their own APIs (a probe container on the pods' network)."""
    import hashlib

    f = sorted(models.glob("*.onnx"))[0]
    sha = hashlib.sha256(f.read_bytes()).hexdigest()
    urls = ["http://model-registry:8080", "http://feature-store:8080"]
    pod = ["--network", network, "--user", "10001:10001", "--read-only"]
    pod += ["--tmpfs", "/tmp:mode=1777", "-e", "HOME=/tmp", IMAGE]
    run = subprocess.run(
        ["docker", "run", "--rm", *pod, "python", "-c", PROBE, *urls, f.stem, sha],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got == {
        "registry": "mlflow",
        "features": "feast",
        "online_rows_match": True,
        "model_sha_ok": True,
    }


def states(project: str) -> dict[str, str]:
    fmt = '{{.Label "com.docker.compose.service"}} {{.Status}}'
    out = subprocess.run(
        [
            "docker",
            "ps",
            "-a",
            "--filter",
            f"label=com.docker.compose.project={project}",
            "--format",
            fmt,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(line.split(" ", 1) for line in out.strip().splitlines() if line)


@pytest.fixture(scope="module")
def image() -> str:
    if not docker_answers():
        pytest.skip("no Docker engine answers `docker info` (compose/ensure-docker.sh starts one)")
    build_image()
    return IMAGE


@pytest.fixture(scope="module")
def platform_image(image) -> str:
    """The platform image on top of this checkout's serving image (Docker's cache makes
    a rebuild of an unchanged one take seconds; a changed one reinstalls Feast and MLflow)."""
    import sys

    from testbed.backends.compose_file import compose_dir

    env = {**os.environ, "PYTHON": sys.executable}
    env |= {"SERVING_IMAGE": image, "PLATFORM_IMAGE": PLATFORM_IMAGE}
    script = compose_dir() / "build-base-image.sh"
    run = subprocess.run(
        [str(script), "platform"], env=env, capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return PLATFORM_IMAGE


@pytest.mark.parametrize(
    ("example", "platform"),
    [("digits-pipeline", "builtin"), ("edge-cloud", "builtin"), ("mlops-lab", "feast-mlflow")],
)
def test_every_exported_workload_becomes_ready(request, image, example, platform, tmp_path, zoo):
    sc = load_scenario(EXAMPLES / f"{example}.yaml")
    dep = load_deployment(EXAMPLES / f"{example}.deployment.yaml")
    # builtin: the SQLite stand-ins in the serving image; feast-mlflow: the testbed's
    # own services from the platform image (built only for the examples that need it)
    kw = {}
    if platform != "builtin":
        kw["platform_image"] = request.getfixturevalue("platform_image")
    docs = manifests(sc, dep, image=IMAGE, platform=platform, **kw)
    config_dir, models = tmp_path / "config", tmp_path / "models"
    config_dir.mkdir(mode=0o755)
    stage_models(sc, dep, zoo, models)
    doc, jobs = to_compose(docs, config_dir, models)
    (tmp_path / "docker-compose.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
    project = f"exporttest{example.replace('-', '')}"
    compose = [*compose_cmd(), "-p", project, "-f", str(tmp_path / "docker-compose.yml")]
    try:
        up = subprocess.run([*compose, "up", "-d"], capture_output=True, text=True, timeout=300)
        if up.returncode != 0:  # e.g. the registry never healthy: its own words say why
            logs = subprocess.run(
                [*compose, "logs", "--tail", "20"], capture_output=True, text=True
            )
            pytest.fail(f"compose up: {up.stderr[-2000:]}\n{logs.stdout[-4000:]}")
        workloads = [s for s in doc["services"] if s != "seed"]
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            st = states(project)
            if all("(healthy)" in st.get(s, "") for s in workloads):
                break
            time.sleep(2)
        st = states(project)
        not_ready = {s: st.get(s) for s in workloads if "(healthy)" not in st.get(s, "")}
        if not_ready:
            logs = subprocess.run(
                [*compose, "logs", "--tail", "20"], capture_output=True, text=True
            )
            pytest.fail(f"not ready: {not_ready}\n{logs.stdout[-4000:]}")
        assert len(workloads) == sum(
            len(d["spec"]["template"]["spec"]["containers"])
            for d in docs
            if d["kind"] == "Deployment"
        )
        network = f"{project}_pods"
        for job in jobs:
            pod = ["--network", network, "--user", "10001:10001", "--read-only"]
            pod += ["--tmpfs", "/tmp:mode=1777", "-e", "MLOPS_WORK_SCALE=0.0001"]
            pod += ["-v", f"{config_dir}:{CONFIG_MOUNT}:ro"]
            run = subprocess.run(
                ["docker", "run", "--rm", *pod, IMAGE, *job["argv"]],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert run.returncode == 0, (job["name"], run.stderr[-2000:])
            summary = json.loads(run.stdout.strip().splitlines()[-1])
            assert summary["process"] == job["name"]
            assert summary["steps"] == len(sc.process(job["name"]).steps)
        assert len(jobs) == sum(p.kind == "batch" for p in sc.processes)
        if platform == "feast-mlflow":
            check_platform_apis(network, models)
    finally:
        subprocess.run([*compose, "down", "-v", "-t", "2"], capture_output=True, timeout=120)
    assert states(project) == {}
