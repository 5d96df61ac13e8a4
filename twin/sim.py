"""The SimPy engine: one replication of a deployment under a workload.

Build → wire → run → collect. Machines hold a core pool (only when their
instances can contend for cores) and a GPU pool; every component instance is a
SimPy process serving its own FIFO queue with dynamic batching; every process
execution (a training run, an inference request) is a SimPy process walking
its DAG of steps, each step split over up to ``parallelism`` instances chosen
by the load-balancing policy, with a network transfer before each part whose
input was produced on another machine.

The output is one flat record per instance visit plus one per process
execution (see ``VISIT_COLUMNS`` / ``REQUEST_COLUMNS``); all metrics are pure
functions of those tables (``twin.criteria``), shared with the testbed.
"""

from __future__ import annotations

import math
import zlib
from collections import deque
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import simpy

from twin.deployment import stage_config
from twin.service import Sampler, make_sampler
from twin.spec import Deployment, Process, Scenario, Server, Step, Workload
from twin.workload import arrival_times, poisson_times, rate_series

VISIT_COLUMNS = (
    "process", "pid", "step", "component", "machine", "replica", "part",
    "t_arrive", "t_start", "t_end", "batch",
)  # fmt: skip
REQUEST_COLUMNS = ("process", "pid", "t_arrive", "t_end", "deadline_s")

# Positions in a visit row; a row is a list so the engine can fill it in place.
_MACHINE, _REPLICA = 4, 5
_T_ARRIVE, _T_START, _T_END, _BATCH, _EVENT, _CPU, _GPU, _SOURCES, _PARTS = range(7, 16)
_NAN = float("nan")

STREAM_ARRIVALS, STREAM_SERVICE, STREAM_ROUTING = 0, 1, 2


def stream(seed: int, replication: int, purpose: int, name: str = "") -> np.random.Generator:
    """A named random stream: same (seed, replication, purpose, name) ⇒ same numbers.

    Streams are keyed by names, not by creation order, so two deployments of
    one scenario draw identical arrivals and per-component service times
    (common random numbers).
    """
    key = (replication, purpose, zlib.crc32(name.encode()))
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=key))


@dataclass(frozen=True)
class ReplicationResult:
    """Records of one replication. Times are seconds since the run began."""

    visits: pd.DataFrame
    requests: pd.DataFrame
    events: int
    end_s: float


class _Machine:
    __slots__ = ("code", "cpu", "gpu", "gpu_speed", "name", "server", "slowdown", "speed")

    def __init__(self, env: simpy.Environment, code: int, name: str, server: Server,
                 work_cores: float, keepalive_cores: float, slowdown: float) -> None:  # fmt: skip
        self.code, self.name, self.server = code, name, server
        self.speed, self.gpu_speed, self.slowdown = server.cpu_speed, server.gpu_speed, slowdown
        available = max(server.cpu_cores - keepalive_cores, 0.05 * server.cpu_cores)
        # A core pool costs two events per service; only build it when
        # instances can actually contend (overcommitted machines).
        self.cpu = (
            simpy.Container(env, capacity=available, init=available)
            if work_cores > available + 1e-9
            else None
        )
        self.gpu = simpy.Resource(env, capacity=server.gpus) if server.gpus else None


class _Queue:
    """A FIFO of jobs with the idle instances waiting on it.

    Balanced dispatch gives each instance its own queue; shared-queue
    dispatch gives all instances of a component one.
    """

    __slots__ = ("batch", "fill", "items", "waiters")

    def __init__(self, batch: int) -> None:
        self.items: deque[list[Any]] = deque()
        self.waiters: deque[simpy.Event] = deque()
        self.fill: simpy.Event | None = None
        self.batch = batch

    def put(self, job: list[Any], now: float) -> None:
        job[_T_ARRIVE] = now
        self.items.append(job)
        if self.waiters:
            self.waiters.popleft().succeed()
        elif self.fill is not None and len(self.items) >= self.batch and not self.fill.triggered:
            self.fill.succeed()


