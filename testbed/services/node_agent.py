"""Node agent: one per emulated server; starts and stops instances, reports usage.

API (JSON):
    POST   /instances         {"name", "service", "args": {opt: value}} → starts
                              ``python -m <module> --port <free port> --host <agent host> ...``;
                              answers {"name", "port", "pid"} (409 if the name is taken)
    GET    /instances         [{"name", "service", "port", "pid", "alive", "exit_code",
                              "rss_bytes", "args"}]
    DELETE /instances/{name}  SIGTERM, SIGKILL after 5 s; answers the exit code
    *      /instances/{name}/http/{path}  forwards to the instance's own API (health,
                              admin), so the controller needs to reach only the agent
    GET    /usage             {"node", "cpu_seconds", "memory_bytes", "cpu_cores", "ram_gb",
                              "throttled_s", "confined"}

Instances are children of the agent, so they share its cgroup or container; each
is asked to die with the agent (PR_SET_PDEATHSIG), so no instance outlives it.
With ``--start-cgroup`` (the local backend passes a start group at the lowest CPU
share, or the host's reserve) an instance starts outside the node's CPU quota and
joins the node's cgroup once it answers ``/healthz`` — after its model is loaded and
warmed up — or after START_OUTSIDE_MAX_S: loading onnxruntime, the model and the
warm-up would otherwise spend the node's quota and stall the replicas serving there.
The memory it took while starting stays charged to the start cgroup: cgroup v1 can
move charges with a process, but while it does every task charging memory in either
group waits, which would stall the replicas serving there all the same.
A job (the ``step`` service: an MLOps step that runs and exits, never healthy) is
not a replica: its start-up is part of the step's work on that server, so it runs
in the node's cgroup from its first instruction.
An instance that dies without being stopped (crash, OOM kill, SIGKILL) is started
again on the same port with the same arguments, so routes to it stay valid; restarts
back off (1 s, doubling to 30 s while it keeps dying within a minute of starting).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import CounterMetricFamily
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from testbed.api import HEALTH_PATH
from testbed.backends.base import SERVICES, service_argv, service_env
from testbed.services.common import base_parser, common_routes, error, serve
from testbed.services.guard import (
    MAX_BATCH_BYTES,
    TOKEN_HEADER,
    AdminGuard,
    BodyLimit,
    admin_token,
    parse_json,
)

STOP_GRACE_S = 5.0
SUPERVISE_EVERY_S = 0.2
RESTART_BACKOFF_S = (1.0, 30.0)  # first delay, cap; doubles while restarts keep failing
STABLE_AFTER_S = 60.0  # an instance up this long has its back-off reset
# services that run to their end (no /healthz): in the node's quota from the start
JOBS = frozenset({"step"})
START_OUTSIDE_MAX_S = 60.0  # an instance never healthy joins the node's cgroup after this


def free_port(host: str) -> int:
    """A TCP port free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the agent dies (Linux)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class _CpuCounter:
    """``node_cpu_seconds_total``: the node's cumulative CPU time, read when scraped.

    A counter (Prometheus convention for a cumulative value, ``rate()``-able);
    prometheus-client's ``Counter`` cannot read a value at scrape time, so this
    collector yields one.
    """

    def __init__(self, read: Callable[[], float]) -> None:
        self.read = read

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "node_cpu_seconds", "Cumulative CPU time of the node", value=self.read()
        )


@dataclass
class Instance:
    name: str
    service: str
    port: int
    proc: subprocess.Popen
    args: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    restarts: int = 0
    failures: int = 0  # restarts in a row that died before STABLE_AFTER_S
    died: float | None = None  # monotonic time the supervisor saw it dead
    confined: bool = True  # in the node's cgroup (False while it starts in the start cgroup)

    def info(self) -> dict[str, Any]:
        code = self.proc.poll()
        rss = None
        if code is None:
            with contextlib.suppress(psutil.Error):
                rss = psutil.Process(self.proc.pid).memory_info().rss
        return {
            "name": self.name,
            "service": self.service,
            "port": self.port,
            "pid": self.proc.pid,
            "alive": code is None,
            "exit_code": code,
            "rss_bytes": rss,
            "args": self.args,
            "restarts": self.restarts,
            "confined": self.confined,
        }


