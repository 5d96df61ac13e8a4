"""The local backend (default): emulated servers as node-agent processes, cgroups as root.

Layout of a running testbed, all on 127.0.0.1:
    registry, feature store, gateway    in the host's reserve: as root a cgroup without
                                        quota but with 4× the CPU weight, so a busy
                                        host does not starve the gateway
    node-agent per machine              in its own cgroup (cpu quota = the machine's
                                        scaled cores with a 10 ms period, memory
                                        limit = its RAM) when running as root;
                                        unconfined, with a warning, otherwise
    stage instances                     children of their node agent; they start in a
                                        start cgroup of their own with the lowest CPU
                                        share (cpu.idle, so a start-up runs on idle CPU
                                        only and cannot slow the serving replicas, the
                                        gateway or the load generator) and join the
                                        node's cgroup once healthy and warm, before the
                                        gateway routes to them. For A/B runs:
                                        MLOPS_TWIN_START_CPU=0.1 caps the start group
                                        at 0.1 cores (made starts 4x slower, no better),
                                        MLOPS_TWIN_START_GROUP=reserve starts them in the
                                        host's reserve (sessions 4-6), and
                                        MLOPS_TWIN_START_OUTSIDE=0 in the node's cgroup
                                        from the start (before that)

``.testbed/local.json`` records every process (PID and start time, so a reused PID is
never killed) and cgroup; ``down`` stops them all and removes the cgroups.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

from testbed import cgroups
from testbed.backends.base import (
    Backend,
    Capacity,
    Endpoints,
    TestbedStatus,
    service_argv,
)
from testbed.backends.procs import ProcRecord, spawn, stop
from testbed.controller import Controller
from testbed.platform_venv import ensure_venv
from testbed.services.common import wait_healthy
from testbed.services.guard import use_token
from testbed.services.node_agent import free_port
from testbed.zoo.manifest import DEFAULT_DIR
from twin.spec import Deployment, Scenario

STATE = "local.json"
# "0": replicas start inside their node's quota (the behaviour before the start cgroup),
# so a benchmark can compare both in one hour (benchmarks/testbed_start_cgroup.py)
START_OUTSIDE_ENV = "MLOPS_TWIN_START_OUTSIDE"
# CPU weight of the reserve (gateway, registry, feature store, and a load generator
# that joins it) relative to any other group or process on a contended host
PLATFORM_WEIGHT = 4.0
HOST = "127.0.0.1"


# Where a replica starting outside its node's quota runs until healthy: "idle" (a start
# cgroup of its own at the lowest CPU share; default) or "reserve" (the host's reserve,
# beside the gateway and the load generator, whose start-up CPU then slowed every stage)
START_GROUP_ENV = "MLOPS_TWIN_START_GROUP"
START_GROUPS = ("idle", "reserve")
# An optional cap (cores, a CFS quota) on the idle start group, for A/B runs; off by
# default. Tried in session 7b because the host's idle CPU fell to 0.00-0.02 cores in
# every start on the idle path while the stages queued together before the replica was
# routed; a 0.1-core cap made starts take 6-8 s (not 1.5 s), the queueing stayed, and
# the late capacity queued the stages after the route too (benchmarks/results/
# rl_testbed.md, "The idle start group with a CPU cap against without").
START_CPU_ENV = "MLOPS_TWIN_START_CPU"
START_CPU_CORES: float | None = None


def start_outside() -> bool:
    """Whether replicas start outside their node's quota (default) rather than in it."""
    return os.environ.get(START_OUTSIDE_ENV, "1").strip() != "0"


def start_group() -> str:
    """Where replicas start: ``"idle"`` (default), ``"reserve"``, or ``"inside"`` (the
    node's cgroup, ``MLOPS_TWIN_START_OUTSIDE=0``); a bad value is a ValueError."""
    if not start_outside():
        return "inside"
    raw = os.environ.get(START_GROUP_ENV, "").strip().lower() or "idle"
    if raw not in START_GROUPS:
        raise ValueError(f"{START_GROUP_ENV}={raw!r}: expected one of {', '.join(START_GROUPS)}")
    return raw


def start_cpu() -> float | None:
    """The idle start group's CPU cap in cores (``$MLOPS_TWIN_START_CPU``, default
    :data:`START_CPU_CORES`: none); None without a cap ("none" or 0). A bad value is a
    ValueError that names the variable."""
    raw = os.environ.get(START_CPU_ENV, "").strip().lower()
    if not raw:
        return START_CPU_CORES
    if raw == "none":
        return None
    try:
        cores = float(raw)
    except ValueError:
        cores = -1.0
    if not 0.0 <= cores <= 64.0:
        raise ValueError(f"{START_CPU_ENV}={raw!r}: expected cores in 0-64 (0 or none: no cap)")
    return cores or None


