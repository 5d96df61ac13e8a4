"""``mlops-twin rl control``: a configuration policy steering the live testbed, and the twin.

1. The scenario is seen as the testbed runs it (:mod:`lab.control_view`: the
   CPU factor the testbed will apply folded into server speeds), so every
   policy decides on the capacity it really gets.
2. The testbed comes up with the policy's first configuration; a load run
   offers one workload in the background; every interval the
   :class:`optimizer.rl.online.OnlineController` scrapes the gateway, asks the
   policy and applies its choice in-process (``CliTestbed.apply_live``), which
   returns the time each kind of change took; the testbed goes down whatever
   happens.
3. The load run's per-request rows give each interval's p50/p95 and SLO
   violations (:mod:`lab.control_measure`).
4. The same loop runs in the twin with the same arrivals and the measured
   change times (:mod:`lab.control_twin`), and the two are laid side by side.

The run folder holds the testbed's and the twin's intervals, the side-by-side
table, the changes with their times, plots over time, the load run, the PPO
training curve when a policy was used, a summary and a report.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from lab.control_measure import per_interval
from testbed.client import BackgroundLoad, CliTestbed
from twin.console import err
from twin.load import dump_yaml
from twin.runs import atomic_dir, write_table
from twin.spec import Scenario, Workload

LOAD_MARGIN_S = 8.0  # the load runs this much longer than the control (arrivals start late)
SIDE_BY_SIDE = ("offered_rps", "Q", "C", "V", "T", "L", "E", "p95_s", "slo_violations")


@dataclass
class ControlRun:
    """One live-control run: what to offer, for how long, and where the testbed lives.

    ``view`` is the scenario as the testbed runs it (the policies' and the twin's);
    ``scenario_file`` is what the testbed itself is brought up with.
    """

    scenario_file: Path
    scenario: Scenario
    view: Scenario
    policy: str
    shape: str
    duration_s: float
    seed: int
    backend: str
    state_dir: Path
    factor: float
    rate_scale: float = 1.0  # every rate of the workload times this (load run and view)
    twin: bool = True
    training: Path | None = None  # folder of the PPO policy (its curves go in the run folder)
    notes: list[str] = field(default_factory=list)
    load_margin_s: float = LOAD_MARGIN_S  # the load run this much longer than the control
    train_twin: str = "view"  # the twin the PPO policy was trained in (ControlOptions)


@dataclass
class ControlOptions:
    """What ``rl control`` was asked for (see its ``--help``)."""

    policy: str
    policy_file: Path | None
    shape: str
    duration_s: float
    seed: int
    factor: float | None
    rate_scale: float
    twin: bool
    train_steps: int
    policy_cache: Path
    backend: str
    state_dir: Path
    reward_cost: float | None
    # the twin PPO trains in: "view" (the policies' view) or "charged" (what the testbed
    # charges: node quotas, server CPU, start time, host speed; lab.control_view)
    train_twin: str = "view"
    # folders this checkout was at when policies were cached under the old key, which
    # held the trace's absolute path (optimizer.rl.cache.find_policy re-keys them)
    policy_moved_from: tuple[Path, ...] = ()


def prepare_control(
    sc: Scenario,
    scenario_file: Path,
    proc: str,
    opts: ControlOptions,
    predictor: Any,
    train_workloads: list[Workload],
) -> tuple[ControlRun, Callable[[], Any], list[Any]]:
    """The run, a factory of fresh deciders, and two environments (testbed, twin).

    Environments are built over the training workloads (their load scale is the
    observation's) and reset on the shape; a PPO policy is the given zip or the
    cached one for the testbed view, trained here (under a progress bar) when missing.
    """
    from lab.control_view import testbed_view
    from optimizer.rl import agent
    from optimizer.rl.baselines import POLICIES
    from optimizer.rl.cache import TrainSettings, cached_policy
    from optimizer.rl.cli import _progress, make_env
    from testbed.client import planned_factor

    f = opts.factor if opts.factor is not None else planned_factor(sc)
    if not opts.rate_scale > 0:
        raise ValueError(f"--rate-scale must be > 0, got {opts.rate_scale:g}")
    view = testbed_view(sc, f, rate_scale=opts.rate_scale)
    train_workloads = [view.workload(w.name) for w in train_workloads]
    notes = [
        f"policies and twin decide on the testbed view (CPU factor {f:g}); "
        f"workload rates × {opts.rate_scale:g}"
    ]
    training = None
    if opts.policy == "ppo":
        if opts.policy_file is not None:
            if not opts.policy_file.is_file():
                raise ValueError(f"policy {opts.policy_file} not found")
            path = opts.policy_file
        else:
            settings = TrainSettings(steps=opts.train_steps, reward_cost=opts.reward_cost)
            if opts.train_twin not in ("view", "charged"):
                raise ValueError(f"--train-twin: view or charged, got {opts.train_twin!r}")

            def cached(settings: TrainSettings) -> tuple[Path, bool]:
                with _progress() as bar:
                    task = bar.add_task(
                        f"PPO for {view.name}, {settings.backend} (cached after)",
                        total=settings.steps,
                    )
                    return cached_policy(
                        view,
                        proc,
                        train_workloads,
                        predictor,
                        settings,
                        opts.policy_cache,
                        on_step=lambda n: bar.update(task, completed=n),
                        moved_from=opts.policy_moved_from,
                    )

            # the charged policy continues the view's: that one first (trained when missing)
            training, trained = cached(settings)
            if opts.train_twin == "charged":
                settings = charged_settings(sc, training.name, settings, f)
                notes.append(f"continued from the view's PPO {training.name}")
                training, trained_now = cached(settings)
                trained = trained or trained_now
            notes.append(f"PPO policy {training} ({'trained now' if trained else 'cached'})")
            path = training / "policy.zip"
        model = agent.load(path)

        def make_decider():  # type: ignore[no-untyped-def]
            return model
    else:

        def make_decider():  # type: ignore[no-untyped-def]
            return (
                POLICIES[opts.policy](seed=opts.seed)
                if opts.policy == "random"
                else POLICIES[opts.policy]()
            )

    if opts.shape not in [w.name for w in train_workloads]:
        train_workloads = [*train_workloads, view.workload(opts.shape)]
    envs = []
    for _ in range(2):
        env = make_env(
            view, proc, train_workloads, "analytic", predictor, reward_cost=opts.reward_cost
        )
        env.reset(seed=opts.seed, options={"workload": opts.shape})
        envs.append(env)
    run = ControlRun(
        scenario_file,
        sc,
        view,
        opts.policy,
        opts.shape,
        opts.duration_s,
        opts.seed,
        opts.backend,
        opts.state_dir,
        f,
        rate_scale=opts.rate_scale,
        twin=opts.twin,
        training=training,
        notes=notes,
        train_twin=opts.train_twin,
    )
    return run, make_decider, envs


# continued from the view's policy for a third of its steps (40k of 120k: the reward
# levels off by then)
CHARGED_STEPS_SHARE = 1 / 3
# the charged twin's overloads (slow hosts, late requests) give rewards of -10 where the
# view's stay near +3: at the view's divisor (10) the value loss (20-40) pulled the shared
# features apart and the policy collapsed to one fixed configuration (two tries)
CHARGED_REWARD_SCALE = 50.0
# the host speed the charged expert scores at: "prior", the range training draws from,
# since the policy cannot see the episode's own ("true"; see ChargedExpert)
CHARGED_EXPERT_HOST = "true"


def charged_settings(sc: Scenario, start: str, settings: Any, factor: float) -> Any:
    """The training settings of the policy trained in the charged twin: continued from
    the view's cached policy (``start``, its folder name in the cache), guided every
    second episode by the charged model's expert (``optimizer.rl.charged.ChargedExpert``;
    without it the continued policy collapsed to one fixed over-provisioned
    configuration in a first try), scoring at the host speeds the policy must expect
    (:data:`CHARGED_EXPERT_HOST`), rewards / 50."""
    from dataclasses import replace

    from lab.control_view import testbed_charges

    return replace(
        settings,
        steps=max(1, round(settings.steps * CHARGED_STEPS_SHARE)),
        expert_every=2,
        reward_scale=CHARGED_REWARD_SCALE,
        backend="charged",
        charges=testbed_charges(sc, factor),
        init_policy=start,
        expert_host=CHARGED_EXPERT_HOST,
    )


@dataclass
class TestbedResult:
    """What the testbed side of a run measured."""

    rows: pd.DataFrame  # one row per interval (controller's clock, t_s from its start)
    changes: pd.DataFrame  # t_s, kind, stage, seconds
    load_summary: dict
    requests: pd.DataFrame  # the load run's per-request rows (load-run clock)
    offset_s: float  # load-run time of the controller's t_s = 0
    factor: float


def wait_for_load(
    load: BackgroundLoad, scrape: Any, limit_s: int = 120, since: float = 0.0
) -> None:
    """Wait until requests arrive (Locust workers take a while to start), at most ``limit_s``.

    ``since``: the gateway's arrivals counter before the load began (a testbed that
    served earlier runs has counted their requests).
    """
    from optimizer.rl.online import parse_gateway

    for _ in range(limit_s):
        if not load.running() or parse_gateway(scrape()).arrived > since:
            return
        time.sleep(0.25)


def control_testbed(run: ControlRun, env: Any, decider: Any, work: Path) -> TestbedResult:
    """Up → background load → control for ``duration_s`` → down; what was measured."""
    first = initial_deployment(env)
    (work / "initial.deployment.yaml").write_text(dump_yaml(first))
    testbed = CliTestbed(run.backend, run.state_dir, log=work / "testbed.log")
    try:
        targets = bring_up(testbed, run, work / "initial.deployment.yaml")
        return control_live(testbed, targets, run, env, decider, work)
    finally:
        stop(testbed)


def initial_deployment(env: Any) -> Any:
    """The deployment of the environment's current (initial) configuration."""
    return env.space.deployment(env.current, name="rl-initial")


