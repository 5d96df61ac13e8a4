"""``mlops-twin validate-deployment runs/<optimize-run>``: does the twin's ranking hold?

Takes an optimize run folder (``chosen.yaml``, ``inputs/``, ``run.json``),
rebuilds the greedy baseline's deployment the run compared against, deploys
each in turn on the testbed, offers both the same load (same workload, same
arrival seed) and scores the testbed's request log with the twin's own
``placement_criteria``. The twin predicts the same runs (same horizon and
seed; with ``--calibration``, the calibrated scenario, whose request
processes carry the measured per-request overhead). The report shows
predicted vs measured criteria of both deployments and, per criterion,
whether the twin and the testbed rank chosen vs greedy the same way — over
every request and, since the two run one after the other on a shared host,
over the requests of seconds without host steal (the host's steal during each
run is in the report: a ranking on a difference smaller than the host's
disturbance between the two runs says little).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import typer

from calibrate import calibration as cal
from lab.deploy_back_plot import DEPLOYMENTS, plot_ranking
from lab.host_noise import MAX_LEFT_OUT_PCT, MAX_STEAL_CORES, undisturbed
from loadgen.host import host_summary
from loadgen.run import LoadResult, LoadRun, execute, write_result
from testbed.client import Testbed
from twin.criteria import CRITERIA, placement_criteria
from twin.evaluate import evaluate
from twin.load import load_deployment, parse, read_yaml, resolve_paths
from twin.runs import atomic_dir
from twin.spec import Deployment, Scenario


@dataclass
class OptimizeRun:
    scenario_file: Path
    scenario: Scenario
    chosen: Deployment
    greedy: Deployment
    workload: str | None
    predicted: dict[str, dict[str, float]]  # "chosen"/"greedy" → criterion → value


def read_run_json(path: Path) -> dict:
    """An optimize run's ``run.json``: a bounded read of a JSON object whose ``search``
    and fidelity entries are objects; ValueError naming the file and field otherwise."""
    from twin.inputs import read_text

    try:
        meta = json.loads(read_text(path, 16 << 20, "an optimize run's run.json"))
    except (ValueError, RecursionError) as exc:
        if str(exc).startswith(str(path)):
            raise
        raise ValueError(f"{path}: not valid JSON ({type(exc).__name__})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object at the top level")
    for key in ("search", "final_fidelity", "search_fidelity"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise ValueError(f"{path}: field {key!r} must be an object")
    if not isinstance(meta.get("scenario", ""), str):
        raise ValueError(f"{path}: field 'scenario' must be a path (a string)")
    return meta


def read_optimize_run(folder: Path) -> OptimizeRun:
    """The chosen deployment, the greedy baseline and what the run predicted for both."""
    from optimizer.baselines import greedy
    from optimizer.genome import Genome

    chosen_file = folder / "chosen.yaml"
    if not chosen_file.is_file():
        raise FileNotFoundError(f"{folder} is not an optimize run folder (no chosen.yaml)")
    meta = read_run_json(folder / "run.json")
    inputs = folder / "inputs"
    scenario_files = [p for p in inputs.glob("*.yaml") if p.name != "base.yaml"]
    if len(scenario_files) != 1:
        raise ValueError(f"expected one scenario in {inputs}, found {len(scenario_files)}")
    # The copy is what was optimised; its relative trace paths point next to
    # the original file, not into inputs/.
    original = Path(meta.get("scenario", ""))
    base_dir = original.resolve().parent if original.is_file() else inputs
    scenario_file = scenario_files[0]
    sc = resolve_paths(parse(Scenario, read_yaml(scenario_file), str(scenario_file)), base_dir)
    base = load_deployment(inputs / "base.yaml")
    genome = Genome(sc, base)
    strategy = meta.get("search", {}).get("greedy_strategy", "best_fit")
    g = genome.deployment(greedy(genome, strategy), name="greedy")
    fidelity = meta.get("final_fidelity") or meta.get("search_fidelity") or {}
    workload = fidelity.get("workload")
    return OptimizeRun(
        scenario_file=scenario_file,
        scenario=sc,
        chosen=load_deployment(chosen_file),
        greedy=g,
        workload=None if workload in (None, "none") else workload,
        predicted={k: meta.get(k, {}) for k in ("chosen", "greedy")},
    )


# Relative difference below which chosen and greedy count as equal, on either side:
# the twin's own error. Its p50 on held-out steady-low runs was within ±4.6 %
# (benchmarks/results/calibrate_fidelity_history.md, runs 9-12), so a ranking it
# predicts on a smaller difference is not one it can stand behind.
TIE_WITHIN = 0.05


@dataclass(frozen=True)
class Difference:
    """Chosen − greedy over paired runs: the mean, its confidence interval, the tie margin."""

    mean: float
    half_width: float  # of the two-sided interval; NaN with fewer than two pairs
    n: int
    margin: float = 0.0  # |mean| at or below this is a tie, however narrow the interval

    @property
    def order(self) -> int:
        """+1 chosen higher, −1 chosen lower, 0 a tie (within the interval or the margin)."""
        if not math.isfinite(self.mean) or self.mean == 0:
            return 0
        hw = self.half_width if math.isfinite(self.half_width) else 0.0
        if abs(self.mean) <= max(hw, self.margin):
            return 0
        return int(np.sign(self.mean))

    def text(self, fmt: str = ".3g") -> str:
        if not math.isfinite(self.half_width):
            return f"{self.mean:+{fmt}}"
        return f"{self.mean:+{fmt}} ± {self.half_width:{fmt}}"


def paired_difference(
    chosen: np.ndarray, greedy: np.ndarray, level: float = 0.95, tie_within: float = 0.0
) -> Difference:
    """Mean of ``chosen[i] − greedy[i]`` with a Student-t interval over the pairs.

    Pairs share an arrival seed (testbed) or a replication's random streams
    (twin), so the pairing takes out the load's own noise; what is left is the
    run-to-run spread, the host's included. ``tie_within`` is the margin as a
    share of greedy's mean: a smaller difference is a tie however sure it is.
    """
    from scipy import stats

    c, g = np.asarray(chosen, dtype=float), np.asarray(greedy, dtype=float)
    d = c - g
    keep = np.isfinite(d)
    d = d[keep]
    if len(d) == 0:
        return Difference(math.nan, math.nan, 0)
    margin = tie_within * abs(float(g[keep].mean()))
    if len(d) == 1:
        return Difference(float(d[0]), math.nan, 1, margin)
    sd = float(d.std(ddof=1))
    hw = float(stats.t.ppf(0.5 + level / 2, len(d) - 1) * sd / math.sqrt(len(d)))
    return Difference(float(d.mean()), hw, len(d), margin)


def verdict(twin: Difference, testbed: Difference) -> bool | None:
    """Does the twin rank chosen vs greedy as the testbed does? None: not judged.

    Each side's difference is a tie when its interval holds 0 (the testbed's
    from repeated runs; with one run there is none) or it is within the margin.
    A testbed tie the twin also calls a tie agrees; a testbed tie the twin
    orders is not judged (the testbed says nothing to check against); a testbed
    order the twin calls a tie or reverses does not agree. Criteria that are 0
    on both sides (no overruns anywhere) are not judged either.
    """
    if testbed.mean == 0 and twin.mean == 0:
        return None
    tb, tw = testbed.order, twin.order
    if tb == 0:
        return True if tw == 0 else None
    return tw == tb


VERDICT_TEXT = {True: "yes", False: "**no**", None: "tie"}


@dataclass
class DeployBackConfig:
    run: Path
    workload: str | None = None  # default: the optimize run's, else the first steady one
    duration_s: float = 60.0
    seed: int = 1
    replications: int = 3
    drain_s: float = 5.0
    calibration: Path | None = None
    max_steal_cores: float | None = MAX_STEAL_CORES  # None: no undisturbed comparison
    repeat: int = 1  # runs of each deployment, alternating, seed + k for the k-th pair
    tie_within: float = TIE_WITHIN  # relative difference counted as a tie on either side


def as_deployed(scenario: Scenario, deployment: Deployment) -> Deployment:
    """``deployment`` as the testbed runs it: every component's instances constant-run."""
    on = {c.name: True for c in scenario.components}
    return deployment.model_copy(update={"always_on": on})


