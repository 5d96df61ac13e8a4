"""Speed of the twin: events/s, requests/s, and one evaluation of the edge-cloud example.

Run: .venv/bin/python benchmarks/twin_speed.py [--quick]

A bare SimPy M/M/4 (a generator process per customer, the idiom of SimPy's
own examples) runs first in the same process as the machine's yardstick, so
the twin's figures can be read as ratios on a shared, noisy machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import simpy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, markdown_table, write_result

from twin.analytic import queue_scenario
from twin.evaluate import evaluate
from twin.load import load_deployment, load_scenario
from twin.sim import simulate_replication

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def bare_simpy_mmc(customers: int, rho: float = 0.8, c: int = 4) -> tuple[float, int]:
    """Wall time and event count of a textbook SimPy M/M/c."""
    rng = np.random.default_rng(1)
    gaps = rng.exponential(1 / (rho * c), customers).tolist()
    services = rng.exponential(1.0, customers).tolist()
    env = simpy.Environment()
    server = simpy.Resource(env, capacity=c)

    def customer(s: float):
        with server.request() as req:
            yield req
            yield env.timeout(s)

    def source():
        for g, s in zip(gaps, services, strict=True):
            yield env.timeout(g)
            env.process(customer(s))

    env.process(source())
    t = time.perf_counter()
    env.run()
    return time.perf_counter() - t, next(env._eid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs (a smoke test)")
    args = parser.parse_args()
    n = 40_000 if args.quick else 200_000
    reps = 3 if args.quick else 10
    rows = []

    wall, events = bare_simpy_mmc(n)
    base_eps = events / wall
    rows.append(["bare SimPy M/M/4 ρ=0.8 (yardstick)", n, events, wall, base_eps, n / wall, 1.0])

    sc, dep = queue_scenario(3.2, 1.0, servers=4)
    t = time.perf_counter()
    r = simulate_replication(sc, dep, None, n / 3.2, seed=1, visits=False)
    wall = time.perf_counter() - t
    done = len(r.requests)
    rows.append(
        [
            "twin M/M/4 ρ=0.8",
            done,
            r.events,
            wall,
            r.events / wall,
            done / wall,
            r.events / wall / base_eps,
        ]
    )

    edge = load_scenario(EXAMPLES / "edge-cloud.yaml")
    edge_dep = load_deployment(EXAMPLES / "edge-cloud.deployment.yaml")
    timings = {}
    for workers in (1, min(2, os.cpu_count() or 1)):
        t = time.perf_counter()
        e = evaluate(edge, edge_dep, None, 3600, replications=reps, seed=1, workers=workers)
        timings[workers] = time.perf_counter() - t
        execs = int(e.per_replication["executions"].sum())
        rows.append(
            [
                f"edge-cloud 1 h × {reps} reps, {workers} process(es)",
                execs,
                e.events,
                timings[workers],
                e.events / timings[workers],
                execs / timings[workers],
                e.events / timings[workers] / base_eps,
            ]
        )

    digits = load_scenario(EXAMPLES / "digits-pipeline.yaml")
    d_dep = load_deployment(EXAMPLES / "digits-pipeline.deployment.yaml")
    t = time.perf_counter()
    r = simulate_replication(
        digits, d_dep, digits.workload("steady-high"), 300, seed=1, visits=False
    )
    wall = time.perf_counter() - t
    rows.append(
        [
            "digits pipeline, steady-high, 300 s",
            len(r.requests),
            r.events,
            wall,
            r.events / wall,
            len(r.requests) / wall,
            r.events / wall / base_eps,
        ]
    )

    table = markdown_table(
        ["run", "requests", "events", "wall s", "events/s", "requests/s", "events/s ÷ yardstick"],
        rows,
    )
    goal = timings[1] <= 2.0
    text = "\n".join(
        [
            "# Twin speed",
            "",
            f"Machine: {machine_line()}.",
            "",
            table,
            "",
            f"One evaluation of examples/edge-cloud.yaml (1 simulated hour × {reps} "
            f"replications): {timings[1]:.2f} s on one core"
            + (f", {timings[2]:.2f} s on two" if 2 in timings else "")
            + f" — goal ≤ 2 s {'met' if goal else 'not met'} on one core.",
        ]
    )
    write_result("twin_speed" + ("_quick" if args.quick else ""), text)


if __name__ == "__main__":
    main()