def bring_up(testbed: CliTestbed, run: ControlRun, deployment: Path) -> Any:
    """``testbed up`` with ``deployment``, checked to run at the policies' CPU factor."""
    err.print(f"testbed up ({run.backend}) …", highlight=False)
    targets = testbed.up(run.scenario_file, deployment)
    factor = float(testbed.up_json.get("factor", 1.0))
    if abs(factor - run.factor) > 1e-6:
        raise RuntimeError(
            f"the testbed came up at CPU factor {factor:g}, the policies were given "
            f"{run.factor:g} (pass --factor {factor:g})"
        )
    return targets


def control_live(
    testbed: CliTestbed, targets: Any, run: ControlRun, env: Any, decider: Any, work: Path
) -> TestbedResult:
    """Background load → control for ``duration_s`` on a testbed that is up; what was measured."""
    import httpx

    from optimizer.rl.online import OnlineController, parse_gateway

    gateway = testbed.up_json["endpoints"]["gateway"]
    load = BackgroundLoad(
        run.scenario_file,
        run.shape,
        gateway,
        work / "load",
        run.duration_s + run.load_margin_s,
        run.seed,
        run.rate_scale,
    )
    # the node agents and the gateway outlive every reconfiguration, so the load run can
    # scrape them: each node's cgroup CPU per second, the gateway's in-flight requests and
    # retries (stage servers come and go, and are not)
    for name, url in targets.metrics.items():
        if name.startswith("agent:") or name == "gateway":
            load.argv += ["--metrics", f"{name}={url}"]
    http = httpx.Client(timeout=5.0)

    def scrape() -> str:
        return http.get(f"{gateway}/metrics").text

    try:
        since = parse_gateway(scrape()).arrived
        load.start()
        wait_for_load(load, scrape, since=since)
        ctl = OnlineController(env, decider, scrape, testbed.apply_live)
        err.print(f"controlling with {run.policy} for {run.duration_s:g} s …", highlight=False)
        rows = ctl.run(run.duration_s)
        line = load.wait(timeout_s=run.load_margin_s + 300)
        summary = json.loads(line) if line.startswith("{") else {"error": line}
    finally:
        load.stop()
        http.close()
    meta = json.loads((work / "load" / "run.json").read_text())
    requests = pd.read_parquet(work / "load" / "requests.parquet")
    return TestbedResult(
        rows,
        pd.DataFrame(ctl.changes, columns=["t_s", "kind", "stage", "seconds"]),
        summary,
        requests,
        ctl.started_unix - float(meta["t0_unix_s"]),
        float(testbed.up_json.get("factor", 1.0)),
    )


