"""The twin against queueing theory over the whole utilisation range 0.5–0.9.

Run: .venv/bin/python benchmarks/twin_theory.py [--quick]

M/M/1 and M/M/3 against Erlang C, M/D/1 against Pollaczek–Khinchine. Each
point runs several seeds; the table shows the mean wait, the 95% CI from the
spread over seeds, the error against theory and whether it is within 3%.
Heavy traffic (ρ = 0.9) needs millions of customers for a 1% standard error,
which is why this lives here rather than in the test suite.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, markdown_table, write_result

from twin.analytic import horizon_for, mg1_wait_s, mmc_wait_s, queue_scenario
from twin.criteria import confidence_interval
from twin.sim import simulate_replication

# (model, servers, ρ, customers per seed): sized for a ~1% standard error.
GRID = [
    ("M/M/1", 1, 0.5, 60_000),
    ("M/M/1", 1, 0.7, 150_000),
    ("M/M/1", 1, 0.8, 300_000),
    ("M/M/1", 1, 0.9, 1_000_000),
    ("M/M/3", 3, 0.5, 100_000),
    ("M/M/3", 3, 0.7, 150_000),
    ("M/M/3", 3, 0.8, 300_000),
    ("M/M/3", 3, 0.9, 1_000_000),
    ("M/D/1", 1, 0.5, 30_000),
    ("M/D/1", 1, 0.7, 80_000),
    ("M/D/1", 1, 0.8, 150_000),
    ("M/D/1", 1, 0.9, 500_000),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a tenth of the customers")
    parser.add_argument("--seeds", type=int, default=6)
    args = parser.parse_args()
    rows = []
    for model, c, rho, customers in GRID:
        if args.quick:
            customers //= 10
        rate = rho * c
        kind = "constant" if model == "M/D/1" else "exponential"
        theory = mg1_wait_s(rate, 1.0, 0.0) if kind == "constant" else mmc_wait_s(rate, 1.0, c)
        sc, dep = queue_scenario(rate, 1.0, c, kind)
        started = time.perf_counter()
        waits = []
        for seed in range(args.seeds):
            v = simulate_replication(sc, dep, None, horizon_for(customers, rate), seed).visits
            waits.append(float((v["t_start"] - v["t_arrive"]).mean()))
        mean, half = confidence_interval(waits)
        err = 100 * (mean / theory - 1)
        rows.append(
            [
                model,
                rho,
                customers * args.seeds,
                round(theory, 4),
                round(mean, 4),
                f"±{half:.4f}",
                f"{err:+.2f}%",
                "yes" if abs(err) <= 3 else "NO",
                round(time.perf_counter() - started, 1),
            ]
        )
        print(rows[-1], file=sys.stderr)
    table = markdown_table(
        [
            "model",
            "ρ",
            "customers",
            "Wq theory (s)",
            "Wq twin (s)",
            "95% CI",
            "error",
            "within 3%",
            "wall s",
        ],
        rows,
    )
    write_result(
        "twin_theory" + ("_quick" if args.quick else ""),
        f"# Twin vs queueing theory\n\nMachine: {machine_line()}. Service mean 1 s; "
        f"{args.seeds} seeds per point.\n\n{table}",
    )


if __name__ == "__main__":
    main()
