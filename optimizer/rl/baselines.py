"""Baseline configuration policies: Random, Greedy and an IPA-style exact solver.

Each takes the configuration space, the predicted load (req/s) and the QoS
weights and returns one option per stage; every returned configuration is
feasible (Σ w·f ≤ W_max and it packs onto the machines).

- :class:`RandomPolicy` picks, stage by stage, a uniformly random option among
  those the exact mask allows.
- :class:`GreedyPolicy` takes the cheapest configuration whose every stage
  meets the predicted load (cost is separable, so per stage the cheapest
  sufficient option); where none fits, the allowed option with the most
  capacity.
- :class:`IPAPolicy` maximises, under the budget and with OR-Tools CP-SAT,
  the predicted objective Q − λC of eq. 4 (``target="objective"``: the
  IPA-style baseline, the resource-aware IPA variant of the paper) or the
  agent's reward Q − β'C − γ'B of eq. 7 (``target="reward"``: the expert
  that guides PPO's training); :func:`exhaustive` enumerates the same
  problems for small pipelines (tests check both agree).
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from optimizer.rl.model import PipelineEstimate, estimate, mean_speed, stage_estimate
from optimizer.rl.space import ConfigSpace, Option
from twin.spec import QoSWeights

OBJECTIVE_SCALE = 1e5  # CP-SAT needs integers: objective units of 1e-5
RATE_SCALE = 100.0  # capacities in units of 0.01 req/s
TARGETS = ("objective", "reward", "ipa-paper")


def cost_batch_weights(weights: QoSWeights, target: str) -> tuple[float, float]:
    """Cost and batch weights: eq. 4 (λ, 0), eq. 7 (β', γ'), IPA's own (λ, γ' per Σ b)."""
    if target == "objective":
        return weights.lambda_cost, 0.0
    if target in ("reward", "ipa-paper"):
        return weights.reward_cost, weights.reward_batch
    raise ValueError(f"unknown target {target!r} (known: {', '.join(TARGETS)})")


def target_value(
    est: PipelineEstimate,
    target: str,
    options: list[Option] | None = None,
    space: ConfigSpace | None = None,
    weights: QoSWeights | None = None,
) -> float:
    """The estimate's eq. 4 objective, eq. 7 reward, or IPA's own objective.

    IPA's own (Ghafouri et al., the paper's [13]) is α·V − λ·C − γ'·Σ b, and
    −inf where a stage cannot carry the load or Σ l exceeds the deadline;
    it needs ``options``, ``space`` and ``weights``.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r} (known: {', '.join(TARGETS)})")
    if target == "objective":
        return est.metrics.objective
    if target == "reward":
        return est.metrics.reward
    assert options is not None and space is not None and weights is not None
    if min(e.capacity_rps for e in est.stages) < est.metrics.offered_rps:
        return -np.inf
    if space.deadline_s < est.metrics.L:  # over the SLA
        return -np.inf
    m = est.metrics
    return (
        weights.alpha * m.V
        - weights.lambda_cost * m.C
        - weights.reward_batch * sum(o.batch for o in options)
    )


class Policy(Protocol):
    name: str

    def decide(self, space: ConfigSpace, load_rps: float, weights: QoSWeights) -> list[Option]:
        """One option per stage for the coming interval at predicted load ``load_rps``."""
        ...


@dataclass
class RandomPolicy:
    """Uniform over the options the exact masks allow, stage by stage."""

    seed: int = 0
    name: str = "random"
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def decide(self, space: ConfigSpace, load_rps: float, weights: QoSWeights) -> list[Option]:
        chosen: list[Option] = []
        for k in range(space.n_stages):
            allowed = np.flatnonzero(space.stage_mask(chosen))
            chosen.append(space.stages[k].option(int(self.rng.choice(allowed))))
        return chosen


def _stage_table(
    space: ConfigSpace, k: int, load_rps: float, interval_s: float
) -> list[tuple[Option, float, float]]:
    """(option, capacity req/s, latency s) of every option of stage k at ``load_rps``."""
    speed = mean_speed(space)
    timeout_s = space.scenario.settings.batch_timeout_ms / 1e3
    s = space.stages[k]
    out = []
    for o in space.options_of(k):
        e = stage_estimate(s, o, load_rps, speed, timeout_s, interval_s)
        out.append((o, e.capacity_rps, e.latency_s))
    return out


