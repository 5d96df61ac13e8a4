"""The fidelity a perfect twin could show on a knee sweep: the testbed's own run-to-run noise.

The knee report compares the twin with the mean of a level's two repeats. Even a twin that
knew each level's expected p50 / p95 / p99 exactly would miss that mean by the repeats'
own noise. This benchmark measures that noise from the repeats themselves and says how
often a perfect twin would meet the goals (p50 ≤ 5 %, p95 ≤ 10 %, p99 ≤ 15 %), level by
level. Reads run folders (``benchmarks/testbed_knee.py run``) and committed results only:
no load, no lock.

* **Run-to-run noise.** A level's two usable repeats of one sweep (one run from each
  pass, about 7 minutes apart) give d = log(run 1 / run 2) for each figure. With σ the
  log-sd of one run's figure, d has variance 2σ²; σ is pooled over the sweeps and
  deployments given (σ² = Σd² / 2n, its 90 % interval from χ²ₙ).
* **A perfect twin's hit rate.** The report's error is twin / mean(repeats) − 1. With the
  twin at the expected value and its own 8 seeds as noisy as the testbed's runs, the log
  error has variance σ² (1/2 + 1/8); the hit rate is the chance it lands inside the goal.
  The twin's fit on the other levels adds its own error on top: the rate is an upper bound.
* **Does the twin's spread cover the testbed's?** Per level, each usable testbed run's p95
  against the held-out twin's 8 seeds (one seed is one run as long as the testbed's, cached
  by the report in ``twin-rho*-calls/twin_level.json``). If the twin's run-to-run
  distribution were the testbed's, a run would land inside the seeds' range with chance
  7/9; and the seeds' log-sd of p95 would match σ.
* ``--tables``: more p95 pairs from committed knee results whose run folders are gone
  (their ``tb p95 per run`` column; a sweep scored twice counts once).
* ``--errors``: knee results whose held-out errors are counted against the goals, beside
  the count a perfect twin would be expected to reach at the run folders' noise.

Usage::

    python benchmarks/testbed_knee_floor.py --runs runs/knee-compose-s14 \\
        --runs runs/knee-compose-s15 --tables 'benchmarks/results/testbed_knee_compose*.md' \\
        --errors benchmarks/results/testbed_knee_compose_s15.md

The result: ``benchmarks/results/testbed_knee_floor.md`` (``--result`` renames it; the
committed ones are ``testbed_knee_floor_compose.md`` and ``testbed_knee_floor_local.md``).
"""

from __future__ import annotations

import argparse
import functools
import glob
import json
import math
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
import testbed_knee as knee
from _report import machine_line, markdown_table, write_result

FIGURES = ("p50", "p95", "p99")
GOALS = {"p50": 0.05, "p95": 0.10, "p99": 0.15}  # the twin's fidelity goals (ρ ≤ 0.9)
LEVELS = (0.2, 0.4, 0.6, 0.8, 0.9)
TB_REPEATS = 2  # the knee report's figure: the mean over a level's two repeats
TWIN_SEEDS = 8  # the knee report's twin: 8 seeds, pooled


def deployments(sweep: Path) -> list[Path]:
    """A sweep's deployment folders (those its capacity probe or estimate was written to)."""
    return sorted(p for p in sweep.iterdir() if (p / "capacity.json").exists())


@functools.cache
def sweep_runs(sweep: Path, name: str) -> pd.DataFrame:
    """Deployment ``name``'s runs in ``sweep`` as the knee report reads them
    (:func:`testbed_knee._levels`: usable, disturbed, figures); read once per report."""
    knee.OUT = sweep
    return knee._levels(name)


def repeat_pairs(sweep: Path) -> pd.DataFrame:
    """Per deployment and level ≤ 0.9 of one sweep: the log ratio of its first two usable
    repeats' p50 / p95 / p99 (``d_p50`` …) and the level's run length (s)."""
    rows = []
    for dep_dir in deployments(sweep):
        runs = sweep_runs(sweep, dep_dir.name)
        if runs.empty:
            continue
        for rho, g in runs[runs["usable"] & runs["rho"].isin(LEVELS)].groupby("rho"):
            if len(g) < 2:
                continue
            a, b = g.iloc[0], g.iloc[1]
            rows.append(
                {
                    "sweep": sweep.name,
                    "deployment": dep_dir.name,
                    "rho": float(rho),
                    "duration_s": float(g["duration"].mean()),
                    **{f"d_{f}": math.log(a[f] / b[f]) for f in FIGURES},
                }
            )
    return pd.DataFrame(rows)


