"""The deploy-back's runs at a glance: each testbed run and the twin, chosen vs greedy.

A ranking verdict is a statement about spread as much as about means; one plot
of every run (lines join the two runs of a pair) shows a reader at once whether
the testbed's runs of one deployment sit apart from the other's, or overlap.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import numpy as np
import pandas as pd

# criterion → (axis label, factor from the criterion's unit to the axis's)
PANELS = {
    "time_mean_s": ("mean process time (ms)", 1e3),
    "time_var_s2": ("process time variance (ms²)", 1e6),
}
DEPLOYMENTS = ("chosen", "greedy")


def plot_ranking(
    tab: pd.DataFrame, twin_reps: pd.DataFrame, judged: Collection[int], path: Path
) -> Path:
    """Write ``path`` (PNG): per time criterion, every testbed run and the twin's mean.

    Hollow markers: a run over every request; filled: the same run on undisturbed
    seconds, for the ``judged`` pairs (those the report ranks there). The twin's
    bar is its mean over all replications, ± one standard deviation of them.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.6))
    for ax, (criterion, (label, k)) in zip(np.atleast_1d(axes), PANELS.items(), strict=True):
        rows = tab[tab["criterion"] == criterion]
        for column in ("testbed", "testbed_undisturbed"):
            if column not in rows:
                continue
            filled = column == "testbed_undisturbed"
            keep = rows[rows["pair"].isin(judged)] if filled else rows
            wide = keep.pivot(index="pair", columns="deployment", values=column)
            for _, pair in wide.reindex(columns=list(DEPLOYMENTS)).iterrows():
                ax.plot(
                    [0.1, 0.9] if filled else [0, 1],
                    pair.to_numpy() * k,
                    marker="o",
                    color="tab:blue" if filled else "tab:gray",
                    markerfacecolor="tab:blue" if filled else "none",
                    alpha=0.8,
                    lw=0.8,
                )
        for x, d in enumerate(DEPLOYMENTS):
            reps = twin_reps.loc[twin_reps["deployment"] == d, criterion].to_numpy() * k
            ax.errorbar(
                x + 0.25, reps.mean(), yerr=reps.std(), fmt="s", color="tab:orange", capsize=4
            )
        ax.set_xticks([0, 1], list(DEPLOYMENTS))
        ax.set_xlim(-0.4, 1.5)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    handles = [
        plt.Line2D([], [], marker="o", color="tab:gray", markerfacecolor="none", lw=0.8),
        plt.Line2D([], [], marker="o", color="tab:blue", lw=0.8),
        plt.Line2D([], [], marker="s", color="tab:orange", lw=0),
    ]
    fig.legend(
        handles,
        ["testbed run (every request)", "same run, undisturbed seconds", "twin (± 1 sd)"],
        loc="lower center",
        ncol=3,
        fontsize=8,
        frameon=False,
    )
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
