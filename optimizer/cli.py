"""``mlops-twin optimize`` and ``mlops-twin decide``.

Results go to stdout (``--json`` for machines); the per-generation progress
bar (with the current hypervolume) and errors go to stderr.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from optimizer.decide import METHODS
from twin.console import err, fail, out
from twin.criteria import CRITERIA
from twin.deployment import InfeasibleDeployment
from twin.load import SpecError

optimize_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
decide_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def parse_weights(text: str | None) -> list[float] | None:
    """``"1,1,0.5,2"`` → a list of 4 floats (one per criterion); None stays None."""
    if text is None or not text.strip():
        return None
    try:
        w = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--weights must be comma-separated numbers, got {text!r}") from None
    if len(w) != len(CRITERIA):
        raise ValueError(
            f"--weights needs {len(CRITERIA)} numbers ({', '.join(CRITERIA)}), got {len(w)}"
        )
    if not all(math.isfinite(x) and x >= 0 for x in w) or not any(w):
        raise ValueError(f"--weights must be finite numbers ≥ 0, not all 0, got {text!r}")
    return w


@optimize_app.command()
def optimize(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML.")],
    workload: Annotated[
        str, typer.Option("--workload", "-w", help="Workload name from the scenario, or 'none'.")
    ] = "none",
    algorithm: Annotated[str, typer.Option(help="nsga2, nsga3 or smsemoa.")] = "nsga2",
    operators: Annotated[
        str,
        typer.Option(
            help="placement (default: matrix operators, machine-set sampling, evacuate moves), "
            "custom (first-round matrix operators) or stock (rounded SBX + PM)."
        ),
    ] = "placement",
    pop: Annotated[
        int | None,
        typer.Option(help="Population size (default: max-evals / 8 in 6–100, else 100).", min=4),
    ] = None,
    gens: Annotated[int, typer.Option(help="Generations (including the initial one).", min=1)] = 50,
    max_evals: Annotated[
        int | None, typer.Option(help="Stop after this many simulated allocations.", min=1)
    ] = None,
    max_time: Annotated[
        float | None, typer.Option(help="Stop after this many seconds of search.", min=0)
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the search and of every simulation.")] = 1,
    horizon: Annotated[
        float, typer.Option(help="Simulated time per candidate during search (s).", min=1e-6)
    ] = 900.0,
    replications: Annotated[int, typer.Option(help="Replications per candidate.", min=1)] = 1,
    final_horizon: Annotated[
        float, typer.Option(help="Simulated time when re-scoring the front (s).", min=1e-6)
    ] = 3600.0,
    final_replications: Annotated[
        int, typer.Option(help="Replications when re-scoring the front.", min=1)
    ] = 3,
    final_max: Annotated[
        int, typer.Option(help="Re-score at most this many front allocations.", min=1)
    ] = 20,
    base: Annotated[
        Path | None,
        typer.Option(
            help="Deployment whose stage configs (and, with --decisions allocation, "
            "parallelism and constant-run choices) are kept."
        ),
    ] = None,
    decisions: Annotated[
        str,
        typer.Option(
            help="What the GA searches: 'all' — allocation, computation alignment (per-step "
            "parallelism) and constant run (always_on) as in the placement paper; "
            "'allocation' — the allocation matrix only, the rest copied from --base."
        ),
    ] = "all",
    method: Annotated[str, typer.Option(help=f"Decision method: {', '.join(METHODS)}.")] = "ideal",
    weights: Annotated[
        str | None, typer.Option(help="Comma-separated weights, one per criterion.")
    ] = None,
    max_instances: Annotated[
        int | None, typer.Option(help="Most instances per component when sampling.", min=1)
    ] = None,
    reference: Annotated[
        Path | None,
        typer.Option(help="Known front (parquet/CSV with the criteria columns) for IGD."),
    ] = None,
    screen: Annotated[
        bool,
        typer.Option(
            help="Multi-fidelity (default): screen every candidate with the fast twin, DES-score "
            "those that could enter the front, end game of screened local searches; settings "
            "from --max-evals (optimizer.multifidelity.MultiFidelity.for_budget; without it, "
            "from --pop × --gens). --no-screen: every candidate DES-scored (no numba, "
            "~100 MB less peak memory)."
        ),
    ] = True,
    screen_margin: Annotated[
        float, typer.Option(help="Relative slack of the screening domination test.", min=0)
    ] = 0.0,
    screen_des_share: Annotated[
        float | None,
        typer.Option(help="Most DES-scored share of each generation (default 0.25).", min=0),
    ] = None,
    screen_polish: Annotated[
        int | None,
        typer.Option(
            help="End game: screen this many one-move neighbours of the front, then DES-score "
            "what enters it (default: the budget B; 0: none).",
            min=0,
        ),
    ] = None,
    screen_rows: Annotated[
        int | None,
        typer.Option(
            help="End game: screen up to this many row neighbours (one component re-placed, "
            "the rest fitted around it) of the front's largest hypervolume contributors "
            "(default 8 × B; 0: none).",
            min=0,
        ),
    ] = None,
    screen_extremes: Annotated[
        int | None,
        typer.Option(
            help="End game: screen up to this many one-move neighbours of the front's largest "
            "hypervolume contributors, whole neighbourhoods (default: B; 0: none).",
            min=0,
        ),
    ] = None,
    screen_confirm: Annotated[
        int | None,
        typer.Option(
            help="End game: DES-score at most this many screening-only members of the final "
            "front, those adding the most hypervolume to the DES-scored ones; the front "
            "reported is the DES-scored candidates' own (default: as many as the search "
            "left of the DES budget).",
            min=0,
        ),
    ] = None,
    workers: Annotated[int, typer.Option(help="Local Dask worker processes (0: inline).")] = 0,
    scheduler: Annotated[
        str | None, typer.Option(help="Existing Dask scheduler, tcp://host:port.")
    ] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Run folder to write.")] = Path(
        "runs/optimize"
    ),
    resume: Annotated[bool, typer.Option(help="Continue the run checkpointed for --out.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Search allocation matrices with a genetic algorithm scored by the twin."""
    from optimizer.distributed import evaluation_client
    from optimizer.evaluation import Fidelity
    from optimizer.ga import SearchConfig, budget_pop
    from optimizer.multifidelity import search_budget
    from optimizer.report import run_settings, write_run
    from optimizer.run import optimize as run_optimize
    from twin.evaluate import resolve_workload
    from twin.load import load_deployment, load_scenario

    try:
        sc = load_scenario(scenario)
        base_dep = load_deployment(base) if base is not None else None
        w = None if workload == "none" else workload
        resolve_workload(sc, w)
        pop_size = pop if pop is not None else budget_pop(max_evals)
        mf = None
        if screen:
            from twin.screen import unscreenable

            field = unscreenable(sc)
            if field is not None:  # the screen would leave that field out
                typer.echo(
                    f"note: {scenario}: {field}: the screening fidelity does not model step "
                    "waits or per-part work, so every candidate is DES-scored (as with "
                    "--no-screen)",
                    err=True,
                )
                screen = False
        if screen:
            mf = _screening(
                max_evals if max_evals is not None else pop_size * gens,
                screen_margin,
                screen_des_share,
                screen_polish,
                screen_rows,
                screen_extremes,
                screen_confirm,
            )
        config = SearchConfig(
            algorithm=algorithm,
            operators=operators,
            pop_size=pop_size,
            n_gen=gens,
            # multi-fidelity: the search stops short of the budget, the end game's
            # confirmations spend the rest
            max_evals=search_budget(max_evals) if mf is not None and max_evals else max_evals,
            max_time_s=max_time,
            seed=seed,
            max_instances=max_instances,
        )
        search_fid = Fidelity(w, horizon, replications, seed)
        final_fid = Fidelity(w, final_horizon, final_replications, seed)
        wts = parse_weights(weights)
        ref_F = read_front(reference) if reference is not None else None
        if method not in METHODS:
            raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
        with (
            evaluation_client(workers, scheduler) as client,
            Progress(
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                TextColumn("gen {task.completed}/{task.total}"),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                console=err,
                transient=True,
                disable=not err.is_terminal,
            ) as progress,
        ):
            task = progress.add_task(f"{algorithm}", total=gens, info="")

            def tick(row) -> None:
                progress.update(
                    task,
                    completed=row.gen,
                    info=f"HV {row.hv:.4f}  front {row.front_size}  sims {row.simulations}",
                )

            result = run_optimize(
                sc,
                base_dep,
                config,
                search_fid,
                final_fid,
                out=out_dir,
                resume=resume,
                client=client,
                method=method,
                weights=wts,
                on_generation=tick,
                final_max=final_max,
                reference_F=ref_F,
                multifidelity=mf,
                decisions=decisions,
            )
        write_run(out_dir, scenario, result, out_dir.name)
    except (SpecError, InfeasibleDeployment, ValueError) as exc:
        fail(str(exc))
        return
    settings = run_settings(result, scenario)
    if as_json:
        print(json.dumps({"run": str(out_dir), **settings}))
        return
    table = Table(title=f"{sc.name}: chosen by {method} ({out_dir}/chosen.yaml)")
    table.add_column("criterion")
    table.add_column("chosen", justify="right")
    table.add_column("± 95% CI", justify="right")
    table.add_column("greedy", justify="right")
    i = result.chosen
    for c, name in enumerate(CRITERIA):
        table.add_row(
            name, f"{result.F[i, c]:.5g}", f"{result.CI[i, c]:.3g}", f"{result.greedy_F[c]:.5g}"
        )
    out.print(table)
    err.print(
        f"{settings['generations']} generations, {settings['simulations']} simulations, "
        f"{settings['search_time_s']:.1f} s; front {settings['front_size']}; run folder {out_dir}",
        highlight=False,
    )