def run_order(repeat: int) -> list[tuple[int, str]]:
    """(pair, deployment) in the order they run: chosen-greedy, then greedy-chosen, ...

    Alternating who goes first keeps a drift of the host over the session (it
    warming up, a neighbour arriving) from landing on one deployment only.
    """
    out: list[tuple[int, str]] = []
    for k in range(repeat):
        pair = ("chosen", "greedy") if k % 2 == 0 else ("greedy", "chosen")
        out += [(k, label) for label in pair]
    return out


def run_deploy_back(
    cfg: DeployBackConfig,
    testbed: Testbed,
    folder: Path,
    say: Callable[[str], None] = lambda _m: None,
) -> pd.DataFrame:
    """Both deployments on the testbed and in the twin; the criteria table (long form).

    One row per pair × deployment × criterion; ``twin_replications.csv`` holds the
    twin's per-replication criteria, from which its own interval comes.
    """
    if cfg.repeat < 1:
        raise ValueError(f"repeat must be ≥ 1, got {cfg.repeat}")
    opt = read_optimize_run(cfg.run)
    sc = opt.scenario
    batch = [p.name for p in sc.processes if p.kind == "batch"]
    if batch:
        say(
            f"note: this offers the inference workload only; the batch processes "
            f"({', '.join(batch)}) run on the testbed with python -m lab.mlops_deploy_back"
        )
    name = _workload_name(cfg, opt)
    w = sc.workload(name)
    twin_sc, calibration = sc, None
    if cfg.calibration is not None:
        calibration = cal.load(cfg.calibration)
        twin_sc, _ = cal.calibrated_scenario(sc, calibration)
    # The testbed keeps every instance up for the whole run (it does not start and stop
    # on-demand instances), so both sides are scored as deployed: all constant-run.
    deployments = {
        label: as_deployed(sc, dep)
        for label, dep in (("chosen", opt.chosen), ("greedy", opt.greedy))
    }
    rows, twin_rows = [], []
    with atomic_dir(folder, keep_failed=True) as tmp:
        scenario_file = tmp / "scenario.yaml"  # trace paths made absolute
        scenario_file.write_text(cal.dump_model(sc, exclude_defaults=True))
        for label, dep in deployments.items():
            (tmp / f"{label}.yaml").write_text(cal.dump_model(dep, exclude_defaults=True))
        for k, label in run_order(cfg.repeat):
            dep, seed = deployments[label], cfg.seed + k
            run_name = label if cfg.repeat == 1 else f"{label}-{k}"
            say(f"{run_name}: testbed up")
            try:
                targets = testbed.up(scenario_file, tmp / f"{label}.yaml")
                run = LoadRun(
                    sc,
                    w,
                    targets.gateway,
                    cfg.duration_s,
                    seed=seed,
                    drain_s=cfg.drain_s,
                    metrics_targets=targets.metrics,
                    replica_nodes=targets.replica_nodes or None,
                )
                say(f"{run_name}: {name} for {cfg.duration_s:g} s, arrival seed {seed}")
                result = execute(run, tmp / "load" / run_name / "raw")
                write_result(run, result, tmp / "load" / run_name)
            finally:
                say(f"{run_name}: testbed down")
                testbed.down()
            measured = _criteria(result, sc, dep, cfg)
            clean, left_out = result, math.nan
            if cfg.max_steal_cores is not None:
                clean, left_out = undisturbed(result, cfg.max_steal_cores)
            measured_clean = _criteria(clean, sc, dep, cfg)
            host = host_summary(result.metrics, 0.0, cfg.duration_s + 1)
            ev = evaluate(twin_sc, dep, w, cfg.duration_s, cfg.replications, seed)
            twin = dict(zip(CRITERIA, ev.criteria(), strict=True))
            twin_rows.append(ev.per_replication.assign(deployment=label, pair=k))
            for c in CRITERIA:
                rows.append(
                    {
                        "pair": k,
                        "seed": seed,
                        "deployment": label,
                        "criterion": c,
                        "optimizer": opt.predicted.get(label, {}).get(c, math.nan),
                        "twin": twin[c],
                        "testbed": measured[c],
                        "testbed_undisturbed": measured_clean[c],
                        "left_out_pct": 100 * left_out,
                        "host_steal_pct": 100 * host["steal_cores"],
                    }
                )
            pd.DataFrame(rows).to_csv(tmp / "criteria.csv", index=False)  # kept on a crash
        tab = pd.DataFrame(rows)  # criteria.csv already holds it, written after each run
        twin_reps = pd.concat(twin_rows, ignore_index=True)
        twin_reps.to_csv(tmp / "twin_replications.csv", index=False)
        _write_report(tmp, cfg, opt, name, tab, twin_reps)
    return tab