class _Instance:
    __slots__ = ("batch", "cores", "env", "fetch", "machine", "outstanding", "queue", "replica",
                 "sampler", "timeout_s")  # fmt: skip

    def __init__(self, env: simpy.Environment, machine: _Machine, replica: int, cores: float,
                 batch: int, timeout_s: float, sampler: Sampler | None, queue: _Queue,
                 fetch: Any = None) -> None:  # fmt: skip
        self.env, self.machine, self.replica = env, machine, replica
        self.cores = min(cores, machine.cpu.capacity) if machine.cpu else cores
        self.batch, self.timeout_s, self.sampler = batch, timeout_s, sampler
        self.queue = queue
        # Shared-queue workers learn where their input is only when they take
        # a job, so they fetch it themselves: fetch(job, machine) → seconds.
        self.fetch = fetch
        self.outstanding = 0

    def put(self, job: list[Any]) -> None:
        self.queue.put(job, self.env.now)

    def run(self) -> Generator[simpy.Event, Any, None]:
        env, queue, m = self.env, self.queue, self.machine
        q = queue.items
        while True:
            while not q:
                wake = env.event()
                queue.waiters.append(wake)
                yield wake
            if self.batch > 1 and self.timeout_s > 0:
                # Dynamic batching: serve when the batch is full or the oldest
                # item has waited timeout_s, whichever comes first.
                deadline = q[0][_T_ARRIVE] + self.timeout_s
                while q and len(q) < self.batch and env.now < deadline - 1e-12:
                    queue.fill = env.event()
                    yield queue.fill | env.timeout(deadline - env.now)
                    queue.fill = None
                if not q:
                    continue
            n = min(self.batch, len(q))
            jobs = [q.popleft() for _ in range(n)]
            now = env.now
            for j in jobs:
                j[_T_START] = now
                j[_BATCH] = n
            if self.fetch is not None:
                for j in jobs:
                    j[_MACHINE] = m.code
                    j[_REPLICA] = self.replica
                delay = max(self.fetch(j, m) for j in jobs)
                if delay > 0:
                    yield env.timeout(delay)
            if self.sampler is not None:
                cpu_s, gpu_s = self.sampler(n), 0.0
            else:
                cpu_s, gpu_s = sum(j[_CPU] for j in jobs), sum(j[_GPU] for j in jobs)
            if gpu_s > 0 and m.gpu is None:
                cpu_s += gpu_s * m.slowdown
                gpu_s = 0.0
            if cpu_s > 0:
                if m.cpu is not None:
                    yield m.cpu.get(self.cores)
                    yield env.timeout(cpu_s / m.speed)
                    m.cpu.put(self.cores)
                else:
                    yield env.timeout(cpu_s / m.speed)
            if gpu_s > 0:
                with m.gpu.request() as slot:  # type: ignore[union-attr]
                    yield slot
                    yield env.timeout(gpu_s / m.gpu_speed)
            now = env.now
            for j in jobs:
                j[_T_END] = now
                j[_EVENT].succeed()
            self.outstanding -= n


@dataclass
class _StepPlan:
    code: int
    step: Step
    component: int
    parallel: int
    cpu: Sampler | None
    gpu: Sampler | None


@dataclass
class _ProcessPlan:
    code: int
    process: Process
    steps: list[_StepPlan]
    chain: bool


