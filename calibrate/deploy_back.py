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
from calibrate.experiment import Testbed
from calibrate.host_noise import MAX_STEAL_CORES, undisturbed
from loadgen.host import host_summary
from loadgen.profile import scale_workload
from loadgen.run import LoadResult, LoadRun, execute, write_result
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


def read_optimize_run(folder: Path) -> OptimizeRun:
    """The chosen deployment, the greedy baseline and what the run predicted for both."""
    from optimizer.baselines import greedy
    from optimizer.genome import Genome

    chosen_file = folder / "chosen.yaml"
    if not chosen_file.is_file():
        raise FileNotFoundError(f"{folder} is not an optimize run folder (no chosen.yaml)")
    meta = json.loads((folder / "run.json").read_text())
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


def agree(twin: dict[str, float], testbed: dict[str, float]) -> dict[str, bool | None]:
    """Per criterion: do twin and testbed order chosen vs greedy the same way? (None: a tie)."""
    out: dict[str, bool | None] = {}
    for c in CRITERIA:
        a, b = twin[c], testbed[c]
        if not (math.isfinite(a) and math.isfinite(b)) or a == 0 or b == 0:
            out[c] = None
        else:
            out[c] = bool(np.sign(a) == np.sign(b))
    return out


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


def run_deploy_back(
    cfg: DeployBackConfig,
    testbed: Testbed,
    folder: Path,
    say: Callable[[str], None] = lambda _m: None,
) -> pd.DataFrame:
    """Both deployments on the testbed and in the twin; the criteria table (long form)."""
    opt = read_optimize_run(cfg.run)
    sc = opt.scenario
    name = (
        cfg.workload
        or opt.workload
        or next((w.name for w in sc.workloads if w.kind == "steady"), None)
    )
    if name is None:
        raise ValueError(f"scenario {sc.name!r} has no workload to offer; give --workload")
    w = scale_workload(sc.workload(name), 1.0)
    twin_sc, calibration = sc, None
    if cfg.calibration is not None:
        calibration = cal.load(cfg.calibration)
        twin_sc, _ = cal.calibrated_scenario(sc, calibration)
    rows = []
    with atomic_dir(folder) as tmp:
        scenario_file = tmp / "scenario.yaml"  # trace paths made absolute
        scenario_file.write_text(cal.dump_model(sc, exclude_defaults=True))
        for label, dep in (("chosen", opt.chosen), ("greedy", opt.greedy)):
            dep_file = tmp / f"{label}.yaml"
            dep_file.write_text(cal.dump_model(dep, exclude_defaults=True))
            say(f"{label}: testbed up")
            try:
                targets = testbed.up(scenario_file, dep_file)
                run = LoadRun(
                    sc, w, targets.gateway, cfg.duration_s, seed=cfg.seed, drain_s=cfg.drain_s,
                    metrics_targets=targets.metrics,
                    replica_nodes=targets.replica_nodes or None,
                )  # fmt: skip
                say(f"{label}: {name} for {cfg.duration_s:g} s")
                result = execute(run, tmp / "load" / label / "raw")
                write_result(run, result, tmp / "load" / label)
            finally:
                say(f"{label}: testbed down")
                testbed.down()
            measured = _criteria(result, sc, dep, cfg)
            clean, left_out = result, math.nan
            if cfg.max_steal_cores is not None:
                clean, left_out = undisturbed(result, cfg.max_steal_cores)
            measured_clean = _criteria(clean, sc, dep, cfg)
            host = host_summary(result.metrics, 0.0, cfg.duration_s + 1)
            ev = evaluate(twin_sc, dep, w, cfg.duration_s, cfg.replications, cfg.seed)
            twin = dict(zip(CRITERIA, ev.criteria(), strict=True))
            for c in CRITERIA:
                rows.append({"deployment": label, "criterion": c,
                             "optimizer": opt.predicted.get(label, {}).get(c, math.nan),
                             "twin": twin[c], "testbed": measured[c],
                             "testbed_undisturbed": measured_clean[c],
                             "left_out_pct": 100 * left_out,
                             "host_steal_pct": 100 * host["steal_cores"]})  # fmt: skip
        tab = pd.DataFrame(rows)
        tab.to_csv(tmp / "criteria.csv", index=False)
        (tmp / "report.md").write_text(report_text(cfg, opt, name, tab, calibration is not None))
    return tab


def _criteria(
    result: LoadResult, sc: Scenario, dep: Deployment, cfg: DeployBackConfig
) -> dict[str, float]:
    """The twin's placement criteria over the testbed's request log."""
    req = result.requests
    req = req[req["process"].astype(str).isin([p.name for p in sc.processes])]
    return placement_criteria(req, sc, dep, cfg.duration_s, cfg.duration_s + cfg.drain_s)