def level_rows(path: str) -> Iterator[tuple[str, float, dict[str, str]]]:
    """A knee result's level rows: (deployment, ρ ≤ 0.9, {column header: cell}), from the
    tables under each ``## <deployment>: …`` section."""
    dep, header = None, None
    for line in Path(path).read_text().splitlines():
        if line.startswith("## "):  # a deployment's section, or another one
            head = re.match(r"## (\w+): ", line)
            dep, header = (head.group(1) if head else None), None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == "ρ":
            header = cells
            continue
        level = re.fullmatch(r"0\.\d", cells[0]) is not None and float(cells[0]) in LEVELS
        if dep and header and len(cells) == len(header) and level:
            yield dep, float(cells[0]), dict(zip(header, cells, strict=True))


def table_pairs(patterns: list[str]) -> pd.DataFrame:
    """p95 repeat pairs from committed knee results (``tb p95 per run`` = "a/b"), one per
    sweep: a level scored in several result files counts once (same deployment, ρ, pair)."""
    rows, seen = [], set()
    for path in sorted({p for pattern in patterns for p in glob.glob(pattern)}):
        for dep, rho, row in level_rows(path):
            pair = re.fullmatch(r"(\d+(?:\.\d+)?)/(\d+(?:\.\d+)?)", row.get("tb p95 per run", ""))
            if pair is None:
                continue
            a, b = float(pair.group(1)), float(pair.group(2))
            if (dep, rho, a, b) in seen or a <= 0 or b <= 0:
                continue
            seen.add((dep, rho, a, b))
            rows.append(
                {"source": Path(path).stem, "deployment": dep, "rho": rho, "d_p95": math.log(a / b)}
            )
    return pd.DataFrame(rows)


def twin_errors(paths: list[str]) -> pd.DataFrame:
    """The held-out twin's errors (%) per deployment and level ≤ 0.9 in knee results
    (their ``p50 err %``, ``p95 err %`` and ``p99 err %`` columns)."""
    rows = []
    for path in paths:
        for dep, rho, row in level_rows(path):
            if all(f"{f} err %" in row for f in FIGURES):
                errs = {f: float(row[f"{f} err %"]) for f in FIGURES}
                rows.append({"source": Path(path).stem, "deployment": dep, "rho": rho} | errs)
    return pd.DataFrame(rows)


def sigma(d: pd.Series) -> tuple[float, float, float]:
    """One run's log-sd from pair log ratios, with its 90 % interval (χ² with n d.o.f.)."""
    d = d.dropna()
    n = len(d)
    if n == 0:
        return (float("nan"),) * 3
    ss = float((d**2).sum()) / 2
    return (
        math.sqrt(ss / n),
        math.sqrt(ss / stats.chi2.ppf(0.95, n)),
        math.sqrt(ss / stats.chi2.ppf(0.05, n)),
    )


def _within(sd: float, goal: float) -> float:
    """Chance that exp(X) − 1 is within ±goal for X ~ N(0, sd²)."""
    return float(stats.norm.cdf(math.log1p(goal) / sd) - stats.norm.cdf(math.log1p(-goal) / sd))


def hit_rate(s: float, goal: float) -> float:
    """Chance that a perfect twin's error (twin / mean of the repeats − 1) is within ±goal,
    with one run's log-sd ``s``: log error ~ N(0, s² (1/2 + 1/8))."""
    if not np.isfinite(s) or s <= 0:
        return float("nan")
    return _within(s * math.sqrt(1 / TB_REPEATS + 1 / TWIN_SEEDS), goal)


def repeats_needed(s: float, goal: float, sure: float = 0.9, most: int = 10_000) -> int:
    """The fewest repeats of a level for a perfect twin (with many seeds) to meet ``goal``
    with chance ``sure``, one run's log-sd being ``s``; 0 when ``s`` is unknown."""
    if not np.isfinite(s):
        return 0
    n = 1
    while n < most and _within(s / math.sqrt(n), goal) < sure:
        n += 1
    return n


