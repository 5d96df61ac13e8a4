"""Decision time per decision vs pipeline complexity: PPO vs the IPA-style solver (Fig. 6).

Four chains of growing size (``examples/pipelines/chain-{2x2,3x3,4x4,5x5}``:
stages × variants per stage, each stage with replicas 1–4 and batches 1–32).
For each, a PPO agent of the same architecture as in ``rl_compare`` is trained
briefly on the analytic backend (its inference cost does not depend on how
long it trained) and both deciders configure the pipeline at 30 load levels
from 10 % to 120 % of the workloads' peak; the time of one whole decision is
measured (PPO: one masked forward pass per stage, masks included; IPA: model
building + CP-SAT solve, one worker). Totals per 1200-s cycle are 120 decisions.

Usage::

    .venv/bin/python benchmarks/rl_decision_time.py [--train-steps 1440]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import machine_line, markdown_table, write_result  # noqa: E402
from optimizer.rl import agent, experiments  # noqa: E402
from optimizer.rl.baselines import IPAPolicy  # noqa: E402
from optimizer.rl.cli import make_env  # noqa: E402
from twin.load import load_scenario  # noqa: E402

PIPELINES = ["chain-2x2", "chain-3x3", "chain-4x4", "chain-5x5"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-steps", type=int, default=1440)
    ap.add_argument("--decisions", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in PIPELINES:
        sc = load_scenario(ROOT / "examples" / "pipelines" / f"{name}.yaml")
        ws = [sc.workload(w) for w in ("steady-low", "fluctuating", "steady-high")]
        env = make_env(sc, "pipeline", ws, "analytic", None)
        model, writer = agent.make_agent(env, seed=0)
        agent.train(model, writer, args.train_steps)
        loads = list(np.linspace(0.1, 1.2, args.decisions) * env.load_scale)
        # Warm-up: first calls pay imports and caches.
        experiments.decision_times(env, {"ppo": model, "ipa": IPAPolicy()}, loads[:2])
        t = experiments.decision_times(env, {"ppo": model, "ipa": IPAPolicy()}, loads)
        configs = float(np.prod([s.size for s in env.space.stages], dtype=float))
        by = {p: g["decision_ms"] for p, g in t.groupby("policy")}
        rows.append(
            [
                name,
                env.space.n_stages,
                len(env.space.stages[0].variants),
                f"{configs:.3g}",
                by["ppo"].mean(),
                by["ppo"].quantile(0.95),
                by["ipa"].mean(),
                by["ipa"].quantile(0.95),
                by["ipa"].mean() / by["ppo"].mean(),
                120 * by["ppo"].mean() / 1e3,
                120 * by["ipa"].mean() / 1e3,
            ]
        )
        print(f"{name}: done", file=sys.stderr)
    frame = pd.DataFrame(rows)
    headers = [
        "pipeline",
        "stages",
        "variants/stage",
        "configurations",
        "PPO mean ms",
        "PPO p95 ms",
        "IPA mean ms",
        "IPA p95 ms",
        "IPA/PPO",
        "PPO s per cycle",
        "IPA s per cycle",
    ]
    ppo_growth = frame[4].iloc[-1] / frame[4].iloc[0]
    ipa_growth = frame[6].iloc[-1] / frame[6].iloc[0]
    text = "\n".join(
        [
            "# Decision time vs pipeline complexity: PPO vs IPA-style CP-SAT solver",
            "",
            machine_line(),
            "",
            f"{args.decisions} decisions per pipeline at loads from 10 % to 120 % of the peak; "
            "wall time of one whole decision (all stages). The machine is shared: compare "
            "ratios within this run.",
            "",
            markdown_table(headers, [list(r) for r in frame.itertuples(index=False)]),
            "",
            f"From the smallest to the largest pipeline PPO's time per decision grows "
            f"{ppo_growth:.2f}× (one forward pass and one mask per stage: linear in stages) and "
            f"the solver's {ipa_growth:.2f}×.",
            "",
            "Reproduce: `.venv/bin/python benchmarks/rl_decision_time.py`",
        ]
    )
    write_result("rl_decision_time", text)


if __name__ == "__main__":
    main()
