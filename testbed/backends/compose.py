"""The ``compose`` backend: emulated servers as Docker containers, run by Docker Compose.

One container per machine of the scenario runs that machine's node agent (its
instances are the agent's child processes, so they share the container's CPU
quota and memory limit); the registry, feature store and gateway get a container
each. Everything sits on an ``internal`` network; the gateway is also on a second
network and is the only thing published, on ``127.0.0.1``. The controller reaches
node agents, registry and feature store through the gateway's
``/admin/proxy/<target>`` (see :mod:`testbed.backends.base`).

The image is built offline from ``compose/`` (``compose/build-base-image.sh``
makes the base image and the wheelhouse; the Compose file builds the serving
image with ``network: none``). Works with ``docker compose`` (v2) and
``docker-compose`` (v1.29); containers are found by the label
``com.docker.compose.project`` because the two name them differently.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from testbed.backends.base import (
    CPU_PERIOD_US,
    DEFAULT_STATE_DIR,
    SERVICES,
    Backend,
    BackendUnavailable,
    Capacity,
    Endpoints,
    NodeStatus,
    TestbedStatus,
)
from twin.spec import Deployment, Scenario

IMAGE = "mlops-twin-node:latest"
BASE_IMAGE = "mlops-twin-base:bookworm"
PROJECT_LABEL = "com.docker.compose.project"
ROLE_LABEL = "org.mlops-twin.role"
MACHINE_LABEL = "org.mlops-twin.machine"
UID_GID = "10001:10001"
VENV_PYTHON = "/opt/venv/bin/python"
# Ports inside the containers (each container has its own network namespace).
PORTS = {"gateway": 8080, "registry": 8081, "features": 8082, "node": 8090}
PLATFORM = ("registry", "features", "gateway")
STATE_FILE = "compose-state.json"
COMPOSE_FILE = "docker-compose.yml"
# Same environment as base.service_env's additions: telemetry off, one thread.
CONTAINER_ENV = {
    "ORT_DISABLE_TELEMETRY": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
    "HOME": "/tmp/home",
}
PLATFORM_MEM = "1g"  # registry / feature store / gateway: not emulated machines


def compose_dir() -> Path:
    """The repo's ``compose/`` folder (Dockerfile, offline build script)."""
    return Path(__file__).resolve().parents[2] / "compose"


def compose_command() -> list[str]:
    """``docker compose`` when the v2 plugin answers, else ``docker-compose`` (v1)."""
    if shutil.which("docker"):
        done = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, check=False, timeout=30
        )
        if done.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise BackendUnavailable(
        "neither `docker compose` nor `docker-compose` is installed; run "
        "compose/ensure-docker.sh as root or use --backend local"
    )


def project_name(state_dir: Path) -> str:
    """Compose project name, unique per state directory (so testbeds do not collide)."""
    digest = hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:10]
    return f"mlopstwin{digest}"


def service_key(machine: str) -> str:
    """Compose service (and DNS) name of a machine: lower case, no underscores."""
    return machine.lower().replace("_", "-")


def _healthcheck(port: int) -> dict[str, Any]:
    # minbase has no curl: probe with the venv's python. No start_interval (Docker 25+).
    probe = (
        "import sys, urllib.request; "
        f"sys.exit(urllib.request.urlopen('http://127.0.0.1:{port}/healthz', timeout=2)"
        ".status != 200)"
    )
    return {
        "test": ["CMD", VENV_PYTHON, "-c", probe],
        "interval": "1s",
        "timeout": "3s",
        "retries": 60,
    }


def _argv(service: str, port: int, **options: Any) -> list[str]:
    """Command line of ``service`` inside a container (listens on all interfaces)."""
    argv = [VENV_PYTHON, "-m", SERVICES[service], "--port", str(port), "--host", "0.0.0.0"]
    for key, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    return argv