def coverage(sweep: Path) -> list[dict]:
    """Per deployment and level: the usable testbed runs' p95 against the held-out twin's
    seeds (from the report's cache), and the seeds' own log-sd of p95."""
    out = []
    for dep_dir in deployments(sweep):
        runs = sweep_runs(sweep, dep_dir.name)
        for rho in LEVELS:
            cache = dep_dir / f"twin-rho{rho:.1f}-calls" / "twin_level.json"
            g = runs[(runs["rho"] == rho) & runs["usable"]] if not runs.empty else runs
            if not cache.exists() or g.empty:
                continue
            seeds = np.array(json.loads(cache.read_text())["out"]["twin_p95_runs"])
            tb = g["p95"].to_numpy()
            out.append(
                {
                    "sweep": sweep.name,
                    "deployment": dep_dir.name,
                    "rho": rho,
                    "tb": tb,
                    "seeds": seeds,
                    "inside": int(((tb >= seeds.min()) & (tb <= seeds.max())).sum()),
                    "above": int((tb > seeds.max()).sum()),
                    "below": int((tb < seeds.min()).sum()),
                    "error": float(np.mean(seeds) / tb.mean() - 1),
                    "seed_sd": float(np.std(np.log(seeds), ddof=1)),
                }
            )
    return out


def capacity_readings(sweep: Path) -> list[dict]:
    """Per deployment: every backlogged throughput the sweep measured (req/s; its capacity
    probe, its ρ ≥ 1 runs and a probe at its end in ``<sweep>-end/``, when there is one),
    in time order, and what the sweep's nominal ρ 0.9 was at the lowest and highest."""
    out = []
    end_sweep = sweep.with_name(sweep.name + "-end")
    for dep_dir in deployments(sweep):
        cap = json.loads((dep_dir / "capacity.json").read_text())
        folders = [(dep_dir / "probe", "probe")]
        folders += [(f, f.name) for f in sorted(dep_dir.glob("rho[12].*-*"))]
        folders.append((end_sweep / dep_dir.name / "probe", "end probe"))
        reads = []
        for f, label in folders:
            if not (f / "summary.json").exists():
                continue
            served = knee._served_rps(f)
            offered = json.loads((f / "summary.json").read_text())["offered_rps"]
            if np.isfinite(served) and served < knee.PROBE_BACKLOG * offered:  # backlogged
                reads.append(((f / "summary.json").stat().st_mtime, label, served))
        if len(reads) < 2:
            continue
        reads.sort()
        rate09 = 0.9 * float(cap["capacity_rps"])
        served = np.array([r[2] for r in reads])
        out.append(
            {
                "sweep": sweep.name,
                "deployment": dep_dir.name,
                "reads": [(n, x) for _, n, x in reads],
                "spread": float(served.max() / served.min() - 1),
                "rho09": (rate09 / served.max(), rate09 / served.min()),
            }
        )
    return out


def _pct(x: float) -> str:
    return "–" if not np.isfinite(x) else f"{100 * x:.0f}"


def _pairs_section(pairs: pd.DataFrame) -> list[str]:
    """The run folders' repeat pairs: σ and a perfect twin's hit rate per level, and the
    pairs themselves; nothing without pairs."""
    if pairs.empty:
        return []
    text = [
        "",
        "## Run-to-run noise and a perfect twin's hit rate, per level (run folders)",
        "",
    ]
    rows, all_goals = [], 1.0
    for rho in LEVELS:
        g = pairs[pairs["rho"] == rho]
        if g.empty:
            continue
        cells: list[object] = [f"{rho:.1f}", len(g)]
        hits, need = [], []
        for f in FIGURES:
            s, lo, hi = sigma(g[f"d_{f}"])
            hits.append(hit_rate(s, GOALS[f]))
            need.append(repeats_needed(s, GOALS[f]))
            cells += [f"{_pct(s)} ({_pct(lo)}–{_pct(hi)})", _pct(hits[-1])]
        # the three figures of a level move together: their joint chance is at most the
        # least likely one's
        all_goals *= min(hits)
        n = max(need)
        cells += [n, f"{n * float(g['duration_s'].mean()) / 60:.0f}"]
        rows.append(cells)
    text.append(
        markdown_table(
            [
                "ρ",
                "pairs",
                "σ p50 % (90 %)",
                "perfect twin meets p50 ≤ 5 %, %",
                "σ p95 % (90 %)",
                "meets p95 ≤ 10 %, %",
                "σ p99 % (90 %)",
                "meets p99 ≤ 15 %, %",
                "repeats for 90 % on all three",
                "their minutes",
            ],
            rows,
        )
    )
    text += [
        "",
        f"- a perfect twin meets every goal at all {len(rows)} levels of one sweep with "
        f"chance ≤ {100 * all_goals:.1f} % (each level's least likely figure; levels taken as "
        "independent). Repeats for 90 %: how many runs of the level's length a perfect twin "
        "with many seeds needs to meet each of the three goals with chance 0.9.",
    ]
    text += ["", "Pairs (log ratio of the two repeats, %):", ""]
    text.append(
        markdown_table(
            ["sweep", "deployment", "ρ", *(f"d {f}" for f in FIGURES)],
            [
                [
                    r.sweep,
                    r.deployment,
                    f"{r.rho:.1f}",
                    *(f"{100 * getattr(r, f'd_{f}'):+.0f}" for f in FIGURES),
                ]
                for r in pairs.itertuples()
            ],
        )
    )
    return text