def stop(testbed: CliTestbed) -> None:
    """``testbed down``; a failure is a warning (the run's results are still written)."""
    try:
        testbed.down()
    except (RuntimeError, OSError) as exc:
        err.print(f"[yellow]warning:[/] testbed down: {exc}", highlight=False)


def with_latency(run: ControlRun, tb: TestbedResult, interval_s: float) -> pd.DataFrame:
    """The testbed's interval rows with each interval's latency from the load run."""
    starts = [t + tb.offset_s for t in tb.rows["t_s"]]
    deadline = run.view.process(tb_process(run.view)).deadline_s
    lat = per_interval(tb.requests, starts, interval_s, deadline)
    return pd.concat([tb.rows.reset_index(drop=True), lat.drop(columns="t_load_s")], axis=1)


def tb_process(scenario: Scenario) -> str:
    return next(p.name for p in scenario.processes if p.kind == "request")


def change_medians(changes: pd.DataFrame) -> dict[str, float]:
    """Median seconds per kind of change."""
    if changes.empty:
        return {}
    return {str(k): float(v) for k, v in changes.groupby("kind")["seconds"].median().items()}


def side_by_side(testbed: pd.DataFrame, twin: pd.DataFrame) -> pd.DataFrame:
    """Per interval: each of ``SIDE_BY_SIDE`` on the testbed and in the twin."""
    n = min(len(testbed), len(twin))
    out = pd.DataFrame({"t_s": testbed["t_s"].iloc[:n].to_numpy()})
    for col in SIDE_BY_SIDE:
        out[f"{col}_testbed"] = testbed[col].iloc[:n].to_numpy()
        out[f"{col}_twin"] = twin[col].iloc[:n].to_numpy()
    out["config_testbed"] = testbed["config"].iloc[:n].to_numpy()
    out["config_twin"] = twin["config"].iloc[:n].to_numpy()
    return out


