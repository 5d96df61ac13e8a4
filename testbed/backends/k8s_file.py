"""``mlops-twin export k8s``: Kubernetes manifests for a (validated) deployment.

One ``Deployment`` per component per machine — ``replicas`` = the allocation
matrix entry, pinned to that machine by a required node affinity on the label
``mlops-twin.io/machine`` (label the cluster's nodes accordingly) — with
resource requests = limits from the spec (what the twin reserved:
keep-alive + working cores, keep-alive + variant + step memory), one
``Service`` per component over all its machines, and a ``ConfigMap`` with
every stage's variant, batch size and batch timeout plus the deployment and
scenario YAML. Every container runs a testbed service with its command:

- stages: ``stage_server`` (model ``component.variant`` from the registry's
  Service; a scenario without a registry component gets one added);
- registry, feature store, gateway: their testbed services — the registry is
  MLflow's tracking server and model registry (``registry_mlflow``), the feature
  store Feast (``features_feast``), as the testbed runs them, from the platform
  image (``--platform-image``: the serving image plus Feast and MLflow in
  :data:`PLATFORM_VENV`, built by ``compose/Dockerfile.platform``), with a start-up
  probe for their slower start; ``--platform builtin`` exports the hand-written
  SQLite stand-ins instead (any serving image runs those);
- every other component (ingest, data-prep, trainer, evaluator, drift
  detector …): a ``step_worker`` that does batch steps' work; a stage or
  platform component that also runs batch steps gets one beside it (port
  ``WORK_PORT``, the working cores);
- each batch process: a ``CronJob`` (periodic arrivals) or ``Job`` running
  ``process_job``, which walks the process's DAG and posts each step's work
  to its component's Service.

GPU steps on GPU machines request ``nvidia.com/gpu``. Containers are hardened
as in the testbed's Compose backend (non-root, read-only root file system, no
capabilities). The manifests are plain dicts (:func:`manifests`); writing them
is :func:`write_manifests`. The tests load them back through the
``kubernetes`` client's models, validate them with ``kubernetes-validate``
and start them on Docker (``tests/testbed/test_export_start.py``).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from twin.deployment import (
    effective_stage,
    instance_demand,
    require_feasible,
    stage_config,
    step_ram,
)
from twin.spec import Component, Deployment, Scenario

MACHINE_LABEL = "mlops-twin.io/machine"
PORT = 8080
WORK_PORT = 8081  # a step-worker sidecar beside a service that also runs batch steps
RUN_AS = 10001
CONFIG_MOUNT = "/etc/mlops-twin"  # the ConfigMap's files (scenario.yaml, deployment.yaml)
REGISTRY = "model-registry"  # the Service added when stages need a registry the scenario lacks
# "feast-mlflow": Feast and MLflow as on the testbed; "builtin": the SQLite stand-ins
PLATFORMS = ("feast-mlflow", "builtin")
PLATFORM_IMAGE = "mlops-twin-platform:latest"
PLATFORM_VENV = "/opt/venv-platform"  # Feast and MLflow in the platform image
PLATFORM_MODULES = ("testbed.services.registry_mlflow", "testbed.services.features_feast")
_DNS = re.compile(r"[^a-z0-9-]+")


def dns_name(*parts: str) -> str:
    """A DNS-1123 label from ``parts`` (lowercase, '-', ≤ 63 characters)."""
    name = _DNS.sub("-", "-".join(parts).lower()).strip("-")
    if len(name) > 63:
        import hashlib

        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = f"{name[:54].rstrip('-')}-{digest}"
    return name


def cpu_quantity(cores: float) -> str:
    """Kubernetes CPU quantity in millicores (at least 10m)."""
    return f"{max(10, round(cores * 1000))}m"


def memory_quantity(gb: float) -> str:
    """Kubernetes memory quantity in MiB, rounded up (at least 16Mi)."""
    return f"{max(16, math.ceil(gb * 1024))}Mi"


def _labels(scenario: Scenario, deployment: Deployment, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/part-of": dns_name(scenario.name),
        "app.kubernetes.io/instance": dns_name(deployment.name),
        "app.kubernetes.io/component": dns_name(component),
        "app.kubernetes.io/managed-by": "mlops-twin",
    }


def registry_service(scenario: Scenario) -> str:
    """The Service name of the scenario's model registry (a component named '*registry*');
    without one, the registry the export adds (:data:`REGISTRY`)."""
    names = [c.name for c in scenario.components if "registry" in c.name.lower()]
    return dns_name(names[0]) if names else REGISTRY


def is_platform(c: Component) -> bool:
    """A registry, feature store or gateway: a testbed service of its own runs it."""
    name = c.name.lower()
    return "registry" in name or "feature" in name or name == "gateway"


def batch_components(scenario: Scenario) -> set[str]:
    """Components that run steps of batch processes (they need a step worker)."""
    return {s.component for p in scenario.processes if p.kind == "batch" for s in p.steps}


def needs_sidecar(scenario: Scenario, c: Component) -> bool:
    """A stage or platform service that also runs batch steps: a step worker beside it."""
    return (c.is_stage or is_platform(c)) and c.name in batch_components(scenario)


def work_endpoint(scenario: Scenario, c: Component) -> str:
    """Where a process job posts ``c``'s step work (its Service, main or sidecar port)."""
    port = WORK_PORT if needs_sidecar(scenario, c) else PORT
    return f"http://{dns_name(c.name)}:{port}"


