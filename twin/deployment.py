"""Deployments: the three decision matrices, per-stage config, constraints, repair.

The placement paper's decisions are the K×S allocation matrix (rows K: the
scenario's components in file order, columns S: its machines, server types
expanded by ``count``, in file order), the computation alignment (``parallelism``:
how many instances each process step may be split across, ≤ its
``max_parallel``) and the constant run decision (``always_on``: which
components stay up all the time; the others start on demand). A deployment
is feasible when every machine's CPU and RAM hold the instances placed on it
(keep-alive load of constant-run instances included), every component has at
least one instance, replicas, batch sizes and parallelism are within their
maxima, components that must run all the time do, and each pipeline's
Σ w·f stays within its W_max.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from twin.spec import Component, Deployment, Scenario, StageConfig

EPS = 1e-9


@dataclass(frozen=True)
class Violation:
    """One broken constraint: what, where, and by how much."""

    constraint: str
    subject: str
    excess: float
    message: str


class InfeasibleDeployment(ValueError):
    """A deployment that breaks constraints; the message lists each one."""

    def __init__(self, violations: list[Violation]):
        self.violations = violations
        lines = [f"infeasible deployment ({len(violations)} violated constraint(s)):"]
        lines += [f"  {v.constraint}: {v.message}" for v in violations[:30]]
        if len(violations) > 30:
            lines.append(f"  … and {len(violations) - 30} more")
        super().__init__("\n".join(lines))


def stage_config(deployment: Deployment, component: Component) -> StageConfig:
    """The stage's configuration, defaulting to the first variant and batch 1."""
    return deployment.stages.get(component.name, StageConfig())


@dataclass(frozen=True)
class EffectiveStage:
    """What a stage's replicas really run: every default of the deployment resolved."""

    variant: str  # the variant's name (the component's first when the deployment names none)
    batch: int  # largest batch
    batch_timeout_ms: float  # the stage's own timeout, else the scenario's default


def effective_stage(
    scenario: Scenario, deployment: Deployment, component: Component
) -> EffectiveStage:
    """The stage's effective (variant, batch, batch timeout in ms) under ``deployment``.

    The one place where "the stage's batch timeout, else the scenario's" is
    decided; the twin, the testbed's controller, its exports and the
    calibration all read it from here. A component without model variants
    (not a stage) gets variant ``""`` and batch 1.
    """
    cfg = stage_config(deployment, component)
    timeout_ms = cfg.batch_timeout_ms
    if timeout_ms is None:
        timeout_ms = scenario.settings.batch_timeout_ms
    if not component.is_stage:
        return EffectiveStage("", 1, float(timeout_ms))
    return EffectiveStage(component.variant(cfg.variant).name, cfg.batch, float(timeout_ms))


def is_always_on(component: Component, deployment: Deployment | None = None) -> bool:
    """The constant-run decision for ``component``: the deployment's, else the component's."""
    if component.always_on_required:
        return True
    if deployment is None:
        return component.always_on
    return deployment.always_on.get(component.name, component.always_on)


def instance_demand(
    component: Component, config: StageConfig | None = None, always_on: bool | None = None
) -> tuple[float, float]:
    """CPU (cores) and RAM (GB) one instance reserves on its machine.

    An always-on instance reserves its keep-alive load plus the cores it works
    with; an on-demand one only the latter. A stage's working cores and memory
    are those of its chosen variant (w_n(z)). ``always_on`` is the constant-run
    decision (None: the component's own).
    """
    on = component.always_on if always_on is None else always_on
    keep_cpu = component.keepalive_cpu_cores if on else 0.0
    keep_ram = component.keepalive_ram_gb
    if component.is_stage:
        v = component.variant(config.variant if config else None)
        return keep_cpu + v.cpu_cores, keep_ram + v.ram_gb
    return keep_cpu + component.cpu_cores, keep_ram


def step_ram(scenario: Scenario) -> dict[str, float]:
    """Largest working memory of any step on each component (GB)."""
    out: dict[str, float] = {}
    for p in scenario.processes:
        for s in p.steps:
            out[s.component] = max(out.get(s.component, 0.0), s.ram_gb)
    return out


def demand_vectors(scenario: Scenario, deployment: Deployment) -> tuple[np.ndarray, np.ndarray]:
    """Per-component CPU (cores) and RAM (GB) per instance, in component order."""
    extra_ram = step_ram(scenario)
    cpu, ram = [], []
    for c in scenario.components:
        cfg = deployment.stages.get(c.name) if c.is_stage else None
        ci, ri = instance_demand(c, cfg, is_always_on(c, deployment))
        cpu.append(ci)
        ram.append(ri + extra_ram.get(c.name, 0.0))
    return np.array(cpu), np.array(ram)


