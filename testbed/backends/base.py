"""The backend contract: how a testbed is brought up, changed, observed and torn down.

A backend turns a scenario's servers into *emulated servers* and runs the platform
services next to them; everything above (which instance goes where, variants,
routes) is done by the shared controller through HTTP, so every backend behaves
the same.

Pieces
------
Emulated server
    One **node agent** per machine of ``Scenario.server_instances()`` (``node-1``
    ...). It is the unit a backend confines: a cgroup (``local``) or a container
    (``compose``) with ``cpu_cores × factor`` cores (quota with a ~10 ms period)
    and ``ram_gb`` of memory. Start it with::

        python -m testbed.services.node_agent --port P --host H --name NODE \\
            [--cpu-cores C] [--ram-gb R]

    in the environment :func:`service_env` returns. Its children (instances)
    inherit its confinement.
Platform services
    Outside the emulated servers, in the host's reserve: **registry**, **features**
    (feature store) and **gateway**; see :data:`SERVICES` for their modules and
    :func:`service_argv` for the command line. Only the gateway needs to be
    reachable from the host (it proxies control calls, see below).
Service entry points
    Every service is ``python -m testbed.services.<module> --port P [--host H] ...``
    (``--host`` defaults to 127.0.0.1; containers pass 0.0.0.0), answers
    ``GET /healthz`` (200 when ready) and ``GET /metrics`` (Prometheus text):

    ===========  ==================================  =====================================
    service      module                              own options
    ===========  ==================================  =====================================
    stage        testbed.services.stage_server       --name --component --registry URL
                                                     --model NAME --version V --batch B
                                                     --batch-timeout-ms T --threads 1
    registry     testbed.services.registry_mlflow    --root DIR   (MLflow, platform venv)
    features     testbed.services.features_feast     --repo DIR   (Feast, platform venv)
    registry-builtin / features-builtin              the SQLite stand-ins the Compose
                 (registry, feature_store)           image runs: --root DIR / --db FILE
    step         testbed.services.step_job (a job)   --kind K --record FILE ...
    gateway      testbed.services.gateway            --registry URL --features URL
                                                     --targets name=url,...
    node         testbed.services.node_agent         --name --cpu-cores --ram-gb
    trainer      testbed.services.trainer (a job)    --registry URL --features URL
                                                     --steps N --name MODEL
    ===========  ==================================  =====================================

Node-agent API (what the controller calls; JSON bodies)
    ``POST /instances`` ``{"name", "service", "args": {opt: value}}`` starts
    ``python -m <module of service> --port <free port> --host <agent host> --opt value``
    and returns ``{"name", "port", "pid"}``; ``DELETE /instances/{name}`` stops it
    (SIGTERM, then SIGKILL after 5 s); ``* /instances/{name}/http/{path}`` forwards
    to the instance; ``GET /instances`` lists them with
    ``alive``/``port``/``rss_bytes``; ``GET /usage`` returns the node's
    ``cpu_seconds`` (cumulative), ``memory_bytes`` and its limits.
Control path
    The controller reaches a node agent, the registry and the feature store at the
    URLs in :class:`Endpoints`. A backend whose services are not reachable from the
    host (Compose: internal network) sets them to the gateway's proxy
    ``{gateway}/admin/proxy/<target>`` where ``<target>`` is a node name,
    ``registry`` or ``features`` (the gateway's ``--targets``). An instance's own
    API (``/healthz``, ``/admin/config``) is reached through its node agent:
    ``{node URL}/instances/<name>/http/<path>``.

Lifecycle
    A backend module exposes its class as ``BACKEND`` (``testbed.backends.get_backend``
    instantiates ``BACKEND(state_dir=...)``). ``up(scenario, deployment, scale)``
    starts platform services and node agents, waits until all are healthy,
    then applies the deployment (instances, routes)
    and returns :class:`Endpoints`; ``apply(deployment)`` changes replicas,
    variants and batch live; ``status()`` reports nodes, instances and health;
    ``down()`` stops everything it started and leaves no process, cgroup or
    container behind. State that ``status``/``down`` need in a later CLI call is
    kept in the state directory (``.testbed/`` by default).

Shared controller
    A backend only starts and stops processes or containers. Placing instances,
    configuring stages and routing are the same everywhere: after its services are
    healthy a backend calls ``testbed.controller.Controller(endpoints, scenario,
    capacity, state_dir).deploy(deployment)`` (registers the model zoo, starts
    instances through the node agents, sets the gateway's routes); ``apply`` calls
    ``.deploy`` again with the new deployment (it diffs); ``status`` can use
    ``.status(backend_name)``. ``Controller.load(state_dir)`` restores it in a
    later CLI call.
"""