def worker_args(name: str, port: int) -> list[str]:
    """``python`` arguments of a step worker (see ``testbed.services.step_worker``)."""
    return [
        "-m",
        "testbed.services.step_worker",
        "--port",
        str(port),
        "--host",
        "0.0.0.0",
        "--name",
        name,
    ]


def platform_args(scenario: Scenario, c: Component, platform: str = "feast-mlflow") -> list[str]:
    """``python`` arguments of a registry, feature store or gateway component ([] otherwise).

    ``platform`` "feast-mlflow": MLflow (``registry_mlflow``) and Feast
    (``features_feast``) as the testbed runs them; "builtin": the SQLite stand-ins.
    Their state lives under ``/tmp`` (an emptyDir): the cluster's own registry and
    feature store replace these for production; these make the export start as it is.
    """
    if platform not in PLATFORMS:
        raise ValueError(f"platform: expected one of {', '.join(PLATFORMS)}, got {platform!r}")
    name = c.name.lower()
    base = ["--port", str(PORT), "--host", "0.0.0.0"]
    builtin = platform == "builtin"
    if "registry" in name:
        module = "testbed.services.registry" if builtin else PLATFORM_MODULES[0]
        return ["-m", module, *base, "--root", "/tmp/registry"]
    if "feature" in name:
        if builtin:
            return ["-m", "testbed.services.feature_store", *base, "--db", "/tmp/features.db"]
        return ["-m", PLATFORM_MODULES[1], *base, "--repo", "/tmp/feast"]
    if name == "gateway":
        features = [x.name for x in scenario.components if "feature" in x.name.lower()]
        extra = ["--features", f"http://{dns_name(features[0])}:{PORT}"] if features else []
        return ["-m", "testbed.services.gateway", *base, *extra]
    return []


def gpus_of(scenario: Scenario, c: Component, machine: str) -> int:
    """GPUs an instance of ``c`` on ``machine`` asks for: 1 when a step of it has GPU work
    and the machine has a GPU (elsewhere the twin runs that work on CPU)."""
    gpu_work = any(
        s.component == c.name and s.gpu_work for p in scenario.processes for s in p.steps
    )
    return 1 if gpu_work and scenario.server_of()[machine].gpus > 0 else 0


