"""What the environment runs a configuration on for one adaptation interval.

:class:`TwinBackend` advances the twin's discrete-event simulation
(``twin.sim.Simulation``: ``start``/``advance``/``reconfigure``) and measures
the interval with ``twin.criteria.pipeline_metrics`` — the paper's setting,
in simulation. :class:`AnalyticBackend` draws Poisson arrivals from the same
rate curve and scores the interval with the analytic model of
``optimizer.rl.model``; it is ~1000× faster and serves tests and
pre-training. :class:`ChargedBackend` is the analytic one with what the testbed
charges (:mod:`optimizer.rl.charged`: node quotas shared by co-located replicas, the
stage servers' CPU, the host's speed drawn per episode, and changes that take effect
only after their replicas start). All return a :class:`Window`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from optimizer.rl.charged import TestbedCharges, blend, change_seconds, estimate_charged
from optimizer.rl.model import estimate
from optimizer.rl.space import ConfigSpace, Option
from twin.criteria import PipelineMetrics, pipeline_metrics, step_window
from twin.sim import Simulation
from twin.spec import Deployment, Workload
from twin.workload import rate_at


@dataclass(frozen=True)
class Window:
    """One adaptation interval [t0, t1): arrivals per second, the pipeline metrics
    (``twin.criteria.PipelineMetrics``) and per-stage latency (s) and throughput (req/s)."""

    t0: float
    t1: float
    arrivals: np.ndarray
    metrics: PipelineMetrics
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

    def arrivals(self, t0: float, t1: float) -> np.ndarray:
        """Arrivals per second over [t0, t1): Poisson counts on the workload's curve."""
        seconds = range(int(t0), math.ceil(t1))
        return self.rng.poisson([rate_at(self.workload, s) for s in seconds]).astype(float)

    def run(self, deployment: Deployment, options: list[Option], t1: float) -> Window:
        t0 = self.now
        arrivals = self.arrivals(t0, t1)
        est = estimate(self.space, options, float(arrivals.mean()), self.weights, t1 - t0)
        self.now = t1
        return Window(
            t0=t0,
            t1=t1,
            arrivals=arrivals,
            metrics=est.metrics,
            stage_latency_s=np.array([s.latency_s for s in est.stages]),
            stage_throughput_rps=np.array([s.throughput_rps for s in est.stages]),
        )


class TwinBackend:
    """The twin's simulation, advanced one interval at a time.

    Each window is read with ``Simulation.records(since_s=t0)``: only rows
    still unfinished at the interval's start, so reading a cycle window by
    window costs about as much as reading it once.
    """

    def __init__(
        self, space: ConfigSpace, process: str, horizon_s: float, replication: int = 0
    ) -> None:
        self.space, self.process, self.horizon_s = space, process, horizon_s
        self.scenario = space.scenario
        self.replication = replication
        steps = self.scenario.process(process).steps
        # The state is per stage: measure each stage at the first step that runs it.
        self.steps = [next(s.name for s in steps if s.component == st.name) for st in space.stages]

    def reset(self, deployment: Deployment, workload: Workload, seed: int) -> None:
        self.sim = Simulation(
            self.scenario, deployment, workload, self.horizon_s, seed, self.replication
        )
        self.sim.start()

    def run(self, deployment: Deployment, options: list[Option], t1: float) -> Window:
        t0 = self.sim.now
        self.sim.reconfigure(deployment)
        self.sim.advance(t1)
        visits, requests = self.sim.records(since_s=t0)
        mine = requests["process"] == self.process
        arrived = requests["t_arrive"].to_numpy()[mine.to_numpy()]
        arrived = arrived[(arrived >= t0) & (arrived < t1)]
        n = math.ceil(t1 - t0)
        arrivals = np.histogram(arrived, bins=np.linspace(t0, t0 + n, n + 1))[0].astype(float)
        # Rows still running at t1 (NaN t_end) belong to a later window.
        window = visits[(visits["t_end"] < t1) & (visits["process"] == self.process)]
        m = pipeline_metrics(
            window,
            self.scenario,
            deployment,
            self.process,
            t0,
            t1,
            float(arrivals.mean()) if n else 0.0,
        )
        lat, thr = step_window(window, self.steps, t0, t1)
        return Window(
            t0, t1, arrivals, m, stage_latency_s=np.array(lat), stage_throughput_rps=np.array(thr)
        )


class ChargedBackend(AnalyticBackend):
    """Poisson arrivals on the workload's curve, metrics from :func:`estimate_charged`.

    Replicas stay on their machines across decisions (``ConfigSpace.place_near``, as the
    live controller keeps them); each episode's host speed is drawn from the charges'
    range; a decision's first :func:`change_seconds` are served by the configuration
    before it.
    """

    def __init__(
        self,
        space: ConfigSpace,
        process: str,
        horizon_s: float,
        charges: TestbedCharges | None = None,
    ) -> None:
        super().__init__(space, process, horizon_s)
        self.charges = charges or TestbedCharges()

    def reset(self, deployment: Deployment, workload: Workload, seed: int) -> None:
        super().reset(deployment, workload, seed)
        c = self.charges
        self.host_speed = c.host_speed * float(self.rng.uniform(c.slow_min, 1.0))
        self.options: list[Option] = self.space.options_from(deployment)
        stages = {s.name for s in self.space.stages}
        self.placement = {k: dict(v) for k, v in deployment.allocation.items() if k in stages}

    def run(self, deployment: Deployment, options: list[Option], t1: float) -> Window:
        t0 = self.now
        arrivals = self.arrivals(t0, t1)
        load = float(arrivals.mean())
        placement = self.space.place_near(options, self.placement) or self.space.place(options)
        if placement is None:
            raise ValueError(f"configuration {options} does not fit the machines")
        est = estimate_charged(
            self.space,
            options,
            placement,
            load,
            self.weights,
            self.charges,
            self.host_speed,
            t1 - t0,
        )
        metrics = est.metrics
        if self.options != options:
            delay = change_seconds(self.options, options, self.charges, t1 - t0)
            old = estimate_charged(
                self.space,
                self.options,
                self.placement,
                load,
                self.weights,
                self.charges,
                self.host_speed,
                t1 - t0,
            )
            metrics = blend(old.metrics, est.metrics, delay / (t1 - t0), self.weights)
        self.options, self.placement = list(options), placement
        self.now = t1
        return Window(
            t0=t0,
            t1=t1,
            arrivals=arrivals,
            metrics=metrics,
            stage_latency_s=np.array([s.latency_s for s in est.stages]),
            stage_throughput_rps=np.array([s.throughput_rps for s in est.stages]),
        )


BACKENDS = {"twin": TwinBackend, "analytic": AnalyticBackend, "charged": ChargedBackend}
