"""``mlops-twin load``: open-loop Locust runs against the testbed's gateway.

Never imports Locust: the load generators are separate processes.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from twin.console import err, fail, out

app = typer.Typer(
    help="Open-loop load runs (Locust) against the testbed's gateway.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _group() -> None:
    """Open-loop load runs (Locust) against the testbed's gateway."""


def _targets(items: list[str]) -> dict[str, str]:
    out_: dict[str, str] = {}
    for item in items:
        name, sep, url = item.partition("=")
        if not sep or not name or not url.startswith("http"):
            raise ValueError(f"--metrics expects NAME=http://HOST:PORT, got {item!r}")
        out_[name] = url
    return out_


@app.command("run")
def run_cmd(
    scenario: Annotated[Path, typer.Option("--scenario", "-s", help="Scenario YAML.")],
    shape: Annotated[str, typer.Option("--shape", help="Workload name from the scenario.")],
    target: Annotated[
        str, typer.Option(help="Gateway or V2 server base URL, e.g. http://127.0.0.1:8000.")
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="Run folder to write.")],
    duration: Annotated[float, typer.Option(help="Seconds of arrivals.", min=1)] = 120.0,
    rate_scale: Annotated[float, typer.Option(help="Multiply every rate by this.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of the arrival stream (as the twin's).")] = 1,
    process: Annotated[str | None, typer.Option(help="Request process, if several.")] = None,
    inputs: Annotated[str, typer.Option(help="'image' (8×8 digits) or 'entity' ids.")] = "image",
    inputs_file: Annotated[
        Path | None, typer.Option(help=".npz with x (n×64) and y, e.g. the noisy test set.")
    ] = None,
    workers: Annotated[int, typer.Option(help="Load-generator processes.", min=1)] = 1,
    drain: Annotated[float, typer.Option(help="Seconds to wait for answers after.")] = 10.0,
    concurrency: Annotated[
        float, typer.Option(help="Sender pool per request/s (s): Little's-law headroom.")
    ] = 1.0,
    metrics: Annotated[
        list[str] | None, typer.Option(help="Scrape target NAME=URL (repeatable).")
    ] = None,
    scrape_interval: Annotated[float, typer.Option(help="Seconds between scrapes.")] = 1.0,
    batch_cmd: Annotated[
        str | None, typer.Option(help="Command run for each batch-process execution.")
    ] = None,
    batch_url: Annotated[
        str | None, typer.Option(help="URL POSTed for each batch-process execution.")
    ] = None,
    protocol: Annotated[
        str,
        typer.Option(
            help="'v1': the testbed's /v1/infer; 'v2': the Open Inference Protocol (any V2 "
            "server; model and tensors from the process's 'serving', else the testbed gateway's)."
        ),
    ] = "v1",
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable summary.")] = False,
) -> None:
    """Offer a scenario workload to a target (gateway or V2 server); record every request."""
    from loadgen.batch import command_hook, http_hook
    from loadgen.run import LoadRun, LoadRunError, run_to_folder
    from twin.load import SpecError, load_scenario
    from twin.workload import scale_workload

    try:
        if inputs not in ("image", "entity"):
            raise ValueError(f"--inputs must be 'image' or 'entity', got {inputs!r}")
        if protocol not in ("v1", "v2"):
            raise ValueError(f"--protocol must be 'v1' or 'v2', got {protocol!r}")
        sc = load_scenario(scenario)
        try:
            workload = scale_workload(sc.workload(shape), rate_scale)
        except KeyError:
            known = ", ".join(w.name for w in sc.workloads)
            raise ValueError(f"scenario has no workload {shape!r} (known: {known})") from None
        hook = None
        if batch_cmd:
            hook = command_hook(shlex.split(batch_cmd))
        elif batch_url:
            hook = http_hook(batch_url)
        run = LoadRun(
            scenario=sc,
            workload=workload,
            target=target,
            duration_s=duration,
            seed=seed,
            process=process,
            inputs=inputs,  # type: ignore[arg-type]
            inputs_file=inputs_file,
            workers=workers,
            drain_s=drain,
            concurrency_s=concurrency,
            metrics_targets=_targets(metrics or []),
            scrape_interval_s=scrape_interval,
            batch_hook=hook,
            protocol=protocol,
            scenario_dir=scenario.parent,
        )
        run.request_process()
        with Progress(
            TextColumn("load"),
            BarColumn(),
            TextColumn("{task.completed:.0f}/{task.total:.0f} s"),
            TimeElapsedColumn(),
            console=err,
            transient=True,
            disable=not err.is_terminal,
        ) as progress:
            task = progress.add_task("load", total=duration)
            result = run_to_folder(run, out_dir, lambda t: progress.update(task, completed=t))
    except (SpecError, ValueError, LoadRunError) as exc:
        fail(str(exc))
        return
    s = result.summary
    if as_json:
        print(json.dumps({"out": str(out_dir), **{k: _num(v) for k, v in s.items()}}))
        return
    table = Table(title=f"{sc.name} / {workload.name} → {target}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in s.items():
        table.add_row(key, f"{value:.4g}")
    out.print(table)
    err.print(f"run folder: {out_dir}", highlight=False)


def _num(v: float) -> float | None:
    return None if v != v else v


if __name__ == "__main__":  # `python -m ...`: how testbed.client runs it
    app()
