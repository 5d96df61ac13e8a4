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
from twin.spec import Deployment, Scenario, ServiceTime, Workload


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


def change_steps(
    old: Deployment, new: Deployment, stages: list[str], seconds: dict[str, float]
) -> list[tuple[float, Deployment]]:
    """The deployments the testbed runs while its controller goes from ``old`` to
    ``new``, each with the seconds after the decision it takes effect.

    The controller's order (``testbed.controller.Controller.deploy``): every
    running replica of a changed stage switches variant or batch in place, one
    replica after another; then the missing replicas start one at a time, each
    routed only when all have started; then the gateway routes to exactly the new
    replicas (surplus ones stop taking work). So a switch to a heavier variant runs
    on the old replica count until the new replicas are up: the capacity dip a
    change applied all at once would hide. ``stages`` in pipeline order.
    """
    t = 0.0
    steps: list[tuple[float, Deployment]] = []
    alloc = {c: dict(m) for c, m in old.allocation.items()}
    switched = False
    for stage in stages:
        a, b = old.stages.get(stage), new.stages.get(stage)
        if a is None or b is None or (a.variant, a.batch) == (b.variant, b.batch):
            continue
        kind = "variant" if a.variant != b.variant else "batch"
        t += seconds.get(kind, 0.0) * sum(old.allocation.get(stage, {}).values())
        switched = True
    if switched:
        steps.append((t, old.model_copy(update={"stages": dict(new.stages), "allocation": alloc})))
    started = False
    for stage in stages:
        want, have = new.allocation.get(stage, {}), old.allocation.get(stage, {})
        for m in sorted(set(want) | set(have)):
            t += seconds.get("replica-start", 0.0) * max(want.get(m, 0) - have.get(m, 0), 0)
            started = started or want.get(m, 0) > have.get(m, 0)
    # started replicas take work only from the routes on: the gateway gets them then
    t += seconds.get("routes", 0.0)
    steps.append((t, new))
    return steps if (switched or started or old.allocation != new.allocation) else []


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
    # the controller's steps one after another (:func:`change_steps`); False: each
    # decision applied whole after the sum of its changes' times (the earlier replay)
    staged: bool = True
    # the per-request overhead per configuration class (``classify(config)`` of
    # ``optimizer.rl.online.describe``'s text), set when a configuration of that
    # class starts; a class not in it keeps ``sim_scenario``'s overhead
    overheads: dict[str, ServiceTime] | None = None
    classify: Callable[[str], str] | None = None
    # the overhead of this class (of ``overheads``) for the interval after a decision
    # that reconfigured, then the configuration's class again; None: no such class
    after_change: str | None = None


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
    pooled = simulated.process(env.process).request_overhead

    def overhead_for(options: list[Option]) -> Any:
        if not run.overheads or run.classify is None:
            return None
        return run.overheads.get(run.classify(describe(space, options)), pooled)

    if (first := overhead_for(current)) is not None:
        sim.set_request_overhead(env.process, first)
    history = np.asarray(env.history, dtype=float)
    # (load-run time, deployment, overhead from then or None) still to apply
    pending: list[tuple[float, Any, Any]] = []
    stages = [s.name for s in space.stages]
    rows = []
    for k in range(run.intervals):
        t0 = run.offset_s + k * interval
        t1 = t0 + interval
        while pending and pending[0][0] < t1:  # the last decision's steps, in order
            at, step, overhead = pending.pop(0)
            sim.advance(at)
            if step is not None:
                sim.reconfigure(step)
            if overhead is not None:
                sim.set_request_overhead(env.process, overhead)
        sim.advance(t1)
        w = _window(sim, space, env, dep, t0, t1)
        history = np.concatenate([history, w.arrivals])[-HISTORY_S:]
        chosen, decision_ms = decide(
            env, decider, current, w, history, t1 - run.offset_s, len(current)
        )
        delay = 0.0
        config = describe(space, current)
        if chosen != current:
            new_dep = space.deployment(chosen, name=f"twin-t{k}", keep=dep)
            if run.staged:
                steps = change_steps(dep, new_dep, stages, run.change_seconds)
            else:
                steps = [
                    (change_delay_s(change_kinds(current, chosen), run.change_seconds), new_dep)
                ]
            steps = steps or [(0.0, new_dep)]
            delay = steps[-1][0]
            # the class moves with the variants: the first step switches them in place
            new_over = overhead_for(chosen)
            transient = (run.overheads or {}).get(run.after_change or "")
            if transient is not None:  # the change's own overhead, its interval long
                pending += [(t1, None, transient), (t1 + interval, None, new_over)]
                new_over = None
            pending += [(t1 + s, d, new_over if i == 0 else None) for i, (s, d) in enumerate(steps)]
            pending.sort(key=lambda p: p[0])
            dep, current = new_dep, chosen  # what the next decision starts from
        rows.append(
            {
                "t_s": t0 - run.offset_s,
                "predicted_rps": env.predicted,
                **w.metrics.as_dict(),
                "decision_ms": decision_ms,
                "change_delay_s": delay,
                "config": config,
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
