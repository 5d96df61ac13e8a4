"""The ``compose`` backend: emulated servers as Docker containers, run by Docker Compose.

One container per machine of the scenario runs that machine's node agent (its
instances are the agent's child processes, so they share the container's CPU
quota and memory limit); the registry, feature store and gateway get a container
each (the file itself: :mod:`testbed.backends.compose_file`). The controller
reaches node agents, registry and feature store through the gateway's
``/admin/proxy/<target>`` (see :mod:`testbed.backends.base`), since only the
gateway is published.

The image is built offline from ``compose/`` (``compose/build-base-image.sh``
makes the base image and the wheelhouse; the Compose file builds the serving
image with ``network: none``). Works with ``docker compose`` (v2) and
``docker-compose`` (v1.29); containers are found by the label
``com.docker.compose.project`` because the two name them differently.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from testbed.backends.base import (
    DEFAULT_STATE_DIR,
    Backend,
    BackendUnavailable,
    Capacity,
    Endpoints,
    TestbedStatus,
)
from testbed.backends.compose_file import (
    BASE_IMAGE,
    compose_dir,
    endpoints_for,
    free_port,
    project_name,
    render,
)
from testbed.services.guard import token_headers, use_token
from twin.spec import Deployment, Scenario

PROJECT_LABEL = "com.docker.compose.project"
IMAGE_LABEL = "org.mlops-twin.image=node"  # set by compose/Dockerfile's final stage
STATE_FILE = "compose-state.json"
COMPOSE_FILE = "docker-compose.yml"
# The containers' health probe (compose_file.HEALTH_PROBES); "python" reproduces the old
# probe for benchmarks/testbed_compose_tail.py's before/after.
HEALTH_PROBE_ENV = "MLOPS_TWIN_COMPOSE_HEALTH_PROBE"
# The cgroup every container goes under (with the local backend's parent weight), so
# the containers' quotas hold on a busy host; "none" leaves them in Docker's group.
CGROUP_PARENT_ENV = "MLOPS_TWIN_COMPOSE_CGROUP_PARENT"
CGROUP_PARENT = "mlops-twin-compose"


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


def _docker(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=False, timeout=timeout
    )


def project_containers(project: str) -> list[dict[str, Any]]:
    """``docker inspect`` of every container (running or not) of a Compose project."""
    listing = _docker("ps", "-a", "-q", "--filter", f"label={PROJECT_LABEL}={project}")
    if listing.returncode != 0:
        # Never report "nothing left" when the engine could not be asked.
        raise RuntimeError(f"`docker ps` failed: {_tail(listing.stderr)}")
    ids = listing.stdout.split()
    if not ids:
        return []
    done = _docker("inspect", *ids)
    # A container removed between `ps` and `inspect` makes inspect fail for it alone.
    return json.loads(done.stdout or "[]")


def project_networks(project: str) -> list[str]:
    """Names of the networks a Compose project created."""
    listing = _docker(
        "network",
        "ls",
        "-q",
        "--filter",
        f"label={PROJECT_LABEL}={project}",
        "--format",
        "{{.Name}}",
    )
    if listing.returncode != 0:
        raise RuntimeError(f"`docker network ls` failed: {_tail(listing.stderr)}")
    return listing.stdout.split()


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
        use_token(self.state_dir)  # compose passes it from our environment, not the file
        self.compose_file.parent.mkdir(parents=True, exist_ok=True)
        self.compose_file.write_text(
            "# Rendered by testbed.backends.compose; do not edit.\n"
            + yaml.safe_dump(
                render(
                    scenario,
                    deployment,
                    scale,
                    port,
                    health_probe=os.environ.get(HEALTH_PROBE_ENV, "shell"),
                    cgroup_parent=weighted_cgroup_parent(),
                ),
                sort_keys=False,
            )
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
            # One build at a time per checkout: a second testbed's wheelhouse refresh
            # must not change the build context under this one's `compose build`.
            with build_lock():
                self._timed("inputs_s", "base image and wheelhouse", self.prepare_image_inputs)
                self._timed("build_s", "image (offline)", lambda: self._build(command))
            self._timed(
                "up_s", "containers", lambda: self._compose(command, "up", "-d", "--no-build")
            )
            self._timed("healthy_s", "health checks", lambda: self.wait_healthy(endpoints))
            self._timed(
                "deploy_s",
                f"deployment {deployment.name}",
                lambda: self._deploy(endpoints, scenario, scale, deployment),
            )
        except BaseException:
            # Keep the containers' output for the post-mortem, then leave nothing behind.
            with contextlib.suppress(Exception):
                self.save_logs()
            self.down()
            raise
        return endpoints

    def apply(self, deployment: Deployment) -> list[dict]:
        """Change replicas, variants and batch sizes live (the controller diffs)."""
        from testbed.controller import Controller

        return Controller.load(self.state_dir).deploy(deployment)

    def status(self) -> TestbedStatus:
        """Nodes, instances and their health, as the shared controller sees them."""
        from testbed.controller import Controller

        return Controller.load(self.state_dir).status(self.name)

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

    def _build(self, command: list[str]) -> None:
        """``compose build`` (offline), then drop superseded serving images: each source
        change leaves a ~200 MB untagged one behind. Images in use are never pruned."""
        self._compose(command, "build", timeout=900)
        _docker("image", "prune", "-f", "--filter", f"label={IMAGE_LABEL}")

    def wait_healthy(self, endpoints: Endpoints | None = None, timeout_s: float = 120.0) -> None:
        """Poll until every container with a healthcheck reports healthy and every other
        one runs; then, with ``endpoints``, until every node agent answers ``/healthz``
        through the gateway (the emulated servers have no Docker healthcheck: it
        would run inside their CPU quota). Fails fast when a container exits."""
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
            health = [
                (c.get("State", {}).get("Health") or {}).get("Status")
                or ("healthy" if c["State"]["Status"] == "running" else "starting")
                for c in containers
            ]
            if containers and all(h == "healthy" for h in health):
                waiting = self._agents_down(endpoints) if endpoints else []
                if not waiting:
                    return
            else:
                waiting = [
                    c["Name"].lstrip("/")
                    for c, h in zip(containers, health, strict=True)
                    if h != "healthy"
                ]
            if time.monotonic() > deadline:
                raise TimeoutError(f"containers not healthy after {timeout_s:.0f} s: {waiting}")
            time.sleep(0.5)

    @staticmethod
    def _agents_down(endpoints: Endpoints) -> list[str]:
        """Node agents that do not answer ``/healthz`` through the gateway yet."""
        import httpx

        down = []
        with httpx.Client(timeout=2.0) as http:
            for node, url in endpoints.nodes.items():
                try:
                    ok = http.get(f"{url}/healthz", headers=token_headers()).status_code == 200
                except httpx.HTTPError:
                    ok = False
                if not ok:
                    down.append(node)
        return down

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
        from testbed.zoo import DEFAULT_DIR  # torch-free

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


def weighted_cgroup_parent() -> str | None:
    """The ``cgroup_parent`` for the containers: ``CGROUP_PARENT``, made with the local
    backend's parent weight, when Docker uses the cgroupfs driver and this process
    may make groups; else None (Docker's own group, with a warning)."""
    if os.environ.get(CGROUP_PARENT_ENV, "") == "none":
        return None
    from testbed import cgroups

    driver = _docker("info", "--format", "{{.CgroupDriver}}").stdout.strip()
    if driver == "cgroupfs" and cgroups.weighted_parent(CGROUP_PARENT) is not None:
        return "/" + CGROUP_PARENT
    _say(
        f"containers stay in Docker's own cgroup (driver {driver or '?'}, or no root): "
        "on a busy host other processes can take part of their CPU quota"
    )
    return None


@contextlib.contextmanager
def build_lock() -> Iterator[None]:
    """Exclusive lock on ``compose/wheels/.lock`` (git-ignored) for the image build."""
    lock = compose_dir() / "wheels" / ".lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _tail(text: str, lines: int = 15) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


BACKEND = ComposeBackend