def _errors_section(pairs: pd.DataFrame, errors: list[str]) -> list[str]:
    """How many goal cells the twin met in knee results, against a perfect twin's expected
    count at the run folders' noise; nothing without both."""
    err = twin_errors(errors) if errors else pd.DataFrame()
    if pairs.empty or err.empty:
        return []
    rows, met, expected, cells = [], 0, 0.0, 0
    for rho in LEVELS:
        g, e = pairs[pairs["rho"] == rho], err[err["rho"] == rho]
        if g.empty or e.empty:
            continue
        n = len(e) * len(FIGURES)
        m = sum(int((e[f].abs() <= 100 * GOALS[f]).sum()) for f in FIGURES)
        x = sum(len(e) * hit_rate(sigma(g[f"d_{f}"])[0], GOALS[f]) for f in FIGURES)
        rows.append([f"{rho:.1f}", n, m, f"{x:.1f}"])
        met, expected, cells = met + m, expected + x, cells + n
    return [
        "",
        "## The twin's goal cells against a perfect twin's",
        "",
        "Held-out errors from " + ", ".join(f"`{Path(p).stem}`" for p in errors) + " (each "
        "deployment's p50, p95 and p99 at each level); a perfect twin's expected count from "
        "the hit rates above.",
        "",
        markdown_table(["ρ", "cells", "the twin met", "a perfect twin, expected"], rows),
        "",
        f"- the twin met {met} of {cells} cells ({100 * met / max(cells, 1):.0f} %); a perfect "
        f"twin would be expected to meet {expected:.1f} ({100 * expected / max(cells, 1):.0f} %)",
    ]