@dataclass
class GreedyPolicy:
    """Cheapest configuration that fits and meets the predicted load."""

    headroom: float = 1.0
    interval_s: float = 10.0
    name: str = "greedy"

    def decide(self, space: ConfigSpace, load_rps: float, weights: QoSWeights) -> list[Option]:
        need = load_rps * self.headroom
        chosen: list[Option] = []
        for k in range(space.n_stages):
            mask = space.stage_mask(chosen)
            rows = _stage_table(space, k, load_rps, self.interval_s)
            table = [row for i, row in enumerate(rows) if mask[i]]
            s = space.stages[k]
            enough = [row for row in table if row[1] >= need]
            if enough:
                # Ties in cost: the lower latency, then the smaller batch.
                best = min(enough, key=lambda r: (s.cost(r[0]), r[2], r[0].batch))
            else:
                best = max(table, key=lambda r: (r[1], -s.cost(r[0])))
            chosen.append(best[0])
        return chosen


@dataclass
class IPAPolicy:
    """Exact maximiser of eq. 4's Q − λC (or eq. 7's reward) under the budget (CP-SAT).

    ``cache_rps > 0`` rounds the load to that resolution and reuses earlier
    answers (for the expert during training, where the same loads recur);
    0 solves every decision afresh (evaluation, decision-time measurements).
    """

    interval_s: float = 10.0
    time_limit_s: float = 10.0
    cache_rps: float = 0.0
    target: str = "objective"
    name: str = "ipa"
    last_status: str = ""
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"unknown target {self.target!r} (known: {', '.join(TARGETS)})")

    def decide(self, space: ConfigSpace, load_rps: float, weights: QoSWeights) -> list[Option]:
        if self.cache_rps <= 0:
            return self._solve(space, load_rps, weights)
        key = (id(space), round(load_rps / self.cache_rps))
        if key not in self._cache:
            self._cache[key] = self._solve(space, key[1] * self.cache_rps, weights)
        return list(self._cache[key])

    def _solve(self, space: ConfigSpace, load_rps: float, weights: QoSWeights) -> list[Option]:
        if self.target == "ipa-paper":
            return self._solve_ipa_paper(space, load_rps, weights)
        from ortools.sat.python import cp_model

        m = cp_model.CpModel()
        S, R = OBJECTIVE_SCALE, RATE_SCALE
        cost_w, batch_w = cost_batch_weights(weights, self.target)
        load = round(load_rps * R)
        budget = round(space.budget * 1000) if np.isfinite(space.budget) else None
        xs: list[list[tuple[cp_model.IntVar, Option]]] = []
        caps, batches, cores, terms = [], [], [], []
        for k, s in enumerate(space.stages):
            row = []
            for o, cap, lat in _stage_table(space, k, load_rps, self.interval_s):
                if not space.alone_fits(k, o):
                    continue  # this option alone already breaks the budget or the machines
                x = m.new_bool_var(f"x{k}_{len(row)}")
                row.append((x, o))
                v = s.variants[o.variant]
                value = weights.alpha * v.accuracy - weights.latency_weight * lat
                value -= cost_w * s.cost(o)
                terms.append(round(value * S) * x)
                caps.append((k, round(min(cap, 1e7) * R), x))
                batches.append((k, o.batch, x))
                cores.append(round(s.cores(o) * 1000) * x)
            m.add_exactly_one(x for x, _ in row)
            xs.append(row)
        if budget is not None:
            m.add(sum(cores) <= budget)
        cap_max = max(c for _, c, _ in caps)
        stage_caps = [sum(c * x for kk, c, x in caps if kk == k) for k in range(space.n_stages)]
        # K = min over stages of capacity: K ≤ every stage's, and K ≥ the one stage
        # marked as the bottleneck (a big-M link; CP-SAT's lin_max stalls its presolve here).
        cap_min = m.new_int_var(0, cap_max, "K")
        bottleneck = [m.new_bool_var(f"y{k}") for k in range(space.n_stages)]
        m.add_exactly_one(bottleneck)
        for cap_k, y in zip(stage_caps, bottleneck, strict=True):
            m.add(cap_min <= cap_k)
            m.add(cap_min >= cap_k - cap_max * (1 - y))
        thr = m.new_int_var(0, load, "T")
        m.add(thr <= cap_min)
        over = m.new_int_var(0, load, "unmet")  # E⁺ = max(load − cap_min, 0)
        spare = m.new_int_var(0, cap_max, "spare")  # E⁻ = max(cap_min − load, 0)
        m.add(over >= load - cap_min)
        m.add(spare >= cap_min - load)
        # batch_max ≥ every batch; its penalty makes it the largest one.
        batch_max = m.new_int_var(1, max(b for _, b, _ in batches), "B")
        for k in range(space.n_stages):
            m.add(batch_max >= sum(b * x for kk, b, x in batches if kk == k))
        rate_coef = S / R
        m.maximize(
            sum(terms)
            + round(weights.beta * rate_coef) * thr
            - round(weights.gamma * rate_coef) * over
            - round(weights.delta * rate_coef) * spare
            - round(batch_w * S) * batch_max
        )
        solver = cp_model.CpSolver()
        solver.parameters.num_workers = 1  # deterministic, and the machine is shared
        solver.parameters.max_time_in_seconds = self.time_limit_s
        status = solver.solve(m)
        self.last_status = solver.status_name(status)
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            raise RuntimeError(f"CP-SAT found no configuration ({self.last_status})")
        chosen = [next(o for x, o in row if solver.boolean_value(x)) for row in xs]
        if space.place(chosen) is None:
            # Σ w·f fits but the machines do not: take the best packable one stage by stage.
            return _repair(space, chosen)
        return chosen

    def _eq4(self, space: ConfigSpace, load_rps: float, weights: QoSWeights) -> list[Option]:
        return IPAPolicy(self.interval_s, self.time_limit_s)._solve(space, load_rps, weights)

    def _solve_ipa_paper(
        self, space: ConfigSpace, load_rps: float, weights: QoSWeights
    ) -> list[Option]:
        """IPA's own integer program ([13]), with the budget the paper adds.

        Maximise α·Σ v − λ·Σ f·c − γ'·Σ b subject to every stage's capacity
        ≥ the predicted load, Σ stage latency ≤ the pipeline's deadline and
        Σ w·f ≤ W_max. Throughput, latency and excess load are constraints
        here, not terms of Q. When no configuration meets them (the load is
        beyond the budget), the eq. 4 optimum is returned instead.
        """
        from ortools.sat.python import cp_model

        m = cp_model.CpModel()
        S = OBJECTIVE_SCALE
        xs: list[list[tuple[cp_model.IntVar, Option]]] = []
        cores, lats, terms = [], [], []
        for k, s in enumerate(space.stages):
            row = []
            for o, cap, lat in _stage_table(space, k, load_rps, self.interval_s):
                if cap < load_rps or not space.alone_fits(k, o):
                    continue
                x = m.new_bool_var(f"x{k}_{len(row)}")
                row.append((x, o))
                value = weights.alpha * s.variants[o.variant].accuracy
                value -= weights.lambda_cost * s.cost(o) + weights.reward_batch * o.batch
                terms.append(round(value * S) * x)
                cores.append(round(s.cores(o) * 1000) * x)
                lats.append(round(lat * 1e6) * x)
            if not row:
                return IPAPolicy(self.interval_s, self.time_limit_s)._solve(
                    space, load_rps, weights
                )
            m.add_exactly_one(x for x, _ in row)
            xs.append(row)
        if np.isfinite(space.budget):
            m.add(sum(cores) <= round(space.budget * 1000))
        if np.isfinite(space.deadline_s):
            m.add(sum(lats) <= round(space.deadline_s * 1e6))
        m.maximize(sum(terms))
        solver = cp_model.CpSolver()
        solver.parameters.num_workers = 1
        solver.parameters.max_time_in_seconds = self.time_limit_s
        status = solver.solve(m)
        self.last_status = solver.status_name(status)
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return self._eq4(space, load_rps, weights)
        chosen = [next(o for x, o in row if solver.boolean_value(x)) for row in xs]
        return chosen if space.place(chosen) is not None else _repair(space, chosen)


