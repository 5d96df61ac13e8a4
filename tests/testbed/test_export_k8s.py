"""Kubernetes manifests load back through the kubernetes client's models, key for key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from kubernetes.client import ApiClient
from typer.testing import CliRunner

from testbed.backends.k8s_file import MACHINE_LABEL, app, cpu_quantity, manifests, memory_quantity
from twin.deployment import InfeasibleDeployment, instance_demand, stage_config
from twin.load import load_deployment, load_scenario

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
CASES = [
    ("digits-pipeline.yaml", "digits-pipeline.deployment.yaml"),
    ("edge-cloud.yaml", "edge-cloud.deployment.yaml"),
]
MODEL = {
    "Namespace": "V1Namespace",
    "ConfigMap": "V1ConfigMap",
    "Service": "V1Service",
    "Deployment": "V1Deployment",
}
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
api = ApiClient()


def load_model(doc: dict):
    """The client's model of ``doc``; raises when a required field is missing or mistyped."""
    return api._ApiClient__deserialize(doc, MODEL[doc["kind"]])  # the client's own loader


def strip_none(x):
    if isinstance(x, dict):
        return {k: strip_none(v) for k, v in x.items() if v is not None}
    if isinstance(x, list):
        return [strip_none(v) for v in x]
    return x


@pytest.mark.parametrize(("scenario", "deployment"), CASES)
def test_every_manifest_round_trips_through_the_client_models(tmp_path, scenario, deployment):
    out = tmp_path / "k8s"
    result = CliRunner().invoke(
        app, ["k8s", str(EXAMPLES / deployment), "-s", str(EXAMPLES / scenario), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    files = sorted(out.glob("*.yaml"))
    assert files and [str(p) for p in files] == result.stdout.split()
    for path in files:
        doc = yaml.safe_load(path.read_text())
        model = load_model(doc)
        # The loader ignores keys it does not know; serialising back and
        # comparing catches a misspelt or misplaced field.
        assert strip_none(api.sanitize_for_serialization(model)) == doc, path.name
        assert DNS1123.match(doc["metadata"]["name"]), doc["metadata"]["name"]


@pytest.mark.parametrize(("scenario", "deployment"), CASES)
def test_one_pinned_deployment_per_component_per_machine(scenario, deployment):
    sc, dep = load_scenario(EXAMPLES / scenario), load_deployment(EXAMPLES / deployment)
    docs = manifests(sc, dep)
    deps = [d for d in docs if d["kind"] == "Deployment"]
    want = {(c, m): n for c, row in dep.allocation.items() for m, n in row.items() if n > 0}
    got = {}
    for d in deps:
        term = d["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]["nodeSelectorTerms"][0]
        (expr,) = term["matchExpressions"]
        assert expr["key"] == MACHINE_LABEL and expr["operator"] == "In"
        (machine,) = expr["values"]
        component = d["metadata"]["labels"]["app.kubernetes.io/component"]
        got[(component, machine)] = d["spec"]["replicas"]
        # the selector must select the pod template (the API server refuses otherwise)
        sel = d["spec"]["selector"]["matchLabels"]
        assert sel.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        (container,) = d["spec"]["template"]["spec"]["containers"]
        c = sc.component(next(x.name for x in sc.components if x.name == component))
        cpu, _ = instance_demand(c, stage_config(dep, c) if c.is_stage else None)
        assert container["resources"]["requests"]["cpu"] == cpu_quantity(cpu)
        assert container["resources"]["limits"] == container["resources"]["requests"]
    assert got == want
    services = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    assert services == {c for c, row in dep.allocation.items() if any(row.values())}


def test_configmap_carries_variant_and_batch():
    sc = load_scenario(EXAMPLES / "digits-pipeline.yaml")
    dep = load_deployment(EXAMPLES / "digits-pipeline.deployment.yaml")
    (cm,) = [d for d in manifests(sc, dep) if d["kind"] == "ConfigMap"]
    assert cm["data"]["STAGE_ENCODER_VARIANT"] == "e-medium"
    assert cm["data"]["STAGE_CLASSIFIER_BATCH"] == "8"
    assert yaml.safe_load(cm["data"]["deployment.yaml"])["stages"]["denoise"]["batch"] == 4


def test_a_malformed_manifest_fails_to_load():
    sc = load_scenario(EXAMPLES / "digits-pipeline.yaml")
    dep = load_deployment(EXAMPLES / "digits-pipeline.deployment.yaml")
    d = next(x for x in manifests(sc, dep) if x["kind"] == "Deployment")
    del d["spec"]["template"]["spec"]["containers"][0]["name"]
    with pytest.raises(ValueError, match="name"):
        load_model(d)


def test_infeasible_deployment_is_refused(tmp_path):
    sc = load_scenario(EXAMPLES / "digits-pipeline.yaml")
    dep = load_deployment(EXAMPLES / "digits-pipeline.deployment.yaml")
    big = dep.model_copy(update={"allocation": {**dep.allocation, "encoder": {"node-2": 40}}})
    with pytest.raises(InfeasibleDeployment):
        manifests(sc, big)


def test_quantities():
    assert cpu_quantity(0.25) == "250m" and cpu_quantity(0) == "10m"
    assert memory_quantity(0.1) == "103Mi" and memory_quantity(2) == "2048Mi"
