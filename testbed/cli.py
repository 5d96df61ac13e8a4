"""``mlops-twin testbed``: bring emulated servers up, change them live, look, tear down."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from testbed.backends.base import DEFAULT_STATE_DIR
from testbed.zoo.manifest import DEFAULT_DIR
from twin.console import err, fail, out

app = typer.Typer(
    help="Emulated servers running real model stages.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

StateDir = Annotated[
    Path, typer.Option("--state-dir", help="Where the running testbed is recorded.")
]
ModelDir = Annotated[Path, typer.Option("--models", help="Model zoo directory.")]
AsJson = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _backend_for(state_dir: Path, name: str | None = None):  # type: ignore[no-untyped-def]
    from testbed.backends import BackendUnavailable, get_backend

    if name is None:  # the backend that brought this state directory up
        marker = state_dir / "backend"
        name = marker.read_text().strip() if marker.exists() else "local"
    try:
        return get_backend(name, state_dir)
    except BackendUnavailable as e:
        fail(str(e))


@app.command("build-models")
def build_models(
    models: ModelDir = DEFAULT_DIR,
    seed: Annotated[int, typer.Option(help="Seed of data split, noise and training.")] = 0,
    epochs: Annotated[int, typer.Option(help="Training epochs of the non-denoise stages.")] = 8,
    as_json: AsJson = False,
) -> None:
    """Train the stage models (torch), export ONNX, measure accuracy and latency."""
    from testbed.zoo.build import build

    with err.status("building the model zoo") as status:
        manifest = build(models, seed=seed, epochs=epochs, progress=status.update)
    if as_json:
        out.print_json(json.dumps(manifest))
        return
    t = Table(title=f"model zoo in {models} ({manifest['build_seconds']} s)")
    for col in ("stage", "variant", "accuracy", "MACs", "size kB", "ms b=1", "ms b=8"):
        t.add_column(col, justify="right" if col not in ("stage", "variant") else "left")
    for stage, variants in manifest["models"].items():
        for v, e in variants.items():
            t.add_row(
                stage,
                v,
                f"{e['accuracy']:.3f}",
                f"{e['macs']:,}",
                f"{e['size_bytes'] / 1024:.0f}",
                f"{e['latency_ms']['1']['median_ms']:.3f}",
                f"{e['latency_ms']['8']['median_ms']:.3f}",
            )
    out.print(t)


@app.command()
def up(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML.")],
    deployment: Annotated[Path, typer.Option("--deployment", "-d", help="Deployment YAML.")],
    backend: Annotated[str, typer.Option(help="auto, local or compose.")] = "auto",
    reserve_cores: Annotated[
        float | None, typer.Option(help="Cores kept for loadgen and gateway (default 0.5 on 2).")
    ] = None,
    factor: Annotated[
        float | None, typer.Option(help="CPU scale factor (default: largest that fits).")
    ] = None,
    state_dir: StateDir = DEFAULT_STATE_DIR,
    models: ModelDir = DEFAULT_DIR,
    as_json: AsJson = False,
) -> None:
    """Start the emulated servers and services of SCENARIO and apply the deployment."""
    from testbed.backends import BackendUnavailable, get_backend
    from testbed.capacity import Oversubscribed, plan_capacity
    from twin.deployment import InfeasibleDeployment, require_feasible
    from twin.load import SpecError, load_deployment, load_scenario

    try:
        sc = load_scenario(scenario)
        dep = load_deployment(deployment)
        require_feasible(sc, dep)
        cap = plan_capacity(sc, reserve_cores=reserve_cores, factor=factor)
        be = get_backend(backend, state_dir)
        if hasattr(be, "model_dir"):
            be.model_dir = models
        state_dir.mkdir(parents=True, exist_ok=True)
        (state_dir / "backend").write_text(be.name)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with err.status(f"bringing up {sc.name} on the {be.name} backend"):
                endpoints = be.up(sc, dep, cap)
        for w in caught:
            if not issubclass(w.category, UserWarning):
                continue
            err.print(f"[yellow]warning:[/] {w.message}", highlight=False)
    except (
        SpecError,
        InfeasibleDeployment,
        Oversubscribed,
        BackendUnavailable,
        FileNotFoundError,
    ) as e:
        fail(str(e))
    except Exception as e:
        fail(f"testbed up failed ({type(e).__name__}): {e}; everything started was stopped")
    result = {
        "backend": be.name,
        "factor": cap.factor,
        "endpoints": endpoints.to_dict(),
        "capacity": cap.to_dict(),
    }
    if as_json:
        out.print_json(json.dumps(result))
    else:
        out.print(
            f"testbed up ({be.name}): gateway {endpoints.gateway}, CPU factor "
            f"{cap.factor:g} ({sum(n.cpu_cores for n in cap.nodes):.2f} of "
            f"{cap.host_cores:g} host cores)"
        )


@app.command()
def apply(
    deployment: Annotated[Path, typer.Argument(help="Deployment YAML.")],
    state_dir: StateDir = DEFAULT_STATE_DIR,
    as_json: AsJson = False,
) -> None:
    """Change replicas, variants and batch sizes of the running testbed live.

    ``--json`` prints the changes made, each with its kind, stage and seconds.
    """
    from testbed.controller import Controller, DeployError
    from twin.deployment import InfeasibleDeployment, require_feasible
    from twin.load import SpecError, load_deployment

    try:
        dep = load_deployment(deployment)
        require_feasible(Controller.load(state_dir).scenario, dep)
        changes = _backend_for(state_dir).apply(dep)
    except (SpecError, InfeasibleDeployment, DeployError, FileNotFoundError) as e:
        fail(str(e))
    if as_json:
        out.print_json(json.dumps({"applied": dep.name, "changes": changes}))
        return
    out.print(f"applied {dep.name}")
    for c in changes:
        out.print(f"  {c['kind']:<14} {c['stage']:<12} {c['seconds']:.3f} s")


@app.command()
def status(state_dir: StateDir = DEFAULT_STATE_DIR, as_json: AsJson = False) -> None:
    """Nodes, instances and their health."""
    try:
        st = _backend_for(state_dir).status()
    except FileNotFoundError as e:
        fail(str(e))
    if as_json:
        out.print_json(json.dumps(st.to_dict()))
        return
    gw = "healthy" if st.gateway_healthy else "[red]down[/]"
    out.print(
        f"{st.scenario} / {st.deployment} on {st.backend}, CPU factor {st.factor:g}, "
        f"gateway {st.gateway} {gw}"
    )
    nodes = Table(title="nodes")
    for col in ("node", "health", "cpu quota", "ram GB", "cpu s", "mem MB"):
        nodes.add_column(col)
    for n in st.nodes:
        nodes.add_row(
            n.name,
            "ok" if n.healthy else "[red]down[/]",
            f"{n.cpu_quota_cores:.2f}",
            f"{n.ram_gb:g}",
            f"{n.cpu_seconds or 0:.1f}",
            f"{(n.memory_bytes or 0) / 2**20:.0f}",
        )
    out.print(nodes)
    insts = Table(title="instances")
    for col in ("instance", "stage", "node", "variant", "batch", "health"):
        insts.add_column(col)
    for i in st.instances:
        insts.add_row(
            i.name,
            i.component,
            i.node,
            i.variant or "",
            str(i.batch),
            "ok" if i.healthy else "[red]down[/]",
        )
    out.print(insts)


@app.command()
def down(state_dir: StateDir = DEFAULT_STATE_DIR) -> None:
    """Stop everything the testbed started; nothing is left running."""
    try:
        _backend_for(state_dir).down()
    except RuntimeError as e:
        fail(str(e))
    (state_dir / "backend").unlink(missing_ok=True)
    out.print("testbed down")


if __name__ == "__main__":  # `python -m ...`: how testbed.client runs it
    app()