def capacity_vectors(scenario: Scenario) -> tuple[np.ndarray, np.ndarray]:
    """Per-machine reservable CPU (cores, after overcommit) and RAM (GB), in machine order."""
    servers = scenario.server_of()
    names = scenario.server_instances()
    overcommit = scenario.settings.cpu_overcommit
    return (
        np.array([servers[n].cpu_cores * overcommit for n in names]),
        np.array([servers[n].ram_gb for n in names]),
    )


def allocation_matrix(scenario: Scenario, deployment: Deployment) -> np.ndarray:
    """The K×S integer matrix of instances; unknown names raise ValueError."""
    comps = [c.name for c in scenario.components]
    machines = scenario.server_instances()
    col = {m: j for j, m in enumerate(machines)}
    row = {c: i for i, c in enumerate(comps)}
    x = np.zeros((len(comps), len(machines)), dtype=np.int64)
    for c, per_machine in deployment.allocation.items():
        if c not in row:
            raise ValueError(
                f"allocation: unknown component {c!r} (components: {', '.join(comps)})"
            )
        for m, n in per_machine.items():
            if m not in col:
                raise ValueError(
                    f"allocation.{c}: unknown machine {m!r} (machines: {', '.join(machines)})"
                )
            x[row[c], col[m]] = n
    return x


def with_matrix(
    scenario: Scenario, matrix: np.ndarray, base: Deployment | None = None
) -> Deployment:
    """A deployment with ``matrix`` as allocation and ``base``'s other settings."""
    comps = [c.name for c in scenario.components]
    machines = scenario.server_instances()
    m = np.asarray(matrix, dtype=np.int64).reshape(len(comps), len(machines))
    allocation = {
        c: {machines[j]: int(m[i, j]) for j in np.flatnonzero(m[i])} for i, c in enumerate(comps)
    }
    if base is None:
        return Deployment(allocation=allocation)
    return base.model_copy(update={"allocation": allocation})


def check(scenario: Scenario, deployment: Deployment) -> list[Violation]:
    """Every constraint the deployment breaks (empty when feasible)."""
    out: list[Violation] = []
    try:
        x = allocation_matrix(scenario, deployment)
    except ValueError as exc:
        return [Violation("names", "allocation", 1.0, str(exc))]
    out += _check_config(scenario, deployment)
    if any(v.constraint == "names" for v in out):
        return out
    out += _check_matrix(scenario, deployment, x)
    return out


def _check_config(scenario: Scenario, deployment: Deployment) -> list[Violation]:
    out: list[Violation] = []
    comps = {c.name: c for c in scenario.components}
    for name, cfg in deployment.stages.items():
        c = comps.get(name)
        if c is None or not c.is_stage:
            stages = ", ".join(n for n, cc in comps.items() if cc.is_stage) or "none"
            out.append(
                Violation("names", name, 1.0, f"stages.{name}: not an inference stage ({stages})")
            )
            continue
        try:
            c.variant(cfg.variant)
        except ValueError as exc:
            out.append(Violation("names", name, 1.0, f"stages.{name}.variant: {exc}"))
        if cfg.batch > c.max_batch:
            out.append(
                Violation(
                    "batch ≤ max_batch",
                    name,
                    cfg.batch - c.max_batch,
                    f"stage {name}: batch {cfg.batch} > max_batch {c.max_batch} "
                    f"(over by {cfg.batch - c.max_batch})",
                )
            )
    for name, on in deployment.always_on.items():
        c = comps.get(name)
        if c is None:
            out.append(
                Violation(
                    "names",
                    name,
                    1.0,
                    f"always_on.{name}: unknown component (components: {', '.join(comps)})",
                )
            )
        elif c.always_on_required and not on:
            out.append(
                Violation(
                    "constant run required",
                    name,
                    1.0,
                    f"always_on.{name}: false, but the component is always_on_required",
                )
            )
    for key, n in deployment.parallelism.items():
        pname, _, sname = key.partition(".")
        try:
            step = scenario.process(pname).step(sname)
        except KeyError:
            out.append(Violation("names", key, 1.0, f"parallelism.{key}: no such process.step"))
            continue
        if n > step.max_parallel:
            out.append(
                Violation(
                    "parallelism ≤ max_parallel",
                    key,
                    n - step.max_parallel,
                    f"step {key}: parallelism {n} > max_parallel {step.max_parallel}",
                )
            )
    return out


