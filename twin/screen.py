"""The screening fidelity: the same evaluation as :func:`twin.evaluate.evaluate`, ≥ 20× faster.

``screen(scenario, deployment, workload, horizon_s, replications, seed)``
returns the same :class:`~twin.evaluate.Evaluation` (four placement criteria
per replication and mean ± CI; with ``keep_records`` the visit and request
tables, so :func:`twin.criteria.pipeline_metrics` works on it too). It is a
pure, picklable function like ``evaluate`` and runs in a Dask worker.

How: build → draw → run → collect. The deployment is flattened into arrays
(machines, instances, queues, steps as CSR lists); every random number of a
replication is drawn up front in numpy blocks from the twin's named streams
(arrivals and service times come from the very streams the SimPy twin
draws them from, in the same blocks, so the two fidelities share common
random numbers: a request may get another request's draw where the two
engines launch work in another order, but most differences between them
are the model's, not seed noise); the event loop (:mod:`twin.screen_engine`)
runs compiled by numba.

What differs from the SimPy twin (which stays the reference): draws go to
executions in arrival order and to batches in start order, where the DES
assigns them in launch order; a table service time with a gamma
distribution is drawn as a lognormal of the same mean and cv (the DES
draws those one call at a time with a cv that depends on the batch); the
machine core pool is replaced by a slowdown of overcommitted machines by
work/available cores (a feasible deployment never overcommits, so the pool
is never built there). As there, idle shared-queue workers take work
longest idle first, and an on-demand instance of a component with a
``startup_s`` starts stopped, stops whenever it finishes with nothing to take
at once, and waits ``startup_s`` (off the CPU) before the next batch it takes.
``tests/twin/test_screen.py`` checks it against closed forms and against the
SimPy twin.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from twin.criteria import CRITERIA, cost_criterion
from twin.deployment import effective_stage, is_always_on, require_feasible
from twin.evaluate import Evaluation, assemble_evaluation, resolve_workload
from twin.screen_engine import (
    FACTOR_CONST,
    FACTOR_DRAWN,
    FACTOR_LOGNORMAL,
    POLICY_LEAST,
    POLICY_RANDOM,
    POLICY_RR,
    run_engine,
)
from twin.service import BLOCK, lognormal_sigma
from twin.sim import STREAM_ARRIVALS, STREAM_OVERHEAD, STREAM_SERVICE, VISIT_COLUMNS, stream
from twin.spec import (
    ConstantServiceTime,
    Deployment,
    ExponentialServiceTime,
    GammaServiceTime,
    Scenario,
    ServiceTime,
    TableServiceTime,
    Workload,
)
from twin.workload import arrival_times, poisson_times, rate_series

STREAM_SCREEN = 7  # the engine's own routing draws (policy 'random'); the DES uses 0–3
_POLICIES = {"least_outstanding": POLICY_LEAST, "round_robin": POLICY_RR, "random": POLICY_RANDOM}


def _variates(model: ServiceTime, rng: np.random.Generator) -> Callable[[int], np.ndarray] | None:
    """The standard variates ``twin.service``'s sampler of ``model`` draws (None: it draws none)."""
    cv = model.batch_cv(1)
    match model:
        case ConstantServiceTime():
            return None
        case ExponentialServiceTime():
            return rng.standard_exponential
        case GammaServiceTime() if cv > 0:
            k = 1.0 / (cv * cv)
            return lambda n: rng.standard_gamma(k, n)
        case TableServiceTime() if model.dist == "constant":
            return None
        case TableServiceTime() if model.dist == "gamma" and cv > 0:
            k = 1.0 / (cv * cv)
            return lambda n: rng.standard_gamma(k, n)
    return rng.standard_normal if cv > 0 else None


def _times(model: ServiceTime, raw: np.ndarray | None, n: int) -> np.ndarray:
    """Service times (s, speed 1, batch of one) of ``model`` from its standard variates."""
    mean = model.batch_mean_ms(1) / 1e3
    cv = model.batch_cv(1)
    if raw is None:
        return np.full(n, mean)
    raw = raw[:n]
    if isinstance(model, ExponentialServiceTime):
        return mean * raw
    if isinstance(model, GammaServiceTime | TableServiceTime) and not (
        isinstance(model, TableServiceTime) and model.dist == "lognormal"
    ):
        return mean * raw / (1.0 / (cv * cv))
    s = lognormal_sigma(cv)
    return mean * np.exp(s * raw - s * s / 2)


