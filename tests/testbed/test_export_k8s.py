"""Kubernetes manifests load back through the kubernetes client's models, key for key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from kubernetes.client import ApiClient
from typer.testing import CliRunner

from testbed.backends.k8s_file import (
    MACHINE_LABEL,
    PLATFORM_IMAGE,
    PLATFORM_VENV,
    PLATFORMS,
    REGISTRY,
    app,
    cpu_quantity,
    manifests,
    memory_quantity,
)
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
    "CronJob": "V1CronJob",
    "Job": "V1Job",
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
    added = {REGISTRY} - {c.name for c in sc.components}  # a registry the export adds
    for d in deps:
        if d["metadata"]["labels"]["app.kubernetes.io/component"] in added:
            assert d["spec"]["replicas"] == 1
            continue
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
        c = sc.component(next(x.name for x in sc.components if x.name == component))
        cpu, _ = instance_demand(c, stage_config(dep, c) if c.is_stage else None)
        # the pod (service + step worker, if any) requests what the twin reserved
        millis = 0
        for container in d["spec"]["template"]["spec"]["containers"]:
            assert container["resources"]["limits"] == container["resources"]["requests"]
            millis += int(container["resources"]["requests"]["cpu"].removesuffix("m"))
        assert abs(millis - round(cpu * 1000)) <= 1, (component, millis, cpu)
    assert got == want
    services = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    stages = any(c.is_stage for c in sc.components)
    assert services == {c for c, row in dep.allocation.items() if any(row.values())} | (
        added if stages else set()
    )


def test_configmap_carries_variant_and_batch():
    sc = load_scenario(EXAMPLES / "digits-pipeline.yaml")
    dep = load_deployment(EXAMPLES / "digits-pipeline.deployment.yaml")
    (cm,) = [d for d in manifests(sc, dep) if d["kind"] == "ConfigMap"]
    assert cm["data"]["STAGE_ENCODER_VARIANT"] == "e-large"
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


def test_gpu_steps_request_a_gpu_and_stages_find_the_registry_by_its_name() -> None:
    for name in ("edge-cloud", "digits-pipeline"):
        sc = load_scenario(EXAMPLES / f"{name}.yaml")
        docs = manifests(sc, load_deployment(EXAMPLES / f"{name}.deployment.yaml"))
        services = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
        gpu_machines = {m for s in sc.servers if s.gpus for m in s.instance_names()}
        for d in docs:
            if d["kind"] != "Deployment":
                continue
            container = d["spec"]["template"]["spec"]["containers"][0]
            args = container.get("args", [])
            if "--registry" in args:  # digits-pipeline has no registry component: one is added
                host = args[args.index("--registry") + 1].split("//")[1].split(":")[0]
                assert host in services, (host, services)
            machine = d["metadata"]["labels"].get(MACHINE_LABEL)
            component = d["metadata"]["labels"]["app.kubernetes.io/component"]
            gpu_work = any(
                s.gpu_work and s.component == component for p in sc.processes for s in p.steps
            )
            wants = container["resources"]["limits"].get("nvidia.com/gpu")
            assert wants == ("1" if gpu_work and machine in gpu_machines else None), d["metadata"]


def test_manifests_validate_against_the_kubernetes_schemas(tmp_path: Path) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for name in ("edge-cloud", "digits-pipeline", "mlops-lab"):
        sc = load_scenario(EXAMPLES / f"{name}.yaml")
        dep = load_deployment(EXAMPLES / f"{name}.deployment.yaml")
        for platform in PLATFORMS:
            for doc in manifests(sc, dep, platform=platform):
                kubernetes_validate.validate(doc, "1.32", strict=True)


def _first_containers(docs: list[dict]) -> dict[str, dict]:
    """Component → the first container of its (first) Deployment."""
    out: dict[str, dict] = {}
    for d in docs:
        if d["kind"] == "Deployment":
            component = d["metadata"]["labels"]["app.kubernetes.io/component"]
            out.setdefault(component, d["spec"]["template"]["spec"]["containers"][0])
    return out


def test_platform_components_have_their_service_command() -> None:
    sc = load_scenario(EXAMPLES / "edge-cloud.yaml")
    dep = load_deployment(EXAMPLES / "edge-cloud.deployment.yaml")
    # the SQLite stand-ins on request, from the serving image
    builtin = _first_containers(manifests(sc, dep, platform="builtin"))
    modules = {c: box["args"][1] for c, box in builtin.items() if box.get("args")}
    assert modules["model-registry"] == "testbed.services.registry"
    assert modules["feature-store"] == "testbed.services.feature_store"
    assert modules["gateway"] == "testbed.services.gateway"
    assert builtin["feature-store"]["image"] == "mlops-twin:latest"
    assert "startupProbe" not in builtin["feature-store"]
    with pytest.raises(ValueError, match="platform: expected one of"):
        manifests(sc, dep, platform="sqlite")


def test_the_lab_export_runs_feast_and_mlflow_as_the_testbed_does(tmp_path: Path) -> None:
    sc = load_scenario(EXAMPLES / "mlops-lab.yaml")
    dep = load_deployment(EXAMPLES / "mlops-lab.deployment.yaml")
    out = tmp_path / "k8s"
    result = CliRunner().invoke(
        app,
        [
            "k8s",
            str(EXAMPLES / "mlops-lab.deployment.yaml"),
            "-s",
            str(EXAMPLES / "mlops-lab.yaml"),
            "-o",
            str(out),
            "--platform-image",
            "lab-platform:1",
        ],
    )
    assert result.exit_code == 0, result.output
    docs = [yaml.safe_load(p.read_text()) for p in sorted(out.glob("*.yaml"))]
    boxes = _first_containers(docs)
    # the testbed's own services and options: MLflow (SQLite + local artifacts) and Feast
    assert boxes["model-registry"]["args"][:2] == ["-m", "testbed.services.registry_mlflow"]
    assert boxes["model-registry"]["args"][-2:] == ["--root", "/tmp/registry"]
    assert boxes["feature-store"]["args"][:2] == ["-m", "testbed.services.features_feast"]
    assert boxes["feature-store"]["args"][-2:] == ["--repo", "/tmp/feast"]
    for c in ("model-registry", "feature-store"):
        box = boxes[c]
        assert box["image"] == "lab-platform:1"
        env = {e["name"]: e["value"] for e in box["env"]}
        assert env["MLOPS_TWIN_PLATFORM_VENV"] == PLATFORM_VENV
        assert box["startupProbe"]["failureThreshold"] * box["startupProbe"]["periodSeconds"] >= 120
        # pinned where the allocation put them, like every other component
        assert dep.allocation[c] == {"core": 1}
    # everything else stays on the serving image
    assert boxes["trainer"]["image"] == "mlops-twin:latest"
    assert "startupProbe" not in boxes["trainer"]
    # the same from the library, and a registry added for stages is MLflow too
    lab = _first_containers(manifests(sc, dep))
    assert lab["feature-store"]["args"] == boxes["feature-store"]["args"]
    digits = load_scenario(EXAMPLES / "digits-pipeline.yaml")
    added = _first_containers(
        manifests(digits, load_deployment(EXAMPLES / "digits-pipeline.deployment.yaml"))
    )
    assert added[REGISTRY]["args"][1] == "testbed.services.registry_mlflow"
    assert added[REGISTRY]["image"] == PLATFORM_IMAGE


def workloads(docs: list[dict]) -> list[tuple[dict, dict]]:
    """(manifest, container) of every Deployment, Job and CronJob."""
    out = []
    for d in docs:
        spec = d.get("spec", {})
        if d["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        if d["kind"] in ("Deployment", "Job", "CronJob"):
            out += [(d, c) for c in spec["template"]["spec"]["containers"]]
    return out


@pytest.mark.parametrize(("scenario", "deployment"), CASES)
def test_every_workload_has_a_command_of_a_module_that_exists(scenario, deployment):
    import importlib.util

    docs = manifests(load_scenario(EXAMPLES / scenario), load_deployment(EXAMPLES / deployment))
    for d, c in workloads(docs):
        assert c["command"] == ["python"] and c["args"][0] == "-m", d["metadata"]["name"]
        assert importlib.util.find_spec(c["args"][1]) is not None, c["args"][1]


def test_batch_processes_are_cron_jobs_that_reach_their_components_services():
    sc = load_scenario(EXAMPLES / "edge-cloud.yaml")
    docs = manifests(sc, load_deployment(EXAMPLES / "edge-cloud.deployment.yaml"))
    batch = {p.name for p in sc.processes if p.kind == "batch"}
    crons = {d["metadata"]["name"]: d for d in docs if d["kind"] == "CronJob"}
    assert set(crons) == batch
    assert crons["data-preparation"]["spec"]["schedule"] == "*/10 * * * *"  # 600 s, offset 30 s
    assert crons["retraining"]["spec"]["schedule"] == "5-59/30 * * * *"  # 1800 s, offset 300 s
    ports = {
        (d["metadata"]["name"], p["port"])
        for d in docs
        if d["kind"] == "Service"
        for p in d["spec"]["ports"]
    }
    for name, d in crons.items():
        (box,) = d["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
        args = box["args"]
        urls = [args[i + 1].split("=", 1)[1] for i, a in enumerate(args) if a == "--endpoint"]
        steps = {s.component for s in sc.process(name).steps}
        assert len(urls) == len(steps)
        for url in urls:
            host, port = url.split("//")[1].split(":")
            assert (host, int(port)) in ports, url
    # no Deployment runs a batch process
    assert not {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"} & batch


def test_cron_schedules():
    from testbed.backends.k8s_file import cron_schedule

    assert cron_schedule(60) == "*/1 * * * *"
    assert cron_schedule(900, 120) == "2-59/15 * * * *"
    assert cron_schedule(7200) == "0 */2 * * *"
    assert cron_schedule(7200, 3600 + 600) == "10 1-23/2 * * *"
    with pytest.raises(ValueError, match="no cron schedule"):
        cron_schedule(450)
