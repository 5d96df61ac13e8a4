"""``mlops-twin export k8s``: Kubernetes manifests for a (validated) deployment.

One ``Deployment`` per component per machine — ``replicas`` = the allocation
matrix entry, pinned to that machine by a required node affinity on the label
``mlops-twin.io/machine`` (label the cluster's nodes accordingly) — with
resource requests = limits from the spec (what the twin reserved:
keep-alive + working cores, keep-alive + variant + step memory), one
``Service`` per component over all its machines, and a ``ConfigMap`` with
every stage's variant, batch size and batch timeout plus the deployment YAML
itself. Containers are hardened as in the testbed's Compose backend (non-root,
read-only root file system, no capabilities).

The manifests are plain dicts (:func:`manifests`); writing them is
:func:`write_manifests`. They are checked by loading them back through the
``kubernetes`` client's models in the tests.
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
RUN_AS = 10001
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


def _container(
    scenario: Scenario, deployment: Deployment, c: Component, image: str, configmap: str
) -> dict[str, Any]:
    cfg = stage_config(deployment, c) if c.is_stage else None
    cpu, ram = instance_demand(c, cfg)
    ram += step_ram(scenario).get(c.name, 0.0)
    resources = {"cpu": cpu_quantity(cpu), "memory": memory_quantity(ram)}
    if c.is_stage:
        eff = effective_stage(scenario, deployment, c)
        args = [
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
            f"http://registry:{PORT}",
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
    else:
        # No testbed service implements a generic component: the image's own
        # entry point runs it, told which component it is by MLOPS_COMPONENT.
        args = []
    probe = {"httpGet": {"path": "/healthz", "port": PORT}, "periodSeconds": 5}
    command = {"command": ["python"], "args": args} if args else {}
    return {
        "name": dns_name(c.name),
        "image": image,
        **command,
        "ports": [{"name": "http", "containerPort": PORT}],
        "env": [
            {"name": "ORT_DISABLE_TELEMETRY", "value": "1"},
            {"name": "OMP_NUM_THREADS", "value": "1"},
            {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
            {"name": "HOME", "value": "/tmp"},
            {"name": "MLOPS_COMPONENT", "value": c.name},
            {"name": "MLOPS_PORT", "value": str(PORT)},
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


def _deployment(
    scenario: Scenario,
    deployment: Deployment,
    c: Component,
    machine: str,
    replicas: int,
    image: str,
    namespace: str,
    configmap: str,
) -> dict[str, Any]:
    labels = _labels(scenario, deployment, c.name)
    selector = {**labels, MACHINE_LABEL: machine}
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": MACHINE_LABEL, "operator": "In", "values": [machine]}
                        ]
                    }
                ]
            }
        }
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": dns_name(c.name, machine), "namespace": namespace, "labels": selector},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": selector},
                "spec": {
                    "affinity": affinity,
                    "automountServiceAccountToken": False,
                    "containers": [_container(scenario, deployment, c, image, configmap)],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }


def _service(scenario: Scenario, deployment: Deployment, c: Component, namespace: str) -> dict:
    labels = _labels(scenario, deployment, c.name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": dns_name(c.name), "namespace": namespace, "labels": labels},
        "spec": {
            "selector": labels,
            "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def _configmap(scenario: Scenario, deployment: Deployment, name: str, namespace: str) -> dict:
    data = {
        "MLOPS_SCENARIO": scenario.name,
        "MLOPS_DEPLOYMENT": deployment.name,
        "deployment.yaml": yaml.safe_dump(
            deployment.model_dump(mode="python", exclude_defaults=True), sort_keys=False
        ),
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


def manifests(
    scenario: Scenario,
    deployment: Deployment,
    image: str = "mlops-twin:latest",
    namespace: str = "mlops-twin",
) -> list[dict[str, Any]]:
    """Namespace, ConfigMap, then per component its Service and per machine a Deployment.

    Raises ``InfeasibleDeployment`` when the deployment breaks the scenario's
    constraints: what the cluster is asked to reserve is what the twin checked.
    """
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
                    scenario, deployment, c, machine, row[machine], image, namespace, configmap
                )
            )
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
) -> None:
    """Kubernetes manifests: a Deployment per component per machine, Services, a ConfigMap."""
    from rich.console import Console

    from twin.deployment import InfeasibleDeployment
    from twin.load import SpecError, load_deployment, load_scenario

    err = Console(stderr=True)
    try:
        docs = manifests(load_scenario(scenario), load_deployment(deployment), image, namespace)
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
