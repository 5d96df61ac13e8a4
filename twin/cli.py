"""The twin's own commands: ``mlops-twin validate``, ``simulate`` and ``schema``.

The umbrella ``mlops-twin`` (:mod:`mlops_twin.cli`) mounts them beside every
other package's commands. Results go to stdout (``--json`` for machines);
progress and errors go to stderr; errors never show a traceback.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from twin.console import err, fail, out
from twin.deployment import InfeasibleDeployment
from twin.load import SpecError, parse, read_yaml
from twin.spec import Deployment, Scenario

app = typer.Typer(
    name="mlops-twin",
    help="Digital-twin testbed for placing and configuring MLOps systems.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _detect_kind(data: Any) -> str:
    if isinstance(data, dict):
        if "servers" in data or "components" in data or "processes" in data:
            return "scenario"
        if "allocation" in data:
            return "deployment"
    return "scenario"


@app.command()
def validate(
    file: Annotated[Path, typer.Argument(help="A scenario or deployment YAML file.")],
    scenario: Annotated[
        Path | None,
        typer.Option("--scenario", "-s", help="Scenario to check a deployment's constraints."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Check a scenario or deployment file; exit 0 when it is usable."""
    from twin.deployment import require_feasible
    from twin.load import load_scenario

    try:
        data = read_yaml(file)
        kind = _detect_kind(data)
        if kind == "scenario":
            sc = parse(Scenario, data, str(file))
            from twin.load import resolve_paths

            sc = resolve_paths(sc, file.resolve().parent)
            info = {
                "kind": "scenario",
                "name": sc.name,
                "servers": len(sc.servers),
                "machines": len(sc.server_instances()),
                "components": len(sc.components),
                "processes": len(sc.processes),
                "workloads": [w.name for w in sc.workloads],
            }
            text = (
                f"OK: scenario {sc.name!r}: {info['servers']} server types "
                f"({info['machines']} machines), {info['components']} components, "
                f"{info['processes']} processes, {len(sc.workloads)} workloads"
            )
        else:
            dep = parse(Deployment, data, str(file))
            info = {"kind": "deployment", "name": dep.name, "checked_against": None}
            text = f"OK: deployment {dep.name!r} (schema only; pass --scenario to check limits)"
            if scenario is not None:
                sc = load_scenario(scenario)
                try:
                    require_feasible(sc, dep)
                except InfeasibleDeployment as exc:
                    raise SpecError(f"{file}: {exc}") from None
                info["checked_against"] = sc.name
                text = f"OK: deployment {dep.name!r} is feasible on scenario {sc.name!r}"
    except (SpecError, InfeasibleDeployment, ValueError) as exc:
        fail(str(exc))
        return
    if as_json:
        print(json.dumps(info))
    else:
        out.print(text, highlight=False)


@app.command()
def schema(
    deployment: Annotated[
        bool, typer.Option("--deployment", help="Print the deployment schema instead.")
    ] = False,
) -> None:
    """Print the JSON Schema of scenario (or deployment) files."""
    model = Deployment if deployment else Scenario
    print(json.dumps(model.model_json_schema(), indent=2))


@app.command()
def simulate(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML.")],
    deployment: Annotated[Path, typer.Option("--deployment", "-d", help="Deployment YAML.")],
    workload: Annotated[
        str, typer.Option("--workload", "-w", help="Workload name from the scenario, or 'none'.")
    ] = "none",
    horizon: Annotated[float, typer.Option(help="Simulated time (s).", min=1e-6)] = 3600.0,
    replications: Annotated[int, typer.Option(help="Independent runs.", min=1)] = 10,
    seed: Annotated[int, typer.Option(help="Seed of all random streams.")] = 1,
    workers: Annotated[
        int, typer.Option(help="Processes for replications (0: one per core).", min=0)
    ] = 1,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Write a run folder (records, report).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Simulate a deployment and print the four criteria with 95% confidence intervals."""
    from twin.deployment import require_feasible
    from twin.evaluate import evaluate
    from twin.load import load_deployment, load_scenario

    try:
        sc = load_scenario(scenario)
        dep = load_deployment(deployment)
        try:
            require_feasible(sc, dep)
        except InfeasibleDeployment as exc:
            raise SpecError(f"{deployment}: {exc}") from None
        with Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=err,
            transient=True,
            disable=not err.is_terminal,
        ) as progress:
            task = progress.add_task("replications", total=replications)
            result = evaluate(
                sc,
                dep,
                workload,
                horizon,
                replications,
                seed,
                keep_records=out_dir is not None,
                on_replication=lambda _r: progress.advance(task),
                workers=workers or (os.cpu_count() or 1),
            )
    except (SpecError, InfeasibleDeployment, ValueError) as exc:
        fail(str(exc))
        return
    if out_dir is not None:
        from twin.runs import write_simulation_run

        write_simulation_run(out_dir, scenario, deployment, result)
        err.print(f"run folder: {out_dir}", highlight=False)
    if as_json:
        print(json.dumps(result.to_dict()))
        return
    table = Table(title=f"{sc.name} / {dep.name} / workload {result.workload or 'own arrivals'}")
    table.add_column("criterion")
    table.add_column("mean", justify="right")
    table.add_column("± 95% CI", justify="right")
    for name, row in result.summary.iterrows():
        table.add_row(str(name), f"{row['mean']:.6g}", f"{row['ci']:.3g}")
    out.print(table)
    rate = result.events / result.wall_s if result.wall_s else float("nan")
    err.print(
        f"{replications} × {horizon:g} s simulated in {result.wall_s:.2f} s "
        f"({result.events} events, {rate:,.0f} events/s)",
        highlight=False,
    )


if __name__ == "__main__":  # the twin's own commands; the umbrella is mlops_twin.cli
    app()