class Unconfined(UserWarning):
    """Emulated servers run without CPU or memory limits (not root, or no cgroups)."""


class AlreadyUp(RuntimeError):
    """A testbed recorded in the state directory is still running."""


class LocalBackend(Backend):
    """Processes and cgroups on this host (see module doc)."""

    name = "local"

    def __init__(
        self,
        state_dir: Path = Path(".testbed"),
        model_dir: Path = DEFAULT_DIR,
        confine: bool | None = None,
        gateway_options: dict[str, object] | None = None,
    ):
        super().__init__(state_dir)
        self.model_dir = Path(model_dir)
        self.gateway_options = dict(gateway_options or {})  # extra gateway command options
        self.confine = confine  # None: whenever cgroups are available
        self.procs: list[ProcRecord] = []
        self.cgroups: list[cgroups.Cgroup] = []
        self._popen: list[subprocess.Popen] = []  # reaped in down() when we are the parent

    # ------------------------------------------------------------------ state

    def _state_path(self) -> Path:
        return self.state_dir / STATE

    def _save(self, extra: dict[str, Any] | None = None) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "procs": [p.to_dict() for p in self.procs],
            "cgroups": [
                {"name": c.name, "version": c.version, "paths": list(c.paths)} for c in self.cgroups
            ],
            **(extra or {}),
        }
        tmp = self._state_path().with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self._state_path())

    def _load(self) -> bool:
        path = self._state_path()
        if not path.exists():
            return False
        s = json.loads(path.read_text())
        self.procs = [
            ProcRecord(p["name"], p["pid"], p["create_time"], tuple(p["argv"])) for p in s["procs"]
        ]
        self.cgroups = [
            cgroups.Cgroup(c["name"], c["version"], tuple(c["paths"])) for c in s["cgroups"]
        ]
        return True

    def running(self) -> list[str]:
        """Names of recorded processes still alive."""
        return [p.name for p in self.procs if p.process() is not None]

    # ------------------------------------------------------------------ lifecycle

    def up(self, scenario: Scenario, deployment: Deployment, scale: Capacity) -> Endpoints:
        if self._load() and self.running():
            raise AlreadyUp(
                f"a testbed is already up in {self.state_dir} ({', '.join(self.running())}); "
                "run `mlops-twin testbed down` first"
            )
        self.procs, self.cgroups = [], []
        ensure_venv()  # Feast and MLflow run from it; made once, before any process starts
        use_token(self.state_dir)  # the services inherit it; admin routes need it
        confine = cgroups.available() if self.confine is None else self.confine
        if not confine:
            warnings.warn(
                "running the emulated servers unconfined (no root or no writable cgroups): "
                "CPU and memory limits are not enforced",
                Unconfined,
                stacklevel=2,
            )
        logs = self.state_dir / "logs"
        where = start_group()  # a bad value fails before anything starts
        start_cpu()
        try:
            ports = {n: free_port(HOST) for n in ("registry", "features", "gateway")}
            urls = {n: f"http://{HOST}:{p}" for n, p in ports.items()}
            node_ports = {n.name: free_port(HOST) for n in scale.nodes}
            node_urls = {n: f"http://{HOST}:{p}" for n, p in node_ports.items()}
            reserve: list[str] = []
            if confine:  # the host's reserve: no quota, a larger share when CPU is contended
                platform = cgroups.Cgroup.create(
                    f"{self._tag()}-platform", None, None, weight=PLATFORM_WEIGHT
                )
                self.cgroups.append(platform)
                self._save()
                reserve = platform.procs_files()
            start_name = self._start_cgroup(where, platform) if confine else None
            self._spawn(
                "registry",
                service_argv(
                    "registry",
                    ports["registry"],
                    HOST,
                    sys.executable,
                    root=(self.state_dir / "registry").resolve(),
                ),
                logs,
                reserve,
            )
            self._spawn(
                "features",
                service_argv(
                    "features",
                    ports["features"],
                    HOST,
                    sys.executable,
                    repo=(self.state_dir / "feast").resolve(),
                ),
                logs,
                reserve,
            )
            targets = ",".join(f"{n}={u}" for n, u in node_urls.items())
            self._spawn(
                "gateway",
                service_argv(
                    "gateway",
                    ports["gateway"],
                    HOST,
                    sys.executable,
                    registry=urls["registry"],
                    features=urls["features"],
                    targets=targets,
                    **self.gateway_options,
                ),
                logs,
                reserve,
            )
            for node in scale.nodes:
                procs_files: list[str] = []
                cg_name = None
                if confine:
                    # the weight makes the quota hold on a busy host too (it is a cap
                    # otherwise, and neighbours would take part of it)
                    cg = cgroups.Cgroup.create(
                        f"{self._tag()}-{node.name}",
                        node.cpu_cores,
                        node.ram_gb,
                        weight=PLATFORM_WEIGHT,
                    )
                    self.cgroups.append(cg)
                    self._save()
                    procs_files = cg.procs_files()
                    cg_name = cg.name
                argv = service_argv(
                    "node",
                    node_ports[node.name],
                    HOST,
                    sys.executable,
                    name=node.name,
                    cpu_cores=node.cpu_cores,
                    ram_gb=node.ram_gb,
                    cgroup=cg_name,
                    # replicas start there and join the node's quota once healthy
                    start_cgroup=start_name,
                )
                self._spawn(f"node:{node.name}", argv, logs, procs_files)
            for name, url in {**urls, **node_urls}.items():
                rec = next(p for p in self.procs if p.name in (name, f"node:{name}"))
                # Feast and MLflow start in 10–20 s (more while the platform venv is made)
                wait_healthy(url, 300.0, is_alive=lambda r=rec: r.process() is not None)
            endpoints = Endpoints(urls["gateway"], urls["registry"], urls["features"], node_urls)
            self._save(
                {"endpoints": endpoints.to_dict(), "confined": confine, "start_group": where}
            )
            controller = Controller(endpoints, scenario, scale, self.state_dir, self.model_dir)
            controller.deploy(deployment)
            return endpoints
        except BaseException:
            self.down()
            raise

    def _start_cgroup(self, where: str, platform: cgroups.Cgroup) -> str | None:
        """The cgroup replicas start in until healthy (:func:`start_group`), made here
        when it is a start group of its own; None: they start in their node's."""
        if where == "reserve":
            return platform.name
        if where != "idle":
            return None
        starting = cgroups.Cgroup.create(f"{self._tag()}-start", start_cpu(), None, idle=True)
        self.cgroups.append(starting)
        self._save()
        return starting.name

    def reserve_procs(self) -> list[str]:
        """``cgroup.procs`` files of the host's reserve, for a load generator to join
        (empty when unconfined); call :func:`testbed.cgroups.leave` before ``down``."""
        for cg in self.cgroups:
            if cg.name.endswith("-platform"):
                return cg.procs_files()
        return []

    def _tag(self) -> str:
        """Short id of the state directory: cgroup names of two testbeds never clash."""
        digest = hashlib.sha1(str(self.state_dir.resolve()).encode()).hexdigest()
        return f"tb-{digest[:8]}"

    def _spawn(self, name: str, argv: list[str], logs: Path, cgroup_procs: list[str] = ()) -> None:
        record, popen = spawn(name, argv, logs / f"{name.replace(':', '-')}.log", cgroup_procs)
        self.procs.append(record)
        self._popen.append(popen)
        self._save()

    def apply(self, deployment: Deployment) -> list[dict]:
        return Controller.load(self.state_dir).deploy(deployment)

    def status(self) -> TestbedStatus:
        return Controller.load(self.state_dir).status(self.name)

    def down(self) -> None:
        """Stop every recorded process (nodes first: they stop their instances), drop cgroups."""
        if not self.procs and not self._load():
            return
        nodes = [p for p in self.procs if p.name.startswith("node:")]
        others = [p for p in self.procs if not p.name.startswith("node:")]
        left = stop(nodes) + stop(others)
        for cg in self.cgroups:  # anything still in a group was started by our node agents
            for pid in cg.pids():
                _kill(pid)
        errors = []
        for cg in self.cgroups:
            try:
                cg.remove()
            except RuntimeError as e:
                errors.append(str(e))
        for p in self._popen:  # reap our own children (no zombies, no ResourceWarning)
            p.wait(5)
        self._popen = []
        if left or errors:
            raise RuntimeError(f"testbed down left processes {left} or cgroups: {errors}")
        for f in (self._state_path(), self.state_dir / "controller.json"):
            f.unlink(missing_ok=True)
        self.procs, self.cgroups = [], []


def _kill(pid: int) -> None:
    import os
    import signal

    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


BACKEND = LocalBackend