def _check_matrix(scenario: Scenario, deployment: Deployment, x: np.ndarray) -> list[Violation]:
    out: list[Violation] = []
    cpu, ram = demand_vectors(scenario, deployment)
    cap_cpu, cap_ram = capacity_vectors(scenario)
    machines = scenario.server_instances()
    use_cpu, use_ram = cpu @ x, ram @ x
    for j, m in enumerate(machines):
        if use_cpu[j] > cap_cpu[j] + EPS:
            over = use_cpu[j] - cap_cpu[j]
            out.append(
                Violation(
                    "server CPU",
                    m,
                    over,
                    f"machine {m}: {use_cpu[j]:g} cores requested > {cap_cpu[j]:g} available "
                    f"(over by {over:g} cores)",
                )
            )
        if use_ram[j] > cap_ram[j] + EPS:
            over = use_ram[j] - cap_ram[j]
            out.append(
                Violation(
                    "server RAM",
                    m,
                    over,
                    f"machine {m}: {use_ram[j]:g} GB requested > {cap_ram[j]:g} GB available "
                    f"(over by {over:g} GB)",
                )
            )
    replicas = x.sum(axis=1)
    for i, c in enumerate(scenario.components):
        if replicas[i] < 1:
            out.append(
                Violation(
                    "≥ 1 instance", c.name, 1.0, f"allocation.{c.name}: no instance on any machine"
                )
            )
        elif replicas[i] > c.max_replicas:
            over = int(replicas[i] - c.max_replicas)
            out.append(
                Violation(
                    "replicas ≤ max_replicas",
                    c.name,
                    over,
                    f"component {c.name}: {replicas[i]} instances > max_replicas "
                    f"{c.max_replicas} (over by {over})",
                )
            )
    index = {c.name: i for i, c in enumerate(scenario.components)}
    for p in scenario.processes:
        if p.resource_budget_cores is None:
            continue
        stages = {s.component for s in p.steps}
        used = 0.0
        for name in stages:
            c = scenario.component(name)
            if c.is_stage:
                w = c.variant(stage_config(deployment, c).variant).cpu_cores
                used += w * replicas[index[name]]
        if used > p.resource_budget_cores + EPS:
            over = used - p.resource_budget_cores
            out.append(
                Violation(
                    "Σ w·f ≤ W_max",
                    p.name,
                    over,
                    f"pipeline {p.name}: Σ w·f = {used:g} cores > W_max "
                    f"{p.resource_budget_cores:g} (over by {over:g})",
                )
            )
    return out


def require_feasible(scenario: Scenario, deployment: Deployment) -> None:
    """Raise InfeasibleDeployment naming every violated constraint."""
    violations = check(scenario, deployment)
    if violations:
        raise InfeasibleDeployment(violations)


def budget_rows(scenario: Scenario, base: Deployment) -> list[tuple[float, np.ndarray]]:
    """Each pipeline's W_max with a per-component weight vector w (0 off the pipeline).

    Σ w·f ≤ W_max is then ``w @ x.sum(axis=1) <= W_max`` for a matrix x.
    """
    out = []
    index = {c.name: i for i, c in enumerate(scenario.components)}
    for p in scenario.processes:
        if p.resource_budget_cores is None:
            continue
        w = np.zeros(len(scenario.components))
        for s in p.steps:
            c = scenario.component(s.component)
            if c.is_stage:
                w[index[c.name]] = c.variant(stage_config(base, c).variant).cpu_cores
        out.append((p.resource_budget_cores, w))
    return out


def is_feasible_matrix(scenario: Scenario, matrix: np.ndarray, base: Deployment) -> bool:
    """Fast check of every matrix constraint under ``base``'s stage configuration.

    Capacity (CPU, RAM), ≥ 1 instance, max replicas and each pipeline's
    Σ w·f ≤ W_max.
    """
    cpu, ram = demand_vectors(scenario, base)
    cap_cpu, cap_ram = capacity_vectors(scenario)
    x = np.asarray(matrix)
    replicas = x.sum(axis=1)
    maxr = np.array([c.max_replicas for c in scenario.components])
    return bool(
        np.all(cpu @ x <= cap_cpu + EPS)
        and np.all(ram @ x <= cap_ram + EPS)
        and np.all(replicas >= 1)
        and np.all(replicas <= maxr)
        and np.all(x >= 0)
        and all(w @ replicas <= cap + EPS for cap, w in budget_rows(scenario, base))
    )


