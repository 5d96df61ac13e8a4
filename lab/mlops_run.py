"""MLOps processes on the testbed: every batch step runs its real work where the allocation says.

``python -m lab.mlops_run examples/mlops-lab.yaml -d examples/mlops-lab.deployment.yaml``
brings the local testbed up (Feast, MLflow, gateway, one node agent per machine, the
inference stages), then runs the scenario's batch processes in real time with their
periods, offsets and deadlines multiplied by ``--time-scale`` (0.1: a 5-minute
retraining due within 2 minutes runs every 30 s, due within 12 s): each execution
of each process starts on schedule in its own thread (two executions may overlap,
as in the twin), and each of its steps is a job
(:mod:`testbed.services.step_job`) started through the node agent of the machine the
allocation names, split over ``parallelism`` parts, under that machine's CPU quota.

The run folder gets ``visits.parquet`` (one row per step part, the twin's visit
columns plus ``transfer_s``, ``compute_s``, ``cpu_s``, ``overhead_s``;
``overhead_s`` = the job's start-up; ``t_end`` is when the runner saw it exit),
``executions.parquet`` (the twin's request columns: ``process``, ``pid``,
``t_arrive``, ``t_end``, ``deadline_s``), ``calibrated-scenario.yaml`` (each step's
``cpu_work`` and ``wait`` fitted on the even executions, :func:`fit_cpu_work`), and
``report.md``: per process the
testbed's mean time, variance and overruns on the odd (held-out) executions beside
the calibrated twin's on the same schedule, and the cost.

Data between steps on different machines is read at the slower side's bandwidth by
the job itself (an application-level throttle): the local backend puts every node on
127.0.0.1, and shaping with tc would need a network namespace per node, which it
does not create (yet). The feature store and registry are the testbed's one Feast and
one MLflow in the host's reserve; steps of those components run as jobs on the
allocated machine and call them.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from twin.load import dump_yaml, load_deployment, load_scenario
from twin.spec import (
    ConstantServiceTime,
    Deployment,
    LognormalServiceTime,
    Process,
    Scenario,
    topological_order,
)

KINDS = {"ingest", "materialize", "load-features", "prepare", "train", "evaluate"}
KINDS |= {"register", "rollout"}
SERVING_MODEL = "digits-retrain"
POLL_S = 0.1
WAIT_RULES = ("unthrottled", "every", "none")
# how a split step's measured part is fitted: its own work (``part_cpu_work``) or a
# share of a divisible step's (``cpu_work`` = a part's × the parts); see fit_cpu_work
PART_RULES = ("each", "share")
JOB_TIMEOUT_S = 600.0


@dataclass
class Part:
    """Where one part of a step ran and what it left."""

    machine: str
    out: Path
    record: dict[str, Any] = field(default_factory=dict)


class StepFailed(RuntimeError):
    """A step job exited with an error."""


def machines_of(deployment: Deployment, component: str) -> list[str]:
    """One entry per instance of ``component`` (machine names, sorted)."""
    alloc = deployment.allocation.get(component, {})
    return [m for m in sorted(alloc) for _ in range(alloc[m])]


def batch_processes(scenario: Scenario) -> list[Process]:
    """Batch processes whose every step the testbed knows how to run (checked)."""
    procs = [p for p in scenario.processes if p.kind == "batch"]
    for p in procs:
        for s in p.steps:
            if s.name not in KINDS:
                raise ValueError(
                    f"{scenario.name}: processes.{p.name}.steps.{s.name}: the testbed has no "
                    f"work for a step of that name (known: {', '.join(sorted(KINDS))})"
                )
    return procs


def scaled(scenario: Scenario, time_scale: float) -> Scenario:
    """``scenario`` with every periodic batch arrival's period and offset, and every batch
    process's ``deadline_s``, × ``time_scale``.

    The deadline goes with the schedule: a retraining due within 2 of its 5 minutes is
    due within 12 of its 30 s at × 0.1; left as it was, nothing overruns in a scaled
    run and the overrun criterion cannot tell placements apart. A request pipeline's
    deadline (a per-request latency limit) is not a schedule and stays.
    """
    procs = []
    for p in scenario.processes:
        a, deadline = p.arrivals, p.deadline_s
        if p.kind == "batch" and a is not None and a.kind == "periodic":
            a = a.model_copy(
                update={"period_s": a.period_s * time_scale, "offset_s": a.offset_s * time_scale}
            )
            deadline = None if deadline is None else deadline * time_scale
        procs.append(p.model_copy(update={"arrivals": a, "deadline_s": deadline}))
    return scenario.model_copy(update={"processes": procs})


class Runner:
    """Runs batch process executions on a live local testbed (see module doc)."""

    def __init__(self, scenario: Scenario, deployment: Deployment, endpoints: Any, out: Path):
        from testbed.services.guard import token_headers

        self.scenario, self.deployment, self.endpoints = scenario, deployment, endpoints
        self.out = out
        self.servers = scenario.server_of()
        self.http = httpx.Client(timeout=60.0, headers=token_headers())
        self.serving_url = ""
        self.t0 = time.time()
        self.visits: list[dict[str, Any]] = []
        self.executions: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._serial = 0

    # ------------------------------------------------------------ serving the retrained model

    def start_serving(self) -> None:
        """A first model as ``digits-retrain@champion`` and a stage server for it, on the
        machine of the rollout step's component."""
        from sklearn.datasets import load_digits

        from testbed.services.platform_clients import register_model
        from testbed.services.trainer import train

        rollout = [
            s for p in batch_processes(self.scenario) for s in p.steps if s.name == "rollout"
        ]
        if not rollout:
            return
        x, y = load_digits(return_X_y=True)
        first = train(x.astype(np.float32), y, 50, 0)
        register_model(self.endpoints.registry, SERVING_MODEL, first["onnx"], alias="champion")
        machine = machines_of(self.deployment, rollout[0].component)[0]
        name = f"{rollout[0].component}-{machine}-serving"
        args = {
            "name": name,
            "component": rollout[0].component,
            "registry": self.endpoints.internal_registry(),
            "model": SERVING_MODEL,
            "version": "champion",
            "threads": 1,
        }
        body = {"name": name, "service": "stage", "args": args}
        r = self.http.post(f"{self.endpoints.nodes[machine]}/instances", json=body)
        if r.status_code != 201:
            raise RuntimeError(f"node {machine} refused the serving instance: {r.text[:300]}")
        self.serving_url = self.endpoints.admin_url(machine, name)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if self.http.get(f"{self.serving_url}/healthz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the serving instance of the retrained model did not become healthy")

    # ------------------------------------------------------------ one job

    def _job(self, machine: str, args: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self._serial += 1
            name = f"job-{self._serial}"
        node = self.endpoints.nodes[machine]
        t_req = time.time()
        r = self.http.post(
            f"{node}/instances", json={"name": name, "service": "step", "args": args}
        )
        if r.status_code != 201:
            raise StepFailed(f"node {machine} refused job {args['kind']}: {r.text[:300]}")
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while True:
            try:
                rows = {i["name"]: i for i in self.http.get(f"{node}/instances").json()}
            except (httpx.HTTPError, ValueError):  # a busy agent: ask again
                rows = {name: {"alive": True}}
            if not rows[name]["alive"]:
                break
            if time.monotonic() > deadline:
                raise StepFailed(f"job {args['kind']} on {machine} ran over {JOB_TIMEOUT_S} s")
            time.sleep(POLL_S)
        t_done = time.time()
        self.http.delete(f"{node}/instances/{name}")
        try:
            rec = json.loads(Path(args["record"]).read_text())
        except (OSError, ValueError):
            rec = {"ok": False, "detail": {"error": f"exit code {rows[name]['exit_code']}"}}
        if not rec.get("ok"):
            raise StepFailed(f"{args['kind']} on {machine}: {rec['detail'].get('error')}")
        rec["t_request"], rec["t_done"] = t_req, t_done
        return rec

    # ------------------------------------------------------------ one execution

    def execute(self, proc: Process, pid: int, t_arrive: float, seed: int) -> None:
        """Run every step of execution ``pid`` of ``proc``; record visits and the execution."""
        folder = self.out / "work" / f"{proc.name}-{pid}"
        folder.mkdir(parents=True, exist_ok=True)
        done: dict[str, list[Part]] = {}
        steps = {s.name: s for s in proc.steps}
        ok = True
        for name in topological_order(proc) or list(steps):
            step = steps[name]
            sources = [p for d in step.depends_on for p in done[d]]
            places = machines_of(self.deployment, step.component)
            if not places:
                raise StepFailed(f"{proc.name}.{name}: component {step.component} has no instance")
            n = min(
                self.deployment.parallelism.get(f"{proc.name}.{name}", 1),
                step.max_parallel,
                len(places),
            )
            parts = [Part(places[i % len(places)], folder / f"{name}-{i}.bin") for i in range(n)]
            ready = time.time()
            threads = []
            for i, part in enumerate(parts):
                remote = [s for s in sources if s.machine != part.machine]
                bw = [self.servers[s.machine].bandwidth_mbps for s in remote]
                link = min([*bw, self.servers[part.machine].bandwidth_mbps]) if remote else 0.0
                args = {
                    "kind": name,
                    "record": str(folder / f"{name}-{i}.json"),
                    "out": str(part.out),
                    "inputs": ",".join(str(s.out) for s in sources),
                    "link_mbps": link,
                    "features": self.endpoints.features,
                    "registry": self.endpoints.registry,
                    "model": SERVING_MODEL,
                    "serving_url": self.serving_url,
                    "part": i,
                    "parts": n,
                    "seed": seed,
                }
                th = threading.Thread(target=self._run_part, args=(part, args))
                th.start()
                threads.append(th)
            for th in threads:
                th.join()
            failed = [p for p in parts if not p.record]
            for i, part in enumerate(parts):
                rec = part.record
                if not rec:
                    continue
                self.visits.append(
                    {
                        "process": proc.name,
                        "pid": pid,
                        "step": name,
                        "component": step.component,
                        "machine": part.machine,
                        "replica": i,
                        "part": i,
                        "t_arrive": ready - self.t0,
                        "t_start": rec["t_start"] - self.t0,
                        "t_end": rec["t_done"] - self.t0,
                        "batch": 1,
                        "transfer_s": rec["transfer_s"],
                        "compute_s": rec["compute_s"],
                        "cpu_s": rec["cpu_s"],
                        # start-up: from the runner's request to the job's first line
                        "overhead_s": rec["t_start"] - rec["t_request"],
                        "bytes_in": rec["bytes_in"],
                        "bytes_out": rec["bytes_out"],
                        "parts": n,
                    }
                )
            if failed:
                ok = False
                break
            done[name] = parts
        print(
            f"{proc.name} #{pid}: {'done' if ok else 'FAILED'} in {time.time() - t_arrive:.1f} s",
            file=sys.stderr,
            flush=True,
        )
        self.executions.append(
            {
                "process": proc.name,
                "pid": pid,
                "t_arrive": t_arrive - self.t0,
                "t_end": (time.time() - self.t0) if ok else np.nan,
                "deadline_s": proc.deadline_s if proc.deadline_s is not None else np.nan,
                "ok": ok,
            }
        )

    def _run_part(self, part: Part, args: dict[str, Any]) -> None:
        try:
            part.record = self._job(part.machine, args)
        except (StepFailed, httpx.HTTPError, ValueError, KeyError) as e:
            with self._lock:
                self.errors.append(str(e))

    # ------------------------------------------------------------ the schedule

    def run(self, horizon_s: float, seed: int) -> None:
        """Start every execution whose (scaled) arrival falls in ``horizon_s``; wait for all."""
        self.t0 = time.time()
        threads = []
        plan = []
        for proc in batch_processes(self.scenario):
            a = proc.arrivals
            if a is None or a.kind != "periodic":
                raise ValueError(f"process {proc.name}: the testbed runs periodic arrivals only")
            k = 0
            while a.offset_s + k * a.period_s < horizon_s:
                plan.append((a.offset_s + k * a.period_s, proc, k))
                k += 1
        for at, proc, k in sorted(plan, key=lambda t: t[0]):
            time.sleep(max(0.0, self.t0 + at - time.time()))
            th = threading.Thread(
                target=self.execute, args=(proc, k, self.t0 + at, seed * 1000 + k), daemon=True
            )
            th.start()
            threads.append(th)
        for th in threads:
            th.join(JOB_TIMEOUT_S * 4)


class InferenceLoad:
    """Poisson requests at ``rate_per_s`` to the gateway, each an entity looked up in the
    feature store (Feast's online store), in a thread until :meth:`stop`."""

    def __init__(self, gateway: str, rate_per_s: float, entities: int, seed: int):
        self.gateway, self.rate, self.entities = gateway, rate_per_s, entities
        self.rng = np.random.default_rng(seed)
        self.latency_s: list[float] = []
        self.codes: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> InferenceLoad:
        if self.rate > 0:
            self._thread.start()
        return self

    def _loop(self) -> None:
        from testbed.api import INFER_PATH

        with httpx.Client(timeout=30) as c:
            nxt = time.monotonic()
            while not self._stop.is_set():
                nxt += self.rng.exponential(1 / self.rate)
                time.sleep(max(0.0, nxt - time.monotonic()))
                body = {"id": "x", "entity_id": int(self.rng.integers(self.entities))}
                t = time.perf_counter()
                try:
                    code = c.post(self.gateway + INFER_PATH, json=body).status_code
                except httpx.HTTPError:
                    code = 0
                self.latency_s.append(time.perf_counter() - t)
                self.codes[code] = self.codes.get(code, 0) + 1

    def stop(self) -> dict[str, Any]:
        """Stop; the requests' count, status codes and latency percentiles (ms)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)
        lat = np.asarray(self.latency_s) * 1000
        pct = {f"p{q}_ms": float(np.percentile(lat, q)) for q in (50, 95)} if len(lat) else {}
        return {"requests": len(lat), "codes": self.codes, **pct}


# ---------------------------------------------------------------- calibration and the twin


def quota_servers(scenario: Scenario, quotas: dict[str, float]) -> Scenario:
    """``scenario``'s servers as the testbed runs them: every machine at the host's core
    speed (``cpu_speed`` 1) under the CFS quota the testbed gives it
    (``cpu_quota_cores``; ``quotas``: machine → host cores, as
    :func:`testbed.capacity.plan_capacity` sets them).

    The testbed emulates a server's size and speed by one quota of ``cpu_cores ×
    cpu_speed × factor`` host cores, and a single-threaded job there runs at
    ``min(1, quota)`` of a host core: the core server's step at a full core, an edge
    box's at a quarter, four times slower rather than the twin's two (its speed
    0.5). The twin's quota model (:class:`twin.sim._Quota`) does the same once the
    servers carry those quotas at speed 1, with ``cpu_work`` in host-core time
    (:func:`fit_cpu_work`). A server type whose machines got different quotas is an
    error (the testbed gives every machine of a type the same).
    """
    servers = []
    for s in scenario.servers:
        q = {quotas[m] for m in s.instance_names() if m in quotas}
        if len(q) > 1:
            raise ValueError(f"server type {s.name}: machines with different quotas {sorted(q)}")
        update: dict[str, Any] = {"cpu_speed": 1.0}
        if q:
            update["cpu_quota_cores"] = q.pop()
        servers.append(s.model_copy(update=update))
    return scenario.model_copy(update={"servers": servers})


def alone_s(visits: pd.DataFrame, quotas: dict[str, float]) -> pd.Series:
    """Each part's wall time as if it had had its machine to itself (s).

    While ``n`` single-threaded jobs run on a machine under a quota of ``Q`` cores,
    each gets ``min(1, Q/n)`` of a core instead of ``min(1, Q)`` alone, so a second
    of wall time shared with another job is worth half a second alone. Summed over
    the part's ``t_start``…``t_end`` from the jobs' intervals on its machine (every
    execution's, held-out ones too: they took the quota all the same).
    """
    out = pd.Series(0.0, index=visits.index)
    for machine, v in visits.groupby("machine", observed=True):
        q = quotas.get(str(machine), 1.0)
        start, end = v["t_start"].to_numpy(float), v["t_end"].to_numpy(float)
        edges = np.unique(np.concatenate([start, end]))
        mid = (edges[:-1] + edges[1:]) / 2
        running = ((start[:, None] <= mid) & (mid < end[:, None])).sum(axis=0)
        worth = np.minimum(1.0, q / np.maximum(running, 1)) / min(1.0, q) * np.diff(edges)
        for i, (a, b) in zip(v.index, zip(start, end, strict=True), strict=True):
            inside = (edges[:-1] >= a) & (edges[1:] <= b)
            out[i] = float(worth[inside].sum())
    return out


def fit_cpu_work(
    scenario: Scenario,
    visits: pd.DataFrame,
    pids: set[int],
    quotas: dict[str, float] | None = None,
    waits: str = "unthrottled",
    parts: str = "each",
) -> Scenario:
    """``scenario`` with each measured step's ``cpu_work`` (and ``wait``,
    ``part_cpu_work``) fitted from ``visits`` of ``pids``.

    A part's time is its wall time from the job request to its exit − the link wait
    (job start-up, an on-demand component's price, is in it). With ``quotas``
    (machine → host cores, the testbed calibration of :func:`quota_servers`' servers)
    it is taken as if alone on the machine (:func:`alone_s`), since the twin shares
    the quota among co-located jobs itself, and split in two by the CPU time the job
    used (:func:`job_cpu_s`: its rusage and its exit): the CPU part, host-core seconds
    which run at ``min(1, quota)`` of a core there, and the rest of the time, spent
    waiting on Feast, MLflow or the serving instance outside the machine, as the
    step's ``wait`` (:func:`split_time`). Without ``quotas`` (or ``cpu_s``) all of
    it is work: time × ``cpu_speed × min(1, cpu_quota_cores)``. The wait is a
    part's (every part waits). Each lognormal with the executions' mean and a robust
    cv (:func:`_lognormal`).

    ``parts`` — a step measured in several parts: ``"each"`` (default) fits a part's
    work as ``part_cpu_work``, done by every part whatever the split (``cpu_work``
    0); ``"share"`` as a share of the step's ``cpu_work`` (a part's × its parts,
    which the twin splits evenly again). The testbed's prepare job starts Python
    and numpy and reads the whole input in every part, so its CPU does not shrink
    with the split: 0.21–0.31 s per part in two parts (session 2's base run), 0.24
    and 0.25 s in one (the deploy-back's greedy runs), on the same inputs; with
    ``"share"`` the twin made greedy's single part twice the work it is (prepare
    7.8 s on an edge box where the testbed took 2.5 s).

    ``waits`` — which parts' rest counts as a wait: ``"unthrottled"`` (default) only
    parts on a machine whose quota is at least one core, where a single-threaded
    job never waits for quota; under a smaller quota the rest also holds the
    throttling of the job's replies by the node's other processes (stage servers,
    the node agent), which grows with the machine's load and is the machine's, so
    there it stays work (on the testbed a materialize waited 0.3 s on the core
    server, 1.7 s on a quarter-core edge box). ``"every"``: every part's rest.
    ``"none"``: no waits (all time is work, as before waits existed).
    """
    if waits not in WAIT_RULES:
        raise ValueError(f"waits: expected one of {', '.join(WAIT_RULES)}, got {waits!r}")
    if parts not in PART_RULES:
        raise ValueError(f"parts: expected one of {', '.join(PART_RULES)}, got {parts!r}")
    rate = {
        m: s.cpu_speed * min(1.0, s.cpu_quota_cores or 1.0) for m, s in scenario.server_of().items()
    }
    v = visits.copy()
    v["wall_s"] = v["t_end"] - v["t_start"] if quotas is None else alone_s(v, quotas)
    v = v[v["pid"].isin(pids)]
    time_s = v["wall_s"] + v["overhead_s"] - v["transfer_s"]
    r = v["machine"].map(rate)
    split = quotas is not None and "cpu_s" in v and waits != "none"
    if split:
        work_s, wait_s = split_time(time_s, job_cpu_s(v, r), r)
        if waits == "unthrottled":
            # under a quota below one core the rest of a job's time also holds the
            # throttling by the node's other processes: work of the machine, not a wait
            throttled = v["machine"].map(lambda m: quotas.get(str(m), 1.0) < 1.0 - 1e-9)
            wait_s = wait_s.where(~throttled, 0.0)
            work_s = (time_s - wait_s) * r
    else:
        work_s, wait_s = time_s * r, time_s * 0.0
    v["work_ms"] = work_s * (v["parts"] if parts == "share" else 1) * 1000.0
    v["wait_ms"] = wait_s * 1000.0
    cols = ["work_ms", "wait_ms", "parts"]
    per_exec = v.groupby(["process", "step", "pid"], observed=True)[cols].mean()
    measured = per_exec.index.droplevel("pid")
    procs = []
    for p in scenario.processes:
        steps = []
        for s in p.steps:
            key = (p.name, s.name)
            if p.kind == "batch" and key in measured:
                rows = per_exec.loc[key]
                work = _lognormal(rows["work_ms"])
                none = ConstantServiceTime(kind="constant", ms=0)
                update: dict[str, Any] = {"cpu_work": work or none}
                if parts == "each" and float(rows["parts"].max()) > 1:
                    update = {"cpu_work": none, "part_cpu_work": work}
                if split:
                    update["wait"] = _lognormal(rows["wait_ms"])
                s = s.model_copy(update=update)
            steps.append(s)
        procs.append(p.model_copy(update={"steps": steps}))
    return scenario.model_copy(update={"processes": procs})


def job_cpu_s(visits: pd.DataFrame, rate: pd.Series) -> pd.Series:
    """Each part's CPU (host-core s): its rusage ``cpu_s`` and its exit.

    The job reads its rusage before it exits; the exit that follows (from the end of
    its record, ``t_start + transfer_s + compute_s``, to the runner seeing it gone,
    ``t_end``) is the interpreter tearing down what the step loaded, CPU at the
    machine's ``rate``: train's took 0.9 s on the core server and 3.8 s on a
    quarter-core edge box (session 2's base run, the deploy-back's greedy runs).
    Counted as a wait it would not slow down on the edge box. Without
    ``compute_s`` (older records) it is ``cpu_s`` alone.
    """
    cpu = visits["cpu_s"]
    if "compute_s" not in visits:
        return cpu
    wall = visits["t_end"] - visits["t_start"] - visits["transfer_s"] - visits["compute_s"]
    return cpu + wall.clip(lower=0.0) * rate


def split_time(time_s: pd.Series, cpu_s: pd.Series, rate: pd.Series) -> tuple[pd.Series, pd.Series]:
    """A part's time alone (s) as CPU work (host-core s) and wait (s).

    The job's ``cpu_s`` ran at ``rate`` (= ``min(1, quota)`` of a host core) and so
    took ``cpu_s / rate`` of the time; the rest is the wait. Where the measured CPU
    needs more than the time (a job that ran beyond its share, or a share the alone
    correction under-counted), the wait is 0 and the work the whole time × rate, so
    that work / rate + wait is always the part's time.
    """
    wait = (time_s - cpu_s / rate).clip(lower=0.0)
    return (time_s - wait) * rate, wait


def _lognormal(x: pd.Series) -> LognormalServiceTime | None:
    """Lognormal with the samples' mean and a robust cv: 1.4826 × the median absolute
    deviation / the median (the sd / mean of a normal sample; ≥ 0.02, 0.1 from one
    sample). None where the mean is not positive (no time of that kind).

    A step's spread comes from a handful of executions of one run, and one of them
    slowed by the run's warm-up or by a job beside it (load-features: 0.76, 1.44,
    0.75 s) made sd / mean 0.40 where the others vary by 1 %; the twin draws
    contention by itself, so the step's own spread is its typical one.
    """
    a = x.to_numpy(float)
    mean = float(a.mean())
    if not mean > 0:
        return None
    med = float(np.median(a))
    mad = float(np.median(np.abs(a - med)))
    cv = 1.4826 * mad / med if len(a) > 1 and med > 0 else 0.1
    return LognormalServiceTime(kind="lognormal", mean_ms=mean, cv=max(cv, 0.02))


def calibrate(
    scenario: Scenario,
    visits: pd.DataFrame,
    pids: set[int],
    quotas: dict[str, float],
    waits: str = "unthrottled",
    parts: str = "each",
) -> Scenario:
    """The twin of the testbed run: :func:`quota_servers`, then :func:`fit_cpu_work`."""
    sc = fit_cpu_work(quota_servers(scenario, quotas), visits, pids, quotas, waits, parts)
    return Scenario.model_validate(sc.model_dump())


def per_process(executions: pd.DataFrame, end_s: float) -> pd.DataFrame:
    """Per process: executions, mean and variance of time (s), overruns."""
    from twin.criteria import durations

    rows = []
    for name, ex in executions.groupby("process", observed=True):
        t = durations(ex, end_s)
        over = int(((t > ex["deadline_s"]) & ex["deadline_s"].notna()).sum())
        rows.append(
            {
                "process": str(name),
                "n": len(t),
                "mean_s": float(t.mean()),
                "var_s2": float(t.var(ddof=1)) if len(t) > 1 else 0.0,
                "overruns": over,
            }
        )
    return pd.DataFrame(rows).set_index("process")


def twin_times(
    scenario: Scenario,
    deployment: Deployment,
    horizon_s: float,
    replications: int,
    seed: int,
    workload: Any = None,
) -> tuple[pd.DataFrame, float]:
    """The twin's per-process table over ``replications`` runs of the same schedule
    (batch processes; ``workload``: the inference load beside them) and its mean cost."""
    from twin.evaluate import evaluate

    ev = evaluate(
        scenario,
        deployment,
        workload,
        horizon_s,
        replications,
        seed,
        keep_records=True,
        force=True,
    )
    req = ev.requests
    req = req[req["process"].astype(str).isin([p.name for p in batch_processes(scenario)])]
    return per_process(req, horizon_s * 10), float(ev.per_replication["cost"].mean())


def as_deployed(scenario: Scenario, deployment: Deployment) -> Deployment:
    """``deployment`` as the MLOps testbed runs it, whatever its constant-run decisions.

    The testbed starts a job per batch step and stops it after (on demand), and keeps
    its services up for the whole run: Feast, MLflow, the serving instance of the
    rolled-out model, the inference stages. Which is which is each component's own
    ``always_on`` in the scenario (the batch workers of ``mlops-lab.yaml`` are on
    demand, the platform components constant-run); a component that serves a request
    process's step or a rollout is up in any case.
    """
    served = {s.component for p in scenario.processes if p.kind == "request" for s in p.steps}
    served |= {s.component for p in scenario.processes for s in p.steps if s.name == "rollout"}
    on = {c.name: c.always_on or c.name in served for c in scenario.components}
    return deployment.model_copy(update={"always_on": on})


def measured_cost(
    scenario: Scenario, deployment: Deployment, visits: pd.DataFrame, horizon_s: float
) -> float:
    """The cost criterion of a testbed run (:func:`as_deployed`): constant-run instances
    over the horizon, on-demand ones for the seconds their jobs ran."""
    from twin.criteria import busy_from_visits, cost_criterion

    dep = as_deployed(scenario, deployment)
    return cost_criterion(
        scenario, dep, horizon_s, busy_from_visits(scenario, with_startup(visits))
    )


def with_deadlines(executions: pd.DataFrame, scenario: Scenario) -> pd.DataFrame:
    """``executions`` with each one's ``deadline_s`` from ``scenario`` (NaN: none), not
    the one recorded at run time, so records made before a scenario's deadlines
    changed (e.g. were scaled with the schedule) count overruns as the twin does."""
    deadline = {p.name: p.deadline_s for p in scenario.processes}
    d = executions["process"].astype(str).map(deadline).astype(float)
    return executions.assign(deadline_s=d)


def with_startup(visits: pd.DataFrame) -> pd.DataFrame:
    """Testbed visits whose ``t_start`` includes the job's start-up (``overhead_s``), as
    an on-demand instance's busy time does in the twin."""
    if "overhead_s" not in visits:
        return visits
    return visits.assign(t_start=visits["t_start"] - visits["overhead_s"].fillna(0.0))


def report(out: Path, scenario: Scenario, deployment: Deployment, meta: dict[str, Any]) -> str:
    """Write ``report.md`` from the run folder's tables; returns its text."""
    visits = pd.read_parquet(out / "visits.parquet")
    every = with_deadlines(pd.read_parquet(out / "executions.parquet"), scenario)
    # a failed step (the reason is under Errors) is the testbed's fault, not a slow run
    execs = every[every["ok"]]
    held = execs[execs["pid"] % 2 == 1]
    tb = per_process(held, meta["end_s"])
    # overruns over the whole horizon on both sides (the twin's: mean per replication)
    tb["overruns"] = per_process(execs, meta["end_s"])["overruns"]
    tw = pd.read_csv(out / "twin.csv", index_col="process")
    lines = [
        f"# MLOps processes on the testbed: {scenario.name} / {deployment.name}",
        "",
        f"Schedule × {meta['time_scale']} (periods and offsets), "
        f"horizon {meta['horizon_s']:.0f} s, "
        f"run {meta['wall_s']:.0f} s; capacity factor {meta['factor']:.3f}; "
        f"cgroups {'on' if meta['confined'] else 'off (unconfined)'}. "
        f"Twin: calibrated on the even executions, {meta['replications']} replications; "
        "testbed: the odd (held-out) executions.",
        "",
        "| process | held-out n | testbed mean s | twin mean s | error % | testbed var s² "
        "| twin var s² | testbed overruns (all) | twin overruns (per run) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    nan = {"mean_s": float("nan"), "var_s2": float("nan"), "overruns": float("nan")}
    for name in tb.index:
        a, b = tb.loc[name], tw.loc[name] if name in tw.index else nan
        err = (b["mean_s"] / a["mean_s"] - 1) * 100
        lines.append(
            f"| {name} | {a['n']:.0f} | {a['mean_s']:.2f} | {b['mean_s']:.2f} | {err:+.1f} | "
            f"{a['var_s2']:.3f} | {b['var_s2']:.3f} | {a['overruns']:.0f} | "
            f"{b['overruns'] / meta['replications']:.1f} |"
        )
    failed = every[~every["ok"]]
    names = [f"{p} #{i}" for p, i in zip(failed["process"], failed["pid"], strict=True)]
    lines += [
        "",
        f"Failed executions (left out above): {len(failed)} {' '.join(names)}",
        "",
        f"Cost ({scenario.settings.cost_criterion}; as deployed: batch workers on demand, "
        f"priced while their jobs ran): testbed {meta['cost']:.5f}, twin "
        f"{meta['twin_cost']:.5f} (mean per replication).",
        "",
        "## Steps (all executions)",
        "",
        "| process | step | machine | parts | mean wall s | start-up s | link wait s | CPU s "
        "| MB in |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    g = visits.assign(wall=visits["t_end"] - visits["t_start"]).groupby(
        ["process", "step", "machine"], observed=True, sort=False
    )
    for (p, s, m), v in g:
        lines.append(
            f"| {p} | {s} | {m} | {v['parts'].iloc[0]} | {v['wall'].mean():.2f} | "
            f"{v['overhead_s'].mean():.2f} | {v['transfer_s'].mean():.2f} | "
            f"{v['cpu_s'].mean():.2f} | {v['bytes_in'].mean() / 1e6:.2f} |"
        )
    inf = meta.get("inference") or {}
    if inf.get("requests"):
        lines += [
            "",
            f"Inference beside them: {inf['requests']} requests at {meta['rate_per_s']:g}/s "
            f"(entity lookups in Feast's online store, then the 3 stages), status codes "
            f"{inf['codes']}, p50 {inf.get('p50_ms', float('nan')):.1f} ms, "
            f"p95 {inf.get('p95_ms', float('nan')):.1f} ms.",
        ]
    if meta["errors"]:
        lines += ["", "## Errors", "", *[f"- {e}" for e in meta["errors"][:20]]]
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    return text


def run_on_testbed(
    scenario: Scenario,
    deployment: Deployment,
    out: Path,
    horizon_s: float,
    seed: int,
    rate_per_s: float,
    model_dir: Path,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """One run on the local testbed: up, the serving instance, ``rate_per_s`` inference
    requests beside the batch executions of ``horizon_s`` s (``scenario`` already
    scaled), down. Writes ``visits.parquet`` and ``executions.parquet`` to ``out``;
    returns them and the run's facts (``end_s``, ``wall_s``, ``factor``, ``quotas``:
    machine → host cores, ``confined``, ``errors``, ``inference``)."""
    from testbed.backends.local import LocalBackend
    from testbed.capacity import plan_capacity

    batch_processes(scenario)
    out.mkdir(parents=True, exist_ok=True)
    if not (model_dir / "manifest.json").is_file():  # the inference stages need the zoo
        from testbed.zoo.build import build

        print(f"building the model zoo in {model_dir} (a few minutes)", file=sys.stderr)
        build(model_dir)
    cap = plan_capacity(scenario)
    backend = LocalBackend(state_dir=out / ".testbed", model_dir=model_dir)
    started = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # batch components are not stages
        endpoints = backend.up(scenario, deployment, cap)
    try:
        runner = Runner(scenario, deployment, endpoints, out)
        runner.start_serving()
        from testbed.zoo.manifest import load_testset

        n_entities = len(load_testset(model_dir)[1])
        load = InferenceLoad(endpoints.gateway, rate_per_s, n_entities, seed).start()
        try:
            runner.run(horizon_s, seed)
        finally:
            inference = load.stop()
        end_s = time.time() - runner.t0
    finally:
        confined = bool(backend.reserve_procs())
        backend.down()
    visits = pd.DataFrame(runner.visits)
    execs = pd.DataFrame(runner.executions)
    visits.to_parquet(out / "visits.parquet")
    execs.to_parquet(out / "executions.parquet")
    meta = {
        "end_s": end_s,
        "wall_s": time.time() - started,
        "factor": cap.factor,
        "quotas": {n.name: n.cpu_cores for n in cap.nodes},
        "confined": confined,
        "errors": runner.errors,
        "inference": inference,
    }
    return visits, execs, meta


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("scenario", type=Path)
    p.add_argument("-d", "--deployment", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("runs/mlops-lab"))
    p.add_argument("--time-scale", type=float, default=0.1)
    p.add_argument("--horizon", type=float, default=150.0, help="s of real time")
    p.add_argument("--replications", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--model-dir", type=Path, default=Path("data/models"))
    p.add_argument(
        "--rate",
        type=float,
        default=10.0,
        help="inference requests/s beside the batch processes (entity lookups in Feast); 0: none",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="calibrate and report again from the run folder's records (no testbed)",
    )
    p.add_argument(
        "--waits",
        choices=WAIT_RULES,
        default="unthrottled",
        help="which steps' time beyond their CPU is fitted as a wait (see fit_cpu_work)",
    )
    p.add_argument(
        "--parts",
        choices=PART_RULES,
        default="each",
        help="a split step's part: its own work (part_cpu_work) or a share of the step's "
        "cpu_work (see fit_cpu_work)",
    )
    a = p.parse_args()

    scenario = scaled(load_scenario(a.scenario), a.time_scale)
    deployment = load_deployment(a.deployment)
    out = a.out.resolve()
    if a.report_only:
        visits = pd.read_parquet(out / "visits.parquet")
        execs = pd.read_parquet(out / "executions.parquet")
        meta = json.loads((out / "meta.json").read_text())
        if "quotas" not in meta:  # a run folder from before quotas were recorded
            from testbed.capacity import plan_capacity

            cap = plan_capacity(scenario, factor=meta["factor"])
            meta["quotas"] = {n.name: n.cpu_cores for n in cap.nodes}
    else:
        visits, execs, meta = run_on_testbed(
            scenario, deployment, out, a.horizon, a.seed, a.rate, a.model_dir
        )
    execs = with_deadlines(execs, scenario)
    pids = {int(i) for i in execs["pid"] if i % 2 == 0}
    fitted = calibrate(scenario, visits, pids, meta["quotas"], a.waits, a.parts)
    (out / "calibrated-scenario.yaml").write_text(dump_yaml(fitted))
    from twin.spec import SteadyWorkload

    steady = SteadyWorkload(kind="steady", name=f"steady-{a.rate:g}", rate_per_s=a.rate)
    deployed = as_deployed(scenario, deployment)
    tw, twin_cost = twin_times(
        fitted, deployed, a.horizon, a.replications, a.seed, steady if a.rate > 0 else None
    )
    tw.to_csv(out / "twin.csv")
    meta.update(
        {
            "time_scale": a.time_scale,
            "horizon_s": a.horizon,
            "replications": a.replications,
            "cost": measured_cost(scenario, deployment, visits, a.horizon),
            "twin_cost": twin_cost,
            "rate_per_s": a.rate,
        }
    )
    (out / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
    print(report(out, scenario, deployment, meta))


if __name__ == "__main__":
    main()
