"""The same control loop against the twin, with the testbed run's arrivals.

The twin's simulation draws replication 0 of the load run's seed, so its
arrival instants are the load generator's (``loadgen.schedule``). The loop
mirrors :class:`optimizer.rl.online.OnlineController` on the load run's
clock: the initial configuration runs until the controller's first interval
begins (``offset_s``), then every interval the twin is measured, the policy
decides from that window (``optimizer.rl.online.decide``) and the new
configuration takes effect after the time the testbed measured for that kind
of change (``change_delay_s``) — the twin's own reconfiguration is instant.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from lab.control_measure import per_interval
from optimizer.rl.backends import Window
from optimizer.rl.env import PipelineEnv
from optimizer.rl.online import decide, describe
from optimizer.rl.predictor import HISTORY_S
from optimizer.rl.space import ConfigSpace, Option
from twin.criteria import pipeline_metrics, step_window
from twin.sim import Simulation
from twin.spec import Scenario, Workload


def change_kinds(old: list[Option], new: list[Option]) -> list[str]:
    """The testbed controller's changes (its ``CHANGE_KINDS``) from ``old`` to ``new``."""
    kinds: list[str] = []
    for a, b in zip(old, new, strict=True):
        if a.variant != b.variant:
            kinds.append("variant")
        elif a.batch != b.batch:
            kinds.append("batch")
        kinds += ["replica-start"] * max(b.replicas - a.replicas, 0)
        kinds += ["replica-stop"] * max(a.replicas - b.replicas, 0)
    # every deploy ends by handing the gateway its routes
    return [*kinds, "routes"] if kinds else kinds


def change_delay_s(kinds: list[str], seconds: dict[str, float]) -> float:
    """Time the controller takes for these changes, one after another (s)."""
    return float(sum(seconds.get(k, 0.0) for k in kinds))


@dataclass
class TwinReplay:
    """What the replay needs: the testbed's view of the scenario and the run's clock."""

    env: PipelineEnv
    workload: Workload
    seed: int
    horizon_s: float  # the load run's duration (its arrival schedule's horizon)
    offset_s: float  # load-run time at which the controller's first interval began
    intervals: int
    change_seconds: dict[str, float]  # median seconds per kind of change, measured
    # What the twin simulates; None: the policies' view (``env.space.scenario``). A
    # calibrated scenario changes service times and overheads only, so the scores
    # (Q, C, E from the modelled capacity) stay the view's, as on the testbed.
    sim_scenario: Scenario | None = None


def _window(
    sim: Simulation, space: ConfigSpace, env: PipelineEnv, dep: Any, t0: float, t1: float
) -> Window:
    process = env.process
    visits, requests = sim.records(since_s=t0)
    mine = requests["process"] == process
    arrived = requests["t_arrive"].to_numpy()[mine.to_numpy()]
    arrived = arrived[(arrived >= t0) & (arrived < t1)]
    n = math.ceil(t1 - t0)
    arrivals = np.histogram(arrived, bins=np.linspace(t0, t0 + n, n + 1))[0].astype(float)
    window = visits[(visits["t_end"] < t1) & (visits["process"] == process)]
    m = pipeline_metrics(
        window, space.scenario, dep, process, t0, t1, float(arrivals.mean()) if n else 0.0
    )
    steps = space.scenario.process(process).steps
    names = [next(s.name for s in steps if s.component == st.name) for st in space.stages]
    lat, thr = step_window(window, names, t0, t1)
    return Window(t0, t1, arrivals, m, np.array(lat), np.array(thr))


def replay(
    run: TwinReplay, decider: Any, on_interval: Callable[[int], None] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-interval rows of the twin under ``decider`` (as the testbed's), and its requests."""
    env, space = run.env, run.env.space
    interval = env.interval_s
    current = list(env.current)
    dep = space.deployment(current, name="twin-initial")
    simulated = run.sim_scenario or space.scenario
    sim = Simulation(simulated, dep, run.workload, run.horizon_s, run.seed, 0)
    sim.start()
    history = np.asarray(env.history, dtype=float)
    pending: tuple[float, Any, list[Option]] | None = None
    rows = []
    for k in range(run.intervals):
        t0 = run.offset_s + k * interval
        t1 = t0 + interval
        if pending is not None:  # the last decision takes effect after the change time
            at, new_dep, new = pending
            sim.advance(min(at, t1))
            sim.reconfigure(new_dep)
            dep, current, pending = new_dep, new, None
        sim.advance(t1)
        w = _window(sim, space, env, dep, t0, t1)
        history = np.concatenate([history, w.arrivals])[-HISTORY_S:]
        chosen, decision_ms = decide(
            env, decider, current, w, history, t1 - run.offset_s, len(current)
        )
        delay = 0.0
        if chosen != current:
            delay = change_delay_s(change_kinds(current, chosen), run.change_seconds)
            new_dep = space.deployment(chosen, name=f"twin-t{k}", keep=dep)
            pending = (t1 + delay, new_dep, chosen)
        rows.append(
            {
                "t_s": t0 - run.offset_s,
                "predicted_rps": env.predicted,
                **w.metrics.as_dict(),
                "decision_ms": decision_ms,
                "change_delay_s": delay,
                "config": describe(space, current),
            }
        )
        if on_interval:
            on_interval(k)
    _, requests = sim.records()
    requests = requests[requests["process"] == env.process]
    frame = pd.DataFrame(rows)
    lat = per_interval(
        requests,
        [t + run.offset_s for t in frame["t_s"]],
        interval,
        space.deadline_s,
    )
    return pd.concat([frame, lat.drop(columns="t_load_s")], axis=1), requests