def repair(
    scenario: Scenario, matrix: np.ndarray, base: Deployment, rng: np.random.Generator
) -> np.ndarray:
    """Nearest feasible matrix: clip replicas, shed overload, then give every component one.

    Replicas beyond max_replicas and beyond a pipeline's W_max are dropped
    (W_max: the heaviest stage that has more than one replica first).
    Overloaded machines lose instances of components that have others
    elsewhere first (largest CPU demand first); a component left with none is
    placed on the machine with the most room. Raises ValueError when the
    scenario cannot hold even one instance of everything.
    """
    cpu, ram = demand_vectors(scenario, base)
    cap_cpu, cap_ram = capacity_vectors(scenario)
    x = np.clip(np.asarray(matrix, dtype=np.int64).copy(), 0, None)
    for i, c in enumerate(scenario.components):
        while x[i].sum() > c.max_replicas:
            j = rng.choice(np.flatnonzero(x[i]))
            x[i, j] -= 1
    budgets = budget_rows(scenario, base)
    order = np.argsort(-cpu, kind="stable")
    # Shedding can empty a component and placing it can break a budget again:
    # a few rounds settle every case a feasible scenario allows.
    for _ in range(4):
        _shed_budget(x, budgets, rng)
        _shed_overload(x, cpu, ram, cap_cpu, cap_ram, order)
        _place_missing(scenario, x, cpu, ram, cap_cpu, cap_ram, rng)
        if is_feasible_matrix(scenario, x, base):
            return x
    raise ValueError(
        "cannot repair the allocation: the pipelines' W_max and the machines' "
        "capacity leave no room for one instance of every component"
    )


def _shed_budget(
    x: np.ndarray, budgets: list[tuple[float, np.ndarray]], rng: np.random.Generator
) -> None:
    for cap, w in budgets:
        while w @ x.sum(axis=1) > cap + EPS:
            shrinkable = np.flatnonzero((w > 0) & (x.sum(axis=1) > 1))
            if shrinkable.size == 0:
                return  # one replica each already exceeds W_max: check() reports it
            i = shrinkable[np.argmax(w[shrinkable])]
            x[i, rng.choice(np.flatnonzero(x[i]))] -= 1


def _shed_overload(
    x: np.ndarray,
    cpu: np.ndarray,
    ram: np.ndarray,
    cap_cpu: np.ndarray,
    cap_ram: np.ndarray,
    order: np.ndarray,
) -> None:
    for j in range(x.shape[1]):
        while cpu @ x[:, j] > cap_cpu[j] + EPS or ram @ x[:, j] > cap_ram[j] + EPS:
            placed = [i for i in order if x[i, j] > 0]
            shared = [i for i in placed if x[i].sum() > 1]
            x[(shared or placed)[0], j] -= 1


def _place_missing(
    scenario: Scenario,
    x: np.ndarray,
    cpu: np.ndarray,
    ram: np.ndarray,
    cap_cpu: np.ndarray,
    cap_ram: np.ndarray,
    rng: np.random.Generator,
) -> None:
    for i in range(x.shape[0]):
        if x[i].sum() >= 1:
            continue
        room_cpu = cap_cpu - cpu @ x
        room_ram = cap_ram - ram @ x
        fits = np.flatnonzero((room_cpu >= cpu[i] - EPS) & (room_ram >= ram[i] - EPS))
        if fits.size == 0 and _make_room(x, i, cpu, ram, cap_cpu, cap_ram):
            room_cpu = cap_cpu - cpu @ x
            room_ram = cap_ram - ram @ x
            fits = np.flatnonzero((room_cpu >= cpu[i] - EPS) & (room_ram >= ram[i] - EPS))
        if fits.size == 0:
            name = scenario.components[i].name
            raise ValueError(
                f"cannot place component {name}: no machine has {cpu[i]:g} cores and "
                f"{ram[i]:g} GB free after the others"
            )
        # Spread: prefer the machine with the most free CPU, ties broken at random.
        best = fits[room_cpu[fits] >= room_cpu[fits].max() - EPS]
        x[i, rng.choice(best)] += 1


def _make_room(
    x: np.ndarray,
    i: int,
    cpu: np.ndarray,
    ram: np.ndarray,
    cap_cpu: np.ndarray,
    cap_ram: np.ndarray,
) -> bool:
    """Free one machine for component ``i`` by dropping replicas that have siblings.

    Picks the machine that needs the fewest replicas dropped (largest CPU demand
    first, only of components with an instance elsewhere too); False when no
    machine can be freed that way. Without this, replicas of the others could
    fill every machine a component with no instance left needs.
    """
    order = np.argsort(-cpu, kind="stable")
    best: np.ndarray | None = None
    best_drops = 0
    for j in np.flatnonzero((cap_cpu >= cpu[i] - EPS) & (cap_ram >= ram[i] - EPS)):
        y, drops = x.copy(), 0
        while (
            cap_cpu[j] - cpu @ y[:, j] < cpu[i] - EPS or cap_ram[j] - ram @ y[:, j] < ram[i] - EPS
        ):
            spare = [k for k in order if k != i and y[k, j] > 0 and y[k].sum() > 1]
            if not spare:
                break
            y[spare[0], j] -= 1
            drops += 1
        else:
            if best is None or drops < best_drops:
                best, best_drops = y, drops
    if best is None:
        return False
    x[:] = best
    return True
