"""What every ``mlops-twin`` command shares: the two consoles, one ``fail()``, common options.

Results go to stdout (``out``; ``--json`` for machines), progress and errors to
stderr (``err``); an error is one paragraph without a traceback. Every
package's CLI imports these, so their messages and options read the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

out = Console()
err = Console(stderr=True)

# Options several commands take: one definition each, so their help stays the same.
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
OutOption = Annotated[Path | None, typer.Option("--out", help="Run folder.")]
ScenarioOption = Annotated[Path, typer.Option("--scenario", "-s", help="Scenario YAML.")]


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a one-paragraph error to stderr and exit with ``code``."""
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


def say(message: str) -> None:
    """A progress line on stderr."""
    err.print(message, highlight=False)
