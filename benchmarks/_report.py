"""Tiny helpers shared by the benchmark scripts: markdown tables, result files, the CLI."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    """A GitHub-flavoured markdown table."""

    def cell(v: object) -> str:
        return f"{v:,.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line() -> str:
    """Where and when a benchmark ran (figures are only comparable within a run)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, load average {load:.2f}, Python {platform.python_version()}"
    )


def write_result(name: str, text: str) -> Path:
    """Print the report and save it as benchmarks/results/<name>.md."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text(text + "\n")
    print(text)
    return path


def run_cli(*args: str) -> str:
    """Run ``mlops-twin ARGS`` in this interpreter's environment; its stdout, or an error
    naming the subcommand with the tail of its stderr."""
    argv = [sys.executable, "-c", "from mlops_twin.cli import main; main()", *args]
    res = subprocess.run(argv, capture_output=True, text=True, env={**os.environ})
    if res.returncode != 0:
        raise RuntimeError(f"mlops-twin {' '.join(args[:2])}: {res.stderr.strip()[-500:]}")
    return res.stdout