def _write_report(
    folder: Path,
    cfg: DeployBackConfig,
    opt: OptimizeRun,
    workload: str,
    tab: pd.DataFrame,
    twin_reps: pd.DataFrame,
) -> str:
    plot_ranking(tab, twin_reps, judged_pairs(tab), folder / "ranking.png")
    text = report_text(cfg, opt, workload, tab, twin_reps, cfg.calibration is not None)
    (folder / "report.md").write_text(text)
    return text


def _workload_name(cfg: DeployBackConfig, opt: OptimizeRun) -> str:
    sc = opt.scenario
    name = (
        cfg.workload
        or opt.workload
        or next((w.name for w in sc.workloads if w.kind == "steady"), None)
    )
    if name is None:
        raise ValueError(f"scenario {sc.name!r} has no workload to offer; give --workload")
    return name


def report_again(cfg: DeployBackConfig, folder: Path) -> str:
    """Rewrite a finished deploy-back's ``report.md`` from its tables (e.g. another margin).

    ``cfg`` must describe the runs as they were made (run, workload, duration, seed);
    only the ranking's settings (``tie_within``, ``max_steal_cores``'s rule) may change.
    """
    tab_file, reps_file = folder / "criteria.csv", folder / "twin_replications.csv"
    for f in (tab_file, reps_file):
        if not f.is_file():
            raise FileNotFoundError(f"{folder} is not a finished deploy-back run (no {f.name})")
    opt = read_optimize_run(cfg.run)
    tab, reps = pd.read_csv(tab_file), pd.read_csv(reps_file)
    return _write_report(folder, cfg, opt, _workload_name(cfg, opt), tab, reps)