def _hardened(
    name: str,
    image: str,
    args: list[str],
    port: int,
    resources: dict[str, str],
    component: str,
    configmap: str,
) -> dict[str, Any]:
    """A container running ``python ARGS`` on ``port``, probed on ``/healthz``, hardened."""
    probe = {"httpGet": {"path": "/healthz", "port": port}, "periodSeconds": 5}
    return {
        "name": name,
        "image": image,
        "command": ["python"],
        "args": args,
        "ports": [{"name": "http" if port == PORT else "work", "containerPort": port}],
        "env": [
            {"name": "ORT_DISABLE_TELEMETRY", "value": "1"},
            {"name": "OMP_NUM_THREADS", "value": "1"},
            {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
            {"name": "HOME", "value": "/tmp"},
            {"name": "MLOPS_COMPONENT", "value": component},
            {"name": "MLOPS_PORT", "value": str(port)},
        ],
        "envFrom": [{"configMapRef": {"name": configmap}}],
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "readinessProbe": probe,
        "livenessProbe": {**probe, "initialDelaySeconds": 10},
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }


def stage_args(scenario: Scenario, deployment: Deployment, c: Component) -> list[str]:
    """``python`` arguments of a stage server of ``c`` (model ``component.variant``)."""
    eff = effective_stage(scenario, deployment, c)
    return [
        "-m",
        "testbed.services.stage_server",
        "--port",
        str(PORT),
        "--host",
        "0.0.0.0",
        "--name",
        c.name,
        "--component",
        c.name,
        "--registry",
        f"http://{registry_service(scenario)}:{PORT}",
        "--model",
        f"{c.name}.{eff.variant}",
        "--variant",
        eff.variant,
        "--batch",
        str(eff.batch),
        "--batch-timeout-ms",
        f"{eff.batch_timeout_ms:g}",
        "--threads",
        "1",
    ]


def on_platform_image(container: dict[str, Any], platform_image: str) -> dict[str, Any]:
    """``container`` as Feast or MLflow run (from the platform image, which keeps them in
    :data:`PLATFORM_VENV`), with a start-up probe: ``feast apply`` and MLflow's server
    take tens of seconds before ``/healthz`` answers, and the liveness probe must not
    restart them meanwhile. Other containers are returned as they are."""
    args = container.get("args", [])
    if len(args) < 2 or args[1] not in PLATFORM_MODULES:
        return container
    env = [*container["env"], {"name": "MLOPS_TWIN_PLATFORM_VENV", "value": PLATFORM_VENV}]
    startup = {**container["readinessProbe"], "failureThreshold": 36}  # 3 minutes
    return {**container, "image": platform_image, "env": env, "startupProbe": startup}


def _containers(
    scenario: Scenario,
    deployment: Deployment,
    c: Component,
    image: str,
    configmap: str,
    gpus: int = 0,
    platform: str = "feast-mlflow",
    platform_image: str = PLATFORM_IMAGE,
) -> list[dict[str, Any]]:
    """The containers of one instance of ``c``: its service, and a step worker beside a
    stage or platform service that also runs batch steps. Together they request what the
    twin reserved for the instance; the worker gets the working cores and step memory."""
    cfg = stage_config(deployment, c) if c.is_stage else None
    cpu, ram = instance_demand(c, cfg)
    ram += step_ram(scenario).get(c.name, 0.0)
    if c.is_stage:
        args = stage_args(scenario, deployment, c)
    else:
        args = platform_args(scenario, c, platform) or worker_args(c.name, PORT)
    side = needs_sidecar(scenario, c)
    # the worker: the working cores and the steps' memory; the service: its keep-alive
    side_cpu = min(c.cpu_cores, cpu - c.keepalive_cpu_cores) if side else 0.0
    side_ram = min(step_ram(scenario).get(c.name, 0.0) + 0.0625, ram / 2) if side else 0.0
    resources = {"cpu": cpu_quantity(cpu - side_cpu), "memory": memory_quantity(ram - side_ram)}
    if gpus:  # a GPU step on a machine with GPUs: the device plugin's resource
        resources["nvidia.com/gpu"] = str(gpus)
    name = dns_name(c.name)
    out = [
        on_platform_image(
            _hardened(name, image, args, PORT, resources, c.name, configmap), platform_image
        )
    ]
    if side:
        res = {"cpu": cpu_quantity(side_cpu), "memory": memory_quantity(side_ram)}
        args = worker_args(c.name, WORK_PORT)
        out.append(_hardened("step-worker", image, args, WORK_PORT, res, c.name, configmap))
    return out


def _affinity(machine: str) -> dict[str, Any]:
    term = {"matchExpressions": [{"key": MACHINE_LABEL, "operator": "In", "values": [machine]}]}
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}
        }
    }


