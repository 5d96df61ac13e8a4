"""An analytic model of a configuration under a given load: what the baselines optimise.

Per stage with option (variant z, replicas f, batch b) and offered rate λ
(req/s): capacity K = f · s · b / t(b) (the twin's ``stage_capacity_rps``
with mean machine speed s), latency l = batch-fill wait + t(b_eff)/s +
an M/D/1 queueing wait at utilisation ρ = λ/K (capped at the adaptation
interval when ρ → 1). Pipeline terms follow the paper: V = Σ v, C = Σ f·c,
T = min(λ, min K), L = Σ l, E = λ − min K, B = max b, Q by eq. 3
(``twin.criteria.qos``), objective Q − λ_c·C (eq. 4) and reward
Q − β'C − γ'B (eq. 7), held in the twin's own ``PipelineMetrics``.
Greedy, the IPA-style solver and the analytic training backend all use
these numbers, so they optimise the same thing the twin measures, only
predicted instead of simulated.

The weights are the scenario's ``settings.qos``; :func:`with_reward_cost`
gives the agent a reward cost weight β' of its own (the operator's
choice: eq. 7's β is separate from eq. 4's λ, which the IPA-style solver
keeps).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from optimizer.rl.space import ConfigSpace, Option, StageSpace
from twin.criteria import PipelineMetrics, qos
from twin.spec import QoSWeights, Scenario

RHO_MAX = 0.98  # beyond this utilisation the M/D/1 wait is replaced by the cap


@dataclass(frozen=True)
class StageEstimate:
    capacity_rps: float
    latency_s: float
    throughput_rps: float


@dataclass(frozen=True)
class PipelineEstimate:
    """Predicted pipeline metrics (the twin's type) and the per-stage estimates behind them."""

    metrics: PipelineMetrics
    stages: tuple[StageEstimate, ...]


def with_reward_cost(scenario: Scenario, reward_cost: float | None) -> Scenario:
    """The scenario with the reward's cost weight β' (eq. 7) replaced; None keeps it."""
    if reward_cost is None:
        return scenario
    if reward_cost < 0:
        raise ValueError(f"reward cost weight must be ≥ 0, got {reward_cost}")
    qos_w = scenario.settings.qos.model_copy(update={"reward_cost": float(reward_cost)})
    settings = scenario.settings.model_copy(update={"qos": qos_w})
    return scenario.model_copy(update={"settings": settings})


def mean_speed(space: ConfigSpace) -> float:
    """Mean cpu_speed over the scenario's machines (service times are divided by it)."""
    servers = space.scenario.server_of()
    return float(np.mean([servers[m].cpu_speed for m in space.machines]))


def stage_estimate(
    stage: StageSpace,
    option: Option,
    load_rps: float,
    speed: float,
    timeout_s: float,
    cap_latency_s: float,
) -> StageEstimate:
    """Capacity (req/s), mean latency (s) and throughput (req/s) of one stage at ``load_rps``."""
    st = stage.variants[option.variant].service_time
    over = stage.component.server_overhead

    def batch_s(n: int) -> float:
        # The stage server's own CPU shares the stage's core (as in the twin's capacity).
        ms = st.batch_mean_ms(n)
        if over is not None:
            ms += over.per_call_ms + over.per_item_ms * n
        return ms / 1e3 / speed

    f, b = option.replicas, option.batch
    t_full = batch_s(b)
    capacity = f * b / t_full
    per_replica = max(load_rps, 1e-9) / f
    # Batches fill until b items or the timeout; at low load they leave partly full.
    fill_s = min(timeout_s, (b - 1) / per_replica) if b > 1 else 0.0
    b_eff = int(min(b, max(1.0, 1.0 + per_replica * fill_s)))
    t_eff = batch_s(b_eff)
    rho = load_rps / capacity
    if rho < RHO_MAX:
        wait = rho / (2.0 * (1.0 - rho)) * t_full
        latency = min(fill_s / 2.0 + t_eff + wait, cap_latency_s)
    else:
        latency = cap_latency_s
    return StageEstimate(capacity, latency, min(load_rps, capacity))


def estimate(
    space: ConfigSpace,
    options: list[Option],
    load_rps: float,
    weights: QoSWeights,
    interval_s: float = 10.0,
) -> PipelineEstimate:
    """Predicted pipeline metrics of a configuration at ``load_rps``."""
    speed = mean_speed(space)
    timeout_s = space.scenario.settings.batch_timeout_ms / 1e3
    stages = tuple(
        stage_estimate(s, o, load_rps, speed, timeout_s, interval_s)
        for s, o in zip(space.stages, options, strict=True)
    )
    V = sum(s.variants[o.variant].accuracy for s, o in zip(space.stages, options, strict=True))
    C = sum(s.cost(o) for s, o in zip(space.stages, options, strict=True))
    B = max(o.batch for o in options)
    K = min(e.capacity_rps for e in stages)
    T = min(load_rps, K)
    L = sum(e.latency_s for e in stages)
    E = load_rps - K
    Q = qos(V, T, L, E, weights)
    metrics = PipelineMetrics.scored(
        V=V,
        C=C,
        T=T,
        L=L,
        E=E,
        B=B,
        Q=Q,
        weights=weights,
        offered_rps=load_rps,
        capacity_rps=K,
    )
    return PipelineEstimate(metrics, stages)