def _hardened(role: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """Keys every service shares: image, non-root, read-only, no capabilities."""
    return {
        "image": IMAGE,
        "user": UID_GID,
        "read_only": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        # tini as PID 1 forwards SIGTERM and reaps the node agents' children.
        "init": True,
        "tmpfs": ["/tmp:size=256m,mode=1777"],
        "environment": dict(CONTAINER_ENV),
        "labels": {ROLE_LABEL: role, **(labels or {})},
        "stop_grace_period": "5s",
        "networks": ["backend"],
    }


def render(
    scenario: Scenario,
    deployment: Deployment,
    scale: Capacity,
    gateway_port: int,
    context: Path | None = None,
) -> dict[str, Any]:
    """The Compose file (as a dict) for ``scenario`` on emulated capacity ``scale``.

    One service per machine (node agent, ``cpu_period``/``cpu_quota`` = the machine's
    scaled cores over a ``CPU_PERIOD_US`` µs period, ``mem_limit`` = its RAM) plus
    registry, feature store and gateway. Only the gateway is published, on
    ``127.0.0.1:gateway_port``. Compose Specification form, without ``version:``.
    """
    machines = scenario.server_instances()
    keys = {m: service_key(m) for m in machines}
    clash = sorted({k for k in keys.values() if k in PLATFORM or list(keys.values()).count(k) > 1})
    if clash:
        raise ValueError(
            f"machine names {clash} clash with each other or with the platform services "
            f"{list(PLATFORM)} once lower-cased for Compose; rename them in the scenario"
        )
    common_labels = {
        "org.mlops-twin.scenario": scenario.name,
        "org.mlops-twin.deployment": deployment.name,
        "org.mlops-twin.cpu-factor": f"{scale.factor:.6g}",
    }
    registry_url = f"http://registry:{PORTS['registry']}"
    features_url = f"http://features:{PORTS['features']}"
    services: dict[str, Any] = {}

    registry = _hardened("registry", common_labels)
    registry["command"] = _argv("registry", PORTS["registry"], root="/data/registry")
    registry["tmpfs"] = [*registry["tmpfs"], "/data:size=512m,mode=1777"]
    registry["healthcheck"] = _healthcheck(PORTS["registry"])
    registry["mem_limit"] = PLATFORM_MEM
    # The one service that carries the build: `build` runs before `up`, offline.
    registry["build"] = {
        "context": str(context or compose_dir()),
        "dockerfile": "Dockerfile",
        "network": "none",
        "args": {"BASE_IMAGE": BASE_IMAGE},
    }
    services["registry"] = registry

    features = _hardened("features", common_labels)
    features["command"] = _argv("features", PORTS["features"], db="/data/features.db")
    features["tmpfs"] = [*features["tmpfs"], "/data:size=256m,mode=1777"]
    features["healthcheck"] = _healthcheck(PORTS["features"])
    features["mem_limit"] = PLATFORM_MEM
    services["features"] = features

    for m in machines:
        node = scale.node(m)
        svc = _hardened("node", {**common_labels, MACHINE_LABEL: m})
        svc["hostname"] = keys[m]
        svc["command"] = _argv(
            "node", PORTS["node"], name=m, cpu_cores=f"{node.cpu_cores:.6g}", ram_gb=node.ram_gb
        )
        svc["cpu_period"] = CPU_PERIOD_US
        svc["cpu_quota"] = cpu_quota_us(node.cpu_cores)
        svc["mem_limit"] = f"{max(1, round(node.ram_gb * 1024))}m"
        svc["healthcheck"] = _healthcheck(PORTS["node"])
        services[keys[m]] = svc

    targets = {m: f"http://{keys[m]}:{PORTS['node']}" for m in machines}
    targets.update(registry=registry_url, features=features_url)
    gateway = _hardened("gateway", common_labels)
    gateway["command"] = _argv(
        "gateway",
        PORTS["gateway"],
        registry=registry_url,
        features=features_url,
        targets=",".join(f"{k}={v}" for k, v in targets.items()),
    )
    gateway["healthcheck"] = _healthcheck(PORTS["gateway"])
    gateway["mem_limit"] = PLATFORM_MEM
    # A container only on an internal network is silently not published: the
    # gateway also joins `frontend`.
    gateway["networks"] = ["backend", "frontend"]
    gateway["ports"] = [f"127.0.0.1:{gateway_port}:{PORTS['gateway']}"]
    gateway["depends_on"] = {
        name: {"condition": "service_healthy"} for name in ("registry", "features")
    }
    services["gateway"] = gateway

    return {
        "services": services,
        "networks": {
            "backend": {"internal": True, "labels": dict(common_labels)},
            "frontend": {"labels": dict(common_labels)},
        },
    }


def cpu_quota_us(cores: float) -> int:
    """CFS quota (µs per ``CPU_PERIOD_US`` period) for ``cores`` host cores; ≥ 1 ms."""
    return max(1000, round(cores * CPU_PERIOD_US))


def endpoints_for(scenario: Scenario, gateway_port: int) -> Endpoints:
    """How the host and the services reach a rendered testbed."""
    gateway = f"http://127.0.0.1:{gateway_port}"
    machines = scenario.server_instances()
    return Endpoints(
        gateway=gateway,
        registry=f"{gateway}/admin/proxy/registry",
        features=f"{gateway}/admin/proxy/features",
        nodes={m: f"{gateway}/admin/proxy/{m}" for m in machines},
        registry_internal=f"http://registry:{PORTS['registry']}",
        features_internal=f"http://features:{PORTS['features']}",
        node_hosts={m: service_key(m) for m in machines},
    )


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _docker(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=False, timeout=timeout
    )


def project_containers(project: str) -> list[dict[str, Any]]:
    """``docker inspect`` of every container (running or not) of a Compose project."""
    ids = _docker("ps", "-a", "-q", "--filter", f"label={PROJECT_LABEL}={project}").stdout.split()
    if not ids:
        return []
    done = _docker("inspect", *ids)
    # A container removed between `ps` and `inspect` makes inspect fail for it alone.
    return json.loads(done.stdout or "[]")


def project_networks(project: str) -> list[str]:
    """Names of the networks a Compose project created."""
    out = _docker(
        "network",
        "ls",
        "-q",
        "--filter",
        f"label={PROJECT_LABEL}={project}",
        "--format",
        "{{.Name}}",
    ).stdout
    return out.split()


def _say(msg: str) -> None:
    print(f"testbed[compose]: {msg}", file=sys.stderr, flush=True)


class ComposeBackend(Backend):
    """Emulated servers as containers (see the module doc)."""

    name = "compose"

    def __init__(self, state_dir: Path = DEFAULT_STATE_DIR, model_dir: Path | None = None):
        super().__init__(state_dir)
        # The zoo (built on the host) is uploaded to the registry container by the
        # controller; None = the zoo's default folder.
        self.model_dir = model_dir
        self.project = project_name(self.state_dir)
        self.compose_file = self.state_dir / "compose" / COMPOSE_FILE
        self.timings: dict[str, float] = {}  # phase → seconds, of the last up/down

    # -- lifecycle ---------------------------------------------------------------

    def up(self, scenario: Scenario, deployment: Deployment, scale: Capacity) -> Endpoints:
        """Build the image offline, start every container, wait until all are healthy,
        then apply ``deployment`` through the shared controller; returns the endpoints."""
        self._require_engine()
        if project_containers(self.project):
            raise BackendUnavailable(
                f"a compose testbed is already running for {self.state_dir} "
                f"(project {self.project}); run `mlops-twin testbed down` first"
            )
        command = compose_command()
        port = free_port()
        endpoints = endpoints_for(scenario, port)
        self.compose_file.parent.mkdir(parents=True, exist_ok=True)
        self.compose_file.write_text(
            "# Rendered by testbed.backends.compose; do not edit.\n"
            + yaml.safe_dump(render(scenario, deployment, scale, port), sort_keys=False)
        )
        self._save_state(
            {
                "project": self.project,
                "command": command,
                "compose_file": str(self.compose_file),
                "endpoints": endpoints.to_dict(),
                "scenario": scenario.name,
                "deployment": deployment.name,
                "factor": scale.factor,
                "capacity": scale.to_dict(),
            }
        )
        self.timings = {}
        try:
            self._timed("inputs_s", "base image and wheelhouse", self.prepare_image_inputs)
            self._timed(
                "build_s", "image (offline)", lambda: self._compose(command, "build", timeout=900)
            )
            self._timed(
                "up_s", "containers", lambda: self._compose(command, "up", "-d", "--no-build")
            )
            self._timed("healthy_s", "health checks", self.wait_healthy)
            self._timed(
                "deploy_s",
                f"deployment {deployment.name}",
                lambda: self._deploy(endpoints, scenario, scale, deployment),
            )
        except BaseException:
            self.save_logs()
            self.down()
            raise
        return endpoints

    def apply(self, deployment: Deployment) -> None:
        """Change replicas, variants and batch sizes live (the controller diffs)."""
        from testbed.controller import Controller

        Controller.load(self.state_dir).deploy(deployment)

    def status(self) -> TestbedStatus:
        """The controller's view when it has state, else the containers' health."""
        state = self._load_state()
        if state is None:
            raise BackendUnavailable(f"no compose testbed is running for {self.state_dir}")
        try:
            from testbed.controller import Controller

            return Controller.load(self.state_dir).status(self.name)
        except (ImportError, FileNotFoundError):
            return self._container_status(state)

    def down(self) -> None:
        """Remove every container and network of the project; verify nothing is left."""
        t0 = time.perf_counter()
        state = self._load_state() or {}
        compose_file = Path(state.get("compose_file", self.compose_file))
        if compose_file.exists():
            command = state.get("command") or compose_command()
            self._compose(
                command,
                "down",
                "--volumes",
                "--remove-orphans",
                "--timeout",
                "5",
                file=compose_file,
                check=False,
            )
        # Whatever compose missed (e.g. a half-created project): remove by label.
        left = [c["Id"] for c in project_containers(self.project)]
        if left:
            _docker("rm", "-f", "-v", *left)
        nets = project_networks(self.project)
        if nets:
            _docker("network", "rm", *nets)
        still = [c["Name"] for c in project_containers(self.project)]
        still += project_networks(self.project)
        if still:
            raise RuntimeError(f"compose down left {still} behind; remove them with docker rm")
        for name in (STATE_FILE, "controller.json"):
            (self.state_dir / name).unlink(missing_ok=True)
        shutil.rmtree(compose_file.parent, ignore_errors=True)
        self.timings["down_s"] = time.perf_counter() - t0

    # -- steps -------------------------------------------------------------------

    def prepare_image_inputs(self) -> None:
        """Base image (debootstrap, once) and wheelhouse via compose/build-base-image.sh."""
        script = compose_dir() / "build-base-image.sh"
        if not script.exists():
            raise BackendUnavailable(
                f"{script} is missing: the compose backend needs the repository's compose/ "
                "folder (run from a source checkout)"
            )
        done = subprocess.run(
            [str(script), "all"],
            env={**os.environ, "PYTHON": sys.executable, "BASE_IMAGE": BASE_IMAGE},
            capture_output=True,
            text=True,
            check=False,
            timeout=900,
        )
        if done.returncode != 0:
            raise BackendUnavailable(
                "building the offline base image or wheelhouse failed: "
                + _tail(done.stderr or done.stdout)
            )

    def wait_healthy(self, timeout_s: float = 120.0) -> None:
        """Poll until every container reports healthy; fail fast when one exits."""
        deadline = time.monotonic() + timeout_s
        while True:
            containers = project_containers(self.project)
            dead = [c for c in containers if c["State"]["Status"] in ("exited", "dead")]
            if dead:
                c = dead[0]
                logs = _docker("logs", "--tail", "30", c["Id"])
                raise RuntimeError(
                    f"container {c['Name'].lstrip('/')} exited with code "
                    f"{c['State'].get('ExitCode')}: " + _tail(logs.stdout + logs.stderr)
                )
            health = [(c.get("State", {}).get("Health") or {}).get("Status") for c in containers]
            if containers and all(h == "healthy" for h in health):
                return
            if time.monotonic() > deadline:
                waiting = [
                    c["Name"].lstrip("/")
                    for c, h in zip(containers, health, strict=True)
                    if h != "healthy"
                ]
                raise TimeoutError(f"containers not healthy after {timeout_s:.0f} s: {waiting}")
            time.sleep(0.5)

    def save_logs(self) -> Path:
        """Copy every container's output to ``state_dir/logs/<service>.log``; the folder."""
        logs = self.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for c in project_containers(self.project):
            service = c["Config"]["Labels"].get("com.docker.compose.service", c["Id"][:12])
            done = _docker("logs", "--timestamps", c["Id"])
            (logs / f"{service}.log").write_text(done.stdout + done.stderr)
        return logs

    def _deploy(
        self, endpoints: Endpoints, scenario: Scenario, scale: Capacity, deployment: Deployment
    ) -> None:
        from testbed.controller import Controller
        from testbed.zoo.build import DEFAULT_DIR

        model_dir = Path(self.model_dir or DEFAULT_DIR)
        Controller(endpoints, scenario, scale, self.state_dir, model_dir).deploy(deployment)

    # -- helpers -----------------------------------------------------------------

    def _compose(
        self,
        command: list[str],
        *args: str,
        file: Path | None = None,
        check: bool = True,
        timeout: float = 300,
    ) -> subprocess.CompletedProcess[str]:
        argv = [*command, "-p", self.project, "-f", str(file or self.compose_file), *args]
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)
        if check and done.returncode != 0:
            raise RuntimeError(f"`{' '.join(argv)}` failed: " + _tail(done.stderr or done.stdout))
        return done

    def _timed(self, phase: str, what: str, step: Any) -> None:
        """Run one step of ``up``, say what it is on stderr and keep its duration (s)."""
        _say(f"{what} ...")
        t0 = time.perf_counter()
        step()
        self.timings[phase] = time.perf_counter() - t0
        _say(f"{what}: done in {self.timings[phase]:.1f} s")

    def _require_engine(self) -> None:
        from testbed.backends import docker_answers

        if not docker_answers():
            raise BackendUnavailable(
                "no Docker engine answers `docker info`; run compose/ensure-docker.sh as "
                "root, or use --backend local"
            )

    def _save_state(self, state: dict[str, Any]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_dir / STATE_FILE)

    def _load_state(self) -> dict[str, Any] | None:
        path = self.state_dir / STATE_FILE
        return json.loads(path.read_text()) if path.exists() else None

    def _container_status(self, state: dict[str, Any]) -> TestbedStatus:
        containers = project_containers(self.project)
        health = {
            c["Config"]["Labels"].get(MACHINE_LABEL) or c["Config"]["Labels"].get(ROLE_LABEL): (
                (c["State"].get("Health") or {}).get("Status") == "healthy"
            )
            for c in containers
        }
        capacity = state.get("capacity", {})
        nodes = [
            NodeStatus(
                name=n["name"],
                healthy=health.get(n["name"], False),
                cpu_quota_cores=n["cpu_cores"],
                ram_gb=n["ram_gb"],
            )
            for n in capacity.get("nodes", [])
        ]
        return TestbedStatus(
            backend=self.name,
            scenario=state.get("scenario", ""),
            deployment=state.get("deployment", ""),
            factor=float(state.get("factor", 1.0)),
            gateway=state["endpoints"]["gateway"],
            gateway_healthy=health.get("gateway", False),
            nodes=nodes,
            instances=[],
        )


def _tail(text: str, lines: int = 15) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


BACKEND = ComposeBackend