class Simulation:
    """One replication. Construct, then call :meth:`run` once."""

    def __init__(self, scenario: Scenario, deployment: Deployment, workload: Workload | None,
                 horizon_s: float, seed: int, replication: int = 0,
                 drain_s: float | None = None) -> None:  # fmt: skip
        self.scenario, self.deployment, self.workload = scenario, deployment, workload
        self.horizon_s = horizon_s
        self.drain_s = horizon_s if drain_s is None else drain_s
        self.seed, self.replication = seed, replication

    # -- build ---------------------------------------------------------------------------------
    def _build(self) -> None:
        sc, dep, env = self.scenario, self.deployment, self.env
        servers = sc.server_of()
        self.machine_names = sc.server_instances()
        self.component_names = [c.name for c in sc.components]
        keep = dict.fromkeys(self.machine_names, 0.0)
        work = dict.fromkeys(self.machine_names, 0.0)
        cores: dict[str, float] = {}
        for c in sc.components:
            cfg = stage_config(dep, c)
            cores[c.name] = c.variant(cfg.variant).cpu_cores if c.is_stage else c.cpu_cores
            for m, n in dep.allocation.get(c.name, {}).items():
                keep[m] += n * (c.keepalive_cpu_cores if c.always_on else 0.0)
                work[m] += n * cores[c.name]
        slowdown = sc.settings.gpu_fallback_slowdown
        self.machines = {
            m: _Machine(env, j, m, servers[m], work[m], keep[m], slowdown)
            for j, m in enumerate(self.machine_names)
        }
        self.instances: dict[int, list[_Instance]] = {}
        self.shared: dict[int, _Queue | None] = {}
        self.machine_list = list(self.machines.values())
        for k, c in enumerate(sc.components):
            cfg = stage_config(dep, c)
            rng = stream(self.seed, self.replication, STREAM_SERVICE, c.name)
            sampler = make_sampler(c.variant(cfg.variant).service_time, rng) if c.is_stage else None
            batch = cfg.batch if c.is_stage else 1
            timeout_ms = cfg.batch_timeout_ms
            timeout_s = (sc.settings.batch_timeout_ms if timeout_ms is None else timeout_ms) / 1e3
            shared = _Queue(batch) if c.dispatch == "shared_queue" else None
            fetch = self._fetch_s if shared is not None else None
            insts: list[_Instance] = []
            for m, n in dep.allocation.get(c.name, {}).items():
                for _ in range(n):
                    queue = shared or _Queue(batch)
                    inst = _Instance(env, self.machines[m], len(insts), cores[c.name], batch,
                                     timeout_s, sampler, queue, fetch)  # fmt: skip
                    insts.append(inst)
                    env.process(inst.run())
            self.instances[k] = insts
            self.shared[k] = shared
        comp_index = {c: k for k, c in enumerate(self.component_names)}
        self.step_names: list[str] = []
        self.plans: list[_ProcessPlan] = []
        for p_code, p in enumerate(sc.processes):
            steps = []
            for s in p.steps:
                rng = stream(self.seed, self.replication, STREAM_SERVICE, f"{p.name}.{s.name}")
                comp = sc.component(s.component)
                par = min(dep.parallelism.get(f"{p.name}.{s.name}", 1), s.max_parallel)
                steps.append(
                    _StepPlan(
                        code=len(self.step_names),
                        step=s,
                        component=comp_index[s.component],
                        parallel=par,
                        cpu=make_sampler(s.cpu_work, rng) if s.cpu_work and not comp.is_stage
                        else None,
                        gpu=make_sampler(s.gpu_work, rng) if s.gpu_work else None,
                    )
                )  # fmt: skip
                self.step_names.append(s.name)
            self.plans.append(_ProcessPlan(p_code, p, steps, p.is_chain()))
        self.routing = stream(self.seed, self.replication, STREAM_ROUTING)
        self.policy = dep.load_balancing or sc.settings.load_balancing
        self.rr = [0] * len(sc.components)
        net = sc.settings.network
        self.intra_s = net.intra_zone_latency_ms / 1e3
        self.inter_s = net.inter_zone_latency_ms / 1e3

    def _arrivals(self) -> list[tuple[_ProcessPlan, np.ndarray]]:
        w = self.workload
        targets: set[str] = set()
        rates = None
        if w is not None:
            targets = set(w.processes) or {
                p.name for p in self.scenario.processes if p.kind == "request"
            }
            rates = rate_series(w, self.horizon_s)
        out = []
        for plan in self.plans:
            p = plan.process
            rng = stream(self.seed, self.replication, STREAM_ARRIVALS, p.name)
            if p.name in targets and rates is not None:
                times = poisson_times(rates, rng, self.horizon_s)
            elif p.arrivals is not None:
                times = arrival_times(p.arrivals, rng, self.horizon_s)
            else:
                continue
            out.append((plan, times))
        return out

    # -- behaviour -----------------------------------------------------------------------------
    def _choose(self, component: int, n: int) -> list[_Instance]:
        insts = self.instances[component]
        k = len(insts)
        if k == 0:
            name = self.component_names[component]
            raise ValueError(f"component {name} has no instance in the deployment")
        n = min(n, k)
        if self.policy == "random":
            idx = self.routing.choice(k, size=n, replace=False) if n > 1 else [
                int(self.routing.integers(k))
            ]  # fmt: skip
            chosen = [insts[i] for i in idx]
        else:
            start = self.rr[component] % k
            self.rr[component] += n
            rotated = insts[start:] + insts[:start] if start else insts
            if self.policy == "round_robin":
                chosen = rotated[:n]
            elif n == 1:
                best = rotated[0]
                for inst in rotated:
                    if inst.outstanding < best.outstanding:
                        best = inst
                chosen = [best]
            else:
                chosen = sorted(rotated, key=lambda i: i.outstanding)[:n]
        for inst in chosen:
            inst.outstanding += 1
        return chosen

    def _transfer_s(self, sources: Sequence[tuple[_Machine, float]], dst: _Machine,
                    parts: int) -> float:  # fmt: skip
        delay = 0.0
        for src, mb in sources:
            if src is dst:
                continue
            lat = self.intra_s if src.server.zone == dst.server.zone else self.inter_s
            bw = min(src.server.bandwidth_mbps, dst.server.bandwidth_mbps)
            delay = max(delay, lat + (mb / parts) * 8.0 / bw)
        return delay

    def _fetch_s(self, job: list[Any], dst: _Machine) -> float:
        return self._transfer_s(job[_SOURCES], dst, job[_PARTS])

    def _step(self, plan: _ProcessPlan, sp: _StepPlan, pid: int,
              sources: Sequence[tuple[_Machine, float]]) -> Generator[Any, Any, list]:  # fmt: skip
        env = self.env
        shared = self.shared[sp.component]
        if shared is not None:
            n = min(sp.parallel, len(self.instances[sp.component]))
            if n == 0:
                raise ValueError(f"component {self.component_names[sp.component]} has no instance")
            targets: list[_Instance | None] = [None] * n
        else:
            targets = self._choose(sp.component, sp.parallel)  # type: ignore[assignment]
            n = len(targets)
        cpu_s = sp.cpu(1) / n if sp.cpu is not None else 0.0
        gpu_s = sp.gpu(1) / n if sp.gpu is not None else 0.0
        jobs = []
        for part, inst in enumerate(targets):
            ev = env.event()
            if inst is None:
                job = [plan.code, pid, sp.code, sp.component, -1, -1, part,
                       _NAN, _NAN, _NAN, 0, ev, cpu_s, gpu_s, sources, n]  # fmt: skip
                shared.put(job, env.now)  # type: ignore[union-attr]
            else:
                job = [plan.code, pid, sp.code, sp.component, inst.machine.code, inst.replica,
                       part, _NAN, _NAN, _NAN, 0, ev, cpu_s, gpu_s]  # fmt: skip
                delay = self._transfer_s(sources, inst.machine, n) if sources else 0.0
                if delay > 0:
                    t = env.timeout(delay)
                    t.callbacks.append(lambda _e, i=inst, j=job: i.put(j))
                else:
                    inst.put(job)
            self.visits.append(job)
            jobs.append(job)
        yield jobs[0][_EVENT] if n == 1 else env.all_of([j[_EVENT] for j in jobs])
        mb = sp.step.data_out_mb
        return [(self.machine_list[j[_MACHINE]], mb / n) for j in jobs]

    def _execution(self, plan: _ProcessPlan, pid: int) -> Generator[Any, Any, None]:
        env = self.env
        record = [plan.code, pid, env.now, _NAN, plan.process.deadline_s or _NAN]
        self.requests.append(record)
        self.in_flight += 1
        if plan.chain:
            sources: list = []
            for sp in plan.steps:
                sources = yield from self._step(plan, sp, pid, sources)
        else:
            yield from self._dag(plan, pid)
        record[3] = env.now
        self.in_flight -= 1
        self._check_drained()

    def _dag(self, plan: _ProcessPlan, pid: int) -> Generator[Any, Any, None]:
        env = self.env
        done = {sp.step.name: env.event() for sp in plan.steps}
        outputs: dict[str, list] = {}

        def one(sp: _StepPlan) -> Generator[Any, Any, None]:
            deps = sp.step.depends_on
            if deps:
                yield env.all_of([done[d] for d in deps])
            sources = [src for d in deps for src in outputs[d]]
            outputs[sp.step.name] = yield from self._step(plan, sp, pid, sources)
            done[sp.step.name].succeed()

        for sp in plan.steps:
            env.process(one(sp))
        yield env.all_of(list(done.values()))

    def _source(self, plan: _ProcessPlan, times: np.ndarray) -> Generator[Any, Any, None]:
        env = self.env
        for pid, t in enumerate(times.tolist()):
            yield env.timeout(t - env.now)
            env.process(self._execution(plan, pid))
        self.sources_left -= 1
        self._check_drained()

    def _check_drained(self) -> None:
        if self.sources_left == 0 and self.in_flight == 0 and not self.drained.triggered:
            self.drained.succeed()

    # -- run -----------------------------------------------------------------------------------
    def run(self) -> ReplicationResult:
        """Simulate arrivals over the horizon, then drain for up to ``drain_s``."""
        self.env = env = simpy.Environment()
        self._build()
        self.visits: list[list[Any]] = []
        self.requests: list[list[Any]] = []
        self.in_flight = 0
        self.drained = env.event()
        sources = self._arrivals()
        self.sources_left = len(sources)
        for plan, times in sources:
            env.process(self._source(plan, times))
        self._check_drained()
        env.run(until=env.any_of([self.drained, env.timeout(self.horizon_s + self.drain_s)]))
        events = next(env._eid)  # type: ignore[attr-defined]  # simpy numbers every event it schedules
        return ReplicationResult(self._visit_frame(), self._request_frame(), events, env.now)

    # -- collect -------------------------------------------------------------------------------
    def _visit_frame(self) -> pd.DataFrame:
        rows = self.visits
        cols: list[Any] = list(zip(*[r[:11] for r in rows], strict=True)) if rows else [()] * 11
        frame = pd.DataFrame(
            {
                "process": _categorical(cols[0], [p.name for p in self.scenario.processes]),
                "pid": np.asarray(cols[1], dtype=np.int64),
                "step": _categorical(cols[2], self.step_names),
                "component": _categorical(cols[3], self.component_names),
                "machine": _categorical(cols[4], self.machine_names),
                "replica": np.asarray(cols[5], dtype=np.int32),
                "part": np.asarray(cols[6], dtype=np.int32),
                "t_arrive": np.asarray(cols[7], dtype=float),
                "t_start": np.asarray(cols[8], dtype=float),
                "t_end": np.asarray(cols[9], dtype=float),
                "batch": np.asarray(cols[10], dtype=np.int32),
            }
        )
        return frame

    def _request_frame(self) -> pd.DataFrame:
        rows = self.requests
        cols: list[Any] = list(zip(*rows, strict=True)) if rows else [()] * 5
        return pd.DataFrame(
            {
                "process": _categorical(cols[0], [p.name for p in self.scenario.processes]),
                "pid": np.asarray(cols[1], dtype=np.int64),
                "t_arrive": np.asarray(cols[2], dtype=float),
                "t_end": np.asarray(cols[3], dtype=float),
                "deadline_s": np.asarray(cols[4], dtype=float),
            }
        )


def _categorical(codes: Sequence[int], names: list[str]) -> pd.Categorical:
    # Step names repeat across processes; categories must be unique.
    unique = list(dict.fromkeys(names))
    remap = np.array([unique.index(n) for n in names], dtype=np.int64)
    arr = remap[np.asarray(codes, dtype=np.int64)] if len(codes) else np.array([], dtype=np.int64)
    return pd.Categorical.from_codes(arr, categories=unique)


def simulate_replication(scenario: Scenario, deployment: Deployment, workload: Workload | None,
                         horizon_s: float, seed: int, replication: int = 0,
                         drain_s: float | None = None) -> ReplicationResult:  # fmt: skip
    """Run one replication; pure: same arguments ⇒ identical records."""
    if not math.isfinite(horizon_s) or horizon_s <= 0:
        raise ValueError(f"horizon_s must be a positive number of seconds, got {horizon_s}")
    return Simulation(scenario, deployment, workload, horizon_s, seed, replication, drain_s).run()