def _deployment(
    scenario: Scenario,
    deployment: Deployment,
    c: Component,
    machine: str,
    replicas: int,
    image: str,
    namespace: str,
    configmap: str,
    platform: str = "feast-mlflow",
    platform_image: str = PLATFORM_IMAGE,
) -> dict[str, Any]:
    labels = _labels(scenario, deployment, c.name)
    selector = {**labels, MACHINE_LABEL: machine}
    gpus = gpus_of(scenario, c, machine)
    containers = _containers(
        scenario, deployment, c, image, configmap, gpus, platform, platform_image
    )
    return _workload(
        dns_name(c.name, machine), namespace, selector, replicas, containers, _affinity(machine)
    )


def _workload(
    name: str,
    namespace: str,
    labels: dict[str, str],
    replicas: int,
    containers: list[dict[str, Any]],
    affinity: dict[str, Any] | None = None,
) -> dict[str, Any]:
    pod: dict[str, Any] = {"affinity": affinity} if affinity else {}
    pod.update(
        {
            "automountServiceAccountToken": False,
            "containers": containers,
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        }
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }


def _added_registry(
    scenario: Scenario,
    deployment: Deployment,
    image: str,
    namespace: str,
    configmap: str,
    platform: str = "feast-mlflow",
    platform_image: str = PLATFORM_IMAGE,
) -> list[dict[str, Any]]:
    """Service + Deployment of a model registry for stage servers when the scenario has
    none (e.g. the digits pipeline): their ``--registry`` must name a Service that exists.
    Not part of the placement, so not pinned to a machine."""
    labels = _labels(scenario, deployment, REGISTRY)
    module = "testbed.services.registry" if platform == "builtin" else PLATFORM_MODULES[0]
    args = ["-m", module, "--port", str(PORT), "--host", "0.0.0.0", "--root", "/tmp/registry"]
    res = {"cpu": cpu_quantity(0.25), "memory": memory_quantity(0.5)}
    box = on_platform_image(
        _hardened(REGISTRY, image, args, PORT, res, REGISTRY, configmap), platform_image
    )
    svc = _service_doc(REGISTRY, namespace, labels, [PORT])
    return [svc, _workload(REGISTRY, namespace, labels, 1, [box])]


def _service_doc(name: str, namespace: str, labels: dict, ports: list[int]) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": dns_name(name), "namespace": namespace, "labels": labels},
        "spec": {
            "selector": labels,
            "ports": [
                {
                    "name": "http" if p == PORT else "work",
                    "port": p,
                    "targetPort": "http" if p == PORT else "work",
                    "protocol": "TCP",
                }
                for p in ports
            ],
        },
    }


def _service(scenario: Scenario, deployment: Deployment, c: Component, namespace: str) -> dict:
    labels = _labels(scenario, deployment, c.name)
    ports = [PORT, WORK_PORT] if needs_sidecar(scenario, c) else [PORT]
    return _service_doc(c.name, namespace, labels, ports)


def _configmap(scenario: Scenario, deployment: Deployment, name: str, namespace: str) -> dict:
    data = {
        "MLOPS_SCENARIO": scenario.name,
        "MLOPS_DEPLOYMENT": deployment.name,
        "deployment.yaml": yaml.safe_dump(
            deployment.model_dump(mode="python", exclude_defaults=True), sort_keys=False
        ),
        "scenario.yaml": yaml.safe_dump(job_scenario(scenario), sort_keys=False),
    }
    for c in scenario.components:
        if not c.is_stage or not deployment.instances(c.name):
            continue
        eff = effective_stage(scenario, deployment, c)
        key = _DNS.sub("_", c.name.lower()).upper().replace("-", "_")
        data[f"STAGE_{key}_VARIANT"] = eff.variant
        data[f"STAGE_{key}_BATCH"] = str(eff.batch)
        data[f"STAGE_{key}_BATCH_TIMEOUT_MS"] = f"{eff.batch_timeout_ms:g}"
    labels = {
        "app.kubernetes.io/part-of": dns_name(scenario.name),
        "app.kubernetes.io/instance": dns_name(deployment.name),
        "app.kubernetes.io/managed-by": "mlops-twin",
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "data": data,
    }


