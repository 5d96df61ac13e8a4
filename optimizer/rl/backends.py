"""What the environment runs a configuration on for one adaptation interval.

:class:`TwinBackend` advances the twin's discrete-event simulation
(``twin.sim.Simulation``: ``start``/``advance``/``reconfigure``) and measures
the interval with ``twin.criteria.pipeline_metrics`` — the paper's setting,
in simulation. :class:`AnalyticBackend` draws Poisson arrivals from the same
rate curve and scores the interval with the analytic model of
``optimizer.rl.model``; it is ~1000× faster and serves tests and
pre-training. Both return a :class:`Window`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd

from optimizer.rl.model import estimate
from optimizer.rl.space import ConfigSpace, Option
from twin.criteria import pipeline_metrics
from twin.sim import VISIT_COLUMNS, Simulation
from twin.spec import Deployment, Workload
from twin.workload import rate_at

_V = {c: i for i, c in enumerate(VISIT_COLUMNS)}


@dataclass(frozen=True)
class Window:
    """One adaptation interval [t0, t1): arrivals per second and the pipeline metrics."""

    t0: float
    t1: float
    arrivals: np.ndarray
    V: float
    C: float
    T: float
    L: float
    E: float
    B: int
    Q: float
    objective: float
    reward: float
    capacity_rps: float
    stage_latency_s: np.ndarray
    stage_throughput_rps: np.ndarray

    @property
    def offered_rps(self) -> float:
        return float(self.arrivals.mean()) if len(self.arrivals) else 0.0


class Backend(Protocol):
    def reset(self, deployment: Deployment, workload: Workload, seed: int) -> None: ...

    def run(self, deployment: Deployment, options: list[Option], t1: float) -> Window:
        """Apply ``deployment`` now and run until ``t1`` (s); measure the interval."""
        ...


class AnalyticBackend:
    """Poisson arrivals on the workload's curve, metrics from the analytic model."""

    def __init__(self, space: ConfigSpace, process: str, horizon_s: float) -> None:
        self.space, self.process, self.horizon_s = space, process, horizon_s
        self.weights = space.scenario.settings.qos

    def reset(self, deployment: Deployment, workload: Workload, seed: int) -> None:
        self.workload = workload
        self.rng = np.random.default_rng(seed)
        self.now = 0.0

    def run(self, deployment: Deployment, options: list[Option], t1: float) -> Window:
        t0 = self.now
        seconds = range(int(t0), math.ceil(t1))
        arrivals = self.rng.poisson([rate_at(self.workload, s) for s in seconds]).astype(float)
        est = estimate(self.space, options, float(arrivals.mean()), self.weights, t1 - t0)
        self.now = t1
        return Window(
            t0=t0, t1=t1, arrivals=arrivals, V=est.V, C=est.C, T=est.T, L=est.L, E=est.E,
            B=est.B, Q=est.Q, objective=est.objective, reward=est.reward,
            capacity_rps=est.capacity_rps,
            stage_latency_s=np.array([s.latency_s for s in est.stages]),
            stage_throughput_rps=np.array([s.throughput_rps for s in est.stages]),
        )  # fmt: skip


class TwinBackend:
    """The twin's simulation, advanced one interval at a time.

    Reading a window rebuilds only the rows that changed since the last one:
    ``Simulation.records()`` rebuilds the whole history (quadratic over a
    cycle), so the backend keeps a cursor into the simulation's row lists,
    whose first fields are ``VISIT_COLUMNS`` / ``REQUEST_COLUMNS`` in order.
    """

    def __init__(self, space: ConfigSpace, process: str, horizon_s: float,
                 replication: int = 0) -> None:  # fmt: skip
        self.space, self.process, self.horizon_s = space, process, horizon_s
        self.scenario = space.scenario
        self.replication = replication
        steps = self.scenario.process(process).steps
        # The state is per stage: measure each stage at the first step that runs it.
        self.steps = [next(s.name for s in steps if s.component == st.name) for st in space.stages]

    def reset(self, deployment: Deployment, workload: Workload, seed: int) -> None:
        self.sim = Simulation(self.scenario, deployment, workload, self.horizon_s, seed,
                              self.replication)  # fmt: skip
        self.sim.start()
        self.p_code = [p.name for p in self.scenario.processes].index(self.process)
        self.visit_cursor = 0
        self.request_cursor = 0

    def _window_visits(self, t1: float) -> pd.DataFrame:
        rows = self.sim.visits
        i = self.visit_cursor
        t_end, t_arr, step, part, proc = (_V["t_end"], _V["t_arrive"], _V["step"], _V["part"],
                                          _V["process"])  # fmt: skip
        # Rows before the cursor finished in earlier windows; NaN (unfinished) compares False.
        done = [r for r in rows[i:] if r[t_end] < t1]
        while i < len(rows) and rows[i][t_end] < t1:
            i += 1
        self.visit_cursor = i
        return pd.DataFrame(
            {
                "process": [self.scenario.processes[r[proc]].name for r in done],
                "step": [self.sim.step_names[r[step]] for r in done],
                "part": np.array([r[part] for r in done], dtype=np.int64),
                "t_arrive": np.array([r[t_arr] for r in done], dtype=float),
                "t_end": np.array([r[t_end] for r in done], dtype=float),
            }
        )

    def run(self, deployment: Deployment, options: list[Option], t1: float) -> Window:
        t0 = self.sim.now
        self.sim.reconfigure(deployment)
        self.sim.advance(t1)
        reqs = self.sim.requests
        j = self.request_cursor
        arrived = []
        while j < len(reqs) and reqs[j][2] < t1:
            if reqs[j][0] == self.p_code:
                arrived.append(reqs[j][2])
            j += 1
        self.request_cursor = j
        n = math.ceil(t1 - t0)
        arrivals = np.histogram(arrived, bins=np.linspace(t0, t0 + n, n + 1))[0].astype(float)
        window = self._window_visits(t1)
        # Earlier-finished rows past the cursor were counted before: keep this window's only.
        window = window[window["t_end"] >= t0]
        m = pipeline_metrics(window, self.scenario, deployment, self.process, t0, t1,
                             float(arrivals.mean()) if n else 0.0)  # fmt: skip
        lat, thr = [], []
        by_step = dict(tuple(window.groupby("step", observed=True))) if len(window) else {}
        for s in self.steps:
            rows = by_step.get(s)
            if rows is None or rows.empty:
                lat.append(t1 - t0)
                thr.append(0.0)
                continue
            lat.append(float((rows["t_end"] - rows["t_arrive"]).mean()))
            thr.append(len(rows) / (rows["part"].max() + 1) / (t1 - t0))
        return Window(
            t0=t0, t1=t1, arrivals=arrivals, V=m.V, C=m.C, T=m.T, L=m.L, E=m.E, B=m.B, Q=m.Q,
            objective=m.objective, reward=m.reward, capacity_rps=m.capacity_rps,
            stage_latency_s=np.array(lat), stage_throughput_rps=np.array(thr),
        )  # fmt: skip


BACKENDS = {"twin": TwinBackend, "analytic": AnalyticBackend}
