"""A load run: Locust worker processes + metric scraper + batch triggers → a run folder.

This module never imports Locust: each load-generator process is
``python -m loadgen.worker`` (gevent monkeypatching stays in that process). The
orchestrator starts the workers, waits until all have loaded, hands them one
time zero, and meanwhile scrapes ``/metrics`` and triggers batch processes on
the same clock. Afterwards it turns the raw request logs into the twin's record
tables (:mod:`loadgen.records`).

Run folder (``runs/<name>/``, written atomically): ``requests.parquet`` (every
scheduled request plus batch executions), ``visits.parquet`` (per-stage
visits), ``per_second.parquet`` (offered, sent, RPS, failures, p50/p95/p99),
``metrics.parquet`` (scraped samples), ``prometheus.yml``, ``summary.json``,
``run.json`` (the inputs, with the workload as run), ``raw/`` (workers' raw
logs and stderr) and ``report.md``.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import TypeAdapter

from loadgen.batch import BatchHook, BatchTrigger, batch_schedule
from loadgen.inputs import InputKind, n_inputs
from loadgen.metrics import Scraper, prometheus_config
from loadgen.profile import LoadProfile
from loadgen.records import per_second_table, requests_table, run_summary, visits_table
from loadgen.schedule import arrival_schedule
from loadgen.tensors import gateway_serving, resolve
from twin.runs import atomic_dir, write_table
from twin.spec import Process, Scenario, Serving, Workload
from twin.workload import rate_series

READY_TIMEOUT_S = 120.0  # importing Locust + scikit-learn on a busy 2-core machine
START_LEAD_S = 2.0  # time zero is this far after the last worker reported ready


@dataclass
class LoadRun:
    """Everything one load run needs. ``workload`` is the curve as offered (already scaled)."""

    scenario: Scenario
    workload: Workload
    target: str
    duration_s: float
    seed: int = 1
    process: str | None = None
    inputs: InputKind = "image"
    inputs_file: Path | None = None  # .npz with x (n×64), y; default scikit-learn's digits
    workers: int = 1
    drain_s: float = 10.0
    concurrency_s: float = 1.0
    min_users: int = 8
    max_users: int = 1000
    timeout_s: float = 30.0
    metrics_targets: dict[str, str] = field(default_factory=dict)
    scrape_interval_s: float = 1.0
    replica_nodes: dict[str, str] | None = None
    batch_hook: BatchHook | None = None
    protocol: str = "v1"  # "v2": the Open Inference Protocol (any V2 server)
    serving: Serving | None = None  # V2 model and inputs; None: the process's, or the gateway's
    scenario_dir: Path | None = None  # where the serving's data files are relative to

    def v2_serving(self) -> Serving:
        """What a V2 run sends: this run's, the request process's, or the testbed gateway's."""
        serving = self.serving or self.request_process().serving or gateway_serving()
        return resolve(serving, self.scenario_dir)

    def request_process(self) -> Process:
        """The request pipeline the workload drives (named, or the only one)."""
        names = self.workload.processes or [
            p.name for p in self.scenario.processes if p.kind == "request"
        ]
        if self.process is not None:
            names = [self.process]
        if len(names) != 1:
            raise ValueError(
                f"workload {self.workload.name!r} drives {len(names)} request processes "
                f"({', '.join(names) or 'none'}); name one with --process"
            )
        for p in self.scenario.processes:
            if p.name == names[0]:
                return p
        raise ValueError(f"scenario {self.scenario.name!r} has no process {names[0]!r}")

    def profile(self) -> LoadProfile:
        return LoadProfile(
            self.workload,
            self.duration_s,
            drain_s=self.drain_s,
            concurrency_s=self.concurrency_s,
            min_users=self.min_users,
            max_users=self.max_users,
        )

    def worker_config(self, index: int, raw_out: Path) -> dict:
        p = self.profile()
        return {
            "workload": TypeAdapter(Workload).dump_python(self.workload, mode="json"),
            "profile": {
                "duration_s": p.duration_s,
                "drain_s": p.drain_s,
                "concurrency_s": p.concurrency_s,
                "min_users": p.min_users,
                "max_users": p.max_users,
            },
            "process": self.request_process().name,
            "seed": self.seed,
            "index": index,
            "count": self.workers,
            "inputs": self.inputs,
            "inputs_file": str(self.inputs_file) if self.inputs_file else None,
            "target": self.target.rstrip("/"),
            "timeout_s": self.timeout_s,
            "raw_out": str(raw_out),
            "protocol": self.protocol,
            "serving": self.v2_serving().model_dump(mode="json") if self.protocol == "v2" else None,
        }