def job_scenario(scenario: Scenario) -> dict[str, Any]:
    """The scenario as process jobs read it: workloads left out (a trace workload names a
    file the cluster does not have; jobs only need servers, components and processes)."""
    doc = scenario.model_dump(mode="json", exclude_defaults=True)
    doc["workloads"] = []
    return doc


def cron_schedule(period_s: float, offset_s: float = 0.0) -> str:
    """A cron schedule for a period of whole minutes that divides an hour, or whole hours
    that divide a day (with the offset rounded to the minute/hour); ValueError otherwise."""
    minutes = period_s / 60
    if minutes == int(minutes) and minutes >= 1 and 60 % int(minutes) == 0:
        m = int(minutes)
        start = round(offset_s / 60) % m
        return f"*/{m} * * * *" if start == 0 else f"{start}-59/{m} * * * *"
    hours = period_s / 3600
    if hours == int(hours) and 24 % int(hours) == 0:
        h = int(hours)
        start = round(offset_s / 3600) % h
        minute = round(offset_s / 60) % 60
        return f"{minute} */{h} * * *" if start == 0 else f"{minute} {start}-23/{h} * * *"
    raise ValueError(
        f"period {period_s:g} s has no cron schedule: use whole minutes that divide an hour "
        "or whole hours that divide a day"
    )


def _process_job(
    scenario: Scenario,
    deployment: Deployment,
    process: Any,
    image: str,
    namespace: str,
    configmap: str,
) -> dict[str, Any]:
    """A CronJob for a batch process with periodic arrivals, a Job for any other: its pod
    runs ``testbed.services.process_job``, which hands each step's work to the step
    workers of the step's component, in the DAG's order."""
    labels = {**_labels(scenario, deployment, process.name), "mlops-twin.io/process": process.name}
    components = {c.name: c for c in scenario.components}
    args = ["-m", "testbed.services.process_job", "--process", process.name]
    args += ["--scenario", f"{CONFIG_MOUNT}/scenario.yaml"]
    args += ["--deployment", f"{CONFIG_MOUNT}/deployment.yaml"]
    for name in dict.fromkeys(s.component for s in process.steps):
        args += ["--endpoint", f"{name}={work_endpoint(scenario, components[name])}"]
    res = {"cpu": cpu_quantity(0.1), "memory": memory_quantity(0.125)}
    box = _hardened("process", image, args, PORT, res, process.name, configmap)
    for key in ("ports", "readinessProbe", "livenessProbe"):
        box.pop(key)  # a job serves nothing
    box["volumeMounts"].append({"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True})
    pod = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "containers": [box],
        "volumes": [
            {"name": "tmp", "emptyDir": {}},
            {"name": "config", "configMap": {"name": configmap}},
        ],
    }
    job = {"backoffLimit": 0, "template": {"metadata": {"labels": labels}, "spec": pod}}
    meta = {"name": dns_name(process.name), "namespace": namespace, "labels": labels}
    arrivals = process.arrivals
    if arrivals is not None and arrivals.kind == "periodic":
        return {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": meta,
            "spec": {
                "schedule": cron_schedule(arrivals.period_s, arrivals.offset_s),
                "timeZone": "Etc/UTC",
                "concurrencyPolicy": "Allow",  # the twin lets executions overlap too
                "jobTemplate": {"metadata": {"labels": labels}, "spec": job},
            },
        }
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job}


