"""``mlops-twin rl``: train the PPO agent, compare policies, measure decision time.

Results go to stdout (``--json`` for machines), progress and errors to
stderr; each command writes a run folder atomically.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from twin.console import err, fail, out
from twin.load import SpecError, load_scenario
from twin.runs import atomic_dir, write_table
from twin.spec import Scenario

app = typer.Typer(
    help="Online pipeline configuration: PPO agent, baselines, experiments.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DEFAULT_PREDICTOR = Path(__file__).resolve().parent / "weights" / "lstm.pt"
DEFAULT_WORKLOADS = "steady-low,fluctuating,steady-high"
BASELINES = ("ipa", "greedy", "random")

# Options several commands take: one definition each, so their help stays the same.
PredictorOption = Annotated[str, typer.Option(help="LSTM weights, or 'none'.")]
RewardCostOption = Annotated[
    float | None, typer.Option(help="Reward cost weight β' (eq. 7); default: the scenario's.")
]
OutOption = Annotated[Path | None, typer.Option("--out", help="Run folder.")]
JsonOption = Annotated[bool, typer.Option("--json")]


def _scenario(path: Path) -> Scenario:
    try:
        return load_scenario(path)
    except SpecError as exc:
        fail(str(exc))
        raise  # unreachable: fail exits


def _process(scenario: Scenario, name: str | None) -> str:
    requests = [p.name for p in scenario.processes if p.kind == "request"]
    if name is None:
        if not requests:
            fail(f"scenario {scenario.name} has no request pipeline (process kind: request)")
        return requests[0]
    if name not in requests:
        fail(f"no request pipeline {name!r} in {scenario.name} (pipelines: {', '.join(requests)})")
    return name


def _workloads(scenario: Scenario, names: str) -> list:
    out_ = []
    for n in [x.strip() for x in names.split(",") if x.strip()]:
        try:
            out_.append(scenario.workload(n))
        except KeyError as exc:
            fail(str(exc.args[0]))
    return out_


def _predictor(path: str):
    from optimizer.rl.predictor import LoadPredictor

    if path == "none":
        return None
    p = Path(path)
    if not p.is_file():
        fail(f"predictor weights {p} not found: run benchmarks/rl_predictor.py or pass none")
    return LoadPredictor.load(p)


def make_env(
    scenario: Scenario,
    process: str,
    workloads: list,
    backend: str,
    predictor,
    cycle_s: float = 1200.0,
    expert_every: int = 0,
    reward_cost: float | None = None,
    charges=None,
    reward_scale: float = 10.0,
    expert_host: str = "true",
):
    """The environment every command uses (so training and evaluation see one state).

    ``reward_cost`` is the agent's reward cost weight β' (eq. 7); None keeps the
    scenario's ``settings.qos.reward_cost``.
    """
    from optimizer.rl.env import PipelineEnv

    peak = max(_peak(w, cycle_s) for w in workloads)
    return PipelineEnv(
        scenario,
        process,
        workloads,
        backend=backend,
        predictor=predictor,
        cycle_s=cycle_s,
        expert_every=expert_every,
        load_scale_rps=max(10.0, round(peak, -1)),
        reward_cost=reward_cost,
        charges=charges,
        reward_scale=reward_scale,
        expert_host=expert_host,
    )


def _peak(workload, cycle_s: float) -> float:
    from twin.workload import rate_series

    return float(rate_series(workload, cycle_s).max())


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )


@app.command()
def train(
    scenario_file: Annotated[Path, typer.Argument(help="Scenario YAML with a request pipeline.")],
    process: Annotated[str | None, typer.Option(help="Pipeline (default: the first).")] = None,
    workloads: Annotated[str, typer.Option(help="Comma-separated workloads to train on.")] = (
        DEFAULT_WORKLOADS
    ),
    steps: Annotated[
        int, typer.Option(help="Environment steps (one per stage decision).")
    ] = 50_000,
    backend: Annotated[
        str, typer.Option(help="twin (simulation) or analytic (fast).")
    ] = "analytic",
    expert_every: Annotated[int, typer.Option(help="Every f-th episode the solver acts.")] = 4,
    seed: Annotated[int, typer.Option()] = 0,
    gamma: Annotated[float, typer.Option(help="Discount per stage step.")] = 0.9,
    predictor: PredictorOption = str(DEFAULT_PREDICTOR),
    init: Annotated[Path | None, typer.Option(help="Continue from a saved policy zip.")] = None,
    reward_cost: RewardCostOption = None,
    out_dir: OutOption = None,
    as_json: JsonOption = False,
) -> None:
    """Train the PPO agent (MaskablePPO + residual extractor + expert guidance)."""
    import time

    import torch

    from optimizer.rl import agent

    torch.set_num_threads(1)
    sc = _scenario(scenario_file)
    proc = _process(sc, process)
    ws = _workloads(sc, workloads)
    env = make_env(
        sc,
        proc,
        ws,
        backend,
        _predictor(predictor),
        expert_every=expert_every,
        reward_cost=reward_cost,
    )
    model, writer = agent.make_agent(env, seed=seed, gamma=gamma)
    if init is not None:
        loaded = agent.load(init)
        model.policy.load_state_dict(loaded.policy.state_dict())
    started = time.perf_counter()
    with _progress() as bar:
        task = bar.add_task(f"PPO on {sc.name} ({backend})", total=steps)
        curves = agent.train(model, writer, steps, on_step=lambda n: bar.update(task, completed=n))
    wall = time.perf_counter() - started
    target = out_dir or Path("runs") / f"rl-train-{sc.name}"
    with atomic_dir(target) as tmp:
        model.save(tmp / "policy.zip")
        write_table(curves, tmp / "curves")
        agent.plot_curves(curves, tmp / "curves.png", f"PPO on {sc.name} ({backend} backend)")
        (tmp / "inputs").mkdir()
        shutil.copy(scenario_file, tmp / "inputs" / scenario_file.name)
        summary = {
            "scenario": sc.name,
            "process": proc,
            "backend": backend,
            "steps": steps,
            "expert_every": expert_every,
            "seed": seed,
            "gamma": gamma,
            "wall_s": round(wall, 1),
            "reward_cost": env.weights.reward_cost,
            "final_ep_reward_mean": _last(curves, "ep_reward_mean"),
            "final_value_loss": _last(curves, "value_loss"),
            "policy": str(target / "policy.zip"),
        }
        (tmp / "report.md").write_text(
            f"# PPO training on {sc.name}\n\n```json\n{json.dumps(summary, indent=2)}\n```\n\n"
            "![training curves](curves.png)\n"
        )
    err.print(f"run folder: {target}", highlight=False)
    if as_json:
        print(json.dumps(summary))
    else:
        out.print(summary)


def _last(curves: pd.DataFrame, key: str) -> float | None:
    if key not in curves or curves[key].dropna().empty:
        return None
    return float(curves[key].dropna().iloc[-1])


@app.command()
def evaluate(
    scenario_file: Annotated[Path, typer.Argument(help="Scenario YAML with a request pipeline.")],
    policy_file: Annotated[Path | None, typer.Option("--policy", help="PPO policy zip.")] = None,
    baselines: Annotated[
        str, typer.Option(help="Comma-separated baselines: ipa, ipa-paper, greedy, random.")
    ] = ",".join(BASELINES),
    process: Annotated[str | None, typer.Option(help="Pipeline (default: the first).")] = None,
    workloads: Annotated[str, typer.Option(help="Comma-separated workloads.")] = DEFAULT_WORKLOADS,
    backend: Annotated[str, typer.Option(help="twin or analytic.")] = "twin",
    cycle_s: Annotated[float, typer.Option(help="Length of one cycle (s).")] = 1200.0,
    seed: Annotated[int, typer.Option()] = 1,
    reward_cost: RewardCostOption = None,
    predictor: PredictorOption = str(DEFAULT_PREDICTOR),
    out_dir: OutOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run PPO and the baselines over a cycle of each workload; cost and QoS over time."""
    import torch

    from optimizer.rl import agent, experiments
    from optimizer.rl.baselines import POLICIES

    torch.set_num_threads(1)
    sc = _scenario(scenario_file)
    proc = _process(sc, process)
    ws = _workloads(sc, workloads)
    pred = _predictor(predictor)
    deciders: dict = {}
    if policy_file is not None:
        if not policy_file.is_file():
            fail(f"policy {policy_file} not found (train one with 'mlops-twin rl train')")
        deciders["ppo"] = agent.load(policy_file)
    for b in [x.strip() for x in baselines.split(",") if x.strip()]:
        if b not in POLICIES:
            fail(f"unknown baseline {b!r} (known: {', '.join(POLICIES)})")
        deciders[b] = POLICIES[b]()
    if not deciders:
        fail("nothing to evaluate: give --policy and/or --baselines")
    total = len(ws) * len(deciders)
    with _progress() as bar:
        task = bar.add_task(f"{total} cycles of {cycle_s:g} s ({backend})", total=total)
        rows = experiments.compare(
            lambda: make_env(sc, proc, ws, backend, pred, cycle_s, reward_cost=reward_cost),
            deciders,
            [w.name for w in ws],
            seed,
            on_cycle=lambda *_: bar.advance(task),
        )
    avg = experiments.averages(rows)
    target = out_dir or Path("runs") / f"rl-evaluate-{sc.name}"
    with atomic_dir(target) as tmp:
        write_table(rows, tmp / "decisions")
        avg.to_csv(tmp / "averages.csv", index=False)
        for w in ws:
            experiments.plot_over_time(rows, w.name, tmp / f"over-time-{w.name}.png")
        (tmp / "report.md").write_text(report(sc.name, backend, cycle_s, seed, avg, ws))
    err.print(f"run folder: {target}", highlight=False)
    if as_json:
        print(avg.to_json(orient="records"))
        return
    table = Table(title=f"{sc.name}: means over one {cycle_s:g}-s cycle ({backend})")
    for col in ("workload", "policy", "Q", "C", "reward", "V", "unmet_rps", "decision_ms"):
        table.add_column(col)
    for r in avg.itertuples():
        table.add_row(
            r.workload,
            r.policy,
            f"{r.Q:.2f}",
            f"{r.C:.2f}",
            f"{r.reward:.2f}",
            f"{r.V:.3f}",
            f"{r.unmet_rps:.2f}",
            f"{r.decision_ms:.2f}",
        )
    out.print(table)


