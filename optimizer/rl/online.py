"""Online control of a running testbed (issue 7, item 6).

Every second the controller scrapes the gateway's Prometheus metrics
(``gateway_requests_total`` by code, ``gateway_inflight`` and the per-stage
round-trip histogram ``gateway_stage_seconds``); every adaptation interval
it turns the last interval into the pipeline state the twin's environment
uses (offered load, per-stage latency and throughput, the LSTM's predicted
peak), lets a policy decide, and applies the new configuration through
``apply`` (the CLI passes ``mlops-twin testbed apply``). QoS and cost of each
interval are measured as in the twin: V, C, B from the configuration, T the
completed requests per second, L the sum of per-stage mean round trips, E the
offered load minus the configuration's capacity, Q by eq. 3.

Clock, sleep, scrape and apply are injected, so the loop is tested without
servers and without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from prometheus_client.parser import text_string_to_metric_families

from optimizer.rl.agent import GuidedMaskablePPO, act
from optimizer.rl.backends import Window
from optimizer.rl.baselines import Policy
from optimizer.rl.env import PipelineEnv
from optimizer.rl.predictor import HISTORY_S
from optimizer.rl.space import ConfigSpace, Option
from twin.criteria import PipelineMetrics, pipeline_capacity_rps, pipeline_config_terms, qos
from twin.spec import Deployment


@dataclass(frozen=True)
class GatewaySample:
    """Counters of one scrape: requests by outcome, in flight, per-stage round trips."""

    answered: float
    ok: float
    inflight: float
    stage_count: dict[str, float] = field(default_factory=dict)
    stage_sum_s: dict[str, float] = field(default_factory=dict)

    @property
    def arrived(self) -> float:
        """Requests that reached the gateway so far (answered or still in flight)."""
        return self.answered + self.inflight


def parse_gateway(text: str) -> GatewaySample:
    """A :class:`GatewaySample` from the gateway's ``/metrics`` text."""
    answered = ok = inflight = 0.0
    count: dict[str, float] = {}
    total: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "gateway_requests_total":
                answered += s.value
                if s.labels.get("code") == "200":
                    ok += s.value
            elif s.name == "gateway_inflight":
                inflight = s.value
            elif s.name == "gateway_stage_seconds_count":
                count[s.labels["stage"]] = s.value
            elif s.name == "gateway_stage_seconds_sum":
                total[s.labels["stage"]] = s.value
    return GatewaySample(answered, ok, inflight, count, total)