class NodeAgent:
    """The instances of one emulated server."""

    def __init__(
        self,
        name: str,
        host: str,
        cpu_cores: float | None,
        ram_gb: float | None,
        cgroup: str | None = None,
        start_cgroup: str | None = None,
    ):
        self.name = name
        self.host = host
        self.cpu_cores = cpu_cores
        self.ram_gb = ram_gb
        self.instances: dict[str, Instance] = {}
        self.cgroup = self.start_cgroup = None
        if cgroup:
            from testbed.cgroups import Cgroup

            self.cgroup = Cgroup.open(cgroup)
            # where instances start, outside the node's quota, until they are healthy
            self.start_cgroup = Cgroup.open(start_cgroup) if start_cgroup else None
        self.reg = CollectorRegistry()
        Gauge("node_instances", "Running instances", registry=self.reg).set_function(
            lambda: sum(1 for i in list(self.instances.values()) if i.proc.poll() is None)
        )
        self.reg.register(_CpuCounter(lambda: self.usage()["cpu_seconds"] or 0.0))
        Gauge(
            "node_instance_restarts", "Instances restarted after dying unasked", registry=self.reg
        ).set_function(lambda: sum(i.restarts for i in self.instances.values()))
        Gauge("node_memory_bytes", "Memory in use by the node", registry=self.reg).set_function(
            lambda: self.usage()["memory_bytes"] or 0
        )

    def start(self, name: str, service: str, args: dict[str, Any]) -> Instance:
        if service not in SERVICES or service == "node":
            raise ValueError(f"unknown service {service!r} (known: {', '.join(SERVICES)})")
        old = self.instances.get(name)
        if old is not None and old.proc.poll() is None:
            raise FileExistsError(f"instance {name!r} is already running")
        port = free_port(self.host)
        inst = Instance(name, service, port, self._spawn(service, port, args), args)
        inst.confined = self._starts_confined(service)
        self.instances[name] = inst
        return inst

    def _starts_confined(self, service: str) -> bool:
        """Whether an instance of ``service`` starts in the node's cgroup (a job, or no reserve)."""
        return self.start_cgroup is None or service in JOBS

    def _spawn(self, service: str, port: int, args: dict[str, Any]) -> subprocess.Popen:
        argv = service_argv(service, port, self.host, sys.executable, **args)
        group = self.cgroup if service in JOBS else self.start_cgroup
        procs = group.procs_files() if group is not None else []

        def before_exec() -> None:
            _die_with_parent()
            # from the first instruction: a replica starts all outside, a job all inside
            for path in procs:
                with open(path, "w") as f:
                    f.write(str(os.getpid()))

        return subprocess.Popen(
            argv, env=service_env(), preexec_fn=before_exec, stdin=subprocess.DEVNULL
        )

    def starting(self) -> list[Instance]:
        """Live instances still in the start cgroup (not yet in the node's)."""
        return [
            i for i in list(self.instances.values()) if not i.confined and i.proc.poll() is None
        ]

    def confine(self, inst: Instance) -> None:
        """Move a started instance into the node's cgroup (its quota applies from now on)."""
        if inst.confined or self.cgroup is None:
            inst.confined = True
            return
        try:
            self.cgroup.add(inst.proc.pid)
        except RuntimeError as e:
            # it exited meanwhile (revive starts it again), or, on cgroup v1, the node's
            # memory limit cannot hold what it took while starting
            if inst.proc.poll() is None:
                print(f"node {self.name}: {inst.name} stays outside the node's cgroup: {e}")
        inst.confined = True

    def revive(self, now: float | None = None) -> list[str]:
        """Start again, on the same port, every instance that died without being stopped.

        Stopped instances are no longer in ``instances``, so whatever exited here
        crashed or was killed — except a job (:data:`JOBS`), which exits when done and
        stays so until its runner reads its record and stops it. Returns the names
        restarted now; one that keeps dying waits longer each time (RESTART_BACKOFF_S),
        so a broken instance cannot spin.
        """
        now = time.monotonic() if now is None else now
        revived = []
        for inst in list(self.instances.values()):
            if inst.proc.poll() is None or inst.service in JOBS:
                continue  # a job that exited has run to its end: it is never started again
            if inst.died is None:
                inst.died = now
                lived = time.time() - inst.started
                inst.failures = 0 if lived >= STABLE_AFTER_S else inst.failures + 1
            first, cap = RESTART_BACKOFF_S
            delay = 0.0 if inst.failures == 0 else min(first * 2 ** (inst.failures - 1), cap)
            if now - inst.died < delay:
                continue
            try:
                inst.proc = self._spawn(inst.service, inst.port, inst.args)
            except OSError:
                continue  # tried again on the next round
            inst.started, inst.died = time.time(), None
            inst.confined = self._starts_confined(inst.service)
            inst.restarts += 1
            revived.append(inst.name)
        return revived

    def stop(self, name: str, grace_s: float = STOP_GRACE_S) -> int | None:
        inst = self.instances.pop(name)
        return _terminate(inst.proc, grace_s)

    def stop_all(self) -> None:
        for name in list(self.instances):
            self.stop(name, grace_s=2.0)

    def usage(self) -> dict[str, Any]:
        cpu = mem = throttled = None
        if self.cgroup is not None:
            with contextlib.suppress(OSError, ValueError):
                cpu = self.cgroup.cpu_seconds()
                mem = self.cgroup.memory_bytes()
                throttled = self.cgroup.throttled_s()
        if cpu is None:  # unconfined: the agent and its children
            cpu, mem = 0.0, 0
            me = psutil.Process()
            for p in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    t = p.cpu_times()
                    cpu += t.user + t.system
                    mem += p.memory_info().rss
        return {
            "node": self.name,
            "cpu_seconds": cpu,
            "memory_bytes": mem,
            "cpu_cores": self.cpu_cores,
            "ram_gb": self.ram_gb,
            "throttled_s": throttled,
            "confined": self.cgroup is not None,
        }