@dataclass
class LoadResult:
    """Tables of one run (times in s from the run's time zero ``t0``, Unix s)."""

    t0: float
    requests: pd.DataFrame
    visits: pd.DataFrame
    per_second: pd.DataFrame
    metrics: pd.DataFrame
    batch: pd.DataFrame
    summary: dict[str, float]
    wall_s: float


class LoadRunError(RuntimeError):
    """A worker failed to start or crashed; the message names its log."""


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"ORT_DISABLE_TELEMETRY": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    return env


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)


def _start_workers(run: LoadRun, raw_dir: Path) -> list[subprocess.Popen]:
    procs: list[subprocess.Popen] = []
    for i in range(run.workers):
        cfg = raw_dir / f"worker-{i}.json"
        cfg.write_text(json.dumps(run.worker_config(i, raw_dir / f"worker-{i}.parquet")))
        log = (raw_dir / f"worker-{i}.log").open("w")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "loadgen.worker", str(cfg)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=_worker_env(),
            )
        )
        log.close()
    return procs


def _await_ready(procs: list[subprocess.Popen], raw_dir: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    for i, p in enumerate(procs):
        assert p.stdout is not None
        waiting = select.select([p.stdout], [], [], max(deadline - time.monotonic(), 0.0))[0]
        line = p.stdout.readline() if waiting else ""  # "" also when the worker died (EOF)
        if line.strip() != "READY":
            raise LoadRunError(
                f"load worker {i} did not start (exit {p.poll()}): {_tail(raw_dir, i)}"
            )


def _tail(raw_dir: Path, index: int) -> str:
    # The run folder is discarded on error, so the worker's last words go into the message.
    try:
        lines = (raw_dir / f"worker-{index}.log").read_text().strip().splitlines()
    except OSError:
        return "no log"
    return " | ".join(lines[-3:]) or "empty log"


def execute(
    run: LoadRun, raw_dir: Path, on_progress: Callable[[float], None] | None = None
) -> LoadResult:
    """Run the load; raw logs go to ``raw_dir``. Workers are stopped on any error."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    process = run.request_process()
    if run.inputs_file is not None:
        n_inputs(str(run.inputs_file))  # a bad file fails here, before any worker starts
    if run.protocol not in ("v1", "v2"):
        raise ValueError(f"protocol must be 'v1' or 'v2', got {run.protocol!r}")
    if run.protocol == "v2":  # a bad tensor description or data file fails here too
        from loadgen.tensors import body_pool

        body_pool(run.v2_serving(), str(run.inputs_file) if run.inputs_file else None, size=1)
    started = time.perf_counter()
    procs = _start_workers(run, raw_dir)
    scraper: Scraper | None = None
    trigger: BatchTrigger | None = None
    try:
        _await_ready(procs, raw_dir)
        t0 = time.time() + START_LEAD_S
        for i, p in enumerate(procs):
            assert p.stdin is not None
            try:
                p.stdin.write(f"{t0!r}\n")
                p.stdin.close()
            except BrokenPipeError:
                raise LoadRunError(f"load worker {i} died: {_tail(raw_dir, i)}") from None
        scraper = Scraper(run.metrics_targets, run.scrape_interval_s, t0).start()
        if run.batch_hook is not None:
            deadlines = {p.name: p.deadline_s for p in run.scenario.processes}
            plan = batch_schedule(run.scenario, run.duration_s, run.seed)
            trigger = BatchTrigger(plan, run.batch_hook, t0, deadlines).start()
        limit = t0 + run.duration_s + run.drain_s + run.timeout_s + 30.0
        while any(p.poll() is None for p in procs):
            if time.time() > limit:
                raise LoadRunError(f"load workers did not finish; see {raw_dir}/worker-*.log")
            if on_progress is not None:
                on_progress(min(max(time.time() - t0, 0.0), run.duration_s))
            time.sleep(0.25)
        for i, p in enumerate(procs):
            if p.returncode != 0:
                raise LoadRunError(
                    f"load worker {i} exited with {p.returncode}: {_tail(raw_dir, i)}"
                )
    finally:
        _stop(procs)
        metrics = scraper.stop() if scraper is not None else Scraper({}).frame()
        batch = trigger.stop() if trigger is not None else pd.DataFrame()

    raw = pd.concat(
        [pd.read_parquet(raw_dir / f"worker-{i}.parquet") for i in range(run.workers)],
        ignore_index=True,
    )
    schedule = arrival_schedule(run.workload, process.name, run.duration_s, run.seed)
    requests = requests_table(raw, schedule, process.name, process.deadline_s)
    visits = visits_table(raw, process, run.replica_nodes, t0)
    expected = float(rate_series(run.workload, run.duration_s).sum())
    summary = run_summary(requests, run.duration_s, expected)
    summary["batch_executions"] = float(len(batch))
    if len(batch):
        requests = pd.concat([requests, batch], ignore_index=True)
        requests["process"] = requests["process"].astype("category")
    return LoadResult(
        t0=t0,
        requests=requests,
        visits=visits,
        per_second=per_second_table(requests[requests["process"] == process.name], run.duration_s),
        metrics=metrics,
        batch=batch,
        summary=summary,
        wall_s=time.perf_counter() - started,
    )


def run_to_folder(
    run: LoadRun, out_dir: str | Path, on_progress: Callable[[float], None] | None = None
) -> LoadResult:
    """Execute ``run`` and write its run folder atomically (see module doc)."""
    with atomic_dir(out_dir) as tmp:
        result = execute(run, tmp / "raw", on_progress)
        write_result(run, result, tmp)
    return result


def write_result(run: LoadRun, result: LoadResult, folder: Path) -> None:
    """Tables, ``prometheus.yml``, ``summary.json``, ``run.json`` and ``report.md``."""
    write_table(result.requests, folder / "requests")
    write_table(result.visits, folder / "visits")
    write_table(result.per_second, folder / "per_second")
    write_table(result.metrics, folder / "metrics")
    (folder / "prometheus.yml").write_text(
        prometheus_config(run.metrics_targets, run.scrape_interval_s)
    )
    (folder / "summary.json").write_text(json.dumps(_jsonable(result.summary), indent=2))
    meta = {
        "scenario": run.scenario.name,
        "workload": TypeAdapter(Workload).dump_python(run.workload, mode="json"),
        "process": run.request_process().name,
        "target": run.target,
        "duration_s": run.duration_s,
        "seed": run.seed,
        "inputs": run.inputs,
        "protocol": run.protocol,
        "inputs_file": str(run.inputs_file) if run.inputs_file else None,
        "workers": run.workers,
        "t0_unix_s": result.t0,
        "metrics_targets": run.metrics_targets,
        "batch_hook": run.batch_hook is not None,
    }
    (folder / "run.json").write_text(json.dumps(meta, indent=2))
    (folder / "report.md").write_text(report_text(run, result))


def _jsonable(d: dict[str, float]) -> dict[str, float | None]:
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in d.items()}


def report_text(run: LoadRun, result: LoadResult) -> str:
    """A short markdown report of one run."""
    s = result.summary
    lines = [
        f"# Load run: {run.scenario.name} / {run.workload.name}",
        "",
        f"- target {run.target}, {run.duration_s:g} s, seed {run.seed}, {run.workers} "
        f"load-generator process(es), inputs: {run.inputs}",
        f"- batch processes: {'triggered' if run.batch_hook else 'not triggered (no hook)'}"
        f" ({int(s.get('batch_executions', 0))} executions)",
        "",
        "| figure | value |",
        "|---|---:|",
    ]
    for key, value in s.items():
        lines.append(f"| {key} | {value:.4g} |")
    return "\n".join(lines) + "\n"