def manifests(
    scenario: Scenario,
    deployment: Deployment,
    image: str = "mlops-twin:latest",
    namespace: str = "mlops-twin",
    platform: str = "feast-mlflow",
    platform_image: str = PLATFORM_IMAGE,
) -> list[dict[str, Any]]:
    """Namespace, ConfigMap, then per component its Service and per machine a Deployment,
    a registry when stages need one the scenario lacks, and per batch process a CronJob
    (periodic arrivals) or Job.

    ``platform``: "feast-mlflow" (the registry and feature store run MLflow and Feast
    as on the testbed, from ``platform_image``) or "builtin" (the SQLite stand-ins,
    from ``image``).

    Raises ``InfeasibleDeployment`` when the deployment breaks the scenario's
    constraints: what the cluster is asked to reserve is what the twin checked.
    """
    if platform not in PLATFORMS:
        raise ValueError(f"platform: expected one of {', '.join(PLATFORMS)}, got {platform!r}")
    require_feasible(scenario, deployment)
    machines = set(scenario.server_instances())
    namespace = dns_name(namespace)
    configmap = dns_name(deployment.name, "config")
    out: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        _configmap(scenario, deployment, configmap, namespace),
    ]
    for c in scenario.components:
        row = {m: n for m, n in deployment.allocation.get(c.name, {}).items() if n > 0}
        if not row:
            continue
        out.append(_service(scenario, deployment, c, namespace))
        for machine in sorted(row, key=scenario.server_instances().index):
            if machine not in machines:
                raise ValueError(f"allocation names unknown machine {machine!r}")
            out.append(
                _deployment(
                    scenario,
                    deployment,
                    c,
                    machine,
                    row[machine],
                    image,
                    namespace,
                    configmap,
                    platform,
                    platform_image,
                )
            )
    has_registry = any("registry" in c.name.lower() for c in scenario.components)
    if not has_registry and any(
        c.is_stage and deployment.instances(c.name) for c in scenario.components
    ):
        out += _added_registry(
            scenario, deployment, image, namespace, configmap, platform, platform_image
        )
    for p in scenario.processes:
        if p.kind == "batch":
            out.append(_process_job(scenario, deployment, p, image, namespace, configmap))
    return out


class _PlainDumper(yaml.SafeDumper):
    """No ``&id``/``*id`` anchors: shared label dicts are written out in full."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def write_manifests(docs: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """One YAML file per object (``NN-kind-name.yaml``) in ``out_dir``; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.yaml"):
        old.unlink()  # a stale manifest from an earlier export must not be applied
    paths = []
    for i, doc in enumerate(docs):
        kind = doc["kind"].lower()
        path = out_dir / f"{i:02d}-{kind}-{doc['metadata']['name']}.yaml"
        path.write_text(yaml.dump(doc, Dumper=_PlainDumper, sort_keys=False))
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- the command

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Export a deployment to run outside the testbed.",
)


@app.callback()
def _group() -> None:
    """Export a deployment to run outside the testbed."""


@app.command("k8s")
def k8s(
    deployment: Annotated[Path, typer.Argument(help="Deployment YAML.")],
    scenario: Annotated[Path, typer.Option("--scenario", "-s", help="Scenario YAML.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the manifests.")],
    image: Annotated[str, typer.Option(help="Container image of the services.")] = (
        "mlops-twin:latest"
    ),
    namespace: Annotated[str, typer.Option(help="Kubernetes namespace.")] = "mlops-twin",
    platform: Annotated[
        str,
        typer.Option(
            help="feast-mlflow: the registry and feature store run MLflow and Feast as on "
            "the testbed (from --platform-image); builtin: the SQLite stand-ins (from --image)."
        ),
    ] = "feast-mlflow",
    platform_image: Annotated[
        str,
        typer.Option(
            help="Image of MLflow and Feast: the serving image plus both in "
            f"{PLATFORM_VENV} (compose/Dockerfile.platform)."
        ),
    ] = PLATFORM_IMAGE,
) -> None:
    """Kubernetes manifests: a Deployment per component per machine, Services, a ConfigMap,
    a CronJob or Job per batch process."""
    from rich.console import Console

    from twin.deployment import InfeasibleDeployment
    from twin.load import SpecError, load_deployment, load_scenario

    err = Console(stderr=True)
    try:
        docs = manifests(
            load_scenario(scenario),
            load_deployment(deployment),
            image,
            namespace,
            platform,
            platform_image,
        )
        paths = write_manifests(docs, out_dir)
    except (SpecError, InfeasibleDeployment, ValueError, OSError) as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    for p in paths:
        print(p)
    err.print(
        f"{len(paths)} manifests; label each cluster node with {MACHINE_LABEL}=<machine> "
        f"and apply with: kubectl apply -f {out_dir}",
        highlight=False,
    )
