"""The SimPy engine: one replication of a deployment under a workload.

Build → wire → run → collect. Machines hold a core pool (only when their
instances can contend for cores) and a GPU pool; every component instance
serves a FIFO queue with dynamic batching (its own queue under balanced
dispatch, one shared by all instances of the component under shared-queue
dispatch); every process execution (a training run, an inference request)
walks its DAG of steps, each step split over up to ``parallelism`` instances
chosen by the load-balancing policy, with a network transfer before each part
whose input was produced on another machine.

Like Vidur's events, each SimPy event's callback schedules its follow-ups:
there is no generator process per request or per instance. That keeps a
visit to about two events (service, transfer) and makes the engine several
times faster than a process-per-request design, with the same semantics.

The simulation can be driven incrementally — :meth:`Simulation.start`,
:meth:`~Simulation.advance`, :meth:`~Simulation.reconfigure` — which is how
the RL environment changes a pipeline's configuration every few seconds.

The output is one flat record per instance visit plus one per process
execution (``VISIT_COLUMNS`` / ``REQUEST_COLUMNS``); all metrics are pure
functions of those tables (``twin.criteria``), shared with the testbed.
"""

from __future__ import annotations

import contextlib
import gc
import math
import zlib
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from heapq import heappush
from typing import Any

import numpy as np
import pandas as pd
import simpy
from simpy.events import NORMAL, Timeout

from twin.deployment import effective_stage, is_always_on, stage_config
from twin.service import Sampler, make_sampler
from twin.spec import (
    Component,
    Deployment,
    Process,
    Scenario,
    Server,
    ServerOverhead,
    ServiceTime,
    Step,
    Workload,
)
from twin.workload import arrival_times, poisson_times, rate_series

VISIT_COLUMNS = (
    "process",
    "pid",
    "step",
    "component",
    "machine",
    "replica",
    "part",
    "t_arrive",
    "t_start",
    "t_end",
    "batch",
)
REQUEST_COLUMNS = ("process", "pid", "t_arrive", "t_end", "deadline_s")

# Positions in a job row. The first 11 are the visit record; the rest is
# engine state that is dropped when the records are collected.
_MACHINE, _REPLICA = 4, 5
_T_ARRIVE, _T_START, _T_END, _BATCH = 7, 8, 9, 10
_EXEC, _CPU, _GPU, _SOURCES, _PARTS, _STEP, _WAIT = 11, 12, 13, 14, 15, 16, 17
_CALL = 18  # the job's gateway call (_Call); None without a call layer at its stage
_REQUEST_T_END = REQUEST_COLUMNS.index("t_end")
_NAN = float("nan")

STREAM_ARRIVALS, STREAM_SERVICE, STREAM_ROUTING, STREAM_OVERHEAD = 0, 1, 2, 3


class _Wake(Timeout):
    """A timeout born with its one callback.

    Same event as ``env.timeout(delay)`` plus ``.callbacks.append(callback)``,
    scheduled as SimPy's own ``Timeout.__init__`` and ``Environment.schedule``
    do, without the two calls in between: the engine creates one per event, and
    this is a tenth of its time. Delays here are never negative.
    """

    def __init__(self, env: simpy.Environment, delay: float, callback: Any) -> None:
        self.env = env
        self.callbacks = [callback]
        self._value = None
        self._delay = delay
        self._ok = True
        heappush(env._queue, (env._now + delay, NORMAL, next(env._eid), self))  # type: ignore[attr-defined]


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
    # Seconds on-demand instances ran (start-up included), K×S in the
    # allocation matrix's order; zero where a component is constant-run.
    on_demand_busy_s: np.ndarray | None = None
    # Calls per component with a call layer (ServerOverhead.call_window_ms): how many
    # calls carried its visits (compare with its visit count); empty without one.
    calls: dict[str, int] = field(default_factory=dict)


