"""The lab's commands, mounted by the umbrella CLI into their groups.

``mlops-twin calibrate validate`` (the twin beside the testbed on held-out
workloads, :mod:`lab.validate`) and ``mlops-twin rl control`` (a policy
steering the live testbed, :mod:`lab.control`) drive a running testbed, so they
live here, above ``calibrate`` and ``optimizer``, not in those packages.
``experiment`` and ``validate-deployment`` are :mod:`lab.experiment`'s and
:mod:`lab.deploy_back`'s own apps.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from calibrate.cli import floats
from optimizer.rl.cli import (
    DEFAULT_PREDICTOR,
    JsonOption,
    OutOption,
    PredictorOption,
    RewardCostOption,
)
from twin.console import err, fail, out, say
from twin.load import SpecError

calibrate_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
rl_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@calibrate_app.callback()
def _calibrate_group() -> None:
    """Commands added to ``mlops-twin calibrate``."""


@rl_app.callback()
def _rl_group() -> None:
    """Commands added to ``mlops-twin rl``."""


# the default is lab.host_noise.MAX_STEAL_CORES, written out so that --help stays
# free of pandas (tests/lab/test_host_noise.py checks the two agree)
MAX_STEAL_DEFAULT = 0.02
MAX_STEAL_OPTION = typer.Option(
    help="Fit without the requests of seconds in which the hypervisor stole at least this "
    "many cores from the host (the report's host table shows them); 0 fits every second."
)


@calibrate_app.command()
def validate(
    scenario: Annotated[Path, typer.Option("--scenario", "-s", help="Scenario YAML.")] = Path(
        "examples/digits-pipeline.yaml"
    ),
    deployment: Annotated[Path, typer.Option("--deployment", "-d", help="Deployment YAML.")] = (
        Path("examples/digits-pipeline.deployment.yaml")
    ),
    workloads: Annotated[str, typer.Option(help="Held-out workloads, comma-separated.")] = (
        "steady-low,fluctuating,steady-high"
    ),
    near_saturation: Annotated[str, typer.Option(help="Reported separately.")] = "steady-high",
    duration: Annotated[float, typer.Option(help="Seconds per held-out workload.")] = 60.0,
    fit_workload: Annotated[str, typer.Option(help="Workload of the fit run.")] = "steady-low",
    fit_rate_scales: Annotated[
        str, typer.Option(help="Rate multipliers of the fit runs (load levels), comma-separated.")
    ] = "0.5,2",
    fit_duration: Annotated[float, typer.Option(help="Seconds of the fit run.")] = 40.0,
    replications: Annotated[int, typer.Option(help="Twin replications per workload.")] = 3,
    seed: Annotated[int, typer.Option(help="Arrival seed of the held-out runs.")] = 1,
    profile_dir: Annotated[
        Path | None, typer.Option("--profile", help="Profile folder for unexercised variants.")
    ] = None,
    backend: Annotated[str, typer.Option(help="Testbed backend.")] = "local",
    name: Annotated[str, typer.Option(help="Run folder name under runs/.")] = "",
    max_steal: Annotated[float, MAX_STEAL_OPTION] = MAX_STEAL_DEFAULT,
) -> None:
    """Same deployment and workloads on the testbed and in the calibrated twin; report."""
    from lab.validate import ValidateConfig, run_validation
    from testbed.client import CliTestbed

    cfg = ValidateConfig(
        scenario,
        deployment,
        workloads=tuple(filter(None, workloads.split(","))),
        near_saturation=tuple(filter(None, near_saturation.split(","))),
        fit_workload=fit_workload,
        fit_rate_scales=floats(fit_rate_scales),
        fit_duration_s=fit_duration,
        duration_s=duration,
        seed=seed,
        replications=replications,
        profile=profile_dir,
        max_steal_cores=max_steal or None,
    )
    out_dir = Path("runs") / (name or time.strftime("validate-%Y%m%d-%H%M%S"))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # its own state folder: a testbed someone else runs from .testbed/ is left alone
    state = out_dir.parent / f".{out_dir.name}.testbed"
    testbed = CliTestbed(backend, state, log=out_dir.parent / f".{out_dir.name}.testbed.log")
    try:
        run_validation(cfg, testbed, out_dir, say)
    except (SpecError, ValueError, KeyError, OSError, RuntimeError) as exc:
        fail(str(exc))
        return
    text = (out_dir / "report.md").read_text()
    print(text[text.find("## Fidelity") :] if "## Fidelity" in text else text)
    err.print(f"report: {out_dir / 'report.md'}", highlight=False)


@rl_app.command()
def control(
    scenario_file: Annotated[Path, typer.Argument(help="Scenario the testbed serves.")] = Path(
        "examples/digits-pipeline.yaml"
    ),
    policy: Annotated[str, typer.Option(help="ppo, ipa, ipa-paper, greedy or random.")] = "greedy",
    policy_file: Annotated[
        Path | None,
        typer.Option(help="PPO policy zip; default: the cached one, trained when missing."),
    ] = None,
    shape: Annotated[str, typer.Option(help="Workload of the scenario to offer.")] = "fluctuating",
    duration: Annotated[float, typer.Option(help="Seconds under control.")] = 300.0,
    seed: Annotated[int, typer.Option(help="Seed of arrivals (testbed and twin) and Random.")] = 1,
    factor: Annotated[
        float | None,
        typer.Option(help="The testbed's CPU factor; default: what 'testbed up' will plan."),
    ] = None,
    rate_scale: Annotated[
        float, typer.Option(help="Multiply the workload's rates (load run, policies, twin).")
    ] = 1.0,
    twin: Annotated[bool, typer.Option(help="Replay the same loop in the twin.")] = True,
    train_steps: Annotated[int, typer.Option(help="PPO steps when a policy is trained.")] = 120_000,
    policy_cache: Annotated[Path, typer.Option(help="Folder of cached PPO policies.")] = Path(
        "runs/rl-policies"
    ),
    predictor: PredictorOption = str(DEFAULT_PREDICTOR),
    backend: Annotated[str, typer.Option(help="Testbed backend.")] = "local",
    state_dir: Annotated[Path, typer.Option(help="Testbed state folder.")] = Path(".testbed-rl"),
    reward_cost: RewardCostOption = None,
    train_twin: Annotated[
        str,
        typer.Option(
            help="The twin PPO trains in: 'charged' (node quotas, server CPU, start time "
            "and host speed as the testbed charges them; continued from the 'view' policy, "
            "which is trained first when missing) or 'view' (the policies' view)."
        ),
    ] = "charged",
    moved_from: Annotated[
        list[Path] | None,
        typer.Option(
            help="A folder this checkout was at when its cached policies were trained "
            "(their old keys held the trace's path; they are re-keyed). Repeatable."
        ),
    ] = None,
    out_dir: OutOption = None,
    as_json: JsonOption = False,
) -> None:
    """Bring the testbed up, offer load, reconfigure every 10 s with a policy, measure,
    down; then the same loop in the twin with the same arrivals, side by side."""
    import json
    import subprocess

    import httpx
    import torch

    from lab.control import ControlOptions, prepare_control, run_control
    from optimizer.rl.baselines import POLICIES
    from optimizer.rl.cli import DEFAULT_WORKLOADS, _predictor, _process, _scenario, _workloads

    torch.set_num_threads(1)
    sc = _scenario(scenario_file)
    proc = _process(sc, None)
    if shape not in [w.name for w in sc.workloads]:
        fail(
            f"{scenario_file}: no workload {shape!r} (workloads: "
            f"{', '.join(w.name for w in sc.workloads)})"
        )
    if policy != "ppo" and policy not in POLICIES:
        fail(f"unknown policy {policy!r} (ppo, {', '.join(POLICIES)})")
    if duration < 10:
        fail(f"--duration must be at least one 10-s interval, got {duration:g}")
    opts = ControlOptions(
        policy,
        policy_file,
        shape,
        duration,
        seed,
        factor,
        rate_scale,
        twin,
        train_steps,
        policy_cache,
        backend,
        state_dir,
        reward_cost,
        train_twin,
        tuple(moved_from or ()),
    )
    try:
        run, make_decider, envs = prepare_control(
            sc, scenario_file, proc, opts, _predictor(predictor), _workloads(sc, DEFAULT_WORKLOADS)
        )
    except (ValueError, OSError, SpecError) as exc:
        fail(str(exc))
    target = out_dir or Path("runs") / f"rl-control-{sc.name}-{policy}-{shape}"
    try:
        summary = run_control(run, envs[0], make_decider, envs[1], target)
    except (RuntimeError, OSError, httpx.HTTPError, subprocess.TimeoutExpired) as exc:
        fail(str(exc))
    err.print(f"run folder: {target}", highlight=False)
    if as_json:
        print(json.dumps(summary, default=float))
    else:
        out.print(summary)