def report(name: str, backend: str, cycle_s: float, seed: int, avg: pd.DataFrame, ws) -> str:
    """The markdown report of an evaluation: averages, ratios, plots."""
    from optimizer.rl.experiments import markdown, relative

    lines = [
        f"# Policies on {name} ({backend}, one {cycle_s:g}-s cycle, seed {seed})",
        "",
        markdown(avg),
        "",
    ]
    for ref in ("ipa", "greedy"):
        rel = relative(avg, "ppo", ref)
        if len(rel):
            lines += [f"PPO relative to {ref}:", "", markdown(rel), ""]
    lines += [f"![{w.name}](over-time-{w.name}.png)" for w in ws]
    return "\n".join(lines) + "\n"


@app.command("decision-time")
def decision_time(
    scenario_files: Annotated[list[Path], typer.Argument(help="Pipelines of growing size.")],
    policies_dir: Annotated[Path | None, typer.Option(help="<scenario>.zip PPO policies.")] = None,
    train_steps: Annotated[int, typer.Option(help="PPO steps when no policy is given.")] = 1440,
    decisions: Annotated[int, typer.Option(help="Decisions per pipeline and policy.")] = 30,
    seed: Annotated[int, typer.Option()] = 0,
    as_json: JsonOption = False,
) -> None:
    """Time per decision of the IPA-style solver and of PPO, per pipeline size."""
    import numpy as np
    import torch

    from optimizer.rl import agent, experiments
    from optimizer.rl.baselines import IPAPolicy
    from optimizer.rl.experiments import markdown

    torch.set_num_threads(1)
    rows = []
    for f in scenario_files:
        sc = _scenario(f)
        proc = _process(sc, None)
        ws = _workloads(sc, "fluctuating")
        env = make_env(sc, proc, ws, "analytic", None)
        zip_ = policies_dir / f"{sc.name}.zip" if policies_dir else None
        if zip_ is not None and zip_.is_file():
            model = agent.load(zip_)
        else:
            model, writer = agent.make_agent(env, seed=seed)
            agent.train(model, writer, train_steps)
        peak = env.load_scale
        loads = list(np.linspace(0.1 * peak, 1.2 * peak, decisions))
        t = experiments.decision_times(env, {"ppo": model, "ipa": IPAPolicy()}, loads, seed)
        sizes = [len(s.variants) for s in env.space.stages]
        options = int(np.prod([s.size for s in env.space.stages], dtype=float))
        for name, g in t.groupby("policy", sort=False):
            rows.append(
                {
                    "pipeline": sc.name,
                    "stages": env.space.n_stages,
                    "variants": max(sizes),
                    "configurations": options,
                    "policy": name,
                    "mean_ms": g["decision_ms"].mean(),
                    "p95_ms": g["decision_ms"].quantile(0.95),
                }
            )
        err.print(f"{sc.name}: done", highlight=False)
    frame = pd.DataFrame(rows)
    if as_json:
        print(frame.to_json(orient="records"))
    else:
        out.print(markdown(frame))