class _Quota:
    """A CPU bandwidth quota (Linux CFS): ``cores × period`` of running time per period.

    Work runs at full speed while the current period has quota left, then stalls
    until the next period begins — so a job's wall time depends on how much of the
    quota the load has used, not only on its work. Up to ``carry_s`` of a period's
    unused quota is still available in the next one (the runtime the kernel leaves on
    a CPU across periods). With ``tick_s`` the quota is enforced as the kernel does:
    work that used up the period's quota runs on until the scheduler's next tick
    (every ``tick_s`` from 0), and the overrun is taken from the next period's quota.
    Instances of one machine draw from one quota: each reserves its running time
    period by period in the order it starts (so a machine never runs more than its
    quota over time; a later job does not slow an earlier one down — an
    approximation for co-located instances, exact for one).
    """

    __slots__ = ("avail", "carry_s", "period_s", "quota_s", "tick_s", "until", "used")

    def __init__(
        self, cores: float, period_s: float, carry_s: float = 0.0, tick_s: float = 0.0
    ) -> None:
        self.period_s, self.quota_s, self.carry_s = period_s, cores * period_s, carry_s
        self.tick_s = tick_s
        self.until = -1.0  # the tick that throttles the machine once it overran its quota
        self.used: dict[int, float] = {}  # period index → running time reserved (s)
        self.avail: dict[int, float] = {}  # period index → running time it may use (s)

    def _avail(self, k: int) -> float:
        a = self.avail.get(k)
        if a is None:
            if self.carry_s <= 0 and self.tick_s <= 0:
                a = self.quota_s
            else:
                before = self.avail.get(k - 1)  # unknown: idle then, its whole quota was left
                left = self.quota_s if before is None else before - self.used.get(k - 1, 0.0)
                # left < 0: the previous period's overrun, paid back from this one's quota
                a = self.quota_s + min(self.carry_s, left)
            self.avail[k] = a
        return a

    def wall_s(self, now: float, work_s: float) -> float:
        """Wall time (s) of ``work_s`` of running time that starts at ``now``; reserves it."""
        p, used = self.period_s, self.used
        if len(used) > 64:  # periods that have passed are never read again
            k_now = int(now // p) - 1  # the one before now: the carry reads it
            for k in [k for k in used if k < k_now]:
                del used[k]
                self.avail.pop(k, None)
        t, left, k = now, work_s, int(now // p)
        while left > 1e-12:
            u = used.get(k, 0.0)
            end = (k + 1) * p
            room = min(self._avail(k) - u, end - t)
            if room > 1e-12:
                r = min(room, left)
                used[k] = u + r
                t += r
                left -= r
                if left <= 1e-12:
                    break
                if self.tick_s > 0 and t < end - 1e-12:  # out of quota while running
                    self.until = (math.floor(t / self.tick_s + 1e-9) + 1) * self.tick_s
            if t < self.until and t < end - 1e-12:
                # the kernel has not looked yet: work runs on to the tick, the next job
                # too (the woken worker thread runs on the other CPU's runqueue, whose
                # local runtime the overrun did not use up)
                r = min(self.until - t, end - t, left)
                used[k] = used.get(k, 0.0) + r
                t += r
                left -= r
                if left <= 1e-12:
                    break
                if t < end - 1e-12:  # throttled at the tick until the period ends
                    self.until = -1.0
            k += 1
            t = max(t, k * p)
        return t - now

    def beside_s(self, now: float, work_s: float) -> float:
        """Wall time (s) of ``work_s`` run in another thread beside the machine's jobs.

        The kernel runs the two threads side by side on the host's cores, so the
        work does not wait for the jobs' booked running time; its own running time
        is booked in the earliest room, so the jobs that start after it find that
        much less quota (the machine's capacity counts it). Its stalls when the
        group is throttled are left to the calibrated per-request overhead, which
        measured them (it grows with the offered rate).
        """
        self.wall_s(now, work_s)  # books the running time
        return work_s


class _Machine:
    __slots__ = (
        "code",
        "cpu",
        "gpu",
        "gpu_speed",
        "name",
        "quota",
        "server",
        "slowdown",
        "speed",
    )

    def __init__(
        self,
        env: simpy.Environment,
        code: int,
        name: str,
        server: Server,
        work_cores: float,
        keepalive_cores: float,
        slowdown: float,
        period_s: float = 0.01,
        carry_s: float = 0.0,
        tick_s: float = 0.0,
    ) -> None:
        self.code, self.name, self.server = code, name, server
        quota = server.cpu_quota_cores
        self.quota = _Quota(quota, period_s, carry_s, tick_s) if quota is not None else None
        self.speed, self.gpu_speed, self.slowdown = server.cpu_speed, server.gpu_speed, slowdown
        available = max(server.cpu_cores - keepalive_cores, 0.05 * server.cpu_cores)
        # A core pool costs two events per service; only build it when
        # instances can actually contend (overcommitted machines). Under a CPU
        # quota the quota is the limit (a cgroup's threads run on any host core
        # until it is used up), so there is no pool to wait for.
        self.cpu = (
            simpy.Container(env, capacity=available, init=available)
            if work_cores > available + 1e-9 and self.quota is None
            else None
        )
        self.gpu = simpy.Resource(env, capacity=server.gpus) if server.gpus else None


class _Queue:
    """A FIFO of jobs and the idle instances that serve it.

    Balanced dispatch gives each instance its own queue; shared-queue
    dispatch gives all instances of a component one. A single batching timer
    per queue fires when the oldest job has waited ``timeout_s``.
    """

    __slots__ = ("env", "idle", "items", "timer_at")

    def __init__(self, env: simpy.Environment) -> None:
        self.env = env
        self.items: deque[list[Any]] = deque()
        self.idle: deque[_Instance] = deque()
        self.timer_at = _NAN

    def put(self, job: list[Any]) -> None:
        job[_T_ARRIVE] = self.env._now
        self.items.append(job)
        if self.idle:
            self.kick()

    def kick(self) -> None:
        """Start idle instances while there is work they are willing to take."""
        while self.idle and self.items:
            inst = self.idle[0]
            if not inst.try_start():
                return
            self.idle.popleft()
            inst.is_idle = False

    def arm(self, at: float) -> None:
        if self.timer_at <= at:  # an earlier or equal timer is pending (NaN compares False)
            return
        self.timer_at = at
        _Wake(self.env, at - self.env._now, lambda _e, a=at: self._fire(a))

    def _fire(self, at: float) -> None:
        if self.timer_at == at:
            self.timer_at = _NAN
            self.kick()


class _Answer:
    """A batch answer that reaches its caller later: calls ``part_done`` for its job."""

    __slots__ = ("job",)

    def __init__(self, job: list[Any]) -> None:
        self.job = job

    def __call__(self, _e: Any) -> None:
        self.job[_EXEC].part_done(self.job)


class _Call:
    """Items the caller sent to one replica in one HTTP call (``ServerOverhead.call_window_ms``).

    They are answered together, when the last of them is computed: ``left`` counts the
    items not yet computed, ``jobs`` holds them in the order they joined.
    """

    __slots__ = ("jobs", "left", "t_open", "t_ready")

    def __init__(self, t_open: float) -> None:
        self.t_open, self.jobs, self.left = t_open, [], 0
        self.t_ready = t_open  # when its latest item reaches the server (s)


class _AnswerJobs:
    """Answers that reach their caller together, later: ``part_done`` for each job."""

    __slots__ = ("jobs",)

    def __init__(self, jobs: list[list[Any]]) -> None:
        self.jobs = jobs

    def __call__(self, _e: Any) -> None:
        for j in self.jobs:
            j[_EXEC].part_done(j)


class _Instance:
    """One component instance: takes batches from its queue and serves them."""

    __slots__ = (
        "answer_s",
        "batch",
        "busy",
        "calls",
        "cold",
        "cores",
        "cpu_s",
        "current",
        "env",
        "fetch",
        "gpu_req",
        "gpu_s",
        "handoff",
        "handoff_cpu",
        "is_idle",
        "late_s",
        "machine",
        "onward",
        "open_call",
        "outstanding",
        "queue",
        "replica",
        "retired",
        "run_left",
        "sampler",
        "startup_s",
        "t_busy",
        "then",
        "timeout_s",
    )

    def __init__(
        self,
        env: simpy.Environment,
        machine: _Machine,
        replica: int,
        cores: float,
        batch: int,
        timeout_s: float,
        sampler: Sampler | None,
        queue: _Queue,
        fetch: Any = None,
        startup_s: float = 0.0,
        busy: list[float] | None = None,
        handoff: Sampler | None = None,
        handoff_cpu: bool = False,
        answer_s: float = 0.0,
        late_s: float = 0.0,
        calls: bool = False,
        onward: bool = False,
    ) -> None:
        self.env, self.machine, self.replica = env, machine, replica
        # ServerOverhead.answers_onward: a batch's items that go on leave it together
        self.onward = onward
        # ServerOverhead.call_window_ms > 0: jobs come in calls (_Call), answered per call;
        # open_call is the latest call sent here, which a job launched soon enough joins
        self.calls, self.open_call = calls, None
        # ServerOverhead.answer_ms (s): a batch's answers leave one by one;
        # ServerOverhead.timer_late_ms (s): the batch timer fires this late
        self.answer_s, self.late_s = answer_s, late_s
        # ServerOverhead.handoff: the serial time (s) between a batch's end and the
        # start of the next one that already waits; None: none
        self.handoff, self.handoff_cpu = handoff, handoff_cpu
        # On-demand instances: ``busy`` (per machine code, s) meters the time
        # they run, cold start included; a positive ``startup_s`` makes each
        # start after an idle spell wait that long.
        self.startup_s, self.busy, self.t_busy = startup_s, busy, 0.0
        self.cold = startup_s > 0
        self.cores = min(cores, machine.cpu.capacity) if machine.cpu else cores
        self.batch, self.timeout_s, self.sampler = batch, timeout_s, sampler
        self.queue = queue
        # Shared-queue workers learn where their input is only when they take
        # a job, so they fetch it themselves: fetch(job, machine) → seconds.
        self.fetch = fetch
        self.outstanding = 0
        self.current: list[list[Any]] = []
        self.cpu_s = self.gpu_s = 0.0
        self.run_left, self.then = 0.0, None  # CPU work still to run in slices (s)
        self.gpu_req: Any = None
        self.retired = False
        self.is_idle = True
        queue.idle.append(self)

    def put(self, job: list[Any]) -> None:
        self.queue.put(job)

    def try_start(self) -> bool:
        """Take a batch and begin serving it; False when there is nothing to take yet."""
        q = self.queue.items
        if not q:
            return False
        env = self.env
        now = env._now  # the property costs a call; this runs once or twice per visit
        batch = self.batch
        if batch > 1 and len(q) < batch and self.timeout_s > 0 and not self.retired:
            # Dynamic batching: serve when the batch is full or the oldest
            # job has waited timeout_s, whichever comes first.
            deadline = q[0][_T_ARRIVE] + self.timeout_s + self.late_s
            if now < deadline - 1e-12:
                self.queue.arm(deadline)
                return False
        m = self.machine
        if batch == 1 or len(q) == 1:
            job = q.popleft()
            job[_T_START] = now
            job[_BATCH] = 1
            jobs = [job]
            if self.sampler is not None:
                cpu_s, gpu_s = self.sampler(1), 0.0
            else:
                cpu_s, gpu_s = job[_CPU], job[_GPU]
        else:
            n = min(batch, len(q))
            jobs = [q.popleft() for _ in range(n)]
            for j in jobs:
                j[_T_START] = now
                j[_BATCH] = n
            if self.sampler is not None:
                cpu_s, gpu_s = self.sampler(n), 0.0
            else:
                cpu_s = sum(j[_CPU] for j in jobs)
                gpu_s = sum(j[_GPU] for j in jobs)
        self.current = jobs
        if gpu_s > 0 and m.gpu is None:
            cpu_s += gpu_s * m.slowdown
            gpu_s = 0.0
        self.cpu_s, self.gpu_s = cpu_s, gpu_s
        self.t_busy = now
        # Start-up, the input's transfer and the step's wait elapse off the machine's
        # CPU: none of them takes cores or quota (only the instance).
        delay = max(j[_WAIT] for j in jobs) if len(jobs) > 1 else jobs[0][_WAIT]
        if self.cold:
            self.cold = False
            delay += self.startup_s
        if self.fetch is not None:
            for j in jobs:
                j[_MACHINE] = m.code
                j[_REPLICA] = self.replica
            delay += max(self.fetch(j, m) for j in jobs)
        if delay > 0:
            _Wake(env, delay, self._compute)
            return True
        if m.cpu is None and gpu_s == 0 and cpu_s > 0:
            # The common case — own cores, no GPU: one event for the service.
            self._run_cpu(self._after_cpu)
            return True
        self._compute()
        return True

    def _compute(self, _e: Any = None) -> None:
        m = self.machine
        if self.cpu_s > 0:
            if m.cpu is not None:
                m.cpu.get(self.cores).callbacks.append(self._cpu_granted)
            else:
                self._run_cpu(self._after_cpu)
        else:
            self._after_cpu()

    def _run_cpu(self, then: Any) -> None:
        """Run the current CPU work at the machine's speed, stalled by its quota; then ``then``.

        An instance is single-threaded: it runs on at most one core, so alone on a
        machine it gets ``min(1, quota)`` of a core — a batch step of seconds under a
        quarter-core quota takes four times its running time, as a one-thread job in
        a cgroup with that quota does. Work longer than one period's quota reserves
        the quota one period's worth at a time, so jobs that start while it runs
        take their turn period by period, as CFS shares a cgroup's quota among its
        runnable threads, instead of waiting until it ends.
        """
        m = self.machine
        run_s = self.cpu_s / m.speed
        q = m.quota
        if q is None:
            _Wake(self.env, run_s, then)
        elif run_s <= q.quota_s:
            _Wake(self.env, q.wall_s(self.env._now, run_s), then)
        else:
            self.run_left, self.then = run_s, then
            self._slice()

    def _slice(self, _e: Any = None) -> None:
        q = self.machine.quota
        r = min(self.run_left, q.quota_s)  # type: ignore[union-attr]
        self.run_left -= r
        last = self.run_left <= 1e-12
        _Wake(self.env, q.wall_s(self.env._now, r), self.then if last else self._slice)  # type: ignore[union-attr]

    def _cpu_granted(self, _e: Any) -> None:
        self._run_cpu(self._release_cpu)

    def _release_cpu(self, _e: Any) -> None:
        self.machine.cpu.put(self.cores)  # type: ignore[union-attr]
        self._after_cpu()

    def _after_cpu(self, _e: Any = None) -> None:
        if self.gpu_s > 0:
            self.gpu_req = self.machine.gpu.request()  # type: ignore[union-attr]
            self.gpu_req.callbacks.append(self._gpu_granted)
        else:
            self._finish()

    def _gpu_granted(self, _e: Any) -> None:
        _Wake(self.env, self.gpu_s / self.machine.gpu_speed, self._gpu_done)

    def _gpu_done(self, _e: Any) -> None:
        self.machine.gpu.release(self.gpu_req)  # type: ignore[union-attr]
        self._finish()

    def _finish(self) -> None:
        jobs, now = self.current, self.env._now
        self.current = []
        self.outstanding -= len(jobs)
        if self.busy is not None:
            self.busy[self.machine.code] += now - self.t_busy
        if self.calls:
            self._answer_calls(jobs, now)
        elif len(jobs) == 1:
            job = jobs[0]
            job[_T_END] = now
            job[_EXEC].part_done(job)
        else:
            for j in jobs:
                j[_T_END] = now
            if self.answer_s > 0 and self.onward:
                self._answer_onward(jobs)
            elif self.answer_s > 0:
                # the answers leave one by one: the k-th reaches its caller k answers later
                # (the visit's service ends with the batch; the wait is the HTTP hop's)
                jobs[0][_EXEC].part_done(jobs[0])
                for k, j in enumerate(jobs[1:], 1):
                    _Wake(self.env, k * self.answer_s, _Answer(j))
            else:
                for j in jobs:
                    j[_EXEC].part_done(j)
        if self.handoff is not None and self.queue.items:
            # the next job waits: the instance hands the batch off first, holding the
            # model (ServerOverhead.handoff; no CPU unless handoff_cpu); a job that comes
            # later finds the instance idle and starts at once, as the testbed's does
            delay = self.handoff(1)
            if self.handoff_cpu:  # the server's own CPU: at its speed, under its quota
                m = self.machine
                delay /= m.speed
                if m.quota is not None:
                    delay = m.quota.wall_s(self.env._now, delay)
            _Wake(self.env, delay, self._next)
            return
        self._next()

    def _answer_onward(self, jobs: list[list[Any]]) -> None:
        """``ServerOverhead.answers_onward``: the caller reads the batch's answers one by
        one (answer_s each) in one turn of its loop; the items whose request goes on to
        another step leave together when it has read them all, (n − 1) × answer_s after
        the batch ends, and so reach their next stage at one instant; a last step's k-th
        answer goes back to its client k × answer_s after the batch ends."""
        onward = []
        for k, j in enumerate(jobs):
            ex = j[_EXEC]
            if ex.plan.steps[j[_STEP]].dependents:
                onward.append(j)
            elif k == 0:
                ex.part_done(j)
            else:
                _Wake(self.env, k * self.answer_s, _Answer(j))
        if onward:
            _Wake(self.env, (len(jobs) - 1) * self.answer_s, _AnswerJobs(onward))

    def _answer_calls(self, jobs: list[list[Any]], now: float) -> None:
        """Answer every call whose last job this batch computed, one call after another:
        a call leaves ``answer_s`` × the items answered before it in this batch after the
        batch ends (its jobs' service still ends with the batch); a call with a job still
        queued (it did not fit in this batch) waits for that job's batch."""
        for j in jobs:
            j[_T_END] = now
        before = 0
        for j in jobs:
            c = j[_CALL]
            c.left -= 1
            if c.left:
                continue
            if before == 0 or self.answer_s <= 0:
                for cj in c.jobs:
                    cj[_EXEC].part_done(cj)
            else:
                _Wake(self.env, before * self.answer_s, _AnswerJobs(c.jobs))
            before += len(c.jobs)

    def _next(self, _e: Any = None) -> None:
        """Take the next batch, or wait idle for one."""
        if self.retired and (self.fetch is not None or not self.queue.items):
            return  # a retired worker leaves once it owes nothing
        if not self.try_start():
            self.is_idle = True
            self.queue.idle.append(self)
            if self.startup_s > 0:
                self.cold = True  # an on-demand instance stops when it has nothing to do


@dataclass
class _StepPlan:
    index: int
    code: int
    step: Step
    component: int
    parallel: int
    cpu: Sampler | None
    gpu: Sampler | None
    dependents: list[int]
    depends_on: list[int]
    wait: Sampler | None = None
    part_cpu: Sampler | None = None


@dataclass
class _ProcessPlan:
    code: int
    process: Process
    steps: list[_StepPlan]
    roots: list[int]
    overhead: Sampler | None = None
    overhead_rng: np.random.Generator | None = None  # the process's overhead stream


class _Execution:
    """One run of a process: launches steps as their dependencies complete."""

    __slots__ = ("deps_left", "jobs", "parts_left", "pid", "plan", "record", "sim", "steps_left")

    def __init__(self, sim: Simulation, plan: _ProcessPlan, pid: int) -> None:
        self.sim, self.plan, self.pid = sim, plan, pid
        n = len(plan.steps)
        self.deps_left = [len(sp.depends_on) for sp in plan.steps]
        self.parts_left = [0] * n
        self.jobs: list[list[list[Any]] | None] = [None] * n
        self.steps_left = n
        self.record = [plan.code, pid, sim.env.now, _NAN, plan.process.deadline_s or _NAN]

    def start(self) -> None:
        self.sim.requests.append(self.record)
        overhead = self.plan.overhead
        if overhead is not None:
            delay = overhead(1)
            if delay > 0:
                _Wake(self.sim.env, delay, self._launch_roots)
                return
        self._launch_roots()

    def _launch_roots(self, _e: Any = None) -> None:
        for i in self.plan.roots:
            self.sim.launch(self, self.plan.steps[i], ())

    def part_done(self, job: list[Any]) -> None:
        i = job[_STEP]
        self.parts_left[i] -= 1
        if self.parts_left[i]:
            return
        sp = self.plan.steps[i]
        mb = sp.step.data_out_mb
        jobs = self.jobs[i] or []
        n = len(jobs)
        machines = self.sim.machine_list
        outputs = [(machines[j[_MACHINE]], mb / n) for j in jobs]
        self.steps_left -= 1
        if self.steps_left == 0:
            self.record[3] = self.sim.env.now
            self.sim.execution_done()
            return
        steps = self.plan.steps
        for d in sp.dependents:
            self.deps_left[d] -= 1
            if self.deps_left[d] == 0:
                dep = steps[d]
                sources = outputs if len(dep.depends_on) == 1 else self._sources(dep)
                self.sim.launch(self, dep, sources)

    def _sources(self, sp: _StepPlan) -> list[tuple[_Machine, float]]:
        machines, steps = self.sim.machine_list, self.plan.steps
        out = []
        for k in sp.depends_on:
            jobs = self.jobs[k] or []
            mb = steps[k].step.data_out_mb / max(len(jobs), 1)
            out += [(machines[j[_MACHINE]], mb) for j in jobs]
        return out


class _Source:
    """Releases a process's executions at pre-drawn arrival times."""

    __slots__ = ("k", "plan", "sim", "times")

    def __init__(self, sim: Simulation, plan: _ProcessPlan, times: list[float]) -> None:
        self.sim, self.plan, self.times, self.k = sim, plan, times, 0

    def schedule(self) -> None:
        if self.k < len(self.times):
            env = self.sim.env
            _Wake(env, max(self.times[self.k] - env.now, 0.0), self.fire)
        else:
            self.sim.source_done()

    def fire(self, _e: Any) -> None:
        pid = self.k
        self.k += 1
        self.sim.in_flight += 1
        _Execution(self.sim, self.plan, pid).start()
        self.schedule()


class Simulation:
    """One replication: :meth:`run` it whole, or :meth:`start` and :meth:`advance` it.

    ``drain_s`` bounds how long executions still in flight at the horizon
    may run on (default: one more horizon); what is left then is recorded
    as unfinished.
    """

    def __init__(
        self,
        scenario: Scenario,
        deployment: Deployment,
        workload: Workload | None,
        horizon_s: float,
        seed: int,
        replication: int = 0,
        drain_s: float | None = None,
    ) -> None:
        if not math.isfinite(horizon_s) or horizon_s <= 0:
            raise ValueError(f"horizon_s must be a positive number of seconds, got {horizon_s}")
        self.scenario, self.deployment, self.workload = scenario, deployment, workload
        self.horizon_s = horizon_s
        self.drain_s = horizon_s if drain_s is None else drain_s
        self.seed, self.replication = seed, replication
        self.started = False

    # -- build ---------------------------------------------------------------------------------
    def _build(self) -> None:
        sc, dep, env = self.scenario, self.deployment, self.env
        servers = sc.server_of()
        self.machine_names = sc.server_instances()
        self.component_names = [c.name for c in sc.components]
        keep = dict.fromkeys(self.machine_names, 0.0)
        work = dict.fromkeys(self.machine_names, 0.0)
        for c in sc.components:
            for m, n in dep.allocation.get(c.name, {}).items():
                keep[m] += n * (c.keepalive_cpu_cores if is_always_on(c, dep) else 0.0)
                work[m] += n * _working_cores(c, dep)
        slowdown = sc.settings.gpu_fallback_slowdown
        period_s = sc.settings.cpu_period_ms / 1e3
        carry_s = sc.settings.cpu_quota_carry_ms / 1e3
        tick_s = sc.settings.cpu_quota_tick_ms / 1e3
        self.machines = {
            m: _Machine(
                env, j, m, servers[m], work[m], keep[m], slowdown, period_s, carry_s, tick_s
            )
            for j, m in enumerate(self.machine_names)
        }
        self.machine_list = list(self.machines.values())
        self.instances: dict[int, list[_Instance]] = {}
        self.shared: dict[int, _Queue | None] = {}
        self.samplers: dict[int, Sampler | None] = {}
        self.next_replica = [0] * len(sc.components)
        self.busy = [[0.0] * len(self.machine_names) for _ in sc.components]
        # per component: its instances' hand-off sampler (ServerOverhead.handoff), on a
        # stream of its own so a scenario without one draws as before
        self.handoffs: list[Sampler | None] = [None] * len(sc.components)
        self.handoff_cpu = [False] * len(sc.components)
        # per component: the server's CPU (s at speed 1) each visit spends beside the
        # model before it joins the queue (ServerOverhead.concurrent); 0 when none
        self.beside_s = [0.0] * len(sc.components)
        # per component: ServerOverhead.answer_ms (s); 0 when none
        self.answer_s = [0.0] * len(sc.components)
        self.late_s = [0.0] * len(sc.components)  # ServerOverhead.timer_late_ms (s)
        # per component: ServerOverhead.call_window_ms (s), balanced dispatch only; 0: none.
        # With it the server's CPU per call is spent once per call: call_s (s at speed 1)
        self.window_s = [0.0] * len(sc.components)
        self.call_s = [0.0] * len(sc.components)
        self.calls_opened = [0] * len(sc.components)
        self.onward = [False] * len(sc.components)  # ServerOverhead.answers_onward
        for k, c in enumerate(sc.components):
            self.shared[k] = _Queue(env) if c.dispatch == "shared_queue" else None
            self.samplers[k] = None
            self.instances[k] = []
            o = c.server_overhead
            if o is not None and o.concurrent and c.dispatch != "shared_queue":
                self.beside_s[k] = (o.per_call_ms + o.per_item_ms) / 1e3
            if o is not None:
                self.answer_s[k], self.late_s[k] = o.answer_ms / 1e3, o.timer_late_ms / 1e3
                self.onward[k] = o.answers_onward
            if o is not None and o.call_window_ms > 0 and c.dispatch != "shared_queue":
                self.window_s[k] = o.call_window_ms / 1e3
                if o.concurrent:  # the per-call part of beside_s is paid by a call's first job
                    self.call_s[k] = o.per_call_ms / 1e3
            if o is not None and o.handoff is not None:
                rng = stream(self.seed, self.replication, STREAM_SERVICE, f"{c.name}.handoff")
                self.handoffs[k] = make_sampler(o.handoff, rng)
                self.handoff_cpu[k] = o.handoff_cpu
        self._apply_allocation(dep)
        self._build_plans()
        self.routing = stream(self.seed, self.replication, STREAM_ROUTING)
        self.rr = [0] * len(sc.components)
        net = sc.settings.network
        self.intra_s = net.intra_zone_latency_ms / 1e3
        self.inter_s = net.inter_zone_latency_ms / 1e3

    def _build_plans(self) -> None:
        sc, dep = self.scenario, self.deployment
        comp_index = {c: k for k, c in enumerate(self.component_names)}
        self.step_names: list[str] = []
        self.plans: list[_ProcessPlan] = []
        for p_code, p in enumerate(sc.processes):
            index = {s.name: i for i, s in enumerate(p.steps)}
            steps = []
            for i, s in enumerate(p.steps):
                key = (self.seed, self.replication, STREAM_SERVICE)
                rng = stream(*key, f"{p.name}.{s.name}")
                comp = sc.component(s.component)
                steps.append(
                    _StepPlan(
                        index=i,
                        code=len(self.step_names),
                        step=s,
                        component=comp_index[s.component],
                        parallel=min(dep.parallelism.get(f"{p.name}.{s.name}", 1), s.max_parallel),
                        cpu=make_sampler(s.cpu_work, rng)
                        if s.cpu_work and not comp.is_stage
                        else None,
                        gpu=make_sampler(s.gpu_work, rng) if s.gpu_work else None,
                        dependents=[j for j, t in enumerate(p.steps) if s.name in t.depends_on],
                        depends_on=[index[d] for d in s.depends_on],
                        # a stream of its own: a scenario without waits draws as before
                        wait=make_sampler(s.wait, stream(*key, f"{p.name}.{s.name}.wait"))
                        if s.wait and not comp.is_stage
                        else None,
                        # a stream of its own too: a scenario without it draws as before
                        part_cpu=make_sampler(
                            s.part_cpu_work, stream(*key, f"{p.name}.{s.name}.part")
                        )
                        if s.part_cpu_work and not comp.is_stage
                        else None,
                    )
                )
                self.step_names.append(s.name)
            roots = [i for i, s in enumerate(p.steps) if not s.depends_on]
            overhead = None
            rng = stream(self.seed, self.replication, STREAM_OVERHEAD, p.name)
            if p.request_overhead is not None:
                overhead = make_sampler(p.request_overhead, rng)
            self.plans.append(_ProcessPlan(p_code, p, steps, roots, overhead, rng))

    def _apply_allocation(self, dep: Deployment) -> None:
        """Bring instances, samplers and batching in line with ``dep``."""
        sc = self.scenario
        for k, c in enumerate(sc.components):
            cfg = stage_config(dep, c)
            if c.is_stage:
                old = self.deployment.stages.get(c.name) if self.started else None
                if self.samplers[k] is None or old is None or old.variant != cfg.variant:
                    # The component's service stream continues across variant
                    # switches, so a reconfigured run keeps common random numbers.
                    if k not in self._service_rngs:
                        self._service_rngs[k] = stream(
                            self.seed, self.replication, STREAM_SERVICE, c.name
                        )
                    variant = c.variant(cfg.variant)
                    self.samplers[k] = _with_overhead(
                        make_sampler(variant.service_time, self._service_rngs[k]),
                        c.server_overhead if self.beside_s[k] == 0 else None,
                    )
            eff = effective_stage(sc, dep, c)
            batch, timeout_ms = eff.batch, eff.batch_timeout_ms
            cores = _working_cores(c, dep)
            active = self.instances[k]
            for inst in active:
                inst.batch, inst.timeout_s, inst.sampler = batch, timeout_ms / 1e3, self.samplers[k]
                inst.cores = min(cores, inst.machine.cpu.capacity) if inst.machine.cpu else cores
            want = dep.allocation.get(c.name, {})
            on_demand = not is_always_on(c, dep)
            startup_s = c.startup_s if on_demand else 0.0
            keep: list[_Instance] = []
            for m in self.machine_names:
                here = [i for i in active if i.machine.name == m]
                n = want.get(m, 0)
                keep += here[:n]
                for inst in here[n:]:
                    self._retire(inst)
                for _ in range(n - len(here)):
                    keep.append(self._new_instance(k, m, cores, batch, timeout_ms / 1e3, on_demand))
                for inst in here[:n]:
                    inst.busy = self.busy[k] if on_demand else None
                    inst.startup_s = startup_s
            self.instances[k] = keep
            for inst in keep:
                inst.queue.kick()

    def _new_instance(
        self,
        k: int,
        machine: str,
        cores: float,
        batch: int,
        timeout_s: float,
        on_demand: bool = False,
    ) -> _Instance:
        shared = self.shared[k]
        queue = shared if shared is not None else _Queue(self.env)
        fetch = self._fetch_s if shared is not None else None
        replica = self.next_replica[k]
        self.next_replica[k] += 1
        return _Instance(
            self.env,
            self.machines[machine],
            replica,
            cores,
            batch,
            timeout_s,
            self.samplers[k],
            queue,
            fetch,
            self.scenario.components[k].startup_s if on_demand else 0.0,
            self.busy[k] if on_demand else None,
            self.handoffs[k],
            self.handoff_cpu[k],
            self.answer_s[k],
            self.late_s[k],
            shared is None and self.window_s[k] > 0,
            self.onward[k],
        )

    def _retire(self, inst: _Instance) -> None:
        inst.retired = True
        if inst.is_idle:
            with contextlib.suppress(ValueError):
                inst.queue.idle.remove(inst)
            inst.is_idle = False
            # A balanced replica still owes its queued jobs: serve them now,
            # without waiting for batches to fill.
            if inst.fetch is None and inst.queue.items:
                inst.try_start()

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
            if n == 1:
                chosen = [insts[int(self.routing.integers(k))]]
            else:
                chosen = [insts[i] for i in self.routing.choice(k, size=n, replace=False)]
        else:
            # Rotating the start spreads ties (idle replicas) evenly.
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

    def _transfer_s(
        self, sources: Sequence[tuple[_Machine, float]], dst: _Machine, parts: int
    ) -> float:
        delay = 0.0
        for src, mb in sources:
            if src is dst:
                continue
            lat = self.intra_s if src.server.zone == dst.server.zone else self.inter_s
            bw = min(src.server.bandwidth_mbps, dst.server.bandwidth_mbps)
            delay = max(delay, lat + (mb / parts) * 8.0 / bw)
        return delay

    def _fetch_s(self, job: list[Any], dst: _Machine) -> float:
        return self._transfer_s(job[_SOURCES], dst, job[_PARTS]) if job[_SOURCES] else 0.0

    def launch(
        self, ex: _Execution, sp: _StepPlan, sources: Sequence[tuple[_Machine, float]]
    ) -> None:
        """Send the parts of one step of an execution to instances."""
        env, k = self.env, sp.component
        shared = self.shared[k]
        if shared is not None:
            n = min(sp.parallel, len(self.instances[k]))
            if n == 0:
                raise ValueError(f"component {self.component_names[k]} has no instance")
            targets: list[_Instance | None] = [None] * n
        else:
            targets = self._choose(k, sp.parallel)  # type: ignore[assignment]
            n = len(targets)
        cpu_s = sp.cpu(1) / n if sp.cpu is not None else 0.0
        if sp.part_cpu is not None:  # every part's own, however many share cpu_work
            cpu_s += sp.part_cpu(1)
        gpu_s = sp.gpu(1) / n if sp.gpu is not None else 0.0
        wait_s = sp.wait(1) if sp.wait is not None else 0.0
        jobs = []
        plan = ex.plan
        for part, inst in enumerate(targets):
            if inst is None:
                job = [
                    plan.code,
                    ex.pid,
                    sp.code,
                    k,
                    -1,
                    -1,
                    part,
                    _NAN,
                    _NAN,
                    _NAN,
                    0,
                    ex,
                    cpu_s,
                    gpu_s,
                    sources,
                    n,
                    sp.index,
                    wait_s,
                    None,
                ]
                shared.put(job)  # type: ignore[union-attr]
            else:
                job = [
                    plan.code,
                    ex.pid,
                    sp.code,
                    k,
                    inst.machine.code,
                    inst.replica,
                    part,
                    _NAN,
                    _NAN,
                    _NAN,
                    0,
                    ex,
                    cpu_s,
                    gpu_s,
                    None,
                    n,
                    sp.index,
                    wait_s,
                    None,
                ]
                delay = self._transfer_s(sources, inst.machine, n) if sources else 0.0
                beside = self.beside_s[k]
                call = None
                if inst.calls:
                    call, first = self._call(inst, k)
                    job[_CALL] = call
                    call.jobs.append(job)
                    if not first:  # the call's own CPU was its first job's
                        beside -= self.call_s[k]
                if beside > 0:  # the server reads the call beside the model
                    m = inst.machine
                    run_s = beside / m.speed
                    delay += run_s if m.quota is None else m.quota.beside_s(env._now, run_s)
                if call is not None:
                    # a call's items reach the server together, behind its first one
                    delay = max(delay, call.t_ready - env._now)
                    call.t_ready = env._now + delay
                if delay > 0:
                    _Wake(env, delay, lambda _e, i=inst, j=job: i.put(j))
                else:
                    inst.put(job)
            self.visits.append(job)
            jobs.append(job)
        ex.parts_left[sp.index] = n
        ex.jobs[sp.index] = jobs

    def _call(self, inst: _Instance, k: int) -> tuple[_Call, bool]:
        """The call a job launched now to ``inst`` travels in (``ServerOverhead.call_window_ms``)
        and whether it opens it: the replica's latest call if that opened at most the
        stage's window ago and holds fewer than its batch, else a new one."""
        now = self.env._now
        c = inst.open_call
        first = c is None or now - c.t_open > self.window_s[k] or len(c.jobs) >= inst.batch
        if first:
            c = inst.open_call = _Call(now)
            self.calls_opened[k] += 1
        c.left += 1  # type: ignore[union-attr]
        return c, first  # type: ignore[return-value]

    def execution_done(self) -> None:
        self.in_flight -= 1
        self._check_drained()

    def source_done(self) -> None:
        self.sources_left -= 1
        self._check_drained()

    def _check_drained(self) -> None:
        if self.sources_left == 0 and self.in_flight == 0 and not self.drained.triggered:
            self.drained.succeed()

    # -- incremental API -----------------------------------------------------------------------
    def start(self) -> None:
        """Build the model and schedule all arrivals of the horizon; time stays at 0."""
        if self.started:
            raise RuntimeError("simulation already started")
        self.env = simpy.Environment()
        self._service_rngs: dict[int, np.random.Generator] = {}
        self.visits: list[list[Any]] = []
        self.requests: list[list[Any]] = []
        self._cursors = [(-math.inf, 0), (-math.inf, 0)]  # visits, requests: (since_s, row)
        self.in_flight = 0
        self.drained = self.env.event()
        self._build()
        self.policy = self.deployment.load_balancing or self.scenario.settings.load_balancing
        self.started = True
        sources = self._arrivals()
        self.sources_left = len(sources)
        for plan, times in sources:
            _Source(self, plan, times.tolist()).schedule()
        self._check_drained()

    @property
    def now(self) -> float:
        """Current simulated time (s)."""
        return self.env.now if self.started else 0.0

    def advance(self, until_s: float) -> None:
        """Run the simulation up to simulated time ``until_s`` (s)."""
        if not self.started:
            self.start()
        if until_s > self.env.now:
            with _gc_paused():
                self.env.run(until=until_s)

    def reconfigure(self, deployment: Deployment) -> None:
        """Apply a new deployment from now on.

        Stage variants, batch sizes and batch timeouts change for batches that
        start from now; added instances start idle; removed instances take no
        new work and finish what they have. Core-pool contention keeps the
        layout it was built with.
        """
        if not self.started:
            self.deployment = deployment
            return
        self._apply_allocation(deployment)
        self.deployment = deployment
        self.policy = deployment.load_balancing or self.scenario.settings.load_balancing
        missing = [
            self.component_names[k]
            for k, insts in self.instances.items()
            if not insts and self._needed(k)
        ]
        if missing:
            raise ValueError(f"reconfigure: no instance left for {', '.join(missing)}")

    def set_request_overhead(self, process: str, overhead: ServiceTime | None) -> None:
        """Draw ``process``'s per-request overhead (ms at batch size 1) from ``overhead``
        for requests that arrive from now on (None: no overhead).

        For a replay whose overhead moves with the deployment (a controller's
        reconfigurations); draws continue the process's own overhead stream.
        """
        plan = next((p for p in self.plans if p.process.name == process), None)
        if plan is None:
            raise ValueError(f"set_request_overhead: no process {process!r}")
        plan.overhead = None if overhead is None else make_sampler(overhead, plan.overhead_rng)

    def busy_matrix(self) -> np.ndarray:
        """Seconds on-demand instances have run so far, K×S (components × machines).

        An instance still serving counts up to its last start only.
        """
        return np.array(self.busy, dtype=float).reshape(
            len(self.component_names), len(self.machine_names)
        )

    def _needed(self, k: int) -> bool:
        return any(sp.component == k for plan in self.plans for sp in plan.steps)

    def records(self, since_s: float | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Visit and request tables so far (unfinished rows have NaN times).

        ``since_s`` (s) keeps only rows not finished before that time: what
        was in flight at ``since_s`` or arrived later. A controller that reads
        one adaptation interval after another passes each interval's start;
        with non-decreasing ``since_s`` each call skips the finished prefix
        it skipped before, so reading a whole run window by window costs
        about as much as reading it once.
        """
        # Building the tables allocates per row; with the collector on, each of its
        # passes would rescan the engine's long-lived rows (1.5× a cycle's time).
        with _gc_paused():
            if since_s is None:
                return self._visit_frame(), self._request_frame()
            v = self._unfinished(self.visits, _T_END, 0, since_s)
            r = self._unfinished(self.requests, _REQUEST_T_END, 1, since_s)
            return self._visit_frame(v), self._request_frame(r)

    def _unfinished(
        self, rows: list[list[Any]], end: int, slot: int, since_s: float
    ) -> list[list[Any]]:
        # Rows are appended in launch order and never removed; the cursor marks a
        # prefix of rows all finished before the last since_s asked for.
        last_since, i = self._cursors[slot]
        if since_s < last_since:
            i = 0
        n = len(rows)
        while i < n and rows[i][end] < since_s:  # NaN (unfinished) compares False
            i += 1
        self._cursors[slot] = (since_s, i)
        return [r for r in rows[i:] if not r[end] < since_s]

    def run(self, visits: bool = True) -> ReplicationResult:
        """Simulate arrivals over the horizon, then drain for up to ``drain_s``.

        ``visits=False`` skips building the visit table (it is then empty),
        which saves a fifth of the time when only request-level criteria count.
        The records move into the result: :meth:`records` is empty afterwards.
        """
        self.start()
        env = self.env
        with _gc_paused():
            env.run(until=env.any_of([self.drained, env.timeout(self.horizon_s + self.drain_s)]))
            events = next(env._eid)  # type: ignore[attr-defined]  # simpy numbers each event
            result = ReplicationResult(
                self._visit_frame() if visits else self._visit_frame([]),
                self._request_frame(),
                events,
                env.now,
                self.busy_matrix(),
                {
                    self.component_names[k]: n
                    for k, n in enumerate(self.calls_opened)
                    if self.window_s[k] > 0
                },
            )
            self._release_rows()
            return result

    def _release_rows(self) -> None:
        # Job rows and their executions reference each other, so only the cyclic
        # collector could free them: it would then traverse every row of the run
        # (a seventh of an evaluation's time). Cutting the engine fields breaks the
        # cycles, and the rows die by reference counting while collection is off.
        for row in self.visits:
            del row[_EXEC:]
        self.visits, self.requests = [], []

    # -- collect -------------------------------------------------------------------------------
    def _visit_frame(self, rows: list[list[Any]] | None = None) -> pd.DataFrame:
        rows = self.visits if rows is None else rows
        cols: list[Any] = list(zip(*[r[:11] for r in rows], strict=True)) if rows else [()] * 11
        return pd.DataFrame(
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

    def _request_frame(self, rows: list[list[Any]] | None = None) -> pd.DataFrame:
        rows = self.requests if rows is None else rows
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


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while the run builds its records.

    A run keeps every visit row alive until the end, so each full collection
    rescans all of them: with the collector on, a long run spends half its
    time in it. The rows are freed normally once the result is dropped.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _with_overhead(sampler: Sampler, overhead: ServerOverhead | None) -> Sampler:
    """``sampler`` plus the stage server's own CPU per batch and per item (s at speed 1).

    The server's HTTP and batching work shares the stage's CPU with the model,
    so it lengthens the service rather than running beside it.
    """
    if overhead is None or (overhead.per_call_ms == 0 and overhead.per_item_ms == 0):
        return sampler
    call_s, item_s = overhead.per_call_ms / 1e3, overhead.per_item_ms / 1e3
    return lambda b: sampler(b) + call_s + item_s * b


def _working_cores(c: Component, dep: Deployment) -> float:
    return c.variant(stage_config(dep, c).variant).cpu_cores if c.is_stage else c.cpu_cores


def _categorical(codes: Sequence[int], names: list[str]) -> pd.Categorical:
    # Step names repeat across processes; categories must be unique. Code −1
    # (a shared-queue job nobody has taken yet) becomes a missing value.
    unique = list(dict.fromkeys(names))
    remap = np.append(np.array([unique.index(n) for n in names], dtype=np.int64), -1)
    arr = np.asarray(codes, dtype=np.int64) if len(codes) else np.array([], dtype=np.int64)
    return pd.Categorical.from_codes(remap[arr], categories=unique)


def simulate_replication(
    scenario: Scenario,
    deployment: Deployment,
    workload: Workload | None,
    horizon_s: float,
    seed: int,
    replication: int = 0,
    drain_s: float | None = None,
    visits: bool = True,
) -> ReplicationResult:
    """Run one replication; pure: same arguments ⇒ identical records."""
    sim = Simulation(scenario, deployment, workload, horizon_s, seed, replication, drain_s)
    return sim.run(visits=visits)
