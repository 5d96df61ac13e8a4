"""The run folder of ``mlops-twin optimize``: tables, chosen deployment, plots, report.

Layout (written atomically with ``twin.runs.atomic_dir``)::

    inputs/<scenario>.yaml  inputs/base.yaml   what was optimised
    run.json                                    settings (machine-readable)
    pareto.parquet     front: allocation (JSON) + criteria mean and CI, flags
    history.parquet    per generation: hypervolume, IGD, simulations, time
    evaluated.parquet  every allocation simulated during the search
    chosen.yaml        the chosen deployment (``mlops-twin simulate -d`` takes it)
    pareto.png  convergence.png  report.md  checkpoint.pkl (for --resume)
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from optimizer.run import RunResult, checkpoint_path
from twin.criteria import CRITERIA
from twin.load import dump_yaml
from twin.runs import atomic_dir, write_table

LABELS = {
    "time_mean_s": "mean process time (s)",
    "time_var_s2": "variance of process time (s²)",
    "overruns": "deadline overruns",
    "cost": "cost",
}


def pareto_table(result: RunResult) -> pd.DataFrame:
    """One row per front allocation: allocation JSON, final criteria ± CI, search criteria."""
    g = result.genome
    rows = []
    for i, x in enumerate(result.X):
        row: dict[str, object] = {
            "id": i,
            "allocation": json.dumps(g.allocation(x), sort_keys=False),
            "instances": int(g.decode(x).sum()),
        }
        if hasattr(g, "describe"):  # a DecisionGenome: alignment and constant run too
            d = g.describe(x)
            row["parallelism"] = json.dumps(d["parallelism"])
            row["always_on"] = json.dumps(d["always_on"])
        for c, name in enumerate(CRITERIA):
            row[name] = result.F[i, c]
            row[f"{name}_ci"] = result.CI[i, c]
        for c, name in enumerate(CRITERIA):
            row[f"search_{name}"] = result.F_search[i, c]
        row["non_dominated"] = bool(result.final_front[i])
        row["chosen"] = i == result.chosen
        rows.append(row)
    return pd.DataFrame(rows)


def evaluated_table(result: RunResult) -> pd.DataFrame:
    """Every allocation the search simulated, in order, with its search-fidelity criteria."""
    X, F, _ = result.search.evaluator.evaluated()
    g = result.genome
    frame = pd.DataFrame(F, columns=list(CRITERIA))
    frame.insert(0, "allocation", [json.dumps(g.allocation(x)) for x in X])
    frame.insert(0, "order", np.arange(len(X)))
    return frame


def write_run(out: Path, scenario_file: Path, result: RunResult, run_name: str) -> None:
    """Write the run folder; the unfinished-run checkpoint moves into it."""
    search = result.search
    with atomic_dir(out) as tmp:
        inputs = tmp / "inputs"
        inputs.mkdir()
        shutil.copy(scenario_file, inputs / Path(scenario_file).name)
        (inputs / "base.yaml").write_text(dump_yaml(result.genome.base))
        write_table(pareto_table(result), tmp / "pareto")
        write_table(pd.DataFrame([asdict(h) for h in search.history]), tmp / "history")
        write_table(evaluated_table(result), tmp / "evaluated")
        if hasattr(search.evaluator, "fidelity_table"):  # multi-fidelity: what ran where
            write_table(search.evaluator.fidelity_table(), tmp / "fidelity")
        chosen = result.chosen_deployment(f"{run_name}-chosen")
        (tmp / "chosen.yaml").write_text(dump_yaml(chosen))
        (tmp / "run.json").write_text(json.dumps(run_settings(result, scenario_file), indent=2))
        pareto_plot(result, tmp / "pareto.png")
        convergence_plot(result, tmp / "convergence.png")
        (tmp / "report.md").write_text(report_markdown(result, run_name))
        search.checkpoint = tmp / "checkpoint.pkl"
        pending = checkpoint_path(out)
        if pending.is_file():
            # The last generation's checkpoint, from before the end game: --resume goes on
            # from where an uninterrupted longer run would be, and its end game runs once,
            # at the end (the screens of this run's end game would count against the
            # resumed search's screen budget, and its DES runs would change the front).
            shutil.copy(pending, search.checkpoint)
        else:
            search.save()
    search.checkpoint = out / "checkpoint.pkl"
    checkpoint_path(out).unlink(missing_ok=True)


def run_settings(result: RunResult, scenario_file: Path) -> dict:
    """Settings and headline numbers, JSON-ready."""
    s = result.search
    return {
        "scenario": str(scenario_file),
        "search": asdict(s.config),
        "search_fidelity": asdict(result.search_fidelity),
        "final_fidelity": asdict(result.final_fidelity),
        "generations": len(s.history),
        "simulations": s.evaluator.simulations,
        "individuals": s.evaluator.lookups,
        "search_time_s": round(s.elapsed_s, 3),
        "multifidelity": s.evaluator.summary() if hasattr(s.evaluator, "summary") else None,
        "hypervolume": s.history[-1].hv if s.history else None,
        "front_size": int(result.final_front.sum()),
        "method": result.method,
        "weights": result.weights,
        "chosen": {c: float(v) for c, v in zip(CRITERIA, result.F[result.chosen], strict=True)},
        "greedy": {c: float(v) for c, v in zip(CRITERIA, result.greedy_F, strict=True)},
    }


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def comparison_rows(chosen: np.ndarray, other: np.ndarray) -> list[tuple[str, float, float, str]]:
    """Per criterion: chosen, other, and who wins by how much (relative to the other)."""
    rows = []
    for c, name in enumerate(CRITERIA):
        a, b = float(chosen[c]), float(other[c])
        if abs(a - b) <= 1e-12 * max(1.0, abs(b)):
            verdict = "tie"
        else:
            pct = abs(a - b) / abs(b) * 100 if b else float("inf")
            verdict = f"{'chosen' if a < b else 'greedy'} better by {pct:.1f}%"
        rows.append((name, a, b, verdict))
    return rows


def report_markdown(result: RunResult, run_name: str) -> str:
    """The human-readable summary of a run."""
    s = result.search
    cfg = s.config
    ev = s.evaluator
    i = result.chosen
    lines = [
        f"# Placement optimisation: {result.genome.scenario.name} ({run_name})",
        "",
        f"- algorithm: {cfg.algorithm}, operators: {cfg.operators}, population {cfg.pop_size}, "
        f"{len(s.history)} generations, seed {cfg.seed}",
        f"- search fidelity: {result.search_fidelity.describe()}",
        f"- final fidelity (front re-scored): {result.final_fidelity.describe()}",
        f"- simulations: {ev.simulations} distinct allocations for {ev.lookups} individuals "
        f"(cache hit rate {1 - ev.simulations / max(ev.lookups, 1):.0%}), search time "
        f"{s.elapsed_s:.1f} s",
        *(
            [
                f"- multi-fidelity: {ev.settings.describe()}; {ev.des_runs} of {len(ev.log)} "
                f"candidates DES-scored, the rest screened only (fidelity table: fidelity.*)"
            ]
            if hasattr(ev, "des_runs")
            else []
        ),
        f"- front: {len(result.X)} allocations at search fidelity, "
        f"{int(result.final_front.sum())} non-dominated after re-scoring",
        f"- hypervolume (normalised to the initial population, reference 1.1): "
        f"{s.history[-1].hv:.4f}"
        if s.history
        else "- hypervolume: n/a",
        f"- decision: {result.method}"
        + (f" with weights {result.weights}" if result.weights else ""),
        "",
        "## Chosen deployment",
        "",
        "| criterion | mean | ± 95% CI |",
        "|---|---:|---:|",
    ]
    for c, name in enumerate(CRITERIA):
        lines.append(f"| {LABELS[name]} | {_fmt(result.F[i, c])} | {_fmt(result.CI[i, c])} |")
    g = result.genome
    shown = g.describe(result.X[i]) if hasattr(g, "describe") else g.allocation(result.X[i])
    lines += ["", "```yaml", json.dumps(shown, indent=1), "```"]
    lines += [
        "",
        "## Chosen vs greedy (best-fit decreasing), final fidelity",
        "",
        "| criterion | chosen | greedy | |",
        "|---|---:|---:|---|",
    ]
    for name, a, b, verdict in comparison_rows(result.F[i], result.greedy_F):
        lines.append(f"| {LABELS[name]} | {_fmt(a)} | {_fmt(b)} | {verdict} |")
    dominated = bool(
        np.all(result.greedy_F <= result.F[i]) and np.any(result.greedy_F < result.F[i])
    )
    lines += ["", f"Greedy dominates the chosen deployment: **{'yes' if dominated else 'no'}**."]
    lines += ["", "## Per-criterion optima on the front", "", "| best for | "]
    lines[-1] = "| best for | " + " | ".join(LABELS[c] for c in CRITERIA) + " |"
    lines.append("|---|" + "---:|" * len(CRITERIA))
    for name, j in result.optima.items():
        vals = " | ".join(_fmt(v) for v in result.F[j])
        lines.append(f"| {LABELS[name]} | {vals} |")
    lines += ["", "![Pareto front](pareto.png)", "", "![convergence](convergence.png)", ""]
    return "\n".join(lines)


def pareto_plot(result: RunResult, path: Path) -> None:
    """Pairwise scatter of the four criteria; the chosen point and greedy marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    F, mask, i = result.F, result.final_front, result.chosen
    pairs = [(a, b) for a in range(len(CRITERIA)) for b in range(a + 1, len(CRITERIA))]
    fig, axes = plt.subplots(2, 3, figsize=(12, 7))
    for ax, (a, b) in zip(axes.ravel(), pairs, strict=True):
        ax.scatter(F[~mask, a], F[~mask, b], s=12, c="0.7", label="dominated after re-scoring")
        ax.scatter(F[mask, a], F[mask, b], s=16, c="tab:blue", label="front")
        ax.scatter(
            result.greedy_F[a], result.greedy_F[b], marker="s", s=60, c="tab:orange", label="greedy"
        )
        ax.scatter(F[i, a], F[i, b], marker="*", s=200, c="tab:red", label="chosen")
        ax.set_xlabel(LABELS[CRITERIA[a]])
        ax.set_ylabel(LABELS[CRITERIA[b]])
        # Times and variances can span decades across a front: log axes then.
        if _wide(F[:, a]):
            ax.set_xscale("log")
        if _wide(F[:, b]):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _wide(v: np.ndarray) -> bool:
    v = v[np.isfinite(v)]
    return bool(v.size and v.min() > 0 and v.max() / v.min() > 100)


def convergence_plot(result: RunResult, path: Path) -> None:
    """Hypervolume of the best front found against simulations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = result.search.history
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r.simulations for r in h], [r.hv for r in h], marker="o", ms=3)
    ax.set_xlabel("simulations (distinct allocations)")
    ax.set_ylabel("hypervolume (normalised)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
