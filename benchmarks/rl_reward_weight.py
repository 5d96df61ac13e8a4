"""What the reward's cost weight β' can buy: the exact optimum of eq. 7 against IPA's eq. 4.

PPO maximises the reward r = Q − β'C − γ'B (eq. 7 of the pipeline paper);
the IPA-style baseline maximises Q − λC (eq. 4) with the scenario's λ. The
paper gives no values for either weight; β' is the operator's choice. For
each β' this script runs, over one cycle of each workload, the exact
maximiser of the reward (CP-SAT, ``IPAPolicy(target="reward")``: the best
any policy of that reward could do with the same prediction), IPA and
Greedy, and scores every 10-s interval with the analytic model at the
interval's actual mean load (decisions use the peak of the next 20 s, a
perfect predictor). It prints the cost and QoS ratios to IPA and Greedy:
the trade-off curve a trained agent can at best reach. No simulation, no
training: seconds per β'.

Usage::

    .venv/bin/python benchmarks/rl_reward_weight.py [--betas 0.1,0.3,0.5,0.7,1.0]
        [--pipeline examples/pipelines/ipa-video.yaml --suffix _ipa_video]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import machine_line, markdown_table, write_result  # noqa: E402
from optimizer.rl.baselines import GreedyPolicy, IPAPolicy  # noqa: E402
from optimizer.rl.model import estimate  # noqa: E402
from optimizer.rl.space import ConfigSpace  # noqa: E402
from twin.load import load_scenario  # noqa: E402
from twin.workload import rate_series  # noqa: E402

SCENARIO = ROOT / "examples" / "pipelines" / "chain-3x3.yaml"
WORKLOADS = ["steady-low", "fluctuating", "steady-high"]
INTERVAL_S, CYCLE_S, HORIZON_S = 10, 1200, 20


def cycle_means(space, policy, weights, rates) -> tuple[float, float]:
    """Mean Q and C of ``policy`` over the cycle (analytic model, actual mean load)."""
    qs, cs = [], []
    for t in range(0, CYCLE_S, INTERVAL_S):
        predicted = float(rates[t : t + HORIZON_S].max())
        chosen = policy.decide(space, predicted, weights)
        m = estimate(space, chosen, float(rates[t : t + INTERVAL_S].mean()), weights).metrics
        qs.append(m.Q)
        cs.append(m.C)
    return float(np.mean(qs)), float(np.mean(cs))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--betas", default="0.1,0.3,0.5,0.6,0.7,0.8,1.0,1.5")
    ap.add_argument("--pipeline", type=Path, default=SCENARIO, help="scenario YAML (chain-3x3)")
    ap.add_argument("--suffix", default="", help="results as rl_reward_weight<suffix>.md")
    args = ap.parse_args()
    betas = [float(b) for b in args.betas.split(",")]
    sc = load_scenario(args.pipeline)
    space = ConfigSpace(sc, "pipeline")
    base = sc.settings.qos
    started = time.perf_counter()
    ref = {}
    for w in WORKLOADS:
        rates = rate_series(sc.workload(w), CYCLE_S + HORIZON_S)
        ref[w] = (
            rates,
            cycle_means(space, IPAPolicy(cache_rps=0.25), base, rates),
            cycle_means(space, GreedyPolicy(), base, rates),
        )
    rows = []
    for beta in betas:
        weights = base.model_copy(update={"reward_cost": beta})
        row: list[object] = [beta]
        for w in WORKLOADS:
            rates, (q_ipa, c_ipa), (q_g, _) = ref[w]
            solver = IPAPolicy(cache_rps=0.25, target="reward")
            q, c = cycle_means(space, solver, weights, rates)
            row += [f"{q / q_ipa:.3f}", f"{c / c_ipa:.3f}", f"{q / q_g:.3f}"]
        rows.append(row)
    headers = ["β'"]
    for w in WORKLOADS:
        headers += [f"{w} Q/IPA", f"{w} C/IPA", f"{w} Q/Greedy"]
    ipa_line = ", ".join(
        f"{w}: IPA Q {ref[w][1][0]:.2f} C {ref[w][1][1]:.2f}, Greedy Q {ref[w][2][0]:.2f} "
        f"C {ref[w][2][1]:.2f}"
        for w in WORKLOADS
    )
    text = "\n".join(
        [
            "# Reward cost weight β': the exact optimum of eq. 7 against IPA (eq. 4), analytic",
            "",
            machine_line(),
            "",
            f"Pipeline `{_shown(args.pipeline)}`, scenario weights α={base.alpha}, "
            f"β={base.beta}, γ={base.gamma}, δ={base.delta}, λ={base.lambda_cost}, "
            f"γ'={base.reward_batch}. For each β' the exact maximiser of Q − β'C − γ'B decides "
            f"every {INTERVAL_S} s from the true peak of the next {HORIZON_S} s; each interval is "
            f"scored by the analytic model at its true mean load. IPA maximises Q − λC, Greedy "
            f"takes the cheapest configuration meeting the load. This bounds what PPO trained on "
            f"that reward can reach; it is not a measurement in the twin. "
            f"{time.perf_counter() - started:.0f} s.",
            "",
            f"References ({ipa_line}).",
            "",
            markdown_table(headers, rows),
            "",
            "Reproduce: `.venv/bin/python benchmarks/rl_reward_weight.py "
            f"{' '.join(sys.argv[1:])}`",
        ]
    )
    write_result("rl_reward_weight" + args.suffix, text)


def _shown(path: Path) -> Path:
    """The scenario path relative to the repository when it lies inside it."""
    try:
        return path.resolve().relative_to(ROOT)
    except ValueError:
        return path


if __name__ == "__main__":
    main()