def summarise(rows: pd.DataFrame, requests_failed: float | None = None) -> dict[str, float]:
    """Means over a run's intervals (and the run's SLO violations over all its requests)."""
    n = rows["requests"].sum()
    over = (rows["slo_violations"] * rows["requests"]).sum()
    return {
        "Q_mean": float(rows["Q"].mean()),
        "objective_mean": float(rows["objective"].mean()),
        "reward_mean": float(rows["reward"].mean()),
        "C_mean": float(rows["C"].mean()),
        "V_mean": float(rows["V"].mean()),
        "T_mean": float(rows["T"].mean()),
        "L_mean": float(rows["L"].mean()),
        "E_mean": float(rows["E"].mean()),
        "p95_s_mean": float(rows["p95_s"].mean()),
        "slo_violations": float(over / n) if n else 0.0,
        "failed": float(rows["failed"].sum() if requests_failed is None else requests_failed),
        "decisions": len(rows),
        "reconfigurations": int((rows.get("apply_s", rows.get("change_delay_s")) > 0).sum()),
        "decision_ms_mean": float(rows["decision_ms"].mean()),
    }


def run_control(
    run: ControlRun, env: Any, make_decider: Any, twin_env: Any, target: Path
) -> dict[str, Any]:
    """The whole live-control run (and its twin replay) into ``target``; its summary.

    ``make_decider()`` gives a fresh policy (the twin's replay gets its own, so a
    seeded Random draws the same sequence); ``twin_env`` is a second environment
    built like ``env``.
    """
    work = Path(tempfile.mkdtemp(prefix="rl-control-"))
    tb = control_testbed(run, env, make_decider(), work)
    return write_run(run, tb, env.interval_s, make_decider, twin_env, work, target)