class OnlineController:
    """Scrape every second, decide and apply every ``interval_s``; one row per interval."""

    def __init__(
        self,
        env: PipelineEnv,
        decider: GuidedMaskablePPO | Policy,
        scrape: Callable[[], str],
        apply: Callable[[Deployment], list[dict] | None],
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        initial: list[Option] | None = None,
        capacity_factor: float = 1.0,
    ) -> None:
        self.env, self.decider = env, decider
        self.scrape, self.apply, self.clock, self.sleep = scrape, apply, clock, sleep
        self.space = env.space
        self.current = initial or env.current
        self.deployed = self.space.deployment(self.current)  # what the testbed runs
        self.rows: list[dict] = []
        self.changes: list[dict] = []  # what each apply changed: t_s, kind, stage, seconds
        self.started_unix = 0.0  # wall clock (s since the epoch) of t_s = 0
        # The testbed runs servers at a fraction of their cores; the modelled capacity too.
        self.capacity_factor = capacity_factor

    def run(self, duration_s: float) -> pd.DataFrame:
        env, interval = self.env, self.env.interval_s
        start = self.clock()
        self.started_unix = time.time()
        prev = parse_gateway(self.scrape())
        window_start = prev
        arrivals: list[float] = []
        history = np.asarray(env.history, dtype=float)
        tick = 1
        t0 = 0.0
        while tick <= int(duration_s):
            self.sleep(max(0.0, start + tick - self.clock()))
            now = parse_gateway(self.scrape())
            arrivals.append(max(now.arrived - prev.arrived, 0.0))
            prev = now
            if tick % int(interval) == 0:
                w = self._window(t0, float(tick), np.array(arrivals), window_start, now)
                history = np.concatenate([history, w.arrivals])[-HISTORY_S:]
                self._decide(w, history, float(tick))
                window_start, arrivals, t0 = now, [], float(tick)
            tick += 1
        return pd.DataFrame(self.rows)

    def _window(
        self, t0: float, t1: float, arrivals: np.ndarray, a: GatewaySample, b: GatewaySample
    ) -> Window:
        sp, w = self.space, self.env.weights
        span = t1 - t0
        dep = sp.deployment(self.current)
        V, C, B = pipeline_config_terms(sp.scenario, dep, self.env.process)
        lat, thr = [], []
        for s in sp.stages:
            n = b.stage_count.get(s.name, 0.0) - a.stage_count.get(s.name, 0.0)
            total = b.stage_sum_s.get(s.name, 0.0) - a.stage_sum_s.get(s.name, 0.0)
            lat.append(total / n if n > 0 else span)  # nothing got through: the whole window
            thr.append(n / span)
        T = (b.ok - a.ok) / span
        L = float(sum(lat))
        offered = float(arrivals.mean()) if len(arrivals) else 0.0
        capacity = pipeline_capacity_rps(sp.scenario, dep, self.env.process) * self.capacity_factor
        E = offered - capacity
        Q = qos(V, T, L, E, w)
        m = PipelineMetrics.scored(
            V=V,
            C=C,
            T=T,
            L=L,
            E=E,
            B=B,
            Q=Q,
            weights=w,
            offered_rps=offered,
            capacity_rps=capacity,
        )
        return Window(
            t0=t0,
            t1=t1,
            arrivals=arrivals,
            metrics=m,
            stage_latency_s=np.array(lat),
            stage_throughput_rps=np.array(thr),
        )

    def _decide(self, w: Window, history: np.ndarray, t: float) -> None:
        chosen, decision_ms = decide(
            self.env, self.decider, self.current, w, history, t, self.space.n_stages
        )
        applied_s = 0.0
        if chosen != self.current:
            started = time.perf_counter()
            dep = self.space.deployment(chosen, name=f"rl-t{int(t)}", keep=self.deployed)
            changes = self.apply(dep) or []
            self.deployed = dep
            applied_s = time.perf_counter() - started
            self.changes += [{"t_s": t, **c} for c in changes]
        self.rows.append(
            {
                "t_s": w.t0,
                "predicted_rps": self.env.predicted,
                **w.metrics.as_dict(),
                "decision_ms": decision_ms,
                "apply_s": applied_s,
                "config": describe(self.space, self.current),
            }
        )
        self.current = chosen


def describe(space: ConfigSpace, options: list[Option]) -> str:
    """A configuration in one line: ``variant×replicas/bBatch`` per stage."""
    return " ".join(
        f"{s.variants[o.variant].name}×{o.replicas}/b{o.batch}"
        for s, o in zip(space.stages, options, strict=True)
    )


def decide(
    env: PipelineEnv,
    decider: GuidedMaskablePPO | Policy,
    current: list[Option],
    window: Window,
    history: np.ndarray,
    t: float,
    n_stages: int,
) -> tuple[list[Option], float]:
    """The decider's configuration for the next interval, from the last ``window`` and
    the load ``history`` (req/s per second), and the decision's wall time (ms).

    The environment is put in the state the window describes (what the twin's
    environment would hold at time ``t``), so PPO sees the observation it was
    trained on; the baselines see the space and the predicted peak load.
    """
    env.history, env.t, env.last, env.current = history, t, window, current
    env.predicted = env.predict_load()
    started = time.perf_counter()
    if isinstance(decider, GuidedMaskablePPO):
        chosen: list[Option] = []
        for k in range(n_stages):
            env.k, env.pending = k, chosen
            a = act(decider, env.observation(), env.action_masks())
            chosen = [*chosen, env.space.stages[k].option(a)]
        env.k, env.pending = 0, []
    else:
        chosen = decider.decide(env.space, env.predicted, env.weights)
    return chosen, (time.perf_counter() - started) * 1e3
