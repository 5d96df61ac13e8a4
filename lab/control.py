"""``mlops-twin rl control``: a configuration policy steering the live testbed.

The testbed comes up with the policy's first configuration, a load run offers
one of the scenario's workloads in the background, and every interval the
:class:`optimizer.rl.online.OnlineController` scrapes the gateway, asks the
policy (PPO, Greedy, IPA, Random) and applies its choice with ``testbed
apply``; the testbed goes down whatever happens. The run folder holds the
intervals' table, a plot over time, the load run and a summary.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from testbed.client import BackgroundLoad, CliTestbed
from twin.console import err
from twin.load import dump_yaml
from twin.runs import atomic_dir, write_table
from twin.spec import Deployment, Scenario


@dataclass
class ControlRun:
    """One live-control run: what to offer, for how long, and where the testbed lives."""

    scenario_file: Path
    scenario: Scenario
    policy: str
    shape: str
    duration_s: float
    seed: int
    backend: str
    state_dir: Path


def wait_for_load(load: BackgroundLoad, scrape: Any, limit_s: int = 120) -> None:
    """Wait until requests arrive (Locust workers take a while to start), at most ``limit_s``."""
    from optimizer.rl.online import parse_gateway

    for _ in range(limit_s):
        if not load.running() or parse_gateway(scrape()).arrived > 0:
            return
        time.sleep(1.0)


def control_testbed(
    run: ControlRun, env: Any, decider: Any, work: Path
) -> tuple[pd.DataFrame, str, float]:
    """Up → background load → control for ``duration_s`` → down; the intervals' rows.

    Returns the rows, the load run's summary line and the testbed's capacity factor.
    """
    import httpx

    from optimizer.rl.online import OnlineController

    first = work / "initial.deployment.yaml"
    first.write_text(dump_yaml(env.space.deployment(env.current, name="rl-initial")))
    testbed = CliTestbed(run.backend, run.state_dir)
    load = None
    try:
        err.print(f"testbed up ({run.backend}) …", highlight=False)
        testbed.up(run.scenario_file, first)
        gateway = testbed.up_json["endpoints"]["gateway"]
        load = BackgroundLoad(
            run.scenario_file, run.shape, gateway, work / "load", run.duration_s, run.seed
        ).start()
        http = httpx.Client(timeout=5.0)
        counter = iter(range(10**9))

        def apply(dep: Deployment) -> None:
            f = work / f"dep-{next(counter)}.yaml"
            f.write_text(dump_yaml(dep))
            testbed.apply(f, timeout_s=120)

        def scrape() -> str:
            return http.get(f"{gateway}/metrics").text

        wait_for_load(load, scrape)
        factor = float(testbed.up_json.get("factor", 1.0))
        ctl = OnlineController(env, decider, scrape, apply, capacity_factor=factor)
        err.print(f"controlling with {run.policy} for {run.duration_s:g} s …", highlight=False)
        rows = ctl.run(run.duration_s)
        return rows, load.wait(timeout_s=run.duration_s + 300), factor
    finally:
        if load is not None:
            load.stop()
        stop(testbed)


def stop(testbed: CliTestbed) -> None:
    """``testbed down``; a failure is a warning (the run's results are still written)."""
    try:
        testbed.down()
    except (RuntimeError, OSError) as exc:
        err.print(f"[yellow]warning:[/] testbed down: {exc}", highlight=False)


def write_control_run(
    run: ControlRun, rows: pd.DataFrame, load_summary: str, factor: float, work: Path, target: Path
) -> dict:
    """The run folder: intervals table, plot over time, the load run, summary and report."""
    from optimizer.rl import experiments

    with atomic_dir(target) as tmp:
        write_table(rows, tmp / "intervals")
        rows_plot = rows.assign(policy=run.policy, workload=run.shape)
        experiments.plot_over_time(rows_plot, run.shape, tmp / "over-time.png")
        if (work / "load").is_dir():
            shutil.copytree(work / "load", tmp / "load")
        summary = {
            "scenario": run.scenario.name,
            "policy": run.policy,
            "shape": run.shape,
            "duration_s": run.duration_s,
            "Q_mean": float(rows["Q"].mean()),
            "C_mean": float(rows["C"].mean()),
            "reward_mean": float(rows["reward"].mean()),
            "T_mean": float(rows["T"].mean()),
            "L_mean": float(rows["L"].mean()),
            "decisions": len(rows),
            "cpu_factor": factor,
            "reconfigurations": int((rows["apply_s"] > 0).sum()),
            "load_run": load_summary,
        }
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
        (tmp / "report.md").write_text(
            f"# {run.policy} controlling {run.scenario.name} on the testbed ({run.shape}, "
            f"{run.duration_s:g} s)\n\n"
            f"{experiments.markdown(rows.drop(columns=['config']))}\n\n![](over-time.png)\n"
        )
    return summary


def run_control(run: ControlRun, env: Any, decider: Any, target: Path) -> dict:
    """The whole live-control run into ``target``; its summary."""
    work = Path(tempfile.mkdtemp(prefix="rl-control-"))
    rows, load_summary, factor = control_testbed(run, env, decider, work)
    summary = write_control_run(run, rows, load_summary, factor, work, target)
    shutil.rmtree(work, ignore_errors=True)  # kept on a failure: the load run is in it
    return summary
