"""A configuration's metrics with what the testbed charges: node quotas, server CPU, start time.

The analytic model (:mod:`optimizer.rl.model`) gives every replica a core of its own at
the server's speed. On the testbed the replicas placed on one emulated server share that
server's one CFS quota (``cpu_cores × cpu_speed × factor`` host cores), each stage visit
also costs the stage server's own CPU (HTTP parsing, answer) from that quota, and a
change takes effect only after the replicas it starts are up (about 1–2 s each, one
after another), not at the interval's start. :class:`TestbedCharges` holds those
measured figures, and :func:`estimate_charged` scores a configuration with them, the
way the quota twin (``lab.control_calibrate.quota_twin``) simulates it:

- per node n, the share of its quota in use ρ_n = (Σ over its replicas of λ/f · CPU
  per item + idle) / quota, the CPU per item being the manifest's full-core batch time
  (per item at the effective batch) plus the server's ``per_call_ms``, both at the
  host's speed h;
- the pipeline's capacity K is the load at which the first node reaches ρ 1 (a stage's,
  the least over the nodes that run it);
- a stage's latency is its batch-fill wait, its batch's CPU at the node's quota speed,
  and an M/D/1 wait at the node's ρ (the cap beyond ``RHO_MAX``), as in the analytic
  model.

Q, the objective (eq. 4) and the reward (eq. 7) are computed from these with the same
``twin.criteria.qos``, with one term added: requests answered after the pipeline's
deadline (the deadline the paper's IPA solver holds Σ stage latency to) count as unmet
load, at eq. 3's weight γ of unmet load. Their share is the tail of an exponential
sojourn with the configuration's mean latency plus the per-request overhead outside
the stages (``request_overhead_ms``): P(S > deadline) = exp(−deadline / mean). Without
it eq. 3 *rewards* a configuration that leaves less spare capacity (δ·(K − λ)), so a
model that charges the shared quota would favour crowding a node.

:func:`blend` mixes the old configuration's metrics over the change's duration with
the new one's over the rest of the interval.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass

import numpy as np

from optimizer.rl.model import RHO_MAX, PipelineEstimate, StageEstimate
from optimizer.rl.space import ConfigSpace, Option
from twin.criteria import PipelineMetrics, qos
from twin.spec import QoSWeights


@dataclass(frozen=True)
class TestbedCharges:
    """What a testbed charges a configuration that the policies' view does not.

    ``node_quota_cores``: host cores of one emulated server's CFS quota;
    ``per_call_ms``: a stage server's CPU per stage visit (ms at full core, on that
    quota); ``idle_cores``: a node's CPU with nothing served (agent, scrapes);
    ``host_speed``: model CPU per manifest time (≤ 1 on a busy host), and each training
    episode draws its host's speed uniformly from ``host_speed × [slow_min, 1]``;
    ``start_s``: one replica start (started one after another), ``switch_s``: one
    replica's in-place variant or batch switch (s).
    """

    __test__ = False  # not a pytest class, despite its name

    node_quota_cores: float = 0.5
    per_call_ms: float = 0.49
    idle_cores: float = 0.03
    host_speed: float = 0.97
    slow_min: float = 0.75
    start_s: float = 1.5
    switch_s: float = 0.11
    request_overhead_ms: float = 6.0

    def __post_init__(self) -> None:
        bad = {
            k: v
            for k, v in asdict(self).items()
            if not (v >= 0) or (k in ("node_quota_cores", "host_speed") and not v > 0)
        }
        if bad or not 0 < self.slow_min <= 1:
            raise ValueError(
                f"testbed charges: need node_quota_cores, host_speed > 0, the rest ≥ 0 and "
                f"0 < slow_min ≤ 1, got {asdict(self)}"
            )

    def key(self) -> str:
        """A stable text of the charges (part of a policy's cache key)."""
        return json.dumps(asdict(self), sort_keys=True)


def _stage_cpu_ms(stage, option: Option, b_eff: int, per_call_ms: float, h: float) -> float:  # type: ignore[no-untyped-def]
    """Host CPU (ms) of one batch of ``b_eff`` items of ``stage`` under ``option``."""
    st = stage.variants[option.variant].service_time
    return (st.batch_mean_ms(b_eff) + per_call_ms * b_eff) / h


def estimate_charged(
    space: ConfigSpace,
    options: list[Option],
    placement: dict[str, dict[str, int]],
    load_rps: float,
    weights: QoSWeights,
    charges: TestbedCharges,
    host_speed: float | None = None,
    interval_s: float = 10.0,
) -> PipelineEstimate:
    """Predicted metrics of ``options`` placed as ``placement`` (stage → machine → replicas)
    at ``load_rps``, with the node quotas and server CPU of ``charges`` (see module doc);
    ``host_speed`` overrides ``charges.host_speed``."""
    h = charges.host_speed if host_speed is None else host_speed
    quota = charges.node_quota_cores
    timeout_s = space.scenario.settings.batch_timeout_ms / 1e3
    lam = max(load_rps, 1e-9)
    per_stage = []
    node_rate: dict[str, float] = {}  # CPU cores per req/s of pipeline load, per node
    for s, o in zip(space.stages, options, strict=True):
        per_replica = lam / o.replicas
        b = o.batch
        fill_s = min(timeout_s, (b - 1) / per_replica) if b > 1 else 0.0
        b_eff = int(min(b, max(1.0, 1.0 + per_replica * fill_s)))
        cpu_eff = _stage_cpu_ms(s, o, b_eff, charges.per_call_ms, h)
        cpu_full = _stage_cpu_ms(s, o, b, charges.per_call_ms, h)
        nodes = placement.get(s.name, {})
        for m, n in nodes.items():
            # each replica gets 1/f of the stage's items, at cpu_eff / b_eff per item
            node_rate[m] = node_rate.get(m, 0.0) + n / o.replicas * cpu_eff / b_eff / 1e3
        per_stage.append((s, o, fill_s, cpu_eff, cpu_full, nodes))
    idle = charges.idle_cores
    rho = {m: (lam * r + idle) / quota for m, r in node_rate.items()}
    node_cap = {m: max(quota - idle, 0.0) / r for m, r in node_rate.items() if r > 0}
    speed = min(1.0, quota)  # a single-threaded replica runs at most one core
    stages = []
    for _s, _o, fill_s, cpu_eff, cpu_full, nodes in per_stage:
        cap = min((node_cap.get(m, float("inf")) for m in nodes), default=0.0)
        worst = max((rho.get(m, 0.0) for m in nodes), default=1.0)
        t_eff, t_full = cpu_eff / 1e3 / speed, cpu_full / 1e3 / speed
        if worst < RHO_MAX:
            wait = worst / (2.0 * (1.0 - worst)) * t_full
            latency = min(fill_s / 2.0 + t_eff + wait, interval_s)
        else:
            latency = interval_s
        stages.append(StageEstimate(cap, latency, min(load_rps, cap)))
    V = sum(s.variants[o.variant].accuracy for s, o in zip(space.stages, options, strict=True))
    C = sum(s.cost(o) for s, o in zip(space.stages, options, strict=True))
    B = max(o.batch for o in options)
    K = min(e.capacity_rps for e in stages)
    T = min(load_rps, K)
    L = sum(e.latency_s for e in stages)
    E = load_rps - K
    late = T * late_share(L + charges.request_overhead_ms / 1e3, space.deadline_s)
    Q = qos(V, T, L, E, weights) - weights.gamma * late
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
    return PipelineEstimate(metrics, tuple(stages))


def late_share(mean_s: float, deadline_s: float) -> float:
    """Share of requests over ``deadline_s`` when sojourns are exponential with mean
    ``mean_s`` (s); 0 without a deadline."""
    if not np.isfinite(deadline_s) or mean_s <= 0:
        return 0.0
    return float(np.exp(-deadline_s / mean_s))


def change_seconds(
    old: list[Option], new: list[Option], charges: TestbedCharges, interval_s: float
) -> float:
    """How long (s) the change from ``old`` to ``new`` takes on the testbed: every replica
    of a stage whose variant or batch changes switches in place, one after another, then
    the replicas it gains start one at a time (``lab.control_twin.change_steps``' order);
    at most the interval."""
    total = 0.0
    for a, b in zip(old, new, strict=True):
        if (a.variant, a.batch) != (b.variant, b.batch):
            total += charges.switch_s * min(a.replicas, b.replicas)
        total += charges.start_s * max(b.replicas - a.replicas, 0)
    return min(total, interval_s)


def blend(
    before: PipelineMetrics, after: PipelineMetrics, share_before: float, weights: QoSWeights
) -> PipelineMetrics:
    """An interval's metrics when ``before`` served its first ``share_before`` (0–1) and
    ``after`` the rest: T, L, E, V and Q time-weighted; the cost C and batch B are the
    new configuration's (what was decided and is billed)."""
    w = min(max(share_before, 0.0), 1.0)

    def mix(x: float, y: float) -> float:
        return w * x + (1.0 - w) * y

    Q = mix(before.Q, after.Q)
    return PipelineMetrics.scored(
        V=mix(before.V, after.V),
        C=after.C,
        T=mix(before.T, after.T),
        L=mix(before.L, after.L),
        E=mix(before.E, after.E),
        B=after.B,
        Q=Q,
        weights=weights,
        offered_rps=after.offered_rps,
        capacity_rps=mix(before.capacity_rps, after.capacity_rps),
    )


# how the charged expert scores a configuration's host speed (``ChargedExpert.host``)
EXPERT_HOSTS = ("true", "prior")
# midpoints of the training draw's range the "prior" expert averages over: 3 keep the
# expert's cost at 3 scores per configuration (it dominates training time)
PRIOR_POINTS = 3


def prior_speeds(charges: TestbedCharges, points: int = PRIOR_POINTS) -> list[float]:
    """The host speeds a policy must expect: ``points`` midpoints of equal slices of the
    range training draws each episode's speed from, ``host_speed × [slow_min, 1]``."""
    lo = charges.slow_min
    return [charges.host_speed * (lo + (1.0 - lo) * (i + 0.5) / points) for i in range(points)]


class ChargedExpert:
    """The best configuration for the coming interval in the charged model: the expert of
    a policy trained on :class:`optimizer.rl.backends.ChargedBackend`.

    The IPA-style solver (CP-SAT) cannot see node quotas shared across stages, so this
    is a local search: from the solver's answer for the view and from the running
    configuration, change one stage's option at a time (all of its options) while the
    interval's reward (eq. 7, what the agent maximises) improves, scored as the backend
    scores it — placed next to the running replicas, the change's seconds served by the
    running configuration. Answers are cached by (load rounded to ``cache_rps``, running
    configuration, and with ``host="true"`` the host speed).

    ``host``: the host speed a configuration is scored at. ``"true"``: the episode's own
    draw — the perfect-foresight optimum's. ``"prior"``: the mean score over the range
    training draws from (:data:`PRIOR_POINTS` midpoints of ``host_speed × [slow_min,
    1]``), what a policy can know: its observation does not show the host's speed (a
    stage's latency enters as a share of the 10-s interval, 0.001 at the speeds that
    matter). An expert that scores at the true speed teaches, at the same observation,
    e-large ×1 on a fast host and e-medium ×1 on a slow one; the policy cannot tell them
    apart and learns the risky one at fluctuating's troughs (session 8: caught at the
    next rise in 9–11 of 120 intervals). Scored over the prior, the expert's choice is
    the best the policy could make without that knowledge.
    """

    name = "charged-expert"

    def __init__(
        self,
        backend,  # type: ignore[no-untyped-def]
        interval_s: float = 10.0,
        cache_rps: float = 1.0,
        target: str = "reward",
        host: str = "true",
    ) -> None:
        """``target``: the interval's metric maximised, ``reward`` (eq. 7, the agent's) or
        ``objective`` (eq. 4, a perfect-foresight optimum's); ``host``: ``true`` or
        ``prior`` (see the class doc)."""
        from optimizer.rl.baselines import IPAPolicy

        if target not in ("reward", "objective"):
            raise ValueError(f"target: reward or objective, got {target!r}")
        if host not in EXPERT_HOSTS:
            raise ValueError(f"host: {' or '.join(EXPERT_HOSTS)}, got {host!r}")
        self.backend, self.interval_s, self.cache_rps = backend, interval_s, cache_rps
        self.target, self.host = target, host
        self.solver = IPAPolicy(interval_s=interval_s, cache_rps=0.5, target="reward")
        self._cache: dict = {}

    def score(self, space: ConfigSpace, options: list[Option], load_rps: float, weights) -> float:  # type: ignore[no-untyped-def]
        """The interval's reward (or ``target``) of ``options`` at ``load_rps`` as the
        backend scores it."""
        b = self.backend
        placement = space.place_near(options, b.placement) or space.place(options)
        if placement is None or space.cores(options) > space.budget + 1e-9:
            return -np.inf
        speeds = [b.host_speed] if self.host == "true" else prior_speeds(b.charges)
        change = options != b.options
        delay = change_seconds(b.options, options, b.charges, self.interval_s) if change else 0.0
        out = []
        for h in speeds:
            args = (load_rps, weights, b.charges, h, self.interval_s)
            m = estimate_charged(space, options, placement, *args).metrics
            if change:
                old = estimate_charged(space, b.options, b.placement, *args).metrics
                m = blend(old, m, delay / self.interval_s, weights)
            out.append(float(getattr(m, self.target)))
        return float(np.mean(out))

    def exhaustive(
        self, space: ConfigSpace, load_rps: float, weights
    ) -> tuple[list[Option], float]:  # type: ignore[no-untyped-def]
        """The best configuration over the whole space (every stage's every option, about
        3.7e5 for three stages of 72: ≈ 30 s) and its score: how close :meth:`decide`'s
        local search comes, on a sample."""
        best, best_v = list(self.backend.options), -np.inf
        for combo in itertools.product(*(space.options_of(k) for k in range(space.n_stages))):
            cand = list(combo)
            if space.cores(cand) > space.budget + 1e-9:
                continue
            v = self.score(space, cand, load_rps, weights)
            if v > best_v:
                best, best_v = cand, v
        return best, best_v

    def decide(self, space: ConfigSpace, load_rps: float, weights) -> list[Option]:  # type: ignore[no-untyped-def]
        b = self.backend
        # the host's speed to 0.02: the episodes' draws then share answers (over the
        # prior the answer does not depend on the episode's draw)
        speed = round(b.host_speed / 0.02) if self.host == "true" else None
        key = (round(load_rps / self.cache_rps), tuple(b.options), speed)
        if key not in self._cache:
            starts = [self.solver.decide(space, load_rps, weights), list(b.options)]
            best, best_v = starts[0], -np.inf
            for start in starts:
                cur, v = self._climb(space, list(start), load_rps, weights)
                if v > best_v:
                    best, best_v = cur, v
            self._cache[key] = best
        return list(self._cache[key])

    def _climb(self, space: ConfigSpace, cur: list[Option], load_rps: float, weights):  # type: ignore[no-untyped-def]
        v = self.score(space, cur, load_rps, weights)
        improved = True
        while improved:
            improved = False
            for k in range(space.n_stages):
                for o in space.options_of(k):
                    if o == cur[k]:
                        continue
                    cand = [*cur[:k], o, *cur[k + 1 :]]
                    cv = self.score(space, cand, load_rps, weights)
                    if cv > v + 1e-9:
                        cur, v, improved = cand, cv, True
        return cur, v
