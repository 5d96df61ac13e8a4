"""Criteria and metrics as pure functions over record tables.

The same functions score the twin and the testbed: both produce a *requests*
table (one row per process execution: ``process, pid, t_arrive, t_end,
deadline_s``) and a *visits* table (one row per instance visit, see
``twin.sim.VISIT_COLUMNS``). Times are seconds.

Placement criteria (all minimised), per the MLOps-optimizer concept:
``time_mean_s`` expected process execution time, ``time_var_s2`` its
variance, ``overruns`` expected number of deadline overruns over the horizon,
``cost`` the total cost of executing the processes (the paper's criterion,
:func:`execution_cost`: constant-run instances pay for the whole horizon,
on-demand ones while they run) or, with ``settings.cost_criterion: rental``,
the rental of every machine used over the horizon (:func:`deployment_cost`).

Pipeline metrics, per the inference-pipeline paper: V (Σ accuracy), C
(Σ f·c), T (throughput, req/s, minimum over stages), L (latency, s, Σ over
stages), E (offered load minus capacity, req/s), Q (eq. 3), the objective
Q − λC (eq. 4) and the reward Q − β'C − γ'B (eq. 7).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats

from twin.deployment import allocation_matrix, demand_vectors, is_always_on, stage_config
from twin.spec import Deployment, QoSWeights, Scenario

CRITERIA = ("time_mean_s", "time_var_s2", "overruns", "cost")


# --------------------------------------------------------------------------- requests


def durations(requests: pd.DataFrame, end_s: float) -> pd.Series:
    """Execution time of each request (s); unfinished ones are censored at ``end_s``."""
    t_end = requests["t_end"].fillna(end_s)
    return (t_end - requests["t_arrive"]).clip(lower=0.0)


def deployment_cost(scenario: Scenario, deployment: Deployment, horizon_s: float) -> float:
    """Rental of every machine that hosts at least one instance, over the horizon."""
    servers = scenario.server_of()
    used = {m for per in deployment.allocation.values() for m, n in per.items() if n > 0}
    # Sorted: summing in set order would make the last bit of the cost depend
    # on the process's string-hash seed (Dask workers differ).
    return sum(servers[m].price_per_hour for m in sorted(used) if m in servers) * horizon_s / 3600.0


def busy_from_visits(scenario: Scenario, visits: pd.DataFrame) -> np.ndarray:
    """Seconds each component's instances ran per machine (K×S), from a visit table.

    An instance runs from the start of a visit (start-up of an on-demand
    instance included) to its end; overlapping visits of one instance (a
    batch, parallel work) count once. Visits without an end are skipped.
    """
    comps = [c.name for c in scenario.components]
    machines = scenario.server_instances()
    out = np.zeros((len(comps), len(machines)))
    if visits is None or visits.empty:
        return out
    v = visits.dropna(subset=["t_start", "t_end"])
    row, col = {c: i for i, c in enumerate(comps)}, {m: j for j, m in enumerate(machines)}
    for (comp, machine, _), g in v.groupby(["component", "machine", "replica"], observed=True):
        if str(comp) not in row or str(machine) not in col:
            continue
        out[row[str(comp)], col[str(machine)]] += _union_s(
            g["t_start"].to_numpy(float), g["t_end"].to_numpy(float)
        )
    return out


def _union_s(start: np.ndarray, end: np.ndarray) -> float:
    """Total length of the union of intervals [start, end]."""
    if start.size == 0:
        return 0.0
    order = np.argsort(start, kind="stable")
    start, end = start[order], end[order]
    total, cur_s, cur_e = 0.0, float(start[0]), float(end[0])
    for a, b in zip(start[1:], end[1:], strict=True):
        if a > cur_e:
            total += max(cur_e - cur_s, 0.0)
            cur_s, cur_e = float(a), float(b)
        else:
            cur_e = max(cur_e, float(b))
    return total + max(cur_e - cur_s, 0.0)


def instance_price_per_s(scenario: Scenario, deployment: Deployment) -> np.ndarray:
    """What one instance of component k costs per second on machine s (K×S).

    The machine's price per hour times the instance's share of the machine:
    the larger of its reserved CPU and RAM shares (what it keeps others from
    using), so a machine full of instances costs its full price.
    """
    cpu, ram = demand_vectors(scenario, deployment)
    servers = scenario.server_of()
    names = scenario.server_instances()
    cores = np.array([servers[m].cpu_cores for m in names])
    ram_gb = np.array([servers[m].ram_gb for m in names])
    price = np.array([servers[m].price_per_hour for m in names]) / 3600.0
    share = np.maximum(cpu[:, None] / cores[None, :], ram[:, None] / ram_gb[None, :])
    return share * price[None, :]


def execution_cost(
    scenario: Scenario,
    deployment: Deployment,
    horizon_s: float,
    on_demand_busy_s: np.ndarray | None,
) -> float:
    """Total cost of executing the processes (the placement paper's cost criterion).

    Constant-run instances cost their price (:func:`instance_price_per_s`)
    over the whole horizon; on-demand instances only for the seconds they ran
    (``on_demand_busy_s``, K×S, start-up included — from the simulator or
    :func:`busy_from_visits`). Without busy times (a record with requests
    only), on-demand instances are charged the whole horizon: an upper bound.
    """
    x = allocation_matrix(scenario, deployment).astype(float)
    rate = instance_price_per_s(scenario, deployment)
    on = np.array([is_always_on(c, deployment) for c in scenario.components])
    up = np.where(on[:, None], x * horizon_s, 0.0)
    if on_demand_busy_s is None:
        up = x * horizon_s
    else:
        up += np.where(on[:, None], 0.0, np.asarray(on_demand_busy_s, dtype=float))
    return float((rate * up).sum())


def cost_criterion(
    scenario: Scenario,
    deployment: Deployment,
    horizon_s: float,
    on_demand_busy_s: np.ndarray | None = None,
) -> float:
    """The ``cost`` criterion as ``settings.cost_criterion`` defines it (execution or rental)."""
    if scenario.settings.cost_criterion == "rental":
        return deployment_cost(scenario, deployment, horizon_s)
    return execution_cost(scenario, deployment, horizon_s, on_demand_busy_s)


def placement_criteria(
    requests: pd.DataFrame,
    scenario: Scenario,
    deployment: Deployment,
    horizon_s: float,
    end_s: float,
    on_demand_busy_s: np.ndarray | None = None,
) -> dict[str, float]:
    """The four placement criteria of one replication, plus counts for the report.

    Time criteria are the weighted average over processes (``Process.weight``)
    of each process's mean and variance of execution time, so a frequent
    inference request does not drown a daily training run. ``on_demand_busy_s``
    (K×S seconds on-demand instances ran) feeds the execution cost
    (:func:`cost_criterion`).
    """
    weights = {p.name: p.weight for p in scenario.processes}
    t = durations(requests, end_s)
    means, variances, w = [], [], []
    overruns = 0
    by_process = t.groupby(requests["process"], observed=True)
    for name, times in by_process:
        if len(times) == 0 or weights.get(str(name), 0.0) == 0.0:
            continue
        means.append(times.mean())
        variances.append(times.var(ddof=1) if len(times) > 1 else 0.0)
        w.append(weights[str(name)])
    deadline = requests["deadline_s"]
    overruns = int(((t > deadline) & deadline.notna()).sum())
    wsum = float(np.sum(w))
    return {
        "time_mean_s": float(np.dot(w, means) / wsum) if wsum else float("nan"),
        "time_var_s2": float(np.dot(w, variances) / wsum) if wsum else float("nan"),
        "overruns": float(overruns),
        "cost": cost_criterion(scenario, deployment, horizon_s, on_demand_busy_s),
        "executions": float(len(requests)),
        "unfinished": float(requests["t_end"].isna().sum()),
    }


def latency_percentiles(
    requests: pd.DataFrame, quantiles: tuple[float, ...] = (50, 95, 99), end_s: float | None = None
) -> dict[str, float]:
    """Mean and percentiles of request latency (s) of finished requests, or censored at end_s."""
    t = (
        durations(requests, end_s)
        if end_s is not None
        else durations(requests.dropna(subset=["t_end"]), 0.0)
    )
    return latency_summary(t.to_numpy(), quantiles)


def latency_summary(
    latencies_s: np.ndarray, quantiles: tuple[float, ...] = (50, 95, 99)
) -> dict[str, float]:
    """``{"mean", "p50", "p95", …}`` of latencies (s); NaN each when there are none.

    The one definition of latency percentiles (numpy's linear interpolation),
    for the twin's records and the testbed's measurements alike.
    """
    t = np.asarray(latencies_s, dtype=float)
    out = {"mean": float(t.mean()) if t.size else float("nan")}
    for q in quantiles:
        out[f"p{q:g}"] = float(np.percentile(t, q)) if t.size else float("nan")
    return out


def per_second(requests: pd.DataFrame, horizon_s: float) -> pd.DataFrame:
    """Per-second arrivals, completions and p50/p95 latency of requests finishing that second."""
    n = int(np.ceil(horizon_s))
    bins = np.arange(n + 1, dtype=float)
    arrived = np.histogram(requests["t_arrive"], bins)[0]
    done = requests.dropna(subset=["t_end"])
    completed = np.histogram(done["t_end"], bins)[0]
    lat = done["t_end"] - done["t_arrive"]
    second = np.floor(done["t_end"]).astype(int)
    grouped = lat.groupby(second)
    p50 = grouped.quantile(0.5).reindex(range(n))
    p95 = grouped.quantile(0.95).reindex(range(n))
    return pd.DataFrame(
        {
            "second": np.arange(n),
            "arrivals": arrived,
            "completions": completed,
            "p50_s": p50.to_numpy(),
            "p95_s": p95.to_numpy(),
        }
    )


# --------------------------------------------------------------------------- replications


def confidence_interval(
    values: np.ndarray | list[float], level: float = 0.95
) -> tuple[float, float]:
    """Mean and Student-t half-width over replications (half-width 0 for one value)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return float("nan"), float("nan")
    if x.size == 1:
        return float(x[0]), 0.0
    half = stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    return float(x.mean()), float(half)


def summarise(per_replication: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Mean, CI half-width and sd of every numeric column over replications."""
    rows = {}
    for col in per_replication.columns:
        if col == "replication" or not np.issubdtype(per_replication[col].dtype, np.number):
            continue
        mean, half = confidence_interval(per_replication[col].to_numpy(), level)
        rows[col] = {
            "mean": mean,
            "ci": half,
            "sd": float(per_replication[col].std(ddof=1)) if len(per_replication) > 1 else 0.0,
            "n": int(per_replication[col].notna().sum()),
        }
    return pd.DataFrame.from_dict(rows, orient="index")


# --------------------------------------------------------------------------- pipelines


@dataclass(frozen=True)
class PipelineMetrics:
    """The pipeline paper's quantities over one window (rates in req/s, times in s)."""

    V: float
    C: float
    T: float
    L: float
    E: float
    B: int
    Q: float
    objective: float
    reward: float
    offered_rps: float
    capacity_rps: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def scored(
        cls,
        *,
        V: float,
        C: float,
        T: float,
        L: float,
        E: float,
        B: int,
        Q: float,
        weights: QoSWeights,
        offered_rps: float,
        capacity_rps: float,
    ) -> PipelineMetrics:
        """The metrics with eq. 4's objective (Q − λC) and the agent's reward
        (Q − cost and batch penalties) derived from Q, C and B under ``weights``."""
        return cls(
            V=V,
            C=C,
            T=T,
            L=L,
            E=E,
            B=B,
            Q=Q,
            objective=Q - weights.lambda_cost * C,
            reward=Q - weights.reward_cost * C - weights.reward_batch * B,
            offered_rps=offered_rps,
            capacity_rps=capacity_rps,
        )


def stage_components(scenario: Scenario, process: str) -> list[str]:
    """Stage components of a request pipeline, in step order, without repeats."""
    names = [s.component for s in scenario.process(process).steps]
    return list(dict.fromkeys(n for n in names if scenario.component(n).is_stage))


def stage_capacity_rps(scenario: Scenario, deployment: Deployment, component: str) -> float:
    """Largest sustainable rate of one stage: Σ over replicas of b / t(b) · speed (req/s).

    t(b) includes the stage server's own CPU (``Component.server_overhead``); a
    machine with a CPU quota (``Server.cpu_quota_cores``) gives its replicas at most
    that many cores.
    """
    c = scenario.component(component)
    cfg = stage_config(deployment, c)
    batch = cfg.batch
    t_ms = c.variant(cfg.variant).service_time.batch_mean_ms(batch)
    if c.server_overhead is not None:  # the server's own CPU shares the stage's quota
        t_ms += c.server_overhead.per_call_ms + c.server_overhead.per_item_ms * batch
    t_s = t_ms / 1e3
    servers = scenario.server_of()
    speed = 0.0
    for m, n in deployment.allocation.get(component, {}).items():
        s = servers[m]
        # under a CPU quota the machine's replicas together run at most quota cores
        cores = n if s.cpu_quota_cores is None else min(n, s.cpu_quota_cores)
        speed += cores * s.cpu_speed
    return speed * batch / t_s if t_s > 0 else float("inf")


def pipeline_capacity_rps(scenario: Scenario, deployment: Deployment, process: str) -> float:
    """Capacity of the pipeline: its slowest stage (req/s)."""
    stages = stage_components(scenario, process)
    return min((stage_capacity_rps(scenario, deployment, c) for c in stages), default=0.0)


def qos(V: float, T: float, L: float, E: float, w: QoSWeights) -> float:
    """Eq. 3: αV + βT − L − γE when load is unmet (E ≥ 0), else αV + βT − L − δ(−E)."""
    base = w.alpha * V + w.beta * T - w.latency_weight * L
    return base - w.gamma * E if E >= 0 else base - w.delta * (-E)


def pipeline_config_terms(
    scenario: Scenario, deployment: Deployment, process: str
) -> tuple[float, float, int]:
    """V (Σ accuracy), C (Σ f·c) and B (largest batch) of a configuration."""
    V = C = 0.0
    B = 1
    for name in stage_components(scenario, process):
        c = scenario.component(name)
        cfg = stage_config(deployment, c)
        v = c.variant(cfg.variant)
        V += v.accuracy
        C += deployment.instances(name) * v.replica_cost
        B = max(B, cfg.batch)
    return V, C, B


def step_window(
    window: pd.DataFrame, steps: list[str], t0: float, t1: float
) -> tuple[list[float], list[float]]:
    """Per step of ``steps``: mean sojourn (s) and completion rate (req/s) of the visits
    in ``window`` (those finishing in [t0, t1)).

    A step split over parallel parts counts one completion per execution. A
    step that finished nothing gets the window's length as its sojourn and
    rate 0: nothing got through.
    """
    sojourns, rates = [], []
    by_step = dict(tuple(window.groupby("step", observed=True))) if len(window) else {}
    for s in steps:
        rows = by_step.get(s)
        if rows is None or rows.empty:
            sojourns.append(t1 - t0)
            rates.append(0.0)
            continue
        sojourns.append(float((rows["t_end"] - rows["t_arrive"]).mean()))
        rates.append(len(rows) / (rows["part"].max() + 1) / (t1 - t0))
    return sojourns, rates


def pipeline_metrics(
    visits: pd.DataFrame,
    scenario: Scenario,
    deployment: Deployment,
    process: str,
    t0: float,
    t1: float,
    offered_rps: float,
) -> PipelineMetrics:
    """Measured pipeline metrics over the window [t0, t1) from a visits table.

    T is the smallest per-stage completion rate in the window, L the sum of
    per-stage mean sojourn times of visits finishing in it (the window length
    when a stage finished nothing: nothing got through), E the offered rate
    minus the configuration's capacity.
    """
    if t1 <= t0:
        raise ValueError(f"empty window [{t0}, {t1})")
    V, C, B = pipeline_config_terms(scenario, deployment, process)
    window = visits[
        (visits["process"] == process) & (visits["t_end"] >= t0) & (visits["t_end"] < t1)
    ]
    steps = [s.name for s in scenario.process(process).steps]
    sojourns, rates = step_window(window, steps, t0, t1)
    latency = sum(sojourns)
    T = min(rates) if rates else 0.0
    capacity = pipeline_capacity_rps(scenario, deployment, process)
    E = offered_rps - capacity
    w = scenario.settings.qos
    Q = qos(V, T, latency, E, w)
    return PipelineMetrics.scored(
        V=V,
        C=C,
        T=T,
        L=latency,
        E=E,
        B=B,
        Q=Q,
        weights=w,
        offered_rps=offered_rps,
        capacity_rps=capacity,
    )
