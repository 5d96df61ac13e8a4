"""The controller: puts a deployment onto running node agents, the same for every backend.

It registers the model zoo in the registry, fills the feature store with the
held-out digits (entity id = row of the test set), starts and stops stage
instances through the node agents, switches variants and batch sizes live, and
gives the gateway its routes. Changes are ordered so no request is dropped: new
replicas are routed only once healthy; surplus ones are unrouted, drained, then
stopped; a variant switch happens inside the running server.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from testbed.backends.base import (
    Capacity,
    Endpoints,
    InstanceStatus,
    NodeCapacity,
    NodeStatus,
    TestbedStatus,
)
from testbed.services.guard import token_headers, use_token
from testbed.zoo.manifest import (
    DEFAULT_DIR,
    load_manifest,
    load_testset,
    with_scenario_models,
)
from twin.deployment import effective_stage
from twin.load import parse
from twin.spec import Deployment, Scenario, topological_order

STATE_FILE = "controller.json"
DRAIN_TIMEOUT_S = 10.0
CHANGE_KINDS = ("variant", "batch", "replica-start", "routes", "replica-stop")


class DeployError(RuntimeError):
    """The deployment cannot be applied (unknown variant, failed instance, ...)."""


@dataclass
class Instance:
    """One running stage replica."""

    name: str
    component: str
    node: str
    port: int
    variant: str
    batch: int
    batch_timeout_ms: float


def pipeline_stages(scenario: Scenario) -> list[str]:
    """Stage components in the order the first request process visits them."""
    for p in scenario.processes:
        if p.kind == "request":
            steps = topological_order(p) or [s.name for s in p.steps]
            by_name = {s.name: s.component for s in p.steps}
            return [by_name[s] for s in steps]
    raise DeployError(f"scenario {scenario.name!r} has no request process to serve")


def model_name(component: str, variant: str) -> str:
    """Registry name of a zoo model."""
    return f"{component}.{variant}"


class Controller:
    """Applies deployments to a running testbed (see module doc)."""

    def __init__(
        self,
        endpoints: Endpoints,
        scenario: Scenario,
        capacity: Capacity,
        state_dir: Path,
        model_dir: Path = DEFAULT_DIR,
    ):
        self.endpoints = endpoints
        self.scenario = scenario
        self.capacity = capacity
        self.state_dir = Path(state_dir)
        self.model_dir = Path(model_dir)
        self.instances: dict[str, Instance] = {}
        self.deployment: Deployment | None = None
        self.versions: dict[str, str] = {}  # registry name → version of the zoo build
        self.skipped: list[str] = []
        # What the last ``deploy`` did, one row per change: kind, stage, seconds it took
        # (kinds: variant, batch, replica-start, routes, replica-stop; see CHANGE_KINDS).
        self.changes: list[dict[str, Any]] = []
        self._serial = 0
        self.http = httpx.Client(timeout=60.0, headers=token_headers())

    # ------------------------------------------------------------------ setup

    def prepare(self) -> None:
        """Register the zoo's models and load the test digits into the feature store.

        Each zoo model is registered under ``<stage>.<variant>`` with the alias
        ``zoo-<sha256[:12]>`` of its build (MLflow), or as that version (builtin
        registry); stage servers load it by name and alias.
        """
        from testbed.services.platform_clients import ingest, register_model

        manifest = with_scenario_models(load_manifest(self.model_dir), self.scenario)
        for stage in self.pipeline():
            if stage not in manifest["models"]:
                raise DeployError(
                    f"stage {stage!r} has no models in the zoo (zoo stages: "
                    f"{', '.join(manifest['models'])})"
                )
            for variant, entry in manifest["models"][stage].items():
                name, alias = model_name(stage, variant), f"zoo-{entry['sha256'][:12]}"
                data = (self.model_dir / entry["file"]).read_bytes()
                register_model(self.endpoints.registry, name, data, alias=alias)
                self.versions[name] = alias
        x, y = load_testset(self.model_dir)
        ingest(self.endpoints.features, np.arange(len(y)), x, y)

    def pipeline(self) -> list[str]:
        return pipeline_stages(self.scenario)

    # ------------------------------------------------------------------ deploy

    def desired(self, deployment: Deployment) -> dict[str, dict[str, Any]]:
        """Per stage: its config and instances per node."""
        stages = self.pipeline()
        machines = set(self.scenario.server_instances())
        out: dict[str, dict[str, Any]] = {}
        self.skipped = [c for c in deployment.allocation if c not in stages]
        if self.skipped:
            warnings.warn(
                f"components {', '.join(self.skipped)} are not stages of the served pipeline; "
                "the testbed places no instances for them",
                UserWarning,
                stacklevel=3,
            )
        for stage in stages:
            comp = self.scenario.component(stage)
            eff = effective_stage(self.scenario, deployment, comp)
            variant = eff.variant
            if model_name(stage, variant) not in self.versions:
                raise DeployError(f"stage {stage!r}: variant {variant!r} is not in the model zoo")
            alloc = {m: n for m, n in deployment.allocation.get(stage, {}).items() if n > 0}
            unknown = set(alloc) - machines
            if unknown:
                raise DeployError(f"stage {stage!r} placed on unknown machines {sorted(unknown)}")
            if not alloc:
                raise DeployError(f"stage {stage!r} has no instance in the deployment")
            out[stage] = {
                "variant": variant,
                "batch": eff.batch,
                "batch_timeout_ms": eff.batch_timeout_ms,
                "alloc": alloc,
            }
        return out

    def deploy(self, deployment: Deployment) -> list[dict[str, Any]]:
        """Bring the running testbed to ``deployment`` without dropping requests.

        Returns what it changed and how long each change took (``self.changes``):
        kept replicas switch variant (the new model is loaded and warmed before the
        swap) or batch in place; new replicas start and answer a warm-up inference
        before the gateway routes to them; surplus ones are unrouted, drained, stopped.
        """
        if not self.versions:
            self.prepare()
        want = self.desired(deployment)
        self.changes = []
        # 1. live reconfiguration of kept replicas
        for inst in list(self.instances.values()):
            w = want[inst.component]
            if (inst.variant, inst.batch, inst.batch_timeout_ms) != (
                w["variant"],
                w["batch"],
                w["batch_timeout_ms"],
            ):
                kind = "variant" if inst.variant != w["variant"] else "batch"
                with self._timed(kind, inst.component):
                    self._reconfigure(inst, w)
        # 2. start missing replicas, remember surplus ones
        surplus: list[Instance] = []
        for stage, w in want.items():
            for node in sorted(set(w["alloc"]) | {i.node for i in self._of(stage)}):
                have = [i for i in self._of(stage) if i.node == node]
                n = w["alloc"].get(node, 0)
                for _ in range(n - len(have)):
                    with self._timed("replica-start", stage):
                        self._start(stage, node, w)
                surplus += have[n:] if len(have) > n else []
        # 3. route to exactly the wanted replicas, then drain and stop the rest
        for inst in surplus:
            del self.instances[inst.name]
        with self._timed("routes", ""):
            self._set_routes()
        for inst in surplus:
            with self._timed("replica-stop", inst.component):
                self._drain(inst)
                self._stop(inst)
        self.deployment = deployment
        self.save()
        return self.changes

    @contextmanager
    def _timed(self, kind: str, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.changes.append(
            {"kind": kind, "stage": stage, "seconds": round(time.perf_counter() - started, 4)}
        )

    def _of(self, stage: str) -> list[Instance]:
        return sorted(
            (i for i in self.instances.values() if i.component == stage), key=lambda i: i.name
        )

    def _start(self, stage: str, node: str, w: dict[str, Any]) -> Instance:
        self._serial += 1
        name = f"{stage}-{node}-{self._serial}"
        mname = model_name(stage, w["variant"])
        args = {
            "name": name,
            "component": stage,
            "registry": self.endpoints.internal_registry(),
            "model": mname,
            "version": self.versions[mname],
            "variant": w["variant"],
            "batch": w["batch"],
            "batch_timeout_ms": w["batch_timeout_ms"],
            "threads": 1,
        }
        r = self.http.post(
            f"{self.endpoints.nodes[node]}/instances",
            json={"name": name, "service": "stage", "args": args},
        )
        if r.status_code != 201:
            raise DeployError(f"node {node} refused instance {name}: {r.text[:300]}")
        inst = Instance(
            name, stage, node, r.json()["port"], w["variant"], w["batch"], w["batch_timeout_ms"]
        )
        self.instances[name] = inst
        self.save()
        self._wait_healthy(inst)
        return inst

    # a replica starting on idle CPU only (the local backend's start group) may wait that
    # long on a saturated host; after the agent's START_OUTSIDE_MAX_S (60 s) it finishes
    # its start in the node's quota, so this leaves room for that too
    def _wait_healthy(self, inst: Instance, timeout_s: float = 120.0) -> None:
        url = self.endpoints.admin_url(inst.node, inst.name) + "/healthz"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if self.http.get(url, timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            listing = self.http.get(f"{self.endpoints.nodes[inst.node]}/instances").json()
            for row in listing:
                if row["name"] == inst.name and not row["alive"]:
                    raise DeployError(
                        f"instance {inst.name} on {inst.node} exited with code {row['exit_code']}"
                    )
            time.sleep(0.1)
        raise DeployError(f"instance {inst.name} on {inst.node} not healthy after {timeout_s} s")

    def _reconfigure(self, inst: Instance, w: dict[str, Any]) -> None:
        mname = model_name(inst.component, w["variant"])
        body = {
            "variant": w["variant"],
            "model": mname,
            "version": self.versions[mname],
            "batch": w["batch"],
            "batch_timeout_ms": w["batch_timeout_ms"],
        }
        r = self.http.post(
            self.endpoints.admin_url(inst.node, inst.name) + "/admin/config", json=body
        )
        if r.status_code != 200:
            raise DeployError(f"instance {inst.name} refused the new config: {r.text[:300]}")
        inst.variant, inst.batch = w["variant"], w["batch"]
        inst.batch_timeout_ms = w["batch_timeout_ms"]

    def _set_routes(self) -> None:
        stages = [
            {
                "name": stage,
                "batch": max((i.batch for i in self._of(stage)), default=1),
                "replicas": [
                    {"name": i.name, "url": self.endpoints.instance_url(i.node, i.port)}
                    for i in self._of(stage)
                ],
            }
            for stage in self.pipeline()
        ]
        r = self.http.post(f"{self.endpoints.gateway}/admin/routes", json={"stages": stages})
        if r.status_code != 200:
            raise DeployError(f"gateway refused the routes: {r.text[:300]}")

    def _drain(self, inst: Instance) -> None:
        """Wait until the gateway has no request outstanding at ``inst``."""
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            routes = self.http.get(f"{self.endpoints.gateway}/admin/routes").json()
            busy = [
                r
                for s in routes["stages"]
                for r in s["replicas"]
                if r["name"] == inst.name and r["outstanding"] > 0
            ]
            if not busy:
                # requests routed just before the switch may still be in flight at the
                # gateway's client; give them one more round trip
                time.sleep(0.2)
                return
            time.sleep(0.05)

    def _stop(self, inst: Instance) -> None:
        r = self.http.delete(f"{self.endpoints.nodes[inst.node]}/instances/{inst.name}")
        if r.status_code not in (200, 404):
            raise DeployError(f"node {inst.node} could not stop {inst.name}: {r.text[:300]}")

    # ------------------------------------------------------------------ status

    def status(self, backend: str) -> TestbedStatus:
        """Nodes (health, usage) and instances (health, config) right now."""
        nodes = []
        for nc in self.capacity.nodes:
            url = self.endpoints.nodes.get(nc.name)
            usage: dict[str, Any] = {}
            healthy = False
            try:
                usage = self.http.get(f"{url}/usage", timeout=3.0).json()
                healthy = True
            except (httpx.HTTPError, ValueError):
                pass
            nodes.append(
                NodeStatus(
                    nc.name,
                    healthy,
                    nc.cpu_cores,
                    nc.ram_gb,
                    usage.get("cpu_seconds"),
                    usage.get("memory_bytes"),
                    url or "",
                )
            )
        insts = []
        for i in sorted(self.instances.values(), key=lambda i: (i.component, i.name)):
            try:
                ok = (
                    self.http.get(
                        self.endpoints.admin_url(i.node, i.name) + "/healthz", timeout=3.0
                    ).status_code
                    == 200
                )
            except httpx.HTTPError:
                ok = False
            insts.append(
                InstanceStatus(i.name, i.component, i.node, i.port, i.variant, i.batch, ok)
            )
        try:
            gw_ok = self.http.get(f"{self.endpoints.gateway}/healthz", timeout=3.0).is_success
        except httpx.HTTPError:
            gw_ok = False
        return TestbedStatus(
            backend,
            self.scenario.name,
            self.deployment.name if self.deployment else "",
            self.capacity.factor,
            self.endpoints.gateway,
            gw_ok,
            nodes,
            insts,
            {"registry": self.endpoints.registry, "features": self.endpoints.features},
        )

    # ------------------------------------------------------------------ state

    def save(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "endpoints": self.endpoints.to_dict(),
            "scenario": self.scenario.model_dump(mode="json"),
            "capacity": self.capacity.to_dict(),
            "model_dir": str(self.model_dir),
            "instances": [asdict(i) for i in self.instances.values()],
            "deployment": self.deployment.model_dump(mode="json") if self.deployment else None,
            "versions": self.versions,
            "serial": self._serial,
        }
        tmp = self.state_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self.state_dir / STATE_FILE)

    @classmethod
    def load(cls, state_dir: Path) -> Controller:
        """The controller a previous ``up`` saved in ``state_dir``."""
        path = Path(state_dir) / STATE_FILE
        if not path.exists():
            raise FileNotFoundError(f"no testbed is up (no {path}); run `mlops-twin testbed up`")
        use_token(Path(state_dir))
        s = json.loads(path.read_text())
        cap = s["capacity"]
        capacity = Capacity(
            cap["factor"],
            cap["host_cores"],
            cap["reserve_cores"],
            tuple(NodeCapacity(**n) for n in cap["nodes"]),
        )
        c = cls(
            Endpoints(**s["endpoints"]),
            parse(Scenario, s["scenario"], str(path)),
            capacity,
            Path(state_dir),
            Path(s["model_dir"]),
        )
        c.instances = {i["name"]: Instance(**i) for i in s["instances"]}
        if s["deployment"]:
            c.deployment = parse(Deployment, s["deployment"], str(path))
        c.versions = s["versions"]
        c._serial = s["serial"]
        return c
