"""The Locust process: open-loop senders, the workload shape and the request log.

Run only as its own process (``python -m loadgen.worker CONFIG.json``): importing
Locust monkeypatches the standard library with gevent, which must never happen
in the CLI, testbed or twin process. :mod:`loadgen.run` starts it.

Protocol with the parent: the worker loads everything (Locust, inputs, the
schedule), prints ``READY`` on stdout, then reads the run's time zero (Unix
seconds) from stdin, so several workers start on one clock and start-up time
never eats into the schedule. At the end it writes the raw request log
(``raw_out``, parquet) and exits 0.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import gevent
import numpy as np
import pandas as pd
from gevent.queue import Empty, Queue
from locust import FastHttpUser, LoadTestShape, constant, task
from locust.env import Environment
from pydantic import TypeAdapter

from loadgen.inputs import digits, n_inputs, payload
from loadgen.profile import LoadProfile
from loadgen.schedule import arrival_schedule, input_order, partition
from testbed.api import INFER_PATH, TIMINGS_HEADER
from twin.spec import Workload

RAW_COLUMNS = (
    "pid",
    "input",
    "t_release",
    "t_send",
    "t_recv",
    "status",
    "error",
    "timings",
    "label",
    "truth",
    "attempt",
)
# A keep-alive connection the server closed while idle fails before the request reached it;
# the POST is sent once more on a fresh connection (the client library never retries POSTs).
_STALE = {"HTTPConnectionClosed", "ConnectionResetError", "BrokenPipeError"}
_POLL_S = 0.5  # a user blocked on the empty queue re-checks this often, so stops are prompt


class Releaser:
    """Puts each scheduled arrival on the queue at its time (Unix clock, from ``t0``)."""

    def __init__(self, pids: np.ndarray, times: np.ndarray, inputs: np.ndarray, t0: float) -> None:
        self.pids, self.times, self.inputs, self.t0 = pids, times, inputs, t0
        self.queue: Queue = Queue()
        self.released = 0
        self.done = False

    def run(self) -> None:
        for pid, t, inp in zip(self.pids, self.times, self.inputs, strict=True):
            delay = self.t0 + float(t) - time.time()
            if delay > 0:
                gevent.sleep(delay)
            self.queue.put((int(pid), int(inp), float(t)))
            self.released += 1
        self.done = True


class Recorder:
    """The request event hook: one raw row per request, times relative to ``t0``."""

    def __init__(self, t0: float, truth: np.ndarray | None = None) -> None:
        self.t0, self.truth = t0, truth
        self.rows: list[tuple[Any, ...]] = []

    def on_request(
        self,
        response: Any = None,
        context: dict | None = None,
        exception: BaseException | None = None,
        start_time: float = 0.0,
        **_: Any,
    ) -> None:
        ctx = context or {}
        if "pid" not in ctx:  # not one of ours (Locust's own requests, if any)
            return
        t_recv = time.time() - self.t0
        status = int(getattr(response, "status_code", 0) or 0)
        timings, label = "", -1
        if exception is None and response is not None:
            timings = response.headers.get(TIMINGS_HEADER, "") or ""
            try:
                label = int(response.json().get("label", -1))
            except Exception:  # a body that is not our JSON still counts as answered
                label = -1
        error = "" if exception is None else f"{type(exception).__name__}: {exception}"[:200]
        self.rows.append(
            (
                ctx["pid"],
                ctx["input"],
                ctx["t_release"],
                start_time - self.t0,
                t_recv,
                status,
                error,
                timings,
                label,
                int(self.truth[ctx["input"]]) if self.truth is not None else -1,
                ctx.get("attempt", 0),
            )
        )

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=list(RAW_COLUMNS))


class PipelineUser(FastHttpUser):
    """A sender: takes the next released arrival and POSTs a real input to the gateway."""

    abstract = True  # the concrete class is made per run with its queue and inputs
    wait_time = constant(0)
    network_timeout = 30.0
    connection_timeout = 5.0
    queue: ClassVar[Queue]
    input_kind: ClassVar[str] = "image"
    inputs_file: ClassVar[str | None] = None
    t0: ClassVar[float] = 0.0

    @task
    def send(self) -> None:
        try:
            pid, inp, _t = self.queue.get(timeout=_POLL_S)
        except Empty:
            return
        body = payload(self.input_kind, inp, pid, self.inputs_file)
        t_release = time.time() - self.t0
        for attempt in (0, 1):
            context = {"pid": pid, "input": inp, "t_release": t_release, "attempt": attempt}
            resp = self.client.post(INFER_PATH, json=body, name="infer", context=context)
            if resp.status_code != 0 or type(getattr(resp, "error", None)).__name__ not in _STALE:
                return


class WorkloadShape(LoadTestShape):
    """Locust shape delegating to :class:`LoadProfile`; run time counts from ``t0``."""

    def __init__(self, profile: LoadProfile, t0: float, share: float = 1.0) -> None:
        super().__init__()
        self.profile, self.t0, self.share = profile, t0, share

    def get_run_time(self) -> float:
        return time.time() - self.t0

    def tick(self) -> tuple[int, float] | None:
        tick = self.profile.tick(self.get_run_time())
        if tick is None:
            return None
        users, rate = tick
        return max(1, int(np.ceil(users * self.share))), rate


def run(config: dict, t0: float | None = None) -> pd.DataFrame:
    """Run one worker's share of the schedule; returns the raw request log."""
    workload = TypeAdapter(Workload).validate_python(config["workload"])
    profile = LoadProfile(workload, **config["profile"])
    times = arrival_schedule(workload, config["process"], profile.duration_s, config["seed"])
    pids, mine = partition(times, config["index"], config["count"])
    source = config.get("inputs_file")
    inputs = input_order(n_inputs(source), times.size, config["seed"])[pids]
    payload(config["inputs"], 0, 0, source)  # load the input set before the clock starts

    if t0 is None:
        print("READY", flush=True)
        line = sys.stdin.readline()
        if not line.strip():  # the orchestrator went away before the start: send nothing
            raise SystemExit(3)
        t0 = float(line)

    releaser = Releaser(pids, mine, inputs, t0)
    recorder = Recorder(t0, digits(source)[1])
    user = type(
        "DigitsUser",
        (PipelineUser,),
        {
            "abstract": False,
            "queue": releaser.queue,
            "input_kind": config["inputs"],
            "t0": t0,
            "inputs_file": source,
        },
    )
    user.network_timeout = config.get("timeout_s", 30.0)
    shape = WorkloadShape(profile, t0, 1.0 / config["count"])
    env = Environment(user_classes=[user], shape_class=shape, host=config["target"])
    env.stop_timeout = config.get("timeout_s", 30.0) + 1.0
    runner = env.create_local_runner()
    env.events.request.add_listener(recorder.on_request)

    lead = t0 - 1.5 - time.time()  # spawn the pool (250 users/s) before the first arrival
    if lead > 0:
        gevent.sleep(lead)
    runner.start_shape()
    release = gevent.spawn(releaser.run)
    while runner.shape_greenlet is not None:
        gevent.sleep(0.1)
        if release.dead and len(recorder.rows) >= releaser.released:
            break  # everything sent has been answered: no need to wait out the drain
    release.kill()
    runner.quit()
    return recorder.frame()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m loadgen.worker CONFIG.json", file=sys.stderr)
        return 2
    logging.getLogger("locust").setLevel(logging.WARNING)
    config = json.loads(Path(args[0]).read_text())
    frame = run(config)
    frame.to_parquet(config["raw_out"], index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
