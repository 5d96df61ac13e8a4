"""How well fitting recovers known service-time models, by sample size.

Data come from the twin itself (one stage, known lognormal or gamma model
with per-item cost, batch sizes 1/4/8 from three deployments), so the truth
is known exactly. For each sample size and family, over several seeds: the
relative error of the fitted batch means and cv, and how often held-out
likelihood picks the generating family. Usage::

    .venv/bin/python benchmarks/calibrate_recovery.py [--seeds 5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, markdown_table, write_result

from calibrate.fit import fit_samples
from calibrate.samples import twin_samples
from twin.sim import simulate_replication
from twin.spec import Deployment, Scenario, StageConfig

TRUTH = {
    "lognormal": {"kind": "lognormal", "mean_ms": 2.0, "per_item_ms": 0.5, "cv": 0.4},
    "gamma": {"kind": "gamma", "mean_ms": 2.0, "per_item_ms": 0.5, "cv": 0.4},
}
BATCHES = (1, 4, 8)


def scenario(st: dict, rate: float) -> Scenario:
    return Scenario.model_validate(
        {
            "name": "one-stage",
            "servers": [{"name": "node", "cpu_cores": 4, "ram_gb": 8}],
            "components": [
                {
                    "name": "stage",
                    "max_batch": 16,
                    "variants": [
                        {"name": "v", "accuracy": 0.9, "cpu_cores": 1, "service_time": st}
                    ],
                }
            ],
            "processes": [
                {"name": "p", "kind": "request", "steps": [{"name": "s", "component": "stage"}]}
            ],
            "workloads": [{"kind": "steady", "name": "w", "rate_per_s": rate}],
        }
    )


def data(st: dict, per_batch: int, seed: int) -> pd.DataFrame:
    """About ``per_batch`` batch executions at each batch size."""
    frames = []
    sc = scenario(st, 100.0)
    for b in BATCHES:
        cfg = StageConfig(variant="v", batch=b, batch_timeout_ms=500)
        dep = Deployment(allocation={"stage": {"node": 1}}, stages={"stage": cfg})
        horizon = per_batch * b / 100.0
        res = simulate_replication(sc, dep, sc.workload("w"), horizon, seed * 100 + b)
        frames.append(twin_samples(res.visits, sc, dep))
    return pd.concat(frames, ignore_index=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    a = ap.parse_args()
    rows = []
    for family, st in TRUTH.items():
        truth = scenario(st, 1.0).components[0].variants[0].service_time
        for n in (30, 100, 300, 1000):
            mean_err, cv_err, right = [], [], 0
            for seed in range(a.seeds):
                (fit,) = fit_samples(data(st, n, seed), seed=seed)
                model = fit.service_time
                mean_err += [
                    abs(model.batch_mean_ms(b) / truth.batch_mean_ms(b) - 1) for b in BATCHES
                ]
                cv_err += [abs(model.batch_cv(b) / truth.batch_cv(b) - 1) for b in BATCHES]
                right += fit.dist == family
            rows.append(
                [
                    family,
                    n,
                    100 * float(np.mean(mean_err)),
                    100 * float(np.max(mean_err)),
                    100 * float(np.mean(cv_err)),
                    f"{right}/{a.seeds}",
                ]
            )
    text = "\n".join(
        [
            "# Parameter recovery from twin-generated data",
            "",
            f"- {machine_line()}",
            f"- truth: mean 2 ms + 0.5 ms per extra item, cv 0.4; batch sizes {BATCHES}; "
            f"{a.seeds} seeds per row; held-out fraction 0.3",
            "- command: `.venv/bin/python benchmarks/calibrate_recovery.py`",
            "",
            markdown_table(
                [
                    "family",
                    "batch executions per size",
                    "mean abs. error of means %",
                    "max abs. error %",
                    "mean abs. error of cv %",
                    "family right",
                ],
                rows,
            ),
        ]
    )
    write_result("calibrate_recovery", text)


if __name__ == "__main__":
    main()
