"""Closed-form queueing results: validation targets and a cheap screening path.

Times are in seconds, rates in 1/s. ``queue_scenario`` builds the scenario of
a textbook single-station queue so the simulator can be checked against these.
"""

from __future__ import annotations

import math

from twin.spec import Deployment, Scenario


def erlang_c(servers: int, offered_load: float) -> float:
    """Probability an arrival waits in M/M/c (Erlang C); ``offered_load`` = λ/μ < c."""
    c, a = servers, offered_load
    if not 0 <= a < c:
        raise ValueError(f"offered load {a} must be in [0, {c}) for a stable M/M/{c}")
    term, total = 1.0, 1.0  # running a^k/k! and its sum for k < c
    for k in range(1, c):
        term *= a / k
        total += term
    top = term * a / c * c / (c - a)  # a^c/c! · c/(c−a)
    return top / (total + top)


def mmc_wait_s(arrival_rate: float, service_rate: float, servers: int) -> float:
    """Mean waiting time in queue Wq of M/M/c (s)."""
    a = arrival_rate / service_rate
    return erlang_c(servers, a) / (servers * service_rate - arrival_rate)


def mg1_wait_s(arrival_rate: float, mean_service_s: float, cv: float) -> float:
    """Pollaczek–Khinchine mean wait of M/G/1 (s); cv = 0 gives M/D/1, cv = 1 M/M/1."""
    rho = arrival_rate * mean_service_s
    if not 0 <= rho < 1:
        raise ValueError(f"utilisation {rho} must be in [0, 1) for a stable M/G/1")
    return rho * mean_service_s * (1 + cv * cv) / (2 * (1 - rho))


def queue_scenario(
    arrival_rate: float,
    mean_service_s: float,
    servers: int = 1,
    kind: str = "exponential",
    stations: int = 1,
) -> tuple[Scenario, Deployment]:
    """A tandem of ``stations`` identical M/·/c stations on one machine (no network).

    Each station is a component with ``servers`` shared-queue instances, so a
    station is exactly one FIFO queue with c servers.
    """
    if kind == "exponential":
        work = {"kind": "exponential", "mean_ms": mean_service_s * 1e3}
    elif kind == "constant":
        work = {"kind": "constant", "ms": mean_service_s * 1e3}
    else:
        raise ValueError(f"kind must be 'exponential' or 'constant', got {kind!r}")
    names = [f"station{i + 1}" for i in range(stations)]
    steps = [
        {"name": n, "component": n, "cpu_work": work, "depends_on": [names[i - 1]] if i else []}
        for i, n in enumerate(names)
    ]
    scenario = Scenario.model_validate(
        {
            "name": "textbook-queue",
            "servers": [{"name": "host", "cpu_cores": servers * stations, "ram_gb": 64}],
            "components": [{"name": n, "cpu_cores": 1, "dispatch": "shared_queue"} for n in names],
            "processes": [
                {
                    "name": "customer",
                    "steps": steps,
                    "arrivals": {"kind": "poisson", "rate_per_s": arrival_rate},
                }
            ],
        }
    )
    deployment = Deployment(allocation={n: {"host": servers} for n in names})
    return scenario, deployment


def horizon_for(customers: int, arrival_rate: float) -> float:
    """Horizon (s) in which ``customers`` arrivals are expected."""
    return math.ceil(customers / arrival_rate)