def _criteria(
    result: LoadResult, sc: Scenario, dep: Deployment, cfg: DeployBackConfig
) -> dict[str, float]:
    """The twin's placement criteria over the testbed's request log."""
    req = result.requests
    req = req[req["process"].astype(str).isin([p.name for p in sc.processes])]
    return placement_criteria(req, sc, dep, cfg.duration_s, cfg.duration_s + cfg.drain_s)


def differences(
    tab: pd.DataFrame, twin_reps: pd.DataFrame, column: str, tie_within: float = TIE_WITHIN
) -> dict[str, tuple]:
    """Per criterion: (twin difference, testbed difference in ``column``), chosen − greedy.

    The testbed's pairs are the runs sharing an arrival seed; the twin's are its
    replications with the same random streams, over every pair's seed.
    """
    out = {}
    for c in CRITERIA:
        tb = tab[tab["criterion"] == c].pivot(index="pair", columns="deployment", values=column)
        tw = twin_reps.pivot_table(index=["pair", "replication"], columns="deployment", values=c)
        out[c] = (
            paired_difference(tw["chosen"], tw["greedy"], tie_within=tie_within),
            paired_difference(tb["chosen"], tb["greedy"], tie_within=tie_within),
        )
    return out


def report_text(
    cfg: DeployBackConfig,
    opt: OptimizeRun,
    workload: str,
    tab: pd.DataFrame,
    twin_reps: pd.DataFrame,
    calibrated: bool,
) -> str:
    means = tab.groupby(["criterion", "deployment"])[["twin", "testbed", "optimizer"]].mean()
    wide = means.unstack("deployment")
    pairs = int(tab["pair"].nunique())
    lines = [
        f"# Deploy-back: {cfg.run} on the testbed",
        "",
        f"- scenario {opt.scenario.name}; workload {workload}, {cfg.duration_s:g} s, arrival "
        f"seed {cfg.seed}"
        + (
            f" to {cfg.seed + pairs - 1}, {pairs} runs of each deployment alternating "
            "(chosen first in even pairs, greedy first in odd ones)"
            if pairs > 1
            else ""
        )
        + f"; twin {cfg.replications} replications per seed at the same horizon"
        + (" (calibrated, overhead in the scenario)" if calibrated else " (uncalibrated spec)"),
        "- 'optimizer' is what the optimize run predicted at its own horizon (overruns and "
        "cost scale with the horizon); 'twin' re-predicts the testbed's runs",
        f"- generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
    ]
    diffs = differences(tab, twin_reps, "testbed", cfg.tie_within)
    tie = f"{100 * cfg.tie_within:g} % of greedy's value"
    if pairs > 1:
        lines += [
            "Values are means over the runs; a difference is chosen − greedy with its 95 % "
            "interval (testbed: over the pairs of runs; twin: over its paired replications). "
            f"A difference whose interval holds 0, or within {tie} (the twin's own error), "
            "is a tie.",
            "",
        ]
    else:
        lines += [
            f"One run of each deployment: a difference within {tie} (the twin's own error) "
            "is a tie, and nothing tells a larger one from the host's run-to-run spread "
            "(--repeat gives intervals).",
            "",
        ]
    columns = ["chosen: twin", "chosen: testbed", "greedy: twin", "greedy: testbed"]
    if pairs > 1:
        columns += ["twin: chosen − greedy", "testbed: chosen − greedy"]

    def cells(c: str, tw: Difference, tb: Difference) -> list[str]:
        values = [
            f"{wide.loc[c, (src, d)]:.4g}" for d in DEPLOYMENTS for src in ("twin", "testbed")
        ]
        return values + ([tw.text(), tb.text()] if pairs > 1 else [])

    table, same = _ranking_table(diffs, columns, cells, "same order?")
    lines += table
    lines += ["", _holds_line("The twin's ranking", same, diffs), ""]
    lines += [
        "![every run](ranking.png)",
        "",
        "*Every testbed run (a line joins the two runs of a pair) and the twin; filled: the "
        "run on undisturbed seconds, for the pairs ranked there.*",
        "",
    ]
    if "testbed_undisturbed" in tab and tab["left_out_pct"].notna().any():
        lines += undisturbed_ranking_lines(cfg, tab, twin_reps)
    return "\n".join(lines)