from __future__ import annotations

import os
import sys
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from twin.spec import Deployment, Scenario

# service → module run with ``python -m``
SERVICES: dict[str, str] = {
    "stage": "testbed.services.stage_server",
    "registry": "testbed.services.registry_mlflow",
    "features": "testbed.services.features_feast",
    # the hand-written SQLite services: what the Compose image runs (no platform venv there)
    "registry-builtin": "testbed.services.registry",
    "features-builtin": "testbed.services.feature_store",
    "gateway": "testbed.services.gateway",
    "node": "testbed.services.node_agent",
    "trainer": "testbed.services.trainer",
    "step": "testbed.services.step_job",
}

DEFAULT_STATE_DIR = Path(".testbed")
CPU_PERIOD_US = 10_000  # short CFS period: quota stalls of ≤ ~10 ms, not ~50 ms


def service_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of every spawned service: telemetry off, one thread per library."""
    env = dict(os.environ)
    env.update(
        {
            "ORT_DISABLE_TELEMETRY": "1",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


def service_argv(
    service: str, port: int, host: str = "127.0.0.1", python: str | None = None, **options: Any
) -> list[str]:
    """Command line of ``service`` listening on ``host:port``.

    Options become ``--opt-name value`` (underscores → dashes); ``None`` values are
    left out, ``True`` becomes a bare flag.
    """
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r} (known: {', '.join(SERVICES)})")
    argv = [python or sys.executable, "-m", SERVICES[service], "--port", str(port)]
    argv += ["--host", host]
    for key, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    return argv


@dataclass(frozen=True)
class NodeCapacity:
    """What one emulated server gets on the host (after scaling)."""

    name: str
    cpu_cores: float  # quota in host cores (= spec cores × factor)
    ram_gb: float
    spec_cpu_cores: float


@dataclass(frozen=True)
class Capacity:
    """Emulated capacity of every machine and the one factor applied to CPU."""

    factor: float  # host cores per emulated core
    host_cores: float
    reserve_cores: float
    nodes: tuple[NodeCapacity, ...]

    def node(self, name: str) -> NodeCapacity:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Endpoints:
    """Where the host reaches the running testbed (URLs without trailing slash)."""

    gateway: str
    registry: str
    features: str
    nodes: dict[str, str]  # node name → node-agent URL from the host
    # URLs services use among themselves (e.g. container DNS names); default: the above
    registry_internal: str = ""
    features_internal: str = ""
    node_hosts: dict[str, str] = field(default_factory=dict)  # node → host of its instances

    def internal_registry(self) -> str:
        return self.registry_internal or self.registry

    def instance_url(self, node: str, port: int) -> str:
        """URL at which the gateway reaches an instance listening on ``port`` on ``node``."""
        return f"http://{self.node_hosts.get(node, '127.0.0.1')}:{port}"

    def admin_url(self, node: str, instance: str) -> str:
        """URL at which the host reaches an instance's own API (through its node agent)."""
        return f"{self.nodes[node]}/instances/{instance}/http"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class InstanceStatus:
    name: str
    component: str
    node: str
    port: int
    variant: str | None
    batch: int | None
    healthy: bool


@dataclass
class NodeStatus:
    name: str
    healthy: bool
    cpu_quota_cores: float
    ram_gb: float
    cpu_seconds: float | None = None
    memory_bytes: int | None = None
    url: str = ""  # node agent (its /metrics and /usage)


@dataclass
class TestbedStatus:
    backend: str
    scenario: str
    deployment: str
    factor: float
    gateway: str
    gateway_healthy: bool
    nodes: list[NodeStatus]
    instances: list[InstanceStatus]
    services: dict[str, str] = field(default_factory=dict)  # registry, features → URL

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Backend(ABC):
    """Brings emulated servers and platform services up and down (see module doc)."""

    name: str = "abstract"

    def __init__(self, state_dir: Path = DEFAULT_STATE_DIR):
        self.state_dir = Path(state_dir)

    @abstractmethod
    def up(self, scenario: Scenario, deployment: Deployment, scale: Capacity) -> Endpoints:
        """Start nodes and platform services, apply ``deployment``; return endpoints."""

    @abstractmethod
    def apply(self, deployment: Deployment) -> list[dict]:
        """Change replicas, variants and batch sizes live (no request dropped); the
        changes made, each with its kind, stage and seconds (``Controller.deploy``)."""

    @abstractmethod
    def status(self) -> TestbedStatus:
        """Nodes, instances and their health."""

    @abstractmethod
    def down(self) -> None:
        """Stop everything this backend started; nothing may be left running."""


class BackendUnavailable(RuntimeError):
    """A backend cannot run here (no Docker engine, module missing, ...)."""
