"""The Compose file of the ``compose`` backend, rendered from a scenario (pure functions).

One service per machine of the scenario runs that machine's node agent, with
``cpu_period``/``cpu_quota`` (a short period, as the local backend's cgroups) and
``mem_limit`` from the emulated capacity; registry, feature store and gateway get
one each. All sit on an ``internal`` network; the gateway also joins a second
network and is the only service published, on ``127.0.0.1``. Every service runs
as user 10001 on a read-only root fs with no capabilities. The file uses the
Compose Specification form without ``version:``, which both ``docker compose``
(v2) and ``docker-compose`` 1.29 accept.
"""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path
from typing import Any

from testbed.backends.base import CPU_PERIOD_US, Capacity, Endpoints, service_argv
from testbed.services.guard import TOKEN_ENV
from twin.spec import Deployment, Scenario

IMAGE = "mlops-twin-node:latest"
BASE_IMAGE = "mlops-twin-base:bookworm"
ROLE_LABEL = "org.mlops-twin.role"
MACHINE_LABEL = "org.mlops-twin.machine"
UID_GID = "10001:10001"
VENV_PYTHON = "/opt/venv/bin/python"
# Ports inside the containers (each container has its own network namespace).
PORTS = {"gateway": 8080, "registry": 8081, "features": 8082, "node": 8090}
PLATFORM = ("registry", "features", "gateway")
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
# Under ``cgroup_parent`` (a group with the local backend's parent weight) every
# container gets the local backend's group weight: 4 × a default share.
CPU_SHARES = 4096


def compose_dir() -> Path:
    """The repo's ``compose/`` folder (Dockerfile, offline build script)."""
    return Path(__file__).resolve().parents[2] / "compose"


def project_name(state_dir: Path) -> str:
    """Compose project name, unique per state directory (so testbeds do not collide)."""
    digest = hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:10]
    return f"mlopstwin{digest}"


def service_key(machine: str) -> str:
    """Compose service (and DNS) name of a machine: lower case, no underscores."""
    return machine.lower().replace("_", "-")


# Health probes: "shell" (bash's /dev/tcp, grep) costs about a millisecond of the
# container's CPU; "python" (the venv's interpreter, as before) costs tens of
# milliseconds. Docker runs the probe inside the container, so an emulated server's
# probe is charged to that server's CPU quota every interval: with a 0.5-core quota
# over a 10 ms period, a python probe stalled the stage server for several periods
# once a second, which was most of the Compose backend's p95 at low load
# (benchmarks/results/testbed_compose_tail.md).
HEALTH_PROBES = ("shell", "python")


def _healthcheck(port: int, probe: str = "shell") -> dict[str, Any]:
    if probe == "shell":
        # minbase has bash and grep but no curl; no "$" (Compose would interpolate it).
        test = [
            "CMD",
            "bash",
            "-c",
            f"exec 3<>/dev/tcp/127.0.0.1/{port} && "
            "printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '",
        ]
    elif probe == "python":
        code = (
            "import sys, urllib.request; "
            f"sys.exit(urllib.request.urlopen('http://127.0.0.1:{port}/healthz', timeout=2)"
            ".status != 200)"
        )
        test = ["CMD", VENV_PYTHON, "-c", code]
    else:
        raise ValueError(f"health probe {probe!r}: expected one of {HEALTH_PROBES}")
    # No start_interval (Docker 25+).
    return {"test": test, "interval": "1s", "timeout": "3s", "retries": 60}


def _argv(service: str, port: int, **options: Any) -> list[str]:
    """Command line of ``service`` inside a container (listens on all interfaces)."""
    return service_argv(service, port, host="0.0.0.0", python=VENV_PYTHON, **options)


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
        # the admin token comes from the environment of `docker compose up`, so it
        # is never written into the file
        "environment": dict(CONTAINER_ENV) | {TOKEN_ENV: "${" + TOKEN_ENV + ":-}"},
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
    health_probe: str = "shell",
    cgroup_parent: str | None = None,
) -> dict[str, Any]:
    """The Compose file (as a dict) for ``scenario`` on emulated capacity ``scale``.

    One service per machine (node agent, ``cpu_period``/``cpu_quota`` = the machine's
    scaled cores over a ``CPU_PERIOD_US`` µs period, ``mem_limit`` = its RAM) plus
    registry, feature store and gateway. Only the gateway is published, on
    ``127.0.0.1:gateway_port``. Compose Specification form, without ``version:``.
    ``health_probe``: ``"shell"`` (cheap; the default) or ``"python"`` (see
    ``HEALTH_PROBES``); only the platform services have one, the emulated servers
    none (``health_probe="python"`` gives them the old one too, for the before/after
    benchmark). ``cgroup_parent``: the cgroup every container is put under, with
    ``cpu_shares`` = ``CPU_SHARES`` (None: Docker's default group and shares).
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
    registry["command"] = _argv("registry-builtin", PORTS["registry"], root="/data/registry")
    registry["tmpfs"] = [*registry["tmpfs"], "/data:size=512m,mode=1777"]
    registry["healthcheck"] = _healthcheck(PORTS["registry"], health_probe)
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
    features["command"] = _argv("features-builtin", PORTS["features"], db="/data/features.db")
    features["tmpfs"] = [*features["tmpfs"], "/data:size=256m,mode=1777"]
    features["healthcheck"] = _healthcheck(PORTS["features"], health_probe)
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
        if health_probe == "python":
            svc["healthcheck"] = _healthcheck(PORTS["node"], health_probe)
        # Otherwise none: a probe runs inside the container and is charged to the
        # emulated server's quota every interval (even bash's costs ≈ 14 ms of CPU,
        # mostly `runc exec`); the backend asks the node agents through the gateway.
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
    gateway["healthcheck"] = _healthcheck(PORTS["gateway"], health_probe)
    gateway["mem_limit"] = PLATFORM_MEM
    # A container only on an internal network is silently not published: the
    # gateway also joins `frontend`.
    gateway["networks"] = ["backend", "frontend"]
    gateway["ports"] = [f"127.0.0.1:{gateway_port}:{PORTS['gateway']}"]
    # No depends_on: the gateway uses registry and feature store only per request,
    # and the backend waits for every container to be healthy; so all start at once.
    services["gateway"] = gateway

    if cgroup_parent:
        for svc in services.values():
            svc["cgroup_parent"] = cgroup_parent
            svc["cpu_shares"] = CPU_SHARES
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
