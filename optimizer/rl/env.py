"""The gymnasium environment: configure a request pipeline every adaptation interval.

One *decision* per interval (10 s of simulated time by default) over a cycle
(1200 s), as in the paper. A decision sets every stage's (variant, replicas,
batch); it is taken stage by stage — one environment step per stage, with
the exact mask of ``ConfigSpace.stage_mask`` — and the twin runs the
interval after the last stage's step, which alone carries the reward
r = Q − β'C − γ'B (eq. 7) of that interval, divided by ``reward_scale``.

Observation (all scaled to about [0, 1]):

- node: free share of the budget W_max under the current configuration,
  the last interval's load and the predicted peak load of the next 20 s
  (both / ``load_scale_rps``), the position in the cycle;
- per stage (eq. 5): variant index, replicas, batch, cost, measured latency
  and throughput of the last interval, and the capacity of its configuration;
- the decision in progress: which stage is being decided (one-hot) and the
  options chosen so far for the earlier stages.

``expert_every = f > 0`` marks every f-th episode as an expert episode:
:meth:`expert_action` then returns the choice of the exact solver of the
agent's own reward (CP-SAT, ``IPAPolicy(target="reward")``), which the agent
(``optimizer.rl.agent``) executes and learns from instead of its own.

``reward_cost`` sets the reward's cost weight β' (eq. 7), the operator's
choice; eq. 4's λ, which the IPA-style baseline maximises with, is kept.
``charges`` are the testbed's figures for the ``charged`` backend
(:class:`optimizer.rl.charged.TestbedCharges`; None: its defaults); ``expert_host``
the host speed its expert scores at (``ChargedExpert.host``: the episode's ``true``
one, or the ``prior`` the policy must expect).
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from optimizer.rl.backends import BACKENDS, ChargedBackend, Window
from optimizer.rl.baselines import IPAPolicy, Policy
from optimizer.rl.charged import ChargedExpert, TestbedCharges
from optimizer.rl.model import estimate, with_reward_cost
from optimizer.rl.predictor import HISTORY_S, HORIZON_S, LoadPredictor
from optimizer.rl.space import ConfigSpace, Option
from twin.spec import Deployment, Scenario, Workload
from twin.workload import rate_at

NODE_FEATURES = 4
STAGE_FEATURES = 7


class PipelineEnv(gym.Env):
    """Online configuration of one request pipeline of a scenario, in the twin."""

    metadata = {"render_modes": []}  # noqa: RUF012 - gymnasium's convention

    def __init__(
        self,
        scenario: Scenario,
        process: str,
        workloads: list[Workload],
        *,
        backend: str = "twin",
        predictor: LoadPredictor | None = None,
        interval_s: float = 10.0,
        cycle_s: float = 1200.0,
        load_scale_rps: float = 100.0,
        reward_scale: float = 10.0,
        expert_every: int = 0,
        expert: Policy | None = None,
        base: Deployment | None = None,
        max_replicas: int = 4,
        batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32),
        reward_cost: float | None = None,
        charges: TestbedCharges | None = None,
        expert_host: str = "true",
    ) -> None:
        super().__init__()
        if not workloads:
            raise ValueError("give at least one workload")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
        if cycle_s < interval_s or interval_s <= 0:
            raise ValueError(f"need 0 < interval_s ≤ cycle_s, got {interval_s}, {cycle_s}")
        # β' of the reward (eq. 7) is the operator's choice; the twin then scores with it too.
        scenario = with_reward_cost(scenario, reward_cost)
        self.scenario, self.process, self.workloads = scenario, process, list(workloads)
        self.space = ConfigSpace(scenario, process, base, max_replicas, batches)
        self.weights = scenario.settings.qos
        self.predictor = predictor
        self.interval_s, self.cycle_s = interval_s, cycle_s
        self.decisions = math.ceil(cycle_s / interval_s)
        self.load_scale, self.reward_scale = load_scale_rps, reward_scale
        self.expert_every = expert_every
        # The expert solves the agent's own reward (β', γ'), not the IPA baseline's eq. 4.
        self.expert = expert or IPAPolicy(interval_s=interval_s, cache_rps=0.5, target="reward")
        self.backend_name = backend
        if backend == "charged":
            self.backend = ChargedBackend(self.space, process, cycle_s, charges)
            # the CP-SAT expert solves the view's model; this one the charged model
            if expert is None:
                self.expert = ChargedExpert(self.backend, interval_s, host=expert_host)
        else:
            self.backend = BACKENDS[backend](self.space, process, cycle_s)
        n = self.space.n_stages
        size = NODE_FEATURES + n * STAGE_FEATURES + n + 3 * n
        self.observation_space = spaces.Box(-1.0, 10.0, shape=(size,), dtype=np.float32)
        self.action_space = spaces.Discrete(self.space.n_actions)
        self._max_cost = [
            max(s.cost(o) for o in self.space.options_of(k))
            for k, s in enumerate(self.space.stages)
        ]
        self.episode = 0
        self.projected = 0  # masked actions moved to an allowed option
        self.workload: Workload = self.workloads[0]

    # -- gymnasium API ------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.episode += 1
        options = options or {}
        if "workload" in options:
            name = options["workload"]
            self.workload = next(w for w in self.workloads if w.name == name)
        else:
            self.workload = self.workloads[int(self.np_random.integers(len(self.workloads)))]
        start = float(rate_at(self.workload, 0.0))
        self.history = np.full(HISTORY_S, start)
        self.t = 0.0
        self.k = 0
        self.pending: list[Option] = []
        self.predicted = self._predict()
        # Start from the solver's configuration for the initial load: a sane cluster state.
        init = options.get("initial")
        self.current: list[Option] = init or IPAPolicy(interval_s=self.interval_s).decide(
            self.space, self.predicted, self.weights
        )
        self.deployment = self.space.deployment(self.current)
        sim_seed = int(self.np_random.integers(1 << 31))
        self.backend.reset(self.deployment, self.workload, sim_seed)
        self.last: Window | None = None
        self._expert_plan: list[Option] | None = None
        return self._obs(), {"workload": self.workload.name}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        mask = self.action_masks()
        a = int(action)
        if not (0 <= a < len(mask) and mask[a]):
            # Agents that honour the masks never get here; anything else (a random
            # action of gymnasium's checker, a hand-written policy) is moved to the
            # nearest allowed option so the configuration stays feasible.
            a = self._nearest_allowed(a, mask)
            self.projected += 1
        self.pending.append(self.space.stages[self.k].option(a))
        self.k += 1
        if self.k < self.space.n_stages:
            return self._obs(), 0.0, False, False, {}
        return self._finish_decision()

    def _nearest_allowed(self, a: int, mask: np.ndarray) -> int:
        s = self.space.stages[self.k]
        want = s.option(min(a, s.size - 1))
        allowed = np.flatnonzero(mask)

        def distance(i: int) -> tuple[int, int]:
            o = s.option(int(i))
            db = abs(s.batches.index(o.batch) - s.batches.index(want.batch))
            return abs(o.variant - want.variant) + abs(o.replicas - want.replicas) + db, int(i)

        return int(min(allowed, key=distance))

    def action_masks(self) -> np.ndarray:
        """Options allowed for the stage being decided (sb3-contrib's MaskablePPO reads this)."""
        return self.space.stage_mask(self.pending)

    # -- decisions ----------------------------------------------------------------------------
    def _finish_decision(self) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.current, self.pending, self.k = self.pending, [], 0
        self._expert_plan = None
        self.deployment = self.space.deployment(self.current, name=f"t{int(self.t)}")
        t1 = min(self.t + self.interval_s, self.cycle_s)
        w = self.backend.run(self.deployment, self.current, t1)
        self.last = w
        m = w.metrics
        self.history = np.concatenate([self.history, w.arrivals])[-HISTORY_S:]
        self.t = t1
        self.predicted = self._predict()
        truncated = self.t >= self.cycle_s - 1e-9
        info = {
            "t_s": w.t0,
            "predicted_rps": self.predicted,
            **m.as_dict(),
            "workload": self.workload.name,
            "decision_done": True,
        }
        return self._obs(), float(m.reward / self.reward_scale), False, truncated, info

    def predict_load(self) -> float:
        """Predicted peak load (req/s) of the next 20 s from the load history."""
        return self._predict()

    def _predict(self) -> float:
        if self.predictor is None:
            return float(self.history[-HORIZON_S:].max())
        return self.predictor.predict(self.history)

    def context(self) -> tuple[ConfigSpace, float]:
        """What a baseline decides from: the space and the predicted load (req/s)."""
        return self.space, self.predicted

    def is_expert_episode(self) -> bool:
        return self.expert_every > 0 and self.episode % self.expert_every == 0

    def expert_action(self) -> int | None:
        """The expert's option for the stage being decided in an expert episode, else None."""
        if not self.is_expert_episode():
            return None
        if self._expert_plan is None or self.k == 0:
            self._expert_plan = self.expert.decide(self.space, self.predicted, self.weights)
        return self.space.stages[self.k].index(self._expert_plan[self.k])

    # -- observation --------------------------------------------------------------------------
    def observation(self) -> np.ndarray:
        """The observation of the current state (what ``step`` and ``reset`` return)."""
        return self._obs()

    def _obs(self) -> np.ndarray:
        sp, L = self.space, self.load_scale
        n = sp.n_stages
        used = sp.cores(self.current)
        budget = sp.budget if math.isfinite(sp.budget) else max(used, 1.0)
        last_load = float(self.history[-int(self.interval_s) :].mean())
        node = [1.0 - used / budget, last_load / L, self.predicted / L, self.t / self.cycle_s]
        est = estimate(sp, self.current, max(last_load, 1e-6), self.weights, self.interval_s)
        stage = []
        for k, (s, o) in enumerate(zip(sp.stages, self.current, strict=True)):
            lat = self.last.stage_latency_s[k] if self.last else est.stages[k].latency_s
            thr = self.last.stage_throughput_rps[k] if self.last else est.stages[k].throughput_rps
            stage += [
                o.variant / max(len(s.variants) - 1, 1),
                o.replicas / s.replicas[-1],
                math.log2(o.batch) / max(math.log2(s.batches[-1]), 1.0),
                s.cost(o) / self._max_cost[k],
                min(lat, self.interval_s) / self.interval_s,
                thr / L,
                min(est.stages[k].capacity_rps / L, 10.0),
            ]
        which = [1.0 if i == self.k else 0.0 for i in range(n)]
        chosen = []
        for i in range(n):
            if i < len(self.pending):
                o, s = self.pending[i], sp.stages[i]
                chosen += [
                    (o.variant + 1) / len(s.variants),
                    o.replicas / s.replicas[-1],
                    math.log2(o.batch) / max(math.log2(s.batches[-1]), 1.0),
                ]
            else:
                chosen += [0.0, 0.0, 0.0]
        obs = np.array(node + stage + which + chosen, dtype=np.float32)
        return np.clip(obs, self.observation_space.low, self.observation_space.high)