def _ranking_table(
    diffs: dict[str, tuple[Difference, Difference]],
    columns: list[str],
    cells: Callable[[str, Difference, Difference], list[str]],
    verdict_head: str,
) -> tuple[list[str], dict[str, bool | None]]:
    """A markdown table, a row per criterion ending in its verdict; and the verdicts."""
    lines = [
        "| criterion | " + " | ".join(columns) + f" | {verdict_head} |",
        "|---|" + "---:|" * len(columns) + "---|",
    ]
    same: dict[str, bool | None] = {}
    for c in CRITERIA:
        tw, tb = diffs[c]
        same[c] = verdict(tw, tb)
        row = " | ".join([c, *cells(c, tw, tb), _verdict_text(same[c], tw, tb)])
        lines.append(f"| {row} |")
    return lines, same


def _verdict_text(v: bool | None, twin: Difference, testbed: Difference) -> str:
    if v is None and testbed.mean == 0 and twin.mean == 0:
        return "tie (0 in both)"
    if testbed.order == 0:
        return "tie (both)" if v else "testbed can't tell"
    if v is False and twin.order == 0:
        return "**no** (twin: tie)"
    return VERDICT_TEXT[v]


def _holds_line(lead: str, same: dict[str, bool | None], diffs: dict[str, tuple]) -> str:
    decided = {c: v for c, v in same.items() if v is not None}
    text = f"{lead} holds on {sum(decided.values())} of {len(decided)} criteria"
    both = [c for c, v in same.items() if v and diffs[c][1].order == 0]
    cant = [c for c, v in same.items() if v is None and diffs[c][1].mean != 0]
    if both:
        text += f" ({', '.join(both)}: a tie in both, counted as agreeing)"
    else:
        text += " that are not tied"
    if cant:
        text += (
            f"; not counted: {', '.join(cant)}, where the testbed can't tell chosen from "
            "greedy and the twin can"
        )
    return text + "."


