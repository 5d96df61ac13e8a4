"""The umbrella command ``mlops-twin``.

The twin's own commands (validate, simulate, schema) live here. Every other
package mounts its sub-commands through ``LAZY_COMMANDS``: the module is only
imported when its command runs, so ``mlops-twin --help`` stays fast and a
twin-only install works. Results go to stdout (``--json`` for machines);
progress and errors go to stderr; errors never show a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from twin.deployment import InfeasibleDeployment
from twin.load import SpecError, parse, read_yaml
from twin.spec import Deployment, Scenario

out = Console()
err = Console(stderr=True)

# name → (module, attribute holding a typer.Typer). Packages register here.
LAZY_COMMANDS: dict[str, tuple[str, str, str]] = {
    # name: (module, attribute, one-line help shown by --help without importing)
    "testbed": ("testbed.cli", "app", "Emulated servers running real model stages."),
    "load": ("loadgen.cli", "app", "Open-loop Locust load runs against the testbed's gateway."),
    "experiment": ("calibrate.experiment", "app", "Testbed vs twin on three workloads: report."),
    "calibrate": ("calibrate.cli", "app", "Profile the testbed, fit the twin, validate both."),
    "export": ("testbed.backends.k8s_file", "app", "Kubernetes manifests for a deployment."),
    "validate-deployment": ("calibrate.deploy_back", "app", "Chosen vs greedy, on the testbed."),
    "optimize": ("optimizer.cli", "optimize_app", "Search placements; the twin scores them."),
    "decide": ("optimizer.cli", "decide_app", "Choose a deployment from an optimize run's front."),
    "rl": ("optimizer.rl.cli", "app", "Online pipeline configuration: PPO vs Random/Greedy/IPA."),
}


def fail(message: str, code: int = 2) -> None:
    """Print a one-paragraph error to stderr and exit with ``code``."""
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


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


class LazyGroup(typer.core.TyperGroup):
    """Adds the packages' commands, importing each only when it is invoked."""

    _listing = False

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = list(super().list_commands(ctx))
        return names + sorted(n for n in LAZY_COMMANDS if _available(n))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        cmd = super().get_command(ctx, name)
        if cmd is not None or name not in LAZY_COMMANDS:
            return cmd
        module, attr, short = LAZY_COMMANDS[name]
        if ctx.resilient_parsing or self._listing:
            # Listing commands: show the help line without importing the package.
            return click.Command(name, help=short, short_help=short)
        try:
            sub = getattr(importlib.import_module(module), attr)
        except ImportError as exc:
            fail(
                f"'{name}' needs optional dependencies that are not installed ({exc.name}); "
                "install with: pip install 'mlops-twin[all]'"
            )
            return None
        command = typer.main.get_command(sub)
        command.name = name
        return command


def _available(name: str) -> bool:
    module = LAZY_COMMANDS[name][0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def main() -> None:
    """Console-script entry point."""
    command = typer.main.get_command(app)
    group = LazyGroup(
        name="mlops-twin",
        commands=command.commands,  # type: ignore[attr-defined]
        help=command.help,
        no_args_is_help=True,
    )
    try:
        group(prog_name="mlops-twin")
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