def write_run(
    run: ControlRun,
    tb: TestbedResult,
    interval: float,
    make_decider: Any,
    twin_env: Any,
    work: Path,
    target: Path,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A measured run (and, when ``run.twin``, its twin replay) into ``target``; its
    summary (with ``extra`` merged in). ``work`` holds the load run and is removed."""
    from lab.control_plot import plot_run
    from lab.control_twin import TwinReplay, replay

    rows = with_latency(run, tb, interval)
    seconds = change_medians(tb.changes)
    twin_rows = None
    if run.twin:
        err.print("the same loop in the twin …", highlight=False)
        w = next(x for x in run.view.workloads if x.name == run.shape)
        spec = TwinReplay(
            twin_env,
            w,
            run.seed,
            run.duration_s + run.load_margin_s,
            tb.offset_s,
            len(rows),
            seconds,
        )
        twin_rows, _ = replay(spec, make_decider())
    summary: dict[str, Any] = {
        "scenario": run.scenario.name,
        "policy": run.policy,
        "shape": run.shape,
        "duration_s": run.duration_s,
        "seed": run.seed,
        "rate_scale": run.rate_scale,
        "train_twin": run.train_twin,
        "cpu_factor": tb.factor,
        "offset_s": round(tb.offset_s, 3),
        "load_margin_s": run.load_margin_s,
        "testbed": summarise(rows, float(tb.load_summary.get("failures", rows["failed"].sum()))),
        "twin": summarise(twin_rows) if twin_rows is not None else None,
        "change_seconds_median": seconds,
        "changes": len(tb.changes),
        "load_run": tb.load_summary,
        "notes": run.notes,
        **(extra or {}),
    }
    with atomic_dir(target, keep_failed=True) as tmp:
        write_table(rows, tmp / "intervals")
        write_table(tb.changes, tmp / "changes")
        if twin_rows is not None:
            write_table(twin_rows, tmp / "twin-intervals")
            write_table(side_by_side(rows, twin_rows), tmp / "side-by-side")
        plot_run(rows, twin_rows, f"{run.policy} on {run.shape}", tmp / "over-time.png")
        if (work / "load").is_dir():
            shutil.copytree(work / "load", tmp / "load")
        if run.training is not None:
            for name in ("curves.png", "curves.csv", "training.json"):
                if (run.training / name).is_file():
                    shutil.copy(run.training / name, tmp / f"training-{name}")
        (tmp / "inputs").mkdir()
        shutil.copy(run.scenario_file, tmp / "inputs" / run.scenario_file.name)
        (tmp / "inputs" / "testbed-view.yaml").write_text(dump_yaml(run.view))
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
        (tmp / "report.md").write_text(report(run, summary, rows, twin_rows, tb.changes))
    shutil.rmtree(work, ignore_errors=True)  # kept on a failure: the load run is in it
    return summary


def report(
    run: ControlRun,
    summary: dict[str, Any],
    rows: pd.DataFrame,
    twin_rows: pd.DataFrame | None,
    changes: pd.DataFrame,
) -> str:
    """The run's report: means, changes and their times, side by side per interval."""
    from optimizer.rl.experiments import markdown

    means = pd.DataFrame(
        [{"side": k, **summary[k]} for k in ("testbed", "twin") if summary.get(k) is not None]
    )
    lines = [
        f"# {run.policy} controlling {run.scenario.name} ({run.shape}, {run.duration_s:g} s)",
        "",
        f"Testbed at CPU factor {summary['cpu_factor']:g}; policies and twin see "
        f"`inputs/testbed-view.yaml`. Load-run seed {run.seed}; the controller's first "
        f"interval began {summary['offset_s']:.2f} s into the load run.",
        "",
        "## Means over the intervals",
        "",
        markdown(means),
        "",
        "## Reconfigurations on the testbed (seconds per change)",
        "",
        markdown(changes) if len(changes) else "No configuration change.",
        "",
    ]
    if twin_rows is not None:
        lines += ["## Per interval, testbed vs twin", "", markdown(side_by_side(rows, twin_rows))]
    lines += ["", "![over time](over-time.png)", ""]
    if run.training is not None:
        lines += ["PPO training curve: ![training](training-curves.png)", ""]
    lines += [f"- {n}" for n in run.notes]
    return "\n".join(lines) + "\n"