def judged_pairs(tab: pd.DataFrame) -> list[int]:
    """The pairs ranked on undisturbed seconds: neither run over ``MAX_LEFT_OUT_PCT`` left out.

    Validate leaves such a run unjudged: what remains of it is too little, and
    too unlike the run, to rank on.
    """
    worst = tab.groupby("pair")["left_out_pct"].max()
    return [int(k) for k in worst.index[worst <= MAX_LEFT_OUT_PCT]]


def undisturbed_ranking_lines(
    cfg: DeployBackConfig, tab: pd.DataFrame, twin_reps: pd.DataFrame
) -> list[str]:
    """The ranking again over the testbed's undisturbed seconds (``judged_pairs``)."""
    per_run = tab.drop_duplicates(["pair", "deployment"])
    per_dep = per_run.groupby("deployment")
    steal, left = per_dep["host_steal_pct"].mean(), per_dep["left_out_pct"].mean()
    pairs = int(tab["pair"].nunique())
    runs = "runs" if pairs > 1 else "run"
    lines = [
        "## Undisturbed seconds",
        "",
        "The deployments run one after the other on a host the hypervisor shares: "
        + ", ".join(
            f"during {d}'s {runs} it took {steal[d]:.1f} % of a core "
            f"({left[d]:.0f} % of the requests fell in seconds with "
            f"steal ≥ {cfg.max_steal_cores:g} cores)"
            for d in DEPLOYMENTS
        )
        + (" (means over the runs)" if pairs > 1 else "")
        + ".",
        "",
    ]
    kept = judged_pairs(tab)
    dropped = sorted(set(tab["pair"].astype(int)) - set(kept))
    if len(kept) == 0:
        lines += [
            "Not judged: host disturbed (every pair had a run with over "
            f"{MAX_LEFT_OUT_PCT:g} % of its requests in disturbed seconds).",
            "",
        ]
        return lines
    if dropped:
        lines += [
            f"Pair(s) {', '.join(map(str, dropped))} left out: a run of theirs had over "
            f"{MAX_LEFT_OUT_PCT:g} % of its requests in disturbed seconds.",
            "",
        ]
    tab = tab[tab["pair"].isin(kept)]
    twin_reps = twin_reps[twin_reps["pair"].isin(kept)]
    wide = tab.groupby(["criterion", "deployment"])["testbed_undisturbed"].mean().unstack()
    diffs = differences(tab, twin_reps, "testbed_undisturbed", cfg.tie_within)
    lines += [f"Without the requests of disturbed seconds, over {len(kept)} pair(s):", ""]
    columns = ["chosen: testbed", "greedy: testbed"]
    columns += ["testbed: chosen − greedy"] if pairs > 1 else []

    def cells(c: str, _tw: Difference, tb: Difference) -> list[str]:
        values = [f"{wide.loc[c, d]:.4g}" for d in DEPLOYMENTS]
        return values + ([tb.text()] if pairs > 1 else [])

    table, same = _ranking_table(diffs, columns, cells, "same order as the twin?")
    lines += table
    lines += ["", _holds_line("On undisturbed seconds the twin's ranking", same, diffs), ""]
    return lines