def report(
    sweeps: list[Path], tables: list[str], result: str, errors: list[str] | None = None
) -> str:
    pairs = pd.concat([pd.DataFrame(), *(repeat_pairs(s) for s in sweeps)], ignore_index=True)
    cov = [c for s in sweeps for c in coverage(s)]
    text = [
        "# The knee's noise floor: the fidelity a perfect twin could show",
        "",
        f"- {machine_line()}",
        "- command: `python benchmarks/testbed_knee_floor.py"
        + "".join(f" --runs {s}" for s in sweeps)
        + "".join(f" --tables '{t}'" for t in tables)
        + "".join(f" --errors {e}" for e in errors or [])
        + f" --result {result}` (reads run folders and result files only)",
        "- σ: one run's log-sd of the figure, from the level's two usable repeats in each "
        "sweep (σ² = Σd²/2n, d = log of the repeats' ratio; 90 % interval from χ²ₙ), pooled "
        "over the sweeps and deployments; in %. Perfect twin: the chance that a twin at the "
        "expected value meets the goal against the mean of two repeats, its 8 seeds as "
        "noisy as the testbed's runs (log error ~ N(0, σ²·5/8)); an upper bound, the fit "
        "on the other levels adds its own error. Goals: p50 5 %, p95 10 %, p99 15 %.",
    ]
    text += _pairs_section(pairs)
    text += _errors_section(pairs, errors or [])
    if tables:
        tp = table_pairs(tables)
        text += [
            "",
            "## p95 pairs from committed results ("
            + ", ".join(f"`{t}`" for t in tables)
            + "; sweeps whose run folders are gone)",
            "",
        ]
        trows, all_p95 = [], 1.0
        for rho in LEVELS:
            g = tp[tp["rho"] == rho] if not tp.empty else tp
            if g.empty:
                continue
            s, lo, hi = sigma(g["d_p95"])
            within = float((np.abs(np.expm1(g["d_p95"])) <= GOALS["p95"]).mean())
            all_p95 *= hit_rate(s, GOALS["p95"])
            trows.append(
                [
                    f"{rho:.1f}",
                    len(g),
                    f"{_pct(s)} ({_pct(lo)}–{_pct(hi)})",
                    _pct(within),
                    _pct(hit_rate(s, GOALS["p95"])),
                    repeats_needed(s, GOALS["p95"]),
                ]
            )
        text.append(
            markdown_table(
                [
                    "ρ",
                    "pairs",
                    "σ p95 % (90 %)",
                    "repeats within 10 % of each other, %",
                    "perfect twin meets p95 ≤ 10 %, %",
                    "repeats for 90 %",
                ],
                trows,
            )
        )
        text += [
            "",
            f"- a perfect twin meets p95 ≤ 10 % at all {len(trows)} levels of one sweep with "
            f"chance {100 * all_p95:.1f} % (levels taken as independent)",
        ]
        text += ["", "Sources: " + ", ".join(sorted(set(tp["source"]))) if not tp.empty else ""]
    if cov:
        text += [
            "",
            "## The held-out twin's seeds against the testbed's runs (p95, ms)",
            "",
            "A testbed run inside the 8 seeds' range has chance 7/9 (78 %) if the twin's "
            "run-to-run distribution is the testbed's. Error: the seeds' mean over the runs' "
            "mean, − 1 (the report pools the seeds' requests instead).",
            "",
        ]
        text.append(
            markdown_table(
                [
                    "sweep",
                    "deployment",
                    "ρ",
                    "testbed runs",
                    "twin seeds (min–max)",
                    "inside / above / below",
                    "error %",
                    "seeds' σ p95 %",
                ],
                [
                    [
                        c["sweep"],
                        c["deployment"],
                        f"{c['rho']:.1f}",
                        "/".join(f"{x:.0f}" for x in c["tb"]),
                        f"{c['seeds'].min():.0f}–{c['seeds'].max():.0f}",
                        f"{c['inside']} / {c['above']} / {c['below']}",
                        f"{100 * c['error']:+.1f}",
                        _pct(c["seed_sd"]),
                    ]
                    for c in cov
                ],
            )
        )
        n = sum(len(c["tb"]) for c in cov)
        inside = sum(c["inside"] for c in cov)
        text += [
            "",
            f"- testbed runs inside the twin's seed range: {inside} of {n} "
            f"({100 * inside / max(n, 1):.0f} %; 78 % expected if the spreads match)",
        ]
    caps = [c for s in sweeps for c in capacity_readings(s)]
    if caps:
        text += [
            "",
            "## Where nominal ρ 0.9 fell: the sweep's backlogged throughputs "
            "(req/s, in time order)",
            "",
            "The levels are fractions of the capacity probe at the sweep's start. Each "
            "backlogged run (the ρ ≥ 1 runs, a probe at the end) reads the capacity again "
            "(answers per second over its second half).",
            "",
        ]
        text.append(
            markdown_table(
                [
                    "sweep",
                    "deployment",
                    "readings",
                    "spread %",
                    "nominal ρ 0.9 at the highest / lowest",
                ],
                [
                    [
                        c["sweep"],
                        c["deployment"],
                        ", ".join(f"{n} {x:.1f}" for n, x in c["reads"]),
                        f"{100 * c['spread']:.0f}",
                        f"{c['rho09'][0]:.2f} / {c['rho09'][1]:.2f}",
                    ]
                    for c in caps
                ],
            )
        )
    out = "\n".join(text)
    write_result(result, out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", action="append", default=[], type=Path, help="a knee sweep's folder")
    ap.add_argument(
        "--tables", action="append", default=[], help="glob of committed knee results (p95 pairs)"
    )
    ap.add_argument(
        "--errors", action="append", default=[], help="a knee result whose twin errors to count"
    )
    ap.add_argument("--backend", default="compose", choices=list(knee.OUTS))
    ap.add_argument("--result", default="testbed_knee_floor", help="name in benchmarks/results")
    a = ap.parse_args()
    knee.use_backend(a.backend)
    report(a.runs, a.tables, a.result, a.errors)


if __name__ == "__main__":
    main()
