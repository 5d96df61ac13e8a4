"""Plots of load runs (PNG, matplotlib Agg): RPS, latency over time, CDFs, CPU per server.

Each function takes *segments*, one per workload run back to back, and draws
them on one time axis so a report shows the whole experiment at a glance.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Segment:
    """One workload's run: testbed tables and (optionally) the twin's for comparison.

    ``per_second``: loadgen's per-second table; ``latency_s``: latencies of the
    answered requests; ``twin_per_second``: ``twin.criteria.per_second`` of one
    replication; ``twin_latency_s``: the twin's latencies (all replications).
    """

    name: str
    per_second: pd.DataFrame
    latency_s: np.ndarray
    twin_per_second: pd.DataFrame | None = None
    twin_latency_s: np.ndarray | None = None


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: Path) -> Path:
    """Lay out, write (110 dpi) and close a figure; its path."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _offsets(segments: list[Segment]) -> list[float]:
    out, t = [], 0.0
    for s in segments:
        out.append(t)
        t += len(s.per_second)
    return out


def _mark(ax, segments: list[Segment], offsets: list[float]) -> None:
    for s, x in zip(segments, offsets, strict=True):
        ax.axvline(x, color="grey", lw=0.6, ls=":")
        ax.text(x + 1, 1.0, s.name, transform=ax.get_xaxis_transform(), fontsize=8, va="top")


def plot_rps(segments: list[Segment], path: Path) -> Path:
    """Offered and answered requests/s per second, with the twin's completions."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 3.6))
    offsets = _offsets(segments)
    for i, (s, x0) in enumerate(zip(segments, offsets, strict=True)):
        t = x0 + s.per_second["second"].to_numpy()
        lab = i == 0
        per = s.per_second
        ax.plot(t, per["offered"], color="0.6", lw=1, label="offered" if lab else None)
        ax.plot(t, per["rps"], color="C0", lw=1.2, label="testbed answered" if lab else None)
        if per["failures"].any():
            ax.plot(t, per["failures"], color="C3", lw=1, label="failures" if lab else None)
        if s.twin_per_second is not None:
            tt = x0 + s.twin_per_second["second"].to_numpy()
            ax.plot(
                tt,
                s.twin_per_second["completions"],
                color="C1",
                lw=1,
                ls="--",
                label="twin completions" if lab else None,
            )
    _mark(ax, segments, offsets)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("requests/s")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0, 0.92))
    return _save(plt, fig, path)


def plot_latency(segments: list[Segment], path: Path) -> Path:
    """Per-second p50/p95/p99 latency of the testbed, and the twin's p95 (log scale, ms)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 3.6))
    offsets = _offsets(segments)
    for i, (s, x0) in enumerate(zip(segments, offsets, strict=True)):
        t = x0 + s.per_second["second"].to_numpy()
        lab = i == 0
        for q, c in (("p50", "C0"), ("p95", "C2"), ("p99", "C3")):
            ax.plot(
                t,
                1e3 * s.per_second[f"{q}_s"],
                color=c,
                lw=1,
                label=f"testbed {q}" if lab else None,
            )
        if s.twin_per_second is not None:
            tt = x0 + s.twin_per_second["second"].to_numpy()
            ax.plot(
                tt,
                1e3 * s.twin_per_second["p95_s"],
                color="C1",
                lw=1,
                ls="--",
                label="twin p95" if lab else None,
            )
    _mark(ax, segments, offsets)
    ax.set_yscale("log")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("latency (ms)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0, 0.92), ncol=2)
    return _save(plt, fig, path)


def _cdf(ax, x: np.ndarray, **kw) -> None:
    x = np.sort(x[np.isfinite(x)])
    if x.size:
        ax.step(1e3 * x, np.arange(1, x.size + 1) / x.size, where="post", **kw)


def plot_cdfs(segments: list[Segment], path: Path) -> Path:
    """Latency CDF, testbed vs twin, one panel per workload (ms, log x)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(segments), figsize=(3.4 * len(segments), 3.2), squeeze=False)
    for ax, s in zip(axes[0], segments, strict=True):
        _cdf(ax, s.latency_s, color="C0", label="testbed")
        if s.twin_latency_s is not None:
            _cdf(ax, s.twin_latency_s, color="C1", ls="--", label="twin")
        ax.set_xscale("log")
        ax.set_title(s.name, fontsize=9)
        ax.set_xlabel("latency (ms)")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("fraction of requests")
    axes[0][0].legend(fontsize=8)
    return _save(plt, fig, path)


def plot_cpu(cpu: pd.DataFrame, path: Path, boundaries: list[tuple[str, float]] = ()) -> Path:
    """Cores in use per server over time (``cpu``: columns ``t, target, rate``)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 3.2))
    for target, g in cpu.sort_values("t").groupby("target", observed=True):
        ax.plot(g["t"], g["rate"], lw=1, label=str(target))
    for name, x in boundaries:
        ax.axvline(x, color="grey", lw=0.6, ls=":")
        ax.text(x + 1, 1.0, name, transform=ax.get_xaxis_transform(), fontsize=8, va="top")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("CPU (cores)")
    ax.grid(alpha=0.3)
    if len(cpu):
        ax.legend(fontsize=7, ncol=4, loc="upper left", bbox_to_anchor=(0, 0.92))
    return _save(plt, fig, path)