def draw(model: ServiceTime, rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` service times (s, speed 1, batch of one) of ``model``: the DES sampler's numbers."""
    fn = _variates(model, rng)
    return _times(model, fn(n) if fn is not None else None, n)


def draw_pair(
    a: ServiceTime | None, b: ServiceTime | None, rng: np.random.Generator, n: int
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``n`` draws each of two samplers sharing ``rng`` as ``twin.sim`` uses them: at every
    launch a step draws its CPU work, then its GPU work, each sampler refilling its own
    block of ``BLOCK`` variates when empty — so their blocks alternate on the stream."""
    fa = _variates(a, rng) if a is not None else None
    fb = _variates(b, rng) if b is not None else None
    ra: list[np.ndarray] = []
    rb: list[np.ndarray] = []
    for _ in range(max(1, -(-n // BLOCK))):
        if fa is not None:
            ra.append(fa(BLOCK))
        if fb is not None:
            rb.append(fb(BLOCK))
    ta = _times(a, np.concatenate(ra) if ra else None, n) if a is not None else None
    tb = _times(b, np.concatenate(rb) if rb else None, n) if b is not None else None
    return ta, tb


class _Layout:
    """The deployment as flat arrays: everything that does not change between replications."""

    def __init__(self, sc: Scenario, dep: Deployment) -> None:
        servers = sc.server_of()
        self.machines = sc.server_instances()
        midx = {m: j for j, m in enumerate(self.machines)}
        zones = {z: i for i, z in enumerate(dict.fromkeys(servers[m].zone for m in self.machines))}
        srv = [servers[m] for m in self.machines]
        self.m_speed = np.array([s.cpu_speed for s in srv], dtype=float)
        self.m_gpu_speed = np.array([s.gpu_speed for s in srv], dtype=float)
        self.m_gpus = np.array([s.gpus for s in srv], dtype=np.int64)
        self.m_zone = np.array([zones[s.zone] for s in srv], dtype=np.int64)
        self.m_bw = np.array([s.bandwidth_mbps for s in srv], dtype=float)
        keep = np.zeros(len(srv))
        work = np.zeros(len(srv))
        self.components = [c.name for c in sc.components]
        i_machine, i_batch, i_timeout, i_queue, i_replica = [], [], [], [], []
        i_startup: list[float] = []
        c_inst_ptr, q_inst_ptr, q_comp = [0], [0], []
        self.c_shared = np.array([c.dispatch == "shared_queue" for c in sc.components], np.int64)
        self.c_stage = np.array([c.is_stage for c in sc.components], dtype=np.int64)
        max_b = max(c.max_batch for c in sc.components) + 1
        self.c_mean_b = np.zeros((len(sc.components), max_b))
        self.c_sigma_b = np.zeros((len(sc.components), max_b))
        self.c_kind = np.zeros(len(sc.components), dtype=np.int64)
        self.c_models: list[ServiceTime | None] = []
        for k, c in enumerate(sc.components):
            eff = effective_stage(sc, dep, c)
            cores = c.variant(eff.variant).cpu_cores if c.is_stage else c.cpu_cores
            batch, timeout_ms = eff.batch, eff.batch_timeout_ms
            model = c.variant(eff.variant).service_time if c.is_stage else None
            self.c_models.append(model)
            if model is not None:
                self._stage_model(k, model, max_b)
            want = dep.allocation.get(c.name, {})
            startup_s = 0.0 if is_always_on(c, dep) else c.startup_s
            first_queue = len(q_comp)
            for m in self.machines:
                n = want.get(m, 0)
                keep[midx[m]] += n * (c.keepalive_cpu_cores if is_always_on(c, dep) else 0.0)
                work[midx[m]] += n * cores
                for _ in range(n):
                    if not self.c_shared[k] or len(q_comp) == first_queue:
                        q_comp.append(k)
                        q_inst_ptr.append(q_inst_ptr[-1])
                    i_queue.append(len(q_comp) - 1)
                    q_inst_ptr[-1] += 1
                    i_replica.append(len(i_machine) - c_inst_ptr[-1])
                    i_machine.append(midx[m])
                    i_batch.append(batch)
                    i_timeout.append(timeout_ms / 1e3)
                    i_startup.append(startup_s)
            c_inst_ptr.append(len(i_machine))
        available = np.maximum(
            np.array([s.cpu_cores for s in srv]) - keep, 0.05 * np.array([s.cpu_cores for s in srv])
        )
        self.m_slow = np.maximum(work / available, 1.0)
        self.i_machine = np.array(i_machine, dtype=np.int64)
        self.i_batch = np.array(i_batch, dtype=np.int64)
        self.i_timeout = np.array(i_timeout, dtype=float)
        self.i_startup = np.array(i_startup, dtype=float)
        self.i_queue = np.array(i_queue, dtype=np.int64)
        self.i_replica = np.array(i_replica, dtype=np.int64)
        self.c_inst_ptr = np.array(c_inst_ptr, dtype=np.int64)
        self.c_inst = np.arange(
            len(i_machine), dtype=np.int64
        )  # instances are grouped by component
        self.q_inst_ptr = np.array(q_inst_ptr, dtype=np.int64)
        self.q_inst = np.arange(len(i_machine), dtype=np.int64)  # and queues hold consecutive ones
        self.q_comp = np.array(q_comp, dtype=np.int64)
        self.max_batch = int(max(i_batch, default=1))
        self._steps(sc, dep)
        net = sc.settings.network
        self.intra_s = net.intra_zone_latency_ms / 1e3
        self.inter_s = net.inter_zone_latency_ms / 1e3
        self.gpu_fallback = sc.settings.gpu_fallback_slowdown
        self.policy = _POLICIES[dep.load_balancing or sc.settings.load_balancing]

    def _stage_model(self, k: int, model: ServiceTime, max_b: int) -> None:
        for b in range(1, max_b):
            self.c_mean_b[k, b] = model.batch_mean_ms(b) / 1e3
            cv = model.batch_cv(b)
            self.c_sigma_b[k, b] = lognormal_sigma(cv) if cv > 0 else 0.0
        if isinstance(model, ConstantServiceTime) or not self.c_sigma_b[k, 1:].any():
            self.c_kind[k] = FACTOR_CONST
        elif isinstance(model, ExponentialServiceTime | GammaServiceTime):
            self.c_kind[k] = FACTOR_DRAWN
        else:
            self.c_kind[k] = FACTOR_LOGNORMAL

    def _steps(self, sc: Scenario, dep: Deployment) -> None:
        comp = {c: k for k, c in enumerate(self.components)}
        first, step_comp, parallel, data_mb = [0], [], [], []
        deps_ptr, deps, next_ptr, nxt, roots_ptr, roots = [0], [], [0], [], [0], []
        self.step_names: list[str] = []
        self.step_models: list[tuple[ServiceTime | None, ServiceTime | None]] = []
        ninst = np.diff(self.c_inst_ptr)
        for p in sc.processes:
            base = first[-1]
            index = {s.name: base + i for i, s in enumerate(p.steps)}
            for s in p.steps:
                k = comp[s.component]
                if ninst[k] == 0:
                    raise ValueError(f"component {s.component} has no instance in the deployment")
                step_comp.append(k)
                want = min(dep.parallelism.get(f"{p.name}.{s.name}", 1), s.max_parallel)
                parallel.append(min(want, int(ninst[k])))
                data_mb.append(s.data_out_mb)
                deps += [index[d] for d in s.depends_on]
                deps_ptr.append(len(deps))
                nxt += [index[t.name] for t in p.steps if s.name in t.depends_on]
                next_ptr.append(len(nxt))
                stage = sc.component(s.component).is_stage
                if not stage and (s.wait is not None or s.part_cpu_work is not None):
                    # a wait or per-part work left out would make a step look cheaper
                    raise ValueError(
                        f"{unscreenable(sc)}: the screening fidelity does not model step "
                        "waits or per-part work; score this scenario with the DES "
                        "(optimize --no-screen)"
                    )
                self.step_models.append((None if stage else s.cpu_work, s.gpu_work))
                self.step_names.append(s.name)
            roots += [index[s.name] for s in p.steps if not s.depends_on]
            roots_ptr.append(len(roots))
            first.append(base + len(p.steps))
        i64 = np.int64
        self.p_step_first = np.array(first, dtype=i64)
        self.step_comp = np.array(step_comp, dtype=i64)
        self.step_parallel = np.array(parallel, dtype=i64)
        self.step_data_mb = np.array(data_mb, dtype=float)
        self.step_dep_ptr, self.step_deps = np.array(deps_ptr, i64), np.array(deps, i64)
        self.step_next_ptr, self.step_next = np.array(next_ptr, i64), np.array(nxt, i64)
        self.p_roots_ptr, self.p_roots = np.array(roots_ptr, i64), np.array(roots, i64)


def unscreenable(scenario: Scenario) -> str | None:
    """The first field of ``scenario`` the screening fidelity cannot model (a batch
    step's ``wait`` or ``part_cpu_work``), as ``processes.P.steps.S.<field>``; None when
    it can screen it."""
    for p in scenario.processes:
        for s in p.steps:
            if scenario.component(s.component).is_stage:
                continue
            for name in ("wait", "part_cpu_work"):
                if getattr(s, name) is not None:
                    return f"processes.{p.name}.steps.{s.name}.{name}"
    return None


def _arrivals(
    sc: Scenario, w: Workload | None, horizon_s: float, seed: int, r: int
) -> list[np.ndarray]:
    """Each process's arrival times: the very streams and calls of ``twin.sim``."""
    targets: set[str] = set()
    rates = None
    if w is not None:
        targets = set(w.processes) or {p.name for p in sc.processes if p.kind == "request"}
        rates = rate_series(w, horizon_s)
    out = []
    for p in sc.processes:
        rng = stream(seed, r, STREAM_ARRIVALS, p.name)
        if p.name in targets and rates is not None:
            out.append(poisson_times(rates, rng, horizon_s))
        elif p.arrivals is not None:
            out.append(arrival_times(p.arrivals, rng, horizon_s))
        else:
            out.append(np.empty(0))
    return out


def _replication(
    sc: Scenario,
    lay: _Layout,
    w: Workload | None,
    horizon_s: float,
    seed: int,
    r: int,
    drain_s: float,
) -> tuple:
    """Draw one replication's random numbers and run the engine on them."""
    times = _arrivals(sc, w, horizon_s, seed, r)
    counts = [len(t) for t in times]
    e_proc = np.repeat(np.arange(len(sc.processes), dtype=np.int64), counts)
    e_arrive = np.concatenate(times) if times else np.empty(0)
    order = np.argsort(e_arrive, kind="stable")
    e_proc, e_arrive = e_proc[order], e_arrive[order]
    e_overhead = np.zeros(e_arrive.size)
    nsteps = np.diff(lay.p_step_first)[e_proc]
    es_off = np.concatenate([[0], np.cumsum(nsteps)]).astype(np.int64)
    es_cpu = np.zeros(int(es_off[-1]))
    es_gpu = np.zeros(int(es_off[-1]))
    jobs = 0
    for pi, p in enumerate(sc.processes):
        mine = np.flatnonzero(e_proc == pi)
        if mine.size == 0:
            continue
        if p.request_overhead is not None:
            rng = stream(seed, r, STREAM_OVERHEAD, p.name)
            e_overhead[mine] = draw(p.request_overhead, rng, mine.size)
        for ls in range(len(p.steps)):
            s = int(lay.p_step_first[pi]) + ls
            jobs += mine.size * int(lay.step_parallel[s])
            cpu, gpu = lay.step_models[s]
            # The DES's own stream of this step: common random numbers across fidelities.
            rng = stream(seed, r, STREAM_SERVICE, f"{p.name}.{p.steps[ls].name}")
            t_cpu, t_gpu = draw_pair(cpu, gpu, rng, mine.size)
            if t_cpu is not None:
                es_cpu[es_off[mine] + ls] = t_cpu
            if t_gpu is not None:
                es_gpu[es_off[mine] + ls] = t_gpu
    # Stage service factors: one per batch, at most one per visit of the component.
    visits = np.zeros(len(lay.components), dtype=np.int64)
    for pi in range(len(sc.processes)):
        n = counts[pi]
        for s in range(lay.p_step_first[pi], lay.p_step_first[pi + 1]):
            visits[lay.step_comp[s]] += n * lay.step_parallel[s]
    width = max(int(visits.max(initial=0)), 1)
    factors = np.ones((len(lay.components), width))
    for k, model in enumerate(lay.c_models):
        if model is None or lay.c_kind[k] == FACTOR_CONST:
            continue
        rng = stream(seed, r, STREAM_SERVICE, lay.components[k])  # the DES's stream too
        if lay.c_kind[k] == FACTOR_LOGNORMAL:
            factors[k] = rng.standard_normal(width)
        elif isinstance(model, ExponentialServiceTime):
            factors[k] = rng.standard_exponential(width)
        else:
            kk = 1.0 / model.batch_cv(1) ** 2
            factors[k] = rng.standard_gamma(kk, width) / kk
    rand_seed = int(np.random.SeedSequence([seed, r, STREAM_SCREEN]).generate_state(1)[0] >> 1)
    out = run_engine(
        lay.m_speed,
        lay.m_gpu_speed,
        lay.m_gpus,
        lay.m_zone,
        lay.m_bw,
        lay.m_slow,
        lay.gpu_fallback,
        lay.intra_s,
        lay.inter_s,
        lay.c_inst_ptr,
        lay.c_inst,
        lay.c_shared,
        lay.c_stage,
        lay.c_kind,
        lay.c_mean_b,
        lay.c_sigma_b,
        factors,
        lay.i_machine,
        lay.i_batch,
        lay.i_timeout,
        lay.i_startup,
        lay.i_queue,
        len(lay.q_comp),
        lay.q_inst_ptr,
        lay.q_inst,
        lay.q_comp,
        lay.p_step_first,
        lay.step_comp,
        lay.step_parallel,
        lay.step_data_mb,
        lay.step_dep_ptr,
        lay.step_deps,
        lay.step_next_ptr,
        lay.step_next,
        lay.p_roots_ptr,
        lay.p_roots,
        e_proc,
        e_arrive,
        e_overhead,
        es_off,
        es_cpu,
        es_gpu,
        lay.policy,
        rand_seed,
        float(horizon_s + drain_s),
        max(jobs, 1),
        lay.max_batch,
    )
    return e_proc, e_arrive, out


def _criteria(
    sc: Scenario,
    dep: Deployment,
    horizon_s: float,
    e_proc: np.ndarray,
    e_arrive: np.ndarray,
    e_end: np.ndarray,
    end_s: float,
    busy_s: np.ndarray | None = None,
) -> dict[str, float]:
    """``twin.criteria.placement_criteria`` on arrays (same definitions, no DataFrame)."""
    t = np.clip(np.where(np.isnan(e_end), end_s, e_end) - e_arrive, 0.0, None)
    means, variances, w = [], [], []
    overruns = 0
    for pi, p in enumerate(sc.processes):
        times = t[e_proc == pi]
        if p.deadline_s is not None:
            overruns += int((times > p.deadline_s).sum())
        if times.size == 0 or p.weight == 0.0:
            continue
        means.append(times.mean())
        variances.append(times.var(ddof=1) if times.size > 1 else 0.0)
        w.append(p.weight)
    wsum = float(np.sum(w))
    return {
        "time_mean_s": float(np.dot(w, means) / wsum) if wsum else float("nan"),
        "time_var_s2": float(np.dot(w, variances) / wsum) if wsum else float("nan"),
        "overruns": float(overruns),
        "cost": cost_criterion(sc, dep, horizon_s, busy_s),
        "executions": float(t.size),
        "unfinished": float(np.isnan(e_end).sum()),
    }


def _busy(sc: Scenario, dep: Deployment, lay: _Layout, out: tuple) -> np.ndarray | None:
    """Seconds on-demand instances served (K×S); None when every component runs constantly.

    Service time from the batch's start, so a cold start is billed as the DES bills it
    (a batch counted once).
    """
    if all(is_always_on(c, dep) for c in sc.components):
        return None
    n = int(out[3])
    inst, t_start, t_end = out[8][:n], out[10][:n], out[11][:n]
    ok = (inst >= 0) & np.isfinite(t_start) & np.isfinite(t_end)
    inst, t_start, t_end = inst[ok], t_start[ok], t_end[ok]
    comp, machine = lay.step_comp[out[5][:n][ok]], out[7][:n][ok]
    order = np.lexsort((t_start, inst))
    first = np.ones(order.size, dtype=bool)  # one row per batch an instance served
    first[1:] = (inst[order][1:] != inst[order][:-1]) | (t_start[order][1:] != t_start[order][:-1])
    pick = order[first]
    busy = np.zeros((len(sc.components), len(lay.machines)))
    np.add.at(busy, (comp[pick], machine[pick]), t_end[pick] - t_start[pick])
    return busy


def _tables(
    sc: Scenario, lay: _Layout, e_proc: np.ndarray, e_arrive: np.ndarray, out: tuple
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Visit and request tables in ``twin.sim``'s columns (for pipeline metrics)."""
    e_end, _, _, n, j_exec, j_step, j_part, j_machine, j_inst, t_arr, t_start, t_end, batch = out
    procs = [p.name for p in sc.processes]
    pid = np.zeros(e_proc.size, dtype=np.int64)
    for pi in range(len(procs)):  # executions are numbered per process, in arrival order
        mine = e_proc == pi
        pid[mine] = np.arange(int(mine.sum()))
    step_proc = np.repeat(np.arange(len(procs)), np.diff(lay.p_step_first))
    steps = list(dict.fromkeys(lay.step_names))
    sl = slice(0, n)
    machine = j_machine[sl]
    inst = j_inst[sl]
    visits = pd.DataFrame(
        {
            "process": pd.Categorical.from_codes(step_proc[j_step[sl]], categories=procs),
            "pid": pid[j_exec[sl]],
            "step": pd.Categorical.from_codes(
                [steps.index(lay.step_names[s]) for s in j_step[sl]], categories=steps
            ),
            "component": pd.Categorical.from_codes(
                lay.step_comp[j_step[sl]], categories=lay.components
            ),
            "machine": pd.Categorical.from_codes(machine, categories=lay.machines),
            "replica": np.where(inst >= 0, lay.i_replica[inst], -1).astype(np.int32),
            "part": j_part[sl].astype(np.int32),
            "t_arrive": t_arr[sl],
            "t_start": t_start[sl],
            "t_end": t_end[sl],
            "batch": batch[sl].astype(np.int32),
        },
        columns=list(VISIT_COLUMNS),
    )
    deadline = np.array([p.deadline_s or np.nan for p in sc.processes], dtype=float)
    requests = pd.DataFrame(
        {
            "process": pd.Categorical.from_codes(e_proc, categories=procs),
            "pid": pid,
            "t_arrive": e_arrive,
            "t_end": e_end,
            "deadline_s": deadline[e_proc] if e_proc.size else np.empty(0),
        }
    )
    return visits, requests


def screen_criteria(
    scenario: Scenario,
    deployment: Deployment,
    workload: str | Workload | None = None,
    horizon_s: float = 3600.0,
    replications: int = 10,
    seed: int = 1,
) -> np.ndarray:
    """Per-replication placement criteria (replications × 4, ``CRITERIA`` order), no checks.

    The lean path for a search that screens thousands of candidates: no
    feasibility check, no tables; the same numbers as :func:`screen`.
    """
    w = resolve_workload(scenario, workload)
    lay = _Layout(scenario, deployment)
    out = np.empty((replications, len(CRITERIA)))
    for r in range(replications):
        e_proc, e_arrive, res = _replication(scenario, lay, w, horizon_s, seed, r, horizon_s)
        busy = _busy(scenario, deployment, lay, res)
        row = _criteria(
            scenario, deployment, horizon_s, e_proc, e_arrive, res[0], float(res[1]), busy
        )
        out[r] = [row[c] for c in CRITERIA]
    return out


def screen(
    scenario: Scenario,
    deployment: Deployment,
    workload: str | Workload | None = None,
    horizon_s: float = 3600.0,
    replications: int = 10,
    seed: int = 1,
    *,
    keep_records: bool = False,
    check: bool = True,
    drain_s: float | None = None,
) -> Evaluation:
    """Screening evaluation: same arguments and result type as :func:`twin.evaluate.evaluate`.

    ``drain_s`` (s, default one more horizon) bounds how long executions in
    flight at the horizon run on, as in the SimPy twin.
    """
    if replications < 1:
        raise ValueError(f"replications must be ≥ 1, got {replications}")
    if not math.isfinite(horizon_s) or horizon_s <= 0:
        raise ValueError(f"horizon_s must be a positive number of seconds, got {horizon_s}")
    if check:
        require_feasible(scenario, deployment)
    w = resolve_workload(scenario, workload)
    started = time.perf_counter()
    lay = _Layout(scenario, deployment)
    drain = horizon_s if drain_s is None else drain_s
    rows, visits, requests = [], [], []
    events = 0
    for r in range(replications):
        e_proc, e_arrive, out = _replication(scenario, lay, w, horizon_s, seed, r, drain)
        busy = _busy(scenario, deployment, lay, out)
        row = _criteria(
            scenario, deployment, horizon_s, e_proc, e_arrive, out[0], float(out[1]), busy
        )
        row["replication"] = r
        rows.append(row)
        events += int(out[2])
        if keep_records:
            v, q = _tables(scenario, lay, e_proc, e_arrive, out)
            visits.append(v.assign(replication=r))
            requests.append(q.assign(replication=r))
    return assemble_evaluation(
        scenario,
        deployment,
        w,
        horizon_s,
        replications,
        seed,
        rows,
        events,
        started,
        visits if keep_records else None,
        requests if keep_records else None,
    )
