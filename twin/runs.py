"""Run folders: ``runs/<name>/`` with inputs, results, plots and a report.

Folders are written atomically: everything goes to a sibling temporary
folder that is renamed into place at the end, so a crash never leaves a
half-written run that looks complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from twin.evaluate import Evaluation


@contextlib.contextmanager
def atomic_dir(path: str | Path, keep_failed: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that replaces ``path`` when the block succeeds.

    When the block raises, the folder is removed, or with ``keep_failed`` kept as
    ``<path>.failed`` (replacing an older one): for runs whose measurements cost
    minutes and should survive a failure after them.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        failed = target.with_name(f"{target.name}.failed")
        if keep_failed and any(tmp.iterdir()):
            shutil.rmtree(failed, ignore_errors=True)
            tmp.rename(failed)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(target)


def write_table(frame: pd.DataFrame, path: Path) -> Path:
    """Parquet when pyarrow is there, CSV otherwise; returns the written path."""
    try:
        frame.to_parquet(path.with_suffix(".parquet"), index=False)
        return path.with_suffix(".parquet")
    except ImportError:
        frame.to_csv(path.with_suffix(".csv"), index=False)
        return path.with_suffix(".csv")


def write_simulation_run(
    out_dir: str | Path, scenario_file: Path, deployment_file: Path, result: Evaluation
) -> None:
    """Inputs, per-replication criteria, records, a latency plot and report.md."""
    with atomic_dir(out_dir) as tmp:
        inputs = tmp / "inputs"
        inputs.mkdir()
        shutil.copy(scenario_file, inputs / Path(scenario_file).name)
        shutil.copy(deployment_file, inputs / Path(deployment_file).name)
        write_table(result.per_replication, tmp / "results")
        if result.visits is not None:
            write_table(result.visits, tmp / "visits")
        if result.requests is not None:
            write_table(result.requests, tmp / "requests")
        plot = _latency_plot(result, tmp / "latency_cdf.png")
        lines = [
            f"# Simulation: {result.scenario} / {result.deployment}",
            "",
            f"- workload: {result.workload or 'processes’ own arrivals'}",
            f"- horizon: {result.horizon_s:g} s × {result.replications} replications, "
            f"seed {result.seed}",
            f"- wall time: {result.wall_s:.2f} s ({result.events} events)",
            "",
            "| criterion | mean | ± 95% CI | sd |",
            "|---|---:|---:|---:|",
        ]
        for name, row in result.summary.iterrows():
            lines.append(f"| {name} | {row['mean']:.6g} | {row['ci']:.3g} | {row['sd']:.3g} |")
        if plot:
            lines += ["", "![latency CDF](latency_cdf.png)"]
        (tmp / "report.md").write_text("\n".join(lines) + "\n")


def _latency_plot(result: Evaluation, path: Path) -> bool:
    if result.requests is None or result.requests.empty:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    req = result.requests.dropna(subset=["t_end"])
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, rows in req.groupby("process", observed=True):
        t = np.sort((rows["t_end"] - rows["t_arrive"]).to_numpy())
        ax.step(t, np.arange(1, t.size + 1) / t.size, where="post", label=str(name))
    ax.set_xscale("log")
    ax.set_xlabel("execution time (s)")
    ax.set_ylabel("fraction of executions")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
