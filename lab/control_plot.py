"""Plots of controlled runs over time: load, configuration and p95, testbed beside twin."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def _levels(frame: pd.DataFrame) -> pd.DataFrame:
    """Per interval and stage: variant name, replicas, batch (from the ``config`` column)."""
    rows = []
    for t, cfg in zip(frame["t_s"], frame["config"], strict=True):
        for k, part in enumerate(cfg.split()):
            variant, rest = part.split("×")
            replicas, batch = rest.split("/b")
            rows.append(
                {
                    "t_s": t,
                    "stage": k,
                    "variant": variant,
                    "replicas": int(replicas),
                    "batch": int(batch),
                }
            )
    return pd.DataFrame(rows)


def plot_run(
    testbed: pd.DataFrame, twin: pd.DataFrame | None, title: str, path: str | Path
) -> None:
    """Four panels: offered/predicted load and capacity; each stage's variant and
    replicas; p95 latency; Q — testbed solid, twin dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(4, 1, figsize=(9, 9), sharex=True)
    ax[0].plot(testbed["t_s"], testbed["offered_rps"], "k-", label="offered")
    ax[0].plot(testbed["t_s"], testbed["predicted_rps"], color="grey", ls=":", label="predicted")
    ax[0].step(
        testbed["t_s"],
        testbed["capacity_rps"],
        where="post",
        color="C0",
        label="capacity (testbed)",
    )
    if twin is not None:
        ax[0].step(
            twin["t_s"],
            twin["capacity_rps"],
            where="post",
            color="C1",
            ls="--",
            label="capacity (twin)",
        )
    ax[0].set_ylabel("req/s")
    ax[0].set_ylim(0, max(1.0, 2.0 * float(testbed["offered_rps"].max())))
    lv = _levels(testbed)
    names = sorted(set(lv["variant"]))
    for k, g in lv.groupby("stage"):
        y = [
            names.index(v) + 0.08 * (r - 1)
            for v, r in zip(g["variant"], g["replicas"], strict=True)
        ]
        ax[1].step(g["t_s"], y, where="post", label=f"stage {k}")
    ax[1].set_yticks(range(len(names)), names, fontsize=7)
    ax[1].set_ylabel("variant (+replicas)")
    ax[2].plot(testbed["t_s"], 1e3 * testbed["p95_s"], "C0-", label="testbed")
    if twin is not None:
        ax[2].plot(twin["t_s"], 1e3 * twin["p95_s"], "C1--", label="twin")
    ax[2].set_ylabel("p95 (ms)")
    ax[2].set_yscale("log")
    ax[3].plot(testbed["t_s"], testbed["Q"], "C0-", label="testbed")
    if twin is not None:
        ax[3].plot(twin["t_s"], twin["Q"], "C1--", label="twin")
    ax[3].set_ylabel("Q")
    ax[3].set_xlabel("time since control began (s)")
    for a in ax:
        a.grid(alpha=0.3)
        a.legend(fontsize=7, ncol=4)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(Path(path), dpi=100)
    plt.close(fig)
