"""PPO vs IPA-style solver vs Greedy vs Random in the twin (issue 7, items 3 and 5).

1. Trains the PPO agent (MaskablePPO, residual extractor, expert guidance
   every ``--expert-every`` episodes) on ``examples/pipelines/chain-3x3.yaml``
   over the three workloads: ``--steps`` steps on the analytic backend, then
   ``--twin-steps`` on the twin itself; saves the policy (SB3 zip) and the
   training curves.
2. Runs the four policies through one 1200-s cycle of steady-low, fluctuating
   and steady-high in the twin (same seed: same arrivals for every policy),
   deciding every 10 s with the LSTM-predicted load.
3. Writes the averages table, PPO's ratios to IPA and Greedy, the acceptance
   checks of the issue (as measured, pass or not), and one cost/QoS-over-time
   plot per workload to ``benchmarks/results/rl_compare*.{md,png}``.

Usage::

    .venv/bin/python benchmarks/rl_compare.py [--steps 36000] [--twin-steps 0]
        [--reward-cost B] [--ipa-paper] [--seed N] [--suffix _x] [--quick]
        [--pipeline examples/pipelines/ipa-video.yaml]

    # the reported run (benchmarks/results/rl_compare.md), ~6 min on a quiet machine:
    .venv/bin/python benchmarks/rl_compare.py --steps 90000 --twin-steps 3600 --reward-cost 0.3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import RESULTS, machine_line, write_result  # noqa: E402
from optimizer.rl import agent, experiments  # noqa: E402
from optimizer.rl.baselines import GreedyPolicy, IPAPolicy, RandomPolicy  # noqa: E402
from optimizer.rl.cli import DEFAULT_PREDICTOR, make_env  # noqa: E402
from optimizer.rl.predictor import LoadPredictor  # noqa: E402
from optimizer.rl.space import ConfigSpace  # noqa: E402
from twin.load import load_scenario  # noqa: E402

SCENARIO = ROOT / "examples" / "pipelines" / "chain-3x3.yaml"
WORKLOADS = ["steady-low", "fluctuating", "steady-high"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pipeline", type=Path, default=SCENARIO, help="scenario YAML (chain-3x3)")
    ap.add_argument("--steps", type=int, default=36_000, help="PPO steps on the analytic backend")
    ap.add_argument("--twin-steps", type=int, default=0, help="then PPO steps in the twin")
    ap.add_argument("--expert-every", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gamma", type=float, default=0.9, help="PPO discount per stage step")
    ap.add_argument("--ent-coef", type=float, default=0.01)
    ap.add_argument(
        "--reward-cost",
        type=float,
        default=None,
        help="PPO's reward cost weight β' (eq. 7); default: the scenario's",
    )
    ap.add_argument(
        "--ipa-paper",
        action="store_true",
        help="also run IPA with its own objective ([13]: accuracy − cost − batch)",
    )
    ap.add_argument("--policy", type=Path, help="skip training: evaluate this policy zip")
    ap.add_argument("--quick", action="store_true", help="tiny training, 120-s cycles")
    ap.add_argument("--suffix", default="", help="results as rl_compare<suffix>.md/png")
    args = ap.parse_args()
    torch.set_num_threads(1)
    name = "rl_compare" + args.suffix + ("_quick" if args.quick else "")
    sc = load_scenario(args.pipeline)
    ws = [sc.workload(w) for w in WORKLOADS]
    pred = LoadPredictor.load(DEFAULT_PREDICTOR) if DEFAULT_PREDICTOR.is_file() else None
    cycle_s = 120.0 if args.quick else 1200.0
    steps, twin_steps = (4320, 0) if args.quick else (args.steps, args.twin_steps)
    run_dir = ROOT / "runs" / name
    run_dir.mkdir(parents=True, exist_ok=True)
    train_s = 0.0
    curves_note = ""
    if args.policy is None:
        started = time.perf_counter()
        env = make_env(
            sc,
            "pipeline",
            ws,
            "analytic",
            pred,
            expert_every=args.expert_every,
            reward_cost=args.reward_cost,
        )
        model, writer = agent.make_agent(
            env, seed=args.seed, gamma=args.gamma, ent_coef=args.ent_coef
        )
        curves = agent.train(model, writer, steps)
        curves["backend"] = "analytic"
        if twin_steps:
            twin_env = make_env(
                sc,
                "pipeline",
                ws,
                "twin",
                pred,
                expert_every=args.expert_every,
                reward_cost=args.reward_cost,
            )
            model.set_env(agent.DummyVecEnv([lambda: agent.Monitor(twin_env)]))
            more = agent.train(model, writer, twin_steps)
            curves = more.assign(
                backend=["analytic"] * len(curves) + ["twin"] * (len(more) - len(curves))
            )
        train_s = time.perf_counter() - started
        policy_path = run_dir / "policy.zip"
        model.save(policy_path)
        curves.to_csv(run_dir / "curves.csv", index=False)
        title = f"PPO on {sc.name}: {steps} analytic + {twin_steps} twin steps"
        agent.plot_curves(curves, RESULTS / f"{name}_training.png", title)
        last = curves.dropna(subset=["value_loss"]).iloc[-1]
        first = curves.dropna(subset=["value_loss"]).iloc[0]
        curves_note = (
            f"Training: {steps} steps on the analytic backend + {twin_steps} in the twin, "
            f"expert every {args.expert_every} episodes, γ = {args.gamma}, entropy coefficient "
            f"{args.ent_coef}, seed {args.seed}, {train_s:.0f} s. "
            f"Mean episode reward {curves['ep_reward_mean'].iloc[0]:.1f} → "
            f"{curves['ep_reward_mean'].iloc[-1]:.1f}; value loss {first['value_loss']:.3g} → "
            f"{last['value_loss']:.3g}; loss {first['loss']:.3g} → {last['loss']:.3g} "
            f"(curves: `{name}_training.png`)."
        )
    else:
        policy_path = args.policy
    ppo = agent.load(policy_path)
    deciders = {
        "ppo": ppo,
        "ipa": IPAPolicy(),
        "greedy": GreedyPolicy(),
        "random": RandomPolicy(seed=args.seed),
    }
    if args.ipa_paper:
        deciders["ipa-paper"] = IPAPolicy(target="ipa-paper", name="ipa-paper")
    started = time.perf_counter()
    rows = experiments.compare(
        lambda: make_env(sc, "pipeline", ws, "twin", pred, cycle_s, reward_cost=args.reward_cost),
        deciders,
        WORKLOADS,
        seed=1,
    )
    eval_s = time.perf_counter() - started
    rows.to_csv(run_dir / "decisions.csv", index=False)
    avg = experiments.averages(rows)
    for w in WORKLOADS:
        experiments.plot_over_time(rows, w, RESULTS / f"{name}_{w}.png")
    w = sc.settings.qos
    beta = w.reward_cost if args.reward_cost is None else args.reward_cost
    weights_note = (
        f"Q is eq. 3 with α={w.alpha}, β={w.beta}, γ={w.gamma}, δ={w.delta} (E in req/s), "
        f"C = Σ f·c (cores). IPA maximises eq. 4's Q − λ·C with λ = {w.lambda_cost}; PPO "
        f"is trained on eq. 7's reward Q − β'·C − γ'·B with β' = {beta:g} (the operator's "
        f"choice; see `rl_reward_weight.md`) and γ' = {w.reward_batch}, and its expert is "
        f"the exact solver of that reward; the reward column is eq. 7 with this β'."
    )
    text = report(
        name,
        avg,
        curves_note,
        eval_s,
        cycle_s,
        pred is not None,
        weights_note,
        describe(sc, args.pipeline),
    )
    write_result(name, text)


def describe(sc, path: Path) -> str:
    """One line on the pipeline: its file, stages × variants, replicas, batches and W_max."""
    space = ConfigSpace(sc, "pipeline")
    try:
        shown = path.resolve().relative_to(ROOT)
    except ValueError:
        shown = path
    variants = "/".join(str(len(s.variants)) for s in space.stages)
    batches = sorted({b for s in space.stages for b in s.batches})
    reps = sorted({r for s in space.stages for r in s.replicas})
    return (
        f"Pipeline `{shown}` ({space.n_stages} stages × {variants} variants, replicas "
        f"{reps[0]}–{reps[-1]}, batch {batches[0]}–{batches[-1]}, W_max = {space.budget:g} cores)"
    )


def report(name, avg, curves_note, eval_s, cycle_s, lstm, weights_note, pipeline) -> str:
    rel_ipa = experiments.relative(avg, "ppo", "ipa").set_index("workload")
    rel_greedy = experiments.relative(avg, "ppo", "greedy").set_index("workload")
    rel_paper = experiments.relative(avg, "ppo", "ipa-paper")
    rel_paper = rel_paper.set_index("workload") if len(rel_paper) else rel_paper
    lines = [
        "# Online pipeline configuration in the twin: PPO vs IPA-style vs Greedy vs Random",
        "",
        machine_line(),
        "",
        f"{pipeline}. One {cycle_s:g}-s cycle per workload, a decision every "
        f"10 s with the {'LSTM' if lstm else 'last-20-s peak'} predicted load; the twin's "
        f"discrete-event simulation measures every interval (same arrivals for all "
        f"policies). {weights_note} Evaluation took {eval_s:.0f} s.",
        "",
        curves_note,
        "",
        "## Means over the cycle",
        "",
        experiments.markdown(avg),
        "",
        "## PPO relative to the baselines",
        "",
        "| workload | Q PPO/IPA | C PPO/IPA | Q PPO/Greedy | C PPO/Greedy"
        + (" | Q PPO/IPA-paper | C PPO/IPA-paper |" if len(rel_paper) else " |"),
        "|---|---|---|---|---|" + ("---|---|" if len(rel_paper) else ""),
    ]
    for w in rel_ipa.index:
        a, g = rel_ipa.loc[w], rel_greedy.loc[w]
        line = (
            f"| {w} | {a['Q_ratio']:.3f} | {a['C_ratio']:.3f} "
            f"| {g['Q_ratio']:.3f} | {g['C_ratio']:.3f} |"
        )
        if w in rel_paper.index:
            p = rel_paper.loc[w]
            line += f" {p['Q_ratio']:.3f} | {p['C_ratio']:.3f} |"
        lines.append(line)
    if "fluctuating" in rel_ipa.index:
        q_ipa, c_ipa = rel_ipa.loc["fluctuating", "Q_ratio"], rel_ipa.loc["fluctuating", "C_ratio"]
        q_g = rel_greedy.loc["fluctuating", "Q_ratio"]
        checks = [
            ("QoS ≥ 95 % of IPA's (fluctuating)", q_ipa >= 0.95, f"{q_ipa:.3f}"),
            ("cost ≥ 10 % below IPA's (fluctuating)", c_ipa <= 0.90, f"{c_ipa:.3f}"),
            ("QoS ≥ 20 % above Greedy's (fluctuating)", q_g >= 1.20, f"{q_g:.3f}"),
        ]
        lines += [
            "",
            "## Acceptance (issue 7), as measured",
            "",
            "| criterion | measured ratio | met |",
            "|---|---|---|",
        ]
        lines += [f"| {c} | {v} | {'yes' if ok else 'NO'} |" for c, ok, v in checks]
    argv = " ".join(sys.argv[1:])
    lines += [
        "",
        "Plots: " + ", ".join(f"`{name}_{w}.png`" for w in WORKLOADS),
        "",
        f"Reproduce: `.venv/bin/python benchmarks/rl_compare.py {argv}`",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