def report_text(
    cfg: DeployBackConfig, opt: OptimizeRun, workload: str, tab: pd.DataFrame, calibrated: bool
) -> str:
    wide = tab.pivot(
        index="criterion", columns="deployment", values=["twin", "testbed", "optimizer"]
    )
    lines = [
        f"# Deploy-back: {cfg.run} on the testbed",
        "",
        f"- scenario {opt.scenario.name}; workload {workload}, {cfg.duration_s:g} s, arrival "
        f"seed {cfg.seed}; twin {cfg.replications} replications at the same horizon"
        + (" (calibrated, overhead in the scenario)" if calibrated else " (uncalibrated spec)"),
        "- 'optimizer' is what the optimize run predicted at its own horizon (overruns and "
        "cost scale with the horizon); 'twin' re-predicts the testbed's run",
        f"- generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| criterion | chosen: twin | chosen: testbed | greedy: twin | greedy: testbed | "
        "same order? |",
        "|---|---:|---:|---:|---:|---|",
    ]
    twin_d = {
        c: wide.loc[c, ("twin", "chosen")] - wide.loc[c, ("twin", "greedy")] for c in CRITERIA
    }
    tb_d = {c: wide.loc[c, ("testbed", "chosen")] - wide.loc[c, ("testbed", "greedy")]
            for c in CRITERIA}  # fmt: skip
    same = agree(twin_d, tb_d)
    for c in CRITERIA:
        verdict = {True: "yes", False: "**no**", None: "tie"}[same[c]]
        lines.append(
            f"| {c} | {wide.loc[c, ('twin', 'chosen')]:.4g} | "
            f"{wide.loc[c, ('testbed', 'chosen')]:.4g} | {wide.loc[c, ('twin', 'greedy')]:.4g} "
            f"| {wide.loc[c, ('testbed', 'greedy')]:.4g} | {verdict} |"
        )
    decided = [v for v in same.values() if v is not None]
    lines += ["", f"The twin's ranking holds on {sum(decided)} of {len(decided)} criteria "
              "that are not tied.", ""]  # fmt: skip
    if "testbed_undisturbed" in tab and tab["left_out_pct"].notna().any():
        lines += undisturbed_ranking_lines(cfg, tab, twin_d)
    return "\n".join(lines)


def undisturbed_ranking_lines(
    cfg: DeployBackConfig, tab: pd.DataFrame, twin_d: dict[str, float]
) -> list[str]:
    """The ranking again over the testbed's undisturbed seconds, with each run's steal."""
    first = tab.drop_duplicates("deployment").set_index("deployment")
    wide = tab.pivot(index="criterion", columns="deployment", values="testbed_undisturbed")
    tb_d = {c: wide.loc[c, "chosen"] - wide.loc[c, "greedy"] for c in CRITERIA}
    same = agree(twin_d, tb_d)
    lines = [
        "## Undisturbed seconds",
        "",
        "The two deployments run one after the other on a host the hypervisor shares: "
        + ", ".join(
            f"during {d}'s run it took {first.loc[d, 'host_steal_pct']:.1f} % of a core "
            f"({first.loc[d, 'left_out_pct']:.0f} % of the requests fell in seconds with "
            f"steal ≥ {cfg.max_steal_cores:g} cores)"
            for d in ("chosen", "greedy")
        )
        + ". Without those requests:",
        "",
        "| criterion | chosen: testbed | greedy: testbed | same order as the twin? |",
        "|---|---:|---:|---|",
    ]
    for c in CRITERIA:
        verdict = {True: "yes", False: "**no**", None: "tie"}[same[c]]
        lines.append(
            f"| {c} | {wide.loc[c, 'chosen']:.4g} | {wide.loc[c, 'greedy']:.4g} | {verdict} |"
        )
    decided = [v for v in same.values() if v is not None]
    lines += ["", f"On undisturbed seconds the twin's ranking holds on {sum(decided)} of "
              f"{len(decided)} criteria that are not tied.", ""]  # fmt: skip
    return lines


# --------------------------------------------------------------------------- the command

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def validate_deployment(
    run: Annotated[Path, typer.Argument(help="An optimize run folder (runs/<name>).")],
    workload: Annotated[str, typer.Option(help="Workload (default: the run's).")] = "",
    duration: Annotated[float, typer.Option(help="Seconds of load per deployment.")] = 60.0,
    seed: Annotated[int, typer.Option(help="Arrival seed (testbed and twin).")] = 1,
    replications: Annotated[int, typer.Option(help="Twin replications.")] = 3,
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
) -> None:
    """Deploy an optimize run's chosen and greedy deployments; predicted vs measured."""
    from rich.console import Console

    from calibrate.experiment import CliTestbed
    from twin.load import SpecError

    err = Console(stderr=True)
    cfg = DeployBackConfig(run, workload or None, duration, seed, replications,
                           calibration=calibration, max_steal_cores=max_steal or None)  # fmt: skip
    out = Path("runs") / (name or f"{run.name}-deploy-back")
    out.parent.mkdir(parents=True, exist_ok=True)
    state = out.parent / f".{out.name}.testbed"
    testbed = CliTestbed(backend, state, log=out.parent / f".{out.name}.testbed.log")
    try:
        run_deploy_back(cfg, testbed, out, lambda m: err.print(m, highlight=False))
    except (SpecError, ValueError, KeyError, OSError, RuntimeError) as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    print((out / "report.md").read_text())
