"""The umbrella command ``mlops-twin``.

The twin's own commands (validate, simulate, schema) come from :mod:`twin.cli`.
Every other package's sub-commands are mounted through ``LAZY_COMMANDS``: a
module is only imported when its command runs, so ``mlops-twin --help`` stays
fast and a twin-only install works. A group may gather commands from several
modules (``calibrate validate`` and ``rl control`` are the lab's, since they
drive a live testbed). Results go to stdout (``--json`` for machines);
progress and errors go to stderr; errors never show a traceback
(:func:`twin.console.fail`).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click
import typer

from twin.cli import app as twin_app
from twin.console import err, fail

# name → (one-line help shown by --help without importing, [(module, typer attribute), …]);
# the first module's app is the group, the others' commands are added to it.
LAZY_COMMANDS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "testbed": ("Emulated servers running real model stages.", [("testbed.cli", "app")]),
    "load": (
        "Open-loop Locust load runs against the testbed's gateway.",
        [("loadgen.cli", "app")],
    ),
    "experiment": ("Testbed vs twin on three workloads: report.", [("lab.experiment", "app")]),
    "calibrate": (
        "Profile the testbed, fit the twin, validate both.",
        [("calibrate.cli", "app"), ("lab.cli", "calibrate_app")],
    ),
    "export": (
        "Kubernetes manifests for a deployment.",
        [("testbed.backends.k8s_file", "app")],
    ),
    "validate-deployment": ("Chosen vs greedy, on the testbed.", [("lab.deploy_back", "app")]),
    "optimize": ("Search placements; the twin scores them.", [("optimizer.cli", "optimize_app")]),
    "decide": (
        "Choose a deployment from an optimize run's front.",
        [("optimizer.cli", "decide_app")],
    ),
    "rl": (
        "Online pipeline configuration: PPO vs Random/Greedy/IPA.",
        [("optimizer.rl.cli", "app"), ("lab.cli", "rl_app")],
    ),
}


def _load(name: str) -> click.Command:
    """The click command of ``name``: its first module's app plus the others' commands."""
    sources = LAZY_COMMANDS[name][1]
    commands = []
    for module, attr in sources:
        try:
            commands.append(typer.main.get_command(getattr(importlib.import_module(module), attr)))
        except ImportError as exc:
            fail(
                f"'{name}' needs optional dependencies that are not installed ({exc.name}); "
                "install with: pip install 'mlops-twin[all]'"
            )
    command = commands[0]
    for extra in commands[1:]:
        # typer builds groups with its own copy of click: ask for the methods, not the class
        for sub in extra.commands.values():  # type: ignore[attr-defined]
            command.add_command(sub)  # type: ignore[attr-defined]
    command.name = name
    return command


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
        if ctx.resilient_parsing or self._listing:
            # Listing commands: show the help line without importing the package.
            short = LAZY_COMMANDS[name][0]
            return click.Command(name, help=short, short_help=short)
        return _load(name)


def _available(name: str) -> bool:
    module = LAZY_COMMANDS[name][1][0][0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def main() -> None:
    """Console-script entry point."""
    command = typer.main.get_command(twin_app)
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
