"""The configuration space of a request pipeline: options per stage, placement, masks.

A stage's *option* is one (variant, replicas, batch) triple; a pipeline
configuration is one option per stage. Options are numbered
``(variant · n_replicas + (replicas − 1)) · n_batches + batch_index`` so a
policy picks one integer per stage. Decisions are made stage by stage
(autoregressively): the mask of stage k allows exactly the options for which
the stages already chosen, this option and the cheapest option of every later
stage still fit the pipeline budget Σ w·f ≤ W_max and the machines. Every
option it allows therefore leaves at least one allowed option for each later
stage, and a completed configuration is always feasible — a per-dimension
mask over all stages at once could not guarantee that, because the budget
couples the stages.

Replicas are placed on machines by a deterministic worst-fit packer (largest
instance first, onto the machine with the most free cores), so the same
configuration always gives the same ``twin.spec.Deployment``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from twin.criteria import stage_components
from twin.deployment import EPS, capacity_vectors, instance_demand
from twin.spec import Component, Deployment, Scenario, StageConfig, Variant

DEFAULT_BATCHES = (1, 2, 4, 8, 16, 32)


@dataclass(frozen=True)
class Option:
    """One stage configuration: variant index, replicas f and batch b."""

    variant: int
    replicas: int
    batch: int


@dataclass(frozen=True)
class StageSpace:
    """The options of one stage."""

    component: Component
    replicas: tuple[int, ...]
    batches: tuple[int, ...]

    @property
    def name(self) -> str:
        return self.component.name

    @property
    def variants(self) -> list[Variant]:
        return self.component.variants

    @property
    def size(self) -> int:
        return len(self.variants) * len(self.replicas) * len(self.batches)

    def option(self, index: int) -> Option:
        """Decode an option number (raises IndexError outside the stage's range)."""
        if not 0 <= index < self.size:
            raise IndexError(f"stage {self.name}: option {index} outside 0..{self.size - 1}")
        nb, nf = len(self.batches), len(self.replicas)
        bi = index % nb
        fi = (index // nb) % nf
        vi = index // (nb * nf)
        return Option(vi, self.replicas[fi], self.batches[bi])

    def index(self, option: Option) -> int:
        """Encode an option; ValueError when its replicas or batch are not offered."""
        try:
            fi = self.replicas.index(option.replicas)
            bi = self.batches.index(option.batch)
        except ValueError:
            raise ValueError(
                f"stage {self.name}: {option} not in replicas {self.replicas} / "
                f"batches {self.batches}"
            ) from None
        return (option.variant * len(self.replicas) + fi) * len(self.batches) + bi

    def cores(self, option: Option) -> float:
        """Σ w·f of this stage under ``option`` (cores)."""
        return self.variants[option.variant].cpu_cores * option.replicas

    def cost(self, option: Option) -> float:
        """C of this stage: f · c (the variant's cost per replica)."""
        return self.variants[option.variant].replica_cost * option.replicas


class ConfigSpace:
    """Options, encoding, placement and exact masks of one request pipeline.

    ``base`` supplies the allocation of non-stage components (their instances
    occupy machine capacity) and the load-balancing setting.
    """

    def __init__(
        self,
        scenario: Scenario,
        process: str,
        base: Deployment | None = None,
        max_replicas: int = 4,
        batches: tuple[int, ...] = DEFAULT_BATCHES,
    ) -> None:
        self.scenario = scenario
        self.process = process
        proc = scenario.process(process)
        if proc.kind != "request":
            raise ValueError(f"process {process!r} is not a request pipeline (kind: {proc.kind})")
        names = stage_components(scenario, process)
        if not names:
            raise ValueError(f"pipeline {process!r} has no inference stage (no variants)")
        self.budget = proc.resource_budget_cores or float("inf")
        self.deadline_s = proc.deadline_s or float("inf")  # end-to-end SLA (s)
        stages = []
        for n in names:
            c = scenario.component(n)
            reps = tuple(range(1, min(max_replicas, c.max_replicas) + 1))
            bs = tuple(b for b in batches if b <= c.max_batch) or (1,)
            stages.append(StageSpace(c, reps, bs))
        self.stages: list[StageSpace] = stages
        self.base = base or Deployment(allocation={})
        self.machines = scenario.server_instances()
        cap_cpu, cap_ram = capacity_vectors(scenario)
        used_cpu = np.zeros(len(self.machines))
        used_ram = np.zeros(len(self.machines))
        col = {m: j for j, m in enumerate(self.machines)}
        self.fixed: dict[str, dict[str, int]] = {}
        stage_names = set(names)
        for c in scenario.components:
            if c.name in stage_names:
                continue
            per = self.base.allocation.get(c.name, {})
            cfg = self.base.stages.get(c.name) if c.is_stage else None
            cpu, ram = instance_demand(c, cfg)
            for m, k in per.items():
                used_cpu[col[m]] += cpu * k
                used_ram[col[m]] += ram * k
            if per:
                self.fixed[c.name] = dict(per)
        self.free_cpu = cap_cpu - used_cpu
        self.free_ram = cap_ram - used_ram
        self._free_cpu_list = [float(x) for x in self.free_cpu]
        self._free_ram_list = [float(x) for x in self.free_ram]
        self._alone: dict[tuple[int, Option], bool] = {}
        self._masks: dict[tuple[Option, ...], np.ndarray] = {}
        # The cheapest option of each stage (fewest cores): what later stages need at least.
        self._min_option = [
            min(
                (s.option(i) for i in range(s.size)),
                key=lambda o, s=s: (s.cores(o), s.variants[o.variant].ram_gb, o.batch),
            )
            for s in stages
        ]

    # -- shape ---------------------------------------------------------------------------------
    @property
    def n_stages(self) -> int:
        return len(self.stages)

    @property
    def n_actions(self) -> int:
        """Size of the per-stage Discrete action (the largest stage's option count)."""
        return max(s.size for s in self.stages)

    def decode(self, actions: list[int] | np.ndarray) -> list[Option]:
        """One option per stage from one option number per stage."""
        if len(actions) != self.n_stages:
            raise ValueError(f"need {self.n_stages} options, got {len(actions)}")
        return [s.option(int(a)) for s, a in zip(self.stages, actions, strict=True)]

    def encode(self, options: list[Option]) -> list[int]:
        """Option numbers of a configuration."""
        return [s.index(o) for s, o in zip(self.stages, options, strict=True)]

    # -- feasibility ---------------------------------------------------------------------------
    def cores(self, options: list[Option]) -> float:
        """Σ w·f over the stages given (cores)."""
        return sum(s.cores(o) for s, o in zip(self.stages, options, strict=False))

    def place(self, options: list[Option]) -> dict[str, dict[str, int]] | None:
        """Replicas of the given stages on machines (worst fit), or None if they do not fit.

        ``options`` may cover only the first stages; the rest are not placed.
        """
        items = []
        for s, o in zip(self.stages, options, strict=False):
            cpu, ram = instance_demand(
                s.component, StageConfig(variant=s.variants[o.variant].name, batch=o.batch)
            )
            items += [(cpu, ram, s.name)] * o.replicas
        # Plain floats: a handful of machines, called for every option of every mask.
        free_cpu, free_ram = self._free_cpu_list[:], self._free_ram_list[:]
        return self._worst_fit(items, free_cpu, free_ram, {})

    def place_near(
        self, options: list[Option], keep: dict[str, dict[str, int]]
    ) -> dict[str, dict[str, int]] | None:
        """Like :meth:`place`, but replicas stay on the machines ``keep`` has them on
        where they still fit; only the rest are packed worst-fit. A live system then
        starts only the replicas it gains instead of moving others (each start costs
        seconds of CPU). None when they do not fit."""
        free_cpu, free_ram = self._free_cpu_list[:], self._free_ram_list[:]
        col = {m: j for j, m in enumerate(self.machines)}
        out: dict[str, dict[str, int]] = {}
        rest = []
        for s, o in zip(self.stages, options, strict=True):
            cpu, ram = instance_demand(
                s.component, StageConfig(variant=s.variants[o.variant].name, batch=o.batch)
            )
            left = o.replicas
            for m, n in sorted(keep.get(s.name, {}).items()):
                j = col.get(m)
                while j is not None and n > 0 and left > 0:
                    if free_cpu[j] < cpu - EPS or free_ram[j] < ram - EPS:
                        break
                    free_cpu[j] -= cpu
                    free_ram[j] -= ram
                    out.setdefault(s.name, {})[m] = out.get(s.name, {}).get(m, 0) + 1
                    n, left = n - 1, left - 1
            rest += [(cpu, ram, s.name)] * left
        return self._worst_fit(rest, free_cpu, free_ram, out)

    def _worst_fit(
        self,
        items: list[tuple[float, float, str]],
        free_cpu: list[float],
        free_ram: list[float],
        out: dict[str, dict[str, int]],
    ) -> dict[str, dict[str, int]] | None:
        """Pack ``items`` (cores, GiB, stage) largest first, each on the machine with the
        most free CPU that holds it, into ``out`` (and the free lists, in place). None when
        one does not fit."""
        items.sort(key=lambda it: -it[0])
        for cpu, ram, name in items:
            best, room = -1, -1.0
            for j, (fc, fr) in enumerate(zip(free_cpu, free_ram, strict=True)):
                if fc >= cpu - EPS and fr >= ram - EPS and fc > room:
                    best, room = j, fc
            if best < 0:
                return None
            free_cpu[best] -= cpu
            free_ram[best] -= ram
            per = out.setdefault(name, {})
            per[self.machines[best]] = per.get(self.machines[best], 0) + 1
        return out

    def fits(self, options: list[Option]) -> bool:
        """True when the (possibly partial) configuration plus the cheapest option of
        every later stage keeps Σ w·f ≤ W_max and packs onto the machines."""
        full = list(options) + self._min_option[len(options) :]
        if self.cores(full) > self.budget + EPS:
            return False
        return self.place(full) is not None

    def alone_fits(self, stage: int, option: Option) -> bool:
        """True when ``option`` fits with the cheapest option at every other stage."""
        key = (stage, option)
        ok = self._alone.get(key)
        if ok is None:
            full = list(self._min_option)
            full[stage] = option
            ok = self.cores(full) <= self.budget + EPS and self.place(full) is not None
            self._alone[key] = ok
        return ok

    def stage_mask(self, chosen: list[Option]) -> np.ndarray:
        """Allowed option numbers (length ``n_actions``) for the next stage after ``chosen``."""
        key = tuple(chosen)
        mask = self._masks.get(key)
        if mask is None:
            mask = self._stage_mask(list(chosen))
            if len(self._masks) < 200_000:  # bounded: a mask is n_actions bytes
                self._masks[key] = mask
        return mask.copy()

    def _stage_mask(self, chosen: list[Option]) -> np.ndarray:
        k = len(chosen)
        if k >= self.n_stages:
            raise ValueError("every stage already has an option")
        s = self.stages[k]
        mask = np.zeros(self.n_actions, dtype=bool)
        used = self.cores(chosen) + sum(
            s2.cores(o)
            for s2, o in zip(self.stages[k + 1 :], self._min_option[k + 1 :], strict=True)
        )
        for i in range(s.size):
            o = s.option(i)
            if used + s.cores(o) > self.budget + EPS:
                continue
            mask[i] = self.place([*chosen, o, *self._min_option[k + 1 :]]) is not None
        return mask

    def options_of(self, stage: int) -> list[Option]:
        """Every option of one stage, in option-number order."""
        s = self.stages[stage]
        return [s.option(i) for i in range(s.size)]

    # -- deployments ---------------------------------------------------------------------------
    def deployment(
        self, options: list[Option], name: str = "rl", keep: Deployment | None = None
    ) -> Deployment:
        """The twin deployment of a complete configuration; ValueError if it does not fit.

        ``keep``: the running deployment, whose replicas stay where they are when they
        still fit (:meth:`place_near`).
        """
        if len(options) != self.n_stages:
            raise ValueError(f"need {self.n_stages} options, got {len(options)}")
        placed = None
        if keep is not None:
            placed = self.place_near(options, keep.allocation)
        placed = placed or self.place(options)
        if placed is None or self.cores(options) > self.budget + EPS:
            raise ValueError(f"configuration {options} does not fit the machines or W_max")
        stages = dict(self.base.stages)
        for s, o in zip(self.stages, options, strict=True):
            old = self.base.stages.get(s.name)
            stages[s.name] = StageConfig(
                variant=s.variants[o.variant].name,
                batch=o.batch,
                batch_timeout_ms=old.batch_timeout_ms if old else None,
            )
        return self.base.model_copy(
            update={"name": name, "allocation": {**self.fixed, **placed}, "stages": stages}
        )

    def options_from(self, deployment: Deployment) -> list[Option]:
        """The configuration a deployment sets (replicas clipped to the offered range)."""
        out = []
        for s in self.stages:
            cfg = deployment.stages.get(s.name, StageConfig())
            names = [v.name for v in s.variants]
            vi = names.index(cfg.variant) if cfg.variant in names else 0
            f = min(max(deployment.instances(s.name), s.replicas[0]), s.replicas[-1])
            b = max((x for x in s.batches if x <= cfg.batch), default=s.batches[0])
            out.append(Option(vi, f, b))
        return out
