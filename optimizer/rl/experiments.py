"""Experiments of the paper, in the twin: policies over a cycle, and decision time.

:func:`run_cycle` drives one policy through one cycle of the environment and
returns one row per decision (time, offered and predicted load, V, C, T, L,
E, Q, objective, reward, decision time). :func:`compare` runs every policy on
every workload with the same seed (same arrivals: common random numbers), and
:func:`averages` gives the per-cycle means (the paper's Fig. 5).
:func:`decision_times` measures the time per decision of the IPA-style solver
and of a PPO policy on pipelines of growing size (Fig. 6).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from optimizer.rl.agent import GuidedMaskablePPO, act
from optimizer.rl.baselines import Policy
from optimizer.rl.env import PipelineEnv
from optimizer.rl.space import Option

ROW_KEYS = (
    "t_s",
    "offered_rps",
    "predicted_rps",
    "V",
    "C",
    "T",
    "L",
    "E",
    "B",
    "Q",
    "objective",
    "reward",
    "capacity_rps",
)

Decider = GuidedMaskablePPO | Policy


def run_cycle(env: PipelineEnv, decider: Decider, workload: str, seed: int) -> pd.DataFrame:
    """One cycle under ``decider``; one row per decision, ``decision_ms`` its wall time."""
    obs, _ = env.reset(seed=seed, options={"workload": workload})
    rows, plan = [], None
    spent = 0.0
    done = False
    while not done:
        started = time.perf_counter()
        if isinstance(decider, GuidedMaskablePPO):
            a = act(decider, obs, env.action_masks())
        else:
            if env.k == 0:
                space, predicted = env.context()
                plan = decider.decide(space, predicted, env.weights)
            a = env.space.stages[env.k].index(plan[env.k])  # type: ignore[index]
        spent += time.perf_counter() - started
        obs, _, term, trunc, info = env.step(a)
        done = term or trunc
        if info.get("decision_done"):
            row = {k: float(info[k]) for k in ROW_KEYS}
            row["decision_ms"] = spent * 1e3
            row["config"] = _describe(env, env.current)
            rows.append(row)
            spent = 0.0
    return pd.DataFrame(rows)


def _describe(env: PipelineEnv, options: list[Option]) -> str:
    return " ".join(
        f"{s.variants[o.variant].name}×{o.replicas}/b{o.batch}"
        for s, o in zip(env.space.stages, options, strict=True)
    )


def compare(
    make_env: Callable[[], PipelineEnv],
    deciders: dict[str, Decider],
    workloads: list[str],
    seed: int = 1,
    on_cycle: Callable[[str, str], None] | None = None,
) -> pd.DataFrame:
    """Every decider on every workload (same seed per workload); all decision rows."""
    frames = []
    for w in workloads:
        for name, decider in deciders.items():
            env = make_env()
            frame = run_cycle(env, decider, w, seed)
            frames.append(frame.assign(policy=name, workload=w))
            if on_cycle:
                on_cycle(name, w)
    return pd.concat(frames, ignore_index=True)


def averages(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean QoS, cost, reward, accuracy, unmet load and decision time per workload × policy."""
    g = rows.groupby(["workload", "policy"], sort=False)
    out = g.agg(
        Q=("Q", "mean"),
        C=("C", "mean"),
        reward=("reward", "mean"),
        V=("V", "mean"),
        T=("T", "mean"),
        L=("L", "mean"),
        unmet_rps=("E", _unmet),
        decision_ms=("decision_ms", "mean"),
    )
    return out.reset_index()


def markdown(frame: pd.DataFrame) -> str:
    """A GitHub markdown table of a frame (4 significant digits for floats)."""

    def cell(v: object) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * frame.shape[1]]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join(lines)


def _unmet(e: pd.Series) -> float:
    return float(np.clip(e, 0, None).mean())


def relative(avg: pd.DataFrame, policy: str, reference: str) -> pd.DataFrame:
    """Per workload: ``policy``'s QoS and cost as a ratio of ``reference``'s."""
    rows = []
    for w, g in avg.groupby("workload", sort=False):
        a = g.set_index("policy")
        if policy in a.index and reference in a.index:
            rows.append(
                {
                    "workload": w,
                    "Q_ratio": a.loc[policy, "Q"] / a.loc[reference, "Q"],
                    "C_ratio": a.loc[policy, "C"] / a.loc[reference, "C"],
                }
            )
    return pd.DataFrame(rows)


def plot_over_time(rows: pd.DataFrame, workload: str, path: str | Path) -> None:
    """Cost and QoS against time, one line per policy (the paper's Fig. 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sub = rows[rows["workload"] == workload]
    fig, axes = plt.subplots(3, 1, figsize=(9, 7), sharex=True)
    for name, g in sub.groupby("policy", sort=False):
        axes[0].plot(g["t_s"], g["C"], label=name)
        axes[1].plot(g["t_s"], g["Q"], label=name)
    first = sub.groupby("policy", sort=False).head(10**9)
    one = first[first["policy"] == first["policy"].iloc[0]]
    axes[2].plot(one["t_s"], one["offered_rps"], label="offered", color="k")
    axes[2].plot(one["t_s"], one["predicted_rps"], label="predicted (LSTM)", color="grey", ls="--")
    axes[0].set_ylabel("cost C (cores)")
    axes[1].set_ylabel("QoS Q")
    axes[2].set_ylabel("load (req/s)")
    axes[2].set_xlabel("time (s)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=4)
    fig.suptitle(f"{workload}: cost and QoS per 10-s decision")
    fig.tight_layout()
    fig.savefig(Path(path), dpi=100)
    plt.close(fig)


def decision_times(
    env: PipelineEnv, deciders: dict[str, Decider], loads: list[float], seed: int = 0
) -> pd.DataFrame:
    """Time per decision (ms) of each decider at each load, without running the twin.

    The environment is reset once; each decision is made from the same state
    with the predicted load set to each value in turn.
    """
    rows = []
    env.reset(seed=seed)
    for load in loads:
        env.predicted = float(load)
        for name, decider in deciders.items():
            started = time.perf_counter()
            if isinstance(decider, GuidedMaskablePPO):
                chosen: list[Option] = []
                for k in range(env.space.n_stages):
                    env.k, env.pending = k, chosen
                    a = act(decider, env.observation(), env.action_masks())
                    chosen = [*chosen, env.space.stages[k].option(a)]
                env.k, env.pending = 0, []
            else:
                decider.decide(env.space, float(load), env.weights)
            rows.append(
                {
                    "policy": name,
                    "load_rps": load,
                    "decision_ms": (time.perf_counter() - started) * 1e3,
                }
            )
    return pd.DataFrame(rows)