# --------------------------------------------------------------------------- the command

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def validate_deployment(
    run: Annotated[Path, typer.Argument(help="An optimize run folder (runs/<name>).")],
    workload: Annotated[str, typer.Option(help="Workload (default: the run's).")] = "",
    duration: Annotated[float, typer.Option(help="Seconds of load per deployment.")] = 60.0,
    seed: Annotated[int, typer.Option(help="Arrival seed (testbed and twin).")] = 1,
    replications: Annotated[int, typer.Option(help="Twin replications per seed.")] = 3,
    repeat: Annotated[
        int,
        typer.Option(
            min=1,
            help="Runs of each deployment, alternating who goes first; from 2 on, each "
            "difference gets a 95 % interval and one holding 0 counts as a tie.",
        ),
    ] = 3,
    tie_within: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Relative difference (share of greedy's value) below which chosen and greedy "
            "count as equal on either side: the twin's own error.",
        ),
    ] = TIE_WITHIN,
    calibration: Annotated[
        Path | None, typer.Option(help="Calibration file for the twin's prediction.")
    ] = None,
    backend: Annotated[str, typer.Option(help="Testbed backend.")] = "local",
    name: Annotated[str, typer.Option(help="Run folder name under runs/.")] = "",
    max_steal: Annotated[
        float,
        typer.Option(
            help="Also rank on the requests of seconds with host steal below this many cores; "
            "0 skips that comparison."
        ),
    ] = MAX_STEAL_CORES,
    report_only: Annotated[
        bool,
        typer.Option(
            help="Rank a finished run (runs/<name>) again from its tables, e.g. with another "
            "--tie-within; give the options it ran with."
        ),
    ] = False,
) -> None:
    """Deploy an optimize run's chosen and greedy deployments; predicted vs measured."""
    from rich.console import Console

    from testbed.client import CliTestbed
    from twin.load import SpecError

    err = Console(stderr=True)
    cfg = DeployBackConfig(
        run,
        workload or None,
        duration,
        seed,
        replications,
        calibration=calibration,
        max_steal_cores=max_steal or None,
        repeat=repeat,
        tie_within=tie_within,
    )
    out = Path("runs") / (name or f"{run.name}-deploy-back")
    problem = _bad_options(duration, replications, name)
    if problem:
        err.print(f"[bold red]error:[/] {problem}", highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    if report_only:
        try:
            print(report_again(cfg, out))
        except (SpecError, ValueError, KeyError, OSError) as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    state = out.parent / f".{out.name}.testbed"
    testbed = CliTestbed(backend, state, log=out.parent / f".{out.name}.testbed.log")
    try:
        run_deploy_back(cfg, testbed, out, lambda m: err.print(m, highlight=False))
    except (SpecError, ValueError, KeyError, OSError, RuntimeError) as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        failed = out.with_name(f"{out.name}.failed")
        if failed.is_dir():
            err.print(f"the runs measured so far are in {failed}", highlight=False)
        raise typer.Exit(2) from None
    print((out / "report.md").read_text())


def _bad_options(duration: float, replications: int, name: str) -> str:
    """Why the command-line options cannot run ("" when they can)."""
    import math
    import re

    if not (math.isfinite(duration) and duration > 0):
        return f"--duration must be a number of seconds > 0, got {duration}"
    if replications < 1:
        return f"--replications must be ≥ 1, got {replications}"
    if name and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", name):
        return f"--name {name!r}: a folder name under runs/ (letters, digits, _ . -; no /)"
    return ""