def _screening(
    budget: int,
    margin: float,
    des_share: float | None,
    polish: int | None,
    rows: int | None,
    extremes: int | None,
    confirm: int | None = None,
):
    """The multi-fidelity settings for a DES budget of ``budget``: the documented rule
    (:meth:`MultiFidelity.for_budget`), with any option the user gave instead."""
    from dataclasses import replace

    from optimizer.multifidelity import MultiFidelity

    given = {
        "des_share": des_share,
        "polish_screens": polish,
        "row_screens": rows,
        "extreme_screens": extremes,
        "confirm_max": confirm,
    }
    return replace(
        MultiFidelity.for_budget(budget),
        margin=margin,
        **{k: v for k, v in given.items() if v is not None},
    )


def _safe_name(text: str) -> str:
    """``text`` as a spec Name (letters, digits, ``_`` and ``-``, ≤ 64 characters)."""
    import re

    name = re.sub(r"[^A-Za-z0-9_-]", "-", text).lstrip("-_")[:64]
    return name or "chosen"


@decide_app.command()
def decide(
    run: Annotated[Path, typer.Argument(help="A run folder written by 'mlops-twin optimize'.")],
    method: Annotated[
        str, typer.Option(help=f"{', '.join(METHODS)} or optima (one per criterion).")
    ] = "ideal",
    weights: Annotated[
        str | None, typer.Option(help="Comma-separated weights, one per criterion.")
    ] = None,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write the chosen deployment YAML here.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Choose a deployment from a run's Pareto front."""
    from optimizer.decide import choose, per_criterion_optima
    from twin.load import dump_yaml, load_deployment, parse
    from twin.spec import Deployment

    try:
        table = _read_pareto(run)
        front = table[table["non_dominated"]].reset_index(drop=True)
        F = front[list(CRITERIA)].to_numpy(dtype=float)
        wts = parse_weights(weights)
        if method == "optima":
            picks = {f"best {c}": i for c, i in per_criterion_optima(F).items()}
        elif method in METHODS:
            picks = {method: choose(F, method, wts)}
        else:
            raise ValueError(
                f"--method must be one of {', '.join(METHODS)} or optima, got {method!r}"
            )
        if out_file is not None:
            first = next(iter(picks.values()))
            base = load_deployment(run / "inputs" / "base.yaml")
            # validated, not model_copy'd: a damaged front must not yield a file that
            # fails its own schema
            data = base.model_dump(mode="python") | {
                "name": _safe_name(f"{run.name}-{method}"),
                "allocation": json.loads(front.loc[first, "allocation"]),
            }
            for column in ("parallelism", "always_on"):  # searched by --decisions all
                if column in front.columns:
                    data[column] = data[column] | json.loads(front.loc[first, column])
            source = f"{table.attrs['path']} (row id {int(front.loc[first, 'id'])})"
            dep = parse(Deployment, data, source)
            out_file.write_text(dump_yaml(dep))
    except (SpecError, ValueError, OSError, KeyError) as exc:
        fail(str(exc))
        return
    rows = [
        {
            "pick": label,
            "id": int(front.loc[i, "id"]),
            "allocation": json.loads(front.loc[i, "allocation"]),
            **{c: float(front.loc[i, c]) for c in CRITERIA},
        }
        for label, i in picks.items()
    ]
    if as_json:
        print(json.dumps(rows))
        return
    t = Table(title=f"{run}: {method}")
    t.add_column("pick")
    t.add_column("id", justify="right")
    for c in CRITERIA:
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(r["pick"], str(r["id"]), *(f"{r[c]:.5g}" for c in CRITERIA))
    out.print(t)
    if out_file is not None:
        err.print(f"deployment written to {out_file}", highlight=False)


def read_front(path: Path):
    """Criteria columns of a front file (parquet or CSV) as an n×4 array."""
    import pandas as pd

    if not path.is_file():
        raise ValueError(f"{path}: reference front file not found")
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    missing = [c for c in CRITERIA if c not in frame]
    if missing:
        raise ValueError(f"{path}: reference front lacks column(s) {', '.join(missing)}")
    if "non_dominated" in frame:
        frame = frame[frame["non_dominated"]]
    return frame[list(CRITERIA)].to_numpy(dtype=float)


def _read_pareto(run: Path):
    """The run's front table, checked: criteria finite, ids integers, allocations
    JSON objects; errors name the file, the column and the row id."""
    import io

    import pandas as pd

    from twin.inputs import MAX_TABLE_BYTES, read_bytes

    for name in ("pareto.parquet", "pareto.csv"):
        p = run / name
        if not p.exists():
            continue
        data = read_bytes(p, MAX_TABLE_BYTES, "a front table")
        read = pd.read_parquet if name.endswith("parquet") else pd.read_csv
        try:
            frame = read(io.BytesIO(data))
        except Exception as exc:  # pyarrow and pandas raise many types
            raise ValueError(f"{p}: not a readable table ({type(exc).__name__})") from None
        frame = _check_front(frame, p)
        frame.attrs["path"] = str(p)
        return frame
    raise ValueError(f"{run}: no pareto.parquet — is it a run folder of 'mlops-twin optimize'?")


def _check_front(frame, p: Path):
    import numpy as np

    missing = [c for c in ("id", "allocation", "non_dominated", *CRITERIA) if c not in frame]
    if missing:
        raise ValueError(f"{p}: missing column(s) {', '.join(missing)}")
    ids = pd_numeric(frame["id"])
    if not (np.isfinite(ids) & (ids == np.floor(ids))).all():
        raise ValueError(f"{p}: column 'id' must hold integers")
    for c in CRITERIA:
        values = pd_numeric(frame[c])
        bad = ~np.isfinite(values)
        if bad.any():
            raise ValueError(
                f"{p}: column {c!r} is not a finite number for row id {int(ids[bad.argmax()])}; "
                "the front is damaged — re-run optimize"
            )
    if frame["non_dominated"].dtype != bool:
        raise ValueError(f"{p}: column 'non_dominated' must hold booleans")
    for i, text in zip(ids, frame["allocation"], strict=True):
        try:
            alloc = json.loads(text)
        except (TypeError, ValueError):
            alloc = None
        if not isinstance(alloc, dict) or not all(isinstance(v, dict) for v in alloc.values()):
            raise ValueError(
                f"{p}: column 'allocation' of row id {int(i)} is not a JSON object "
                "{component: {machine: instances}}"
            )
    return frame


def pd_numeric(column):
    """A column as floats (NaN where not a number)."""
    import pandas as pd

    return pd.to_numeric(column, errors="coerce").to_numpy(dtype=float)