def _repair(space: ConfigSpace, options: list[Option]) -> list[Option]:
    chosen: list[Option] = []
    for k, want in enumerate(options):
        mask = space.stage_mask(chosen)
        s = space.stages[k]
        i = s.index(want)
        if not mask[i]:
            allowed = np.flatnonzero(mask)
            i = int(min(allowed, key=lambda a: abs(s.cores(s.option(int(a))) - s.cores(want))))
        chosen.append(s.option(i))
    return chosen


def exhaustive(
    space: ConfigSpace,
    load_rps: float,
    weights: QoSWeights,
    interval_s: float = 10.0,
    target: str = "objective",
) -> tuple[list[Option], float]:
    """Best feasible configuration by enumeration and its predicted objective or reward."""
    best, best_r = None, -np.inf
    for combo in itertools.product(*(space.options_of(k) for k in range(space.n_stages))):
        opts = list(combo)
        if space.cores(opts) > space.budget + 1e-9 or space.place(opts) is None:
            continue
        est = estimate(space, opts, load_rps, weights, interval_s)
        r = target_value(est, target, opts, space, weights)
        if r > best_r:
            best, best_r = opts, r
    if best is None:
        raise ValueError("no feasible configuration")
    return best, float(best_r)


POLICIES = {
    "random": RandomPolicy,
    "greedy": GreedyPolicy,
    "ipa": IPAPolicy,
    # IPA's own objective ([13]: accuracy − cost − batch, load and SLA as constraints).
    "ipa-paper": functools.partial(IPAPolicy, target="ipa-paper", name="ipa-paper"),
}
