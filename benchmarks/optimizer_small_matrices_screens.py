"""The screening twin against the DES on every candidate of the three-matrix small instance.

Run: nice -n 19 .venv/bin/python benchmarks/optimizer_small_matrices_screens.py

Screens all feasible canonical decision vectors of examples/small-matrices.yaml
(allocation, alignment, constant run) at the search fidelity of
benchmarks/optimizer_small_matrices.py and compares them with its exhaustive
DES table (run that benchmark first; its table is read, not recomputed): how
much of the true front's hypervolume the screens' own front holds once
DES-scored, and each criterion's mean relative error, per constant-run choice.
This is what decides whether a multi-fidelity search can trust its screens
on the constant-run decision (on-demand components start cold). Hypervolume
and error figures, not timings: no bench lock needed. Writes
benchmarks/results/optimizer_small_matrices_screens.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from rich.progress import track

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, markdown_table, write_result
from optimizer_small_matrices import FIDELITY, SCENARIO, exhaustive

from optimizer.ga import hypervolume, non_dominated
from optimizer.matrices import DecisionGenome
from optimizer.multifidelity import screen_deployment
from twin.criteria import CRITERIA
from twin.deployment import is_always_on
from twin.load import load_scenario


def main() -> None:
    sc = load_scenario(SCENARIO)
    genome = DecisionGenome(sc)
    X, F, _ = exhaustive(genome, None)
    deps = [genome.deployment(x) for x in X]
    S = np.array(
        [screen_deployment(sc, d, FIDELITY).mean for d in track(deps, description="screening")]
    )
    front = non_dominated(F)
    lo, hi = F[front].min(axis=0), F[front].max(axis=0)
    hv_true = hypervolume(F[front], lo, hi)
    sf = non_dominated(S)
    held = hypervolume(F[sf][non_dominated(F[sf])], lo, hi) / hv_true
    rel = (S - F) / np.where(np.abs(F) > 1e-12, np.abs(F), 1.0)
    open_names = [genome.components[k] for k in genome.open]
    comps = [sc.components[k] for k in genome.open]
    bits = np.array([[is_always_on(c, d) for c in comps] for d in deps], dtype=int)
    exact = np.all(S == F, axis=1)

    def row(name: str, sel: np.ndarray) -> list:
        mean, worst = rel[sel].mean(axis=0), np.abs(rel[sel]).max(axis=0)
        errs = [f"{m:+.2%} / {a:.1e}" for m, a in zip(mean, worst, strict=True)]
        return [name, int(sel.sum()), f"{exact[sel].mean():.1%}", *errs]

    rows = [row("all", np.ones(len(X), dtype=bool))]
    for key in sorted({tuple(int(v) for v in b) for b in bits}, reverse=True):
        rows.append(row(str(key), np.all(bits == key, axis=1)))
    text = "\n".join(
        [
            "# Screening twin vs DES on every candidate of the three-matrix small instance",
            "",
            "Command: `nice -n 19 .venv/bin/python benchmarks/optimizer_small_matrices_screens.py` "
            "(error and hypervolume figures, not timings: no bench lock)",
            "",
            f"- {machine_line()}",
            f"- instance: {SCENARIO.name}, {len(X):,} feasible canonical decision vectors, "
            f"evaluation {FIDELITY.describe()} (the exhaustive DES table of "
            "benchmarks/optimizer_small_matrices.py)",
            f"- true front {len(front)} points; the screens' own front {len(sf)} points, "
            f"{len(set(front) & set(sf))} of them on the true front; DES-scored, the screens' "
            f"front holds **{held:.4f}** of the true front's hypervolume (criteria normalised by "
            "the true front's ideal and nadir, reference point 1.1)",
            "",
            "## Relative error of the screen, (screen − DES) / DES: mean (%) / largest |error| "
            "(a fraction), by constant-run choice",
            "",
            f"Constant-run bits for {open_names} (1: always on, 0: on demand, starts cold "
            "after an idle spell).",
            "",
            markdown_table(
                ["constant run", "candidates", "all four criteria equal", *CRITERIA], rows
            ),
            "",
            "Before the fifth session the screening engine started on-demand instances warm and "
            "handed shared-queue work to the lowest-numbered idle worker. Measured then on the "
            "same table (main 003c72d, a script outside the repo): the screens' front had 51 "
            "points, 11 of them on the true front, and held 0.18 of its hypervolume once "
            "DES-scored; overruns screened 93–94 % low on average where the model server ran "
            "on demand. With cold starts modelled but the old worker order: 102 points, all on "
            "the true front, 0.9998.",
        ]
    )
    write_result("optimizer_small_matrices_screens", text)


if __name__ == "__main__":
    main()
