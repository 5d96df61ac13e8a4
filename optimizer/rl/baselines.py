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
- :class:`IPAPolicy` maximises the predicted reward Q − β'C − γ'B
  (``optimizer.rl.model``) under the budget with OR-Tools CP-SAT, the
  resource-aware IPA variant of the paper; :func:`exhaustive` enumerates the
  same problem for small pipelines (tests check both agree).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from optimizer.rl.model import estimate, mean_speed, stage_estimate
from optimizer.rl.space import ConfigSpace, Option
from twin.spec import QoSWeights

OBJECTIVE_SCALE = 1e5  # CP-SAT needs integers: objective units of 1e-5
RATE_SCALE = 100.0  # capacities in units of 0.01 req/s


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
    """Exact maximiser of the predicted reward under the budget (OR-Tools CP-SAT).

    ``cache_rps > 0`` rounds the load to that resolution and reuses earlier
    answers (for the expert during training, where the same loads recur);
    0 solves every decision afresh (evaluation, decision-time measurements).
    """

    interval_s: float = 10.0
    time_limit_s: float = 10.0
    cache_rps: float = 0.0
    name: str = "ipa"
    last_status: str = ""
    _cache: dict = field(default_factory=dict, repr=False)

    def decide(self, space: ConfigSpace, load_rps: float, weights: QoSWeights) -> list[Option]:
        if self.cache_rps <= 0:
            return self._solve(space, load_rps, weights)
        key = (id(space), round(load_rps / self.cache_rps))
        if key not in self._cache:
            self._cache[key] = self._solve(space, key[1] * self.cache_rps, weights)
        return list(self._cache[key])

    def _solve(self, space: ConfigSpace, load_rps: float, weights: QoSWeights) -> list[Option]:
        from ortools.sat.python import cp_model

        m = cp_model.CpModel()
        S, R = OBJECTIVE_SCALE, RATE_SCALE
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
                value -= weights.reward_cost * s.cost(o)
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
            - round(weights.reward_batch * S) * batch_max
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
    space: ConfigSpace, load_rps: float, weights: QoSWeights, interval_s: float = 10.0
) -> tuple[list[Option], float]:
    """Best feasible configuration by enumeration, and its predicted reward (small spaces)."""
    best, best_r = None, -np.inf
    for combo in itertools.product(*(space.options_of(k) for k in range(space.n_stages))):
        opts = list(combo)
        if space.cores(opts) > space.budget + 1e-9 or space.place(opts) is None:
            continue
        r = estimate(space, opts, load_rps, weights, interval_s).reward
        if r > best_r:
            best, best_r = opts, r
    if best is None:
        raise ValueError("no feasible configuration")
    return best, float(best_r)


POLICIES = {"random": RandomPolicy, "greedy": GreedyPolicy, "ipa": IPAPolicy}