def _loopback(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def _terminate(proc: subprocess.Popen, grace_s: float) -> int | None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def create_app(agent: NodeAgent) -> Starlette:
    async def start(req: Request) -> Response:
        try:
            body = parse_json(await req.body())
            if not isinstance(body, dict) or not isinstance(body.get("args", {}), dict):
                raise ValueError('body must be {"name", "service", "args": {...}}')
            inst = agent.start(str(body["name"]), str(body["service"]), dict(body.get("args", {})))
        except FileExistsError as e:
            return error(str(e), 409)
        except (KeyError, TypeError, ValueError) as e:
            return error(f"bad instance: {e}")
        return JSONResponse(
            {"name": inst.name, "port": inst.port, "pid": inst.proc.pid}, status_code=201
        )

    async def listing(_req: Request) -> Response:
        # a copy: a DELETE runs agent.stop in a thread and may change the dict meanwhile
        return JSONResponse([i.info() for i in list(agent.instances.values())])

    async def stop(req: Request) -> Response:
        name = req.path_params["name"]
        if name not in agent.instances:
            return error(f"no instance {name!r}", 404)
        code = await asyncio.to_thread(agent.stop, name)
        return JSONResponse({"name": name, "exit_code": code})

    # One client for every forward: building an httpx client loads the TLS trust store
    # (≈ 23 ms of CPU), which a client per call charged to the node's CPU quota at
    # every metrics scrape (once a second on the Compose backend, where scrapes of
    # instances come through here) — enough to stall the stage it serves.
    clients: list[httpx.AsyncClient] = []

    def client() -> httpx.AsyncClient:
        if not clients:
            clients.append(httpx.AsyncClient(timeout=60))
        return clients[0]

    async def forward(req: Request) -> Response:
        inst = agent.instances.get(req.path_params["name"])
        if inst is None:
            return error(f"no instance {req.path_params['name']!r}", 404)
        url = f"http://{_loopback(agent.host)}:{inst.port}/{req.path_params['path']}"
        headers = {
            k: v for k, v in req.headers.items() if k.lower() in ("content-type", TOKEN_HEADER)
        }
        try:
            r = await client().request(req.method, url, content=await req.body(), headers=headers)
        except httpx.HTTPError as e:
            return error(f"instance {inst.name} unreachable: {type(e).__name__}", 502)
        health = req.path_params["path"] == HEALTH_PATH.lstrip("/")
        if health and r.status_code == 200 and not inst.confined:
            # before the controller sees it healthy and routes to it
            await asyncio.to_thread(agent.confine, inst)
        return Response(
            r.content, status_code=r.status_code, media_type=r.headers.get("content-type")
        )

    async def usage(_req: Request) -> Response:
        return JSONResponse(await asyncio.to_thread(agent.usage))

    async def healthy(inst: Instance) -> bool:
        url = f"http://{_loopback(agent.host)}:{inst.port}{HEALTH_PATH}"
        try:
            return (await client().get(url, timeout=1.0)).status_code == 200
        except httpx.HTTPError:
            return False

    async def supervise() -> None:
        while True:
            await asyncio.sleep(SUPERVISE_EVERY_S)
            for name in agent.revive():
                print(f"node {agent.name}: instance {name} died unasked; restarted", flush=True)
            for inst in agent.starting():
                if time.time() - inst.started > START_OUTSIDE_MAX_S or await healthy(inst):
                    await asyncio.to_thread(agent.confine, inst)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette):  # type: ignore[no-untyped-def]
        task = asyncio.create_task(supervise())
        yield
        task.cancel()
        for c in clients:
            await c.aclose()
        await asyncio.to_thread(agent.stop_all)

    routes = [
        *common_routes(agent.reg, lambda: True),
        Route("/instances", start, methods=["POST"]),
        Route("/instances", listing, methods=["GET"]),
        Route("/instances/{name}", stop, methods=["DELETE"]),
        Route("/instances/{name}/http/{path:path}", forward, methods=["GET", "POST"]),
        Route("/usage", usage),
    ]
    middleware = [
        # listing is read-only; starting, stopping and reconfiguring need the token
        Middleware(
            AdminGuard, token=admin_token(), prefixes=("/instances",), methods=("POST", "DELETE")
        ),
        Middleware(BodyLimit, max_bytes=MAX_BATCH_BYTES),
    ]
    return Starlette(routes=routes, lifespan=lifespan, middleware=middleware)


def main() -> None:
    p = base_parser("Node agent of one emulated server.")
    p.add_argument("--name", required=True)
    p.add_argument("--cpu-cores", type=float, default=None)
    p.add_argument("--ram-gb", type=float, default=None)
    p.add_argument("--cgroup", default=None, help="name of the cgroup it runs in (for usage)")
    p.add_argument(
        "--start-cgroup",
        default=None,
        help="cgroup instances start in, outside the node's quota, until they are healthy",
    )
    a = p.parse_args()
    agent = NodeAgent(a.name, a.host, a.cpu_cores, a.ram_gb, a.cgroup, a.start_cgroup)
    # SIGTERM → uvicorn's graceful shutdown → lifespan stops the instances
    try:
        serve(create_app(agent), a.host, a.port)
    finally:
        agent.stop_all()
    os._exit(0)


if __name__ == "__main__":
    main()
