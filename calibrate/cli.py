"""``mlops-twin calibrate fit|apply|profile`` (``validate`` is the lab's: :mod:`lab.cli`).

Results go to stdout (``--json`` for machines), progress and errors to stderr;
errors are one paragraph without a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import typer
from pydantic import TypeAdapter
from rich.table import Table

from twin.console import err, fail, out
from twin.load import SpecError, load_deployment, load_scenario
from twin.spec import Deployment, Scenario, Workload

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Profile the testbed, fit the twin's service times, validate twin vs testbed.",
)


def read_samples(
    source: Path,
    cpu_share: float | None,
    scenario: Scenario | None = None,
    deployment: Deployment | None = None,
    answer_ms: dict[str, float] | None = None,
    timer_late_ms: dict[str, float] | None = None,
    onward: set[str] | None = None,
) -> tuple[pd.DataFrame, dict, pd.DataFrame | None]:
    """Samples, mean overheads and per-request overheads from a profile, load run or table.

    A profile folder holds ``samples.parquet`` and ``manifest.json``; a load-run
    folder (``mlops-twin load run``) holds ``visits.parquet`` and
    ``requests.parquet``, whose per-request overheads (ms) come back as a
    table (None for the other sources); a file is a samples table (parquet or CSV).
    With the ``scenario`` and the ``deployment`` the load runs had, each request's
    overhead also holds its stages' batch dispatch lag
    (:func:`calibrate.samples.dispatch_lag`), as the lab's fit has it; ``answer_ms``
    (:func:`calibrate.samples.answer_hops`) takes the hop's growth with the batch out,
    ``timer_late_ms`` (:func:`calibrate.samples.timer_lateness`) the timer's lateness.
    """
    from calibrate.samples import dispatch_lag, overheads, request_overheads, testbed_samples

    if source.is_dir() and (source / "samples.parquet").is_file():
        manifest = source / "manifest.json"
        ov = json.loads(manifest.read_text()).get("overheads", {}) if manifest.is_file() else {}
        return pd.read_parquet(source / "samples.parquet"), ov, None
    if source.is_dir() and (source / "visits.parquet").is_file():
        visits = pd.read_parquet(source / "visits.parquet")
        requests = pd.read_parquet(source / "requests.parquet")
        share = cpu_share
        if share is None:
            fail(f"{source} is a load run: give the stages' CPU share with --cpu-share")
        rows = requests[requests["process"].astype(str).isin(visits["process"].astype(str))]
        return (
            testbed_samples(visits, float(share)),
            overheads(rows, visits),
            request_overheads(
                rows,
                visits,
                _run_workload(source),
                None
                if deployment is None
                else dispatch_lag(visits, scenario, deployment, timer_late_ms),
                answer_ms,
                onward,
            ).assign(level=str(source)),
        )
    if source.is_file():
        frame = pd.read_csv(source) if source.suffix == ".csv" else pd.read_parquet(source)
        if cpu_share is not None or "cpu_share" not in frame:
            frame = frame.assign(cpu_share=cpu_share or 1.0)
        return frame, {}, None
    fail(f"{source}: not a profile folder, a load-run folder or a samples table")
    raise AssertionError  # unreachable: fail exits


def _run_workload(folder: Path) -> Workload | None:
    """The workload a load run offered (its ``run.json``), or None when it does not say.

    It gives each request's offered rate, so the calibration's overhead gets its
    measured levels per rate (``overheads.by_rate``) and ``--rate`` can move it.
    """
    try:
        meta = json.loads((folder / "run.json").read_text())
        return TypeAdapter(Workload).validate_python(meta["workload"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@app.command()
def fit(
    sources: Annotated[list[Path], typer.Argument(help="Profile folders, load runs or tables.")],
    scenario: Annotated[Path, typer.Option("--scenario", "-s", help="Scenario YAML.")],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="Calibration file to write.")] = (
        Path("calibration.yaml")
    ),
    scenario_out: Annotated[
        Path | None, typer.Option(help="Also write the calibrated scenario YAML here.")
    ] = None,
    cpu_share: Annotated[
        float | None,
        typer.Option(
            help="CPU share (host cores) of load-run sources; and of the calibrated "
            "scenario's stages (default: the most-sampled share)."
        ),
    ] = None,
    deployment: Annotated[
        Path | None,
        typer.Option(
            "--deployment",
            "-d",
            help="The deployment the load runs had: each request's overhead then holds its "
            "stages' batch dispatch lag (timer and event-loop lag), as in the lab's fit.",
        ),
    ] = None,
    answer_hop: Annotated[
        bool,
        typer.Option(
            help="With --deployment: fit each batching stage's serial time per answer "
            "(the HTTP hop's growth with the batch, samples.answer_hops) on the load runs "
            "and take it out of the per-request overhead; the twin adds it per visit."
        ),
    ] = True,
    timer_late: Annotated[
        bool,
        typer.Option(
            help="With --deployment: fit how late each batching stage's timer fires "
            "(samples.timer_lateness); the twin's timer fires that late, and the overhead "
            "holds only the dispatch lag beyond it. Off by default: on Compose s11 batch it "
            "made the held-out p50 at ρ 0.6 worse (+7.7 → +9.1 %)."
        ),
    ] = False,
    answer_onward: Annotated[
        bool,
        typer.Option(
            help="With --answer-hop: a batch's items that go on to another step leave it "
            "together once the gateway has read all its answers (ServerOverhead."
            "answers_onward); their visits' whole wait leaves the per-request overhead. "
            "Off by default."
        ),
    ] = False,
    call_window: Annotated[
        bool,
        typer.Option(
            help="Fit the gateway's calls: per load run, each stage's items per HTTP call "
            "(samples.call_sizes) and the twin's call window that gives them "
            "(samples.call_windows, ServerOverhead.call_window_ms), interpolated to a rate "
            "like the overhead. Off by default (the twin without a call layer)."
        ),
    ] = False,
    holdout: Annotated[float, typer.Option(help="Held-out fraction for model choice.")] = 0.3,
    seed: Annotated[int, typer.Option(help="Seed of the held-out split.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Fit per stage × variant × CPU share a service-time model; write a calibration file.

    Load-run sources also give the per-request overhead distribution, which
    the calibrated scenario's request processes carry (``request_overhead``).
    """
    from calibrate import calibration as cal
    from calibrate.fit import fit_overhead, fit_samples

    try:
        sc = load_scenario(scenario)
        dep = load_deployment(deployment) if deployment is not None else None
        frames, ovs, per_request = [], [], []
        answer = _answer_hops(sources) if dep is not None and answer_hop else {}
        late = _timer_lateness(sources, sc, dep) if dep is not None and timer_late else {}
        onward = _onward_stages(sc) if answer and answer_onward else None
        for s in sources:
            frame, ov, over = read_samples(s, cpu_share, sc, dep, answer, late, onward)
            frames.append(frame)
            if ov:
                ovs.append(ov)
            if over is not None and len(over):
                per_request.append(over)
        samples = pd.concat(frames, ignore_index=True)
        fits = fit_samples(samples, holdout=holdout, seed=seed)
        ov = _pool_overheads(ovs)
        model, scores = None, {}
        over = pd.concat(per_request, ignore_index=True) if per_request else None
        if over is not None:
            # one fit per run (a load level), then their mean mean and cv: pooling would
            # let the busiest run decide the mean and widen the spread by the gap
            # between levels, which no single load shows
            model, scores = fit_overhead(
                over["overhead_ms"].to_numpy(),
                over["level"].to_numpy() if "level" in over else None,
                holdout=holdout,
                seed=seed,
            )
        doc = cal.build(
            fits,
            sc,
            cal.file_sha256(scenario),
            ", ".join(map(str, sources)),
            ov,
            per_request=model,
            heldout_loglik=scores,
            by_rate=cal.overhead_levels(over) if over is not None else None,
            dispatch_lag_ms=float(over["lag_ms"].mean()) if over is not None else 0.0,
            answer_ms=answer,
            timer_late_ms=late,
            calls_by_rate=_call_levels(sources, sc) if call_window else None,
            answers_onward=bool(onward),
        )
        out_file.parent.mkdir(parents=True, exist_ok=True)
        out_file.write_text(cal.dump(doc))
        if scenario_out is not None:
            new, _ = cal.calibrated_scenario(sc, doc, cpu_share)
            scenario_out.parent.mkdir(parents=True, exist_ok=True)
            scenario_out.write_text(cal.dump_model(new, exclude_defaults=True))
    except (SpecError, ValueError, KeyError, OSError) as exc:
        fail(str(exc))
        return
    if as_json:
        print(json.dumps(doc.model_dump(mode="json"), indent=2))
        return
    table = Table(title=f"calibration → {out_file}")
    for col in ("stage", "variant", "share", "n", "batches", "model", "mean b=1 ms", "cv b=1"):
        table.add_column(col)
    for f in doc.fits:
        st = f.service_time
        table.add_row(
            f.component,
            f.variant,
            f"{f.cpu_share:g}",
            str(f.n),
            ",".join(map(str, f.batches)),
            f"{f.dist}/{f.structure}",
            f"{st.batch_mean_ms(1):.4g}",
            f"{st.batch_cv(1):.3f}",
        )
    out.print(table)
    if scenario_out is not None:
        err.print(f"calibrated scenario: {scenario_out}", highlight=False)


def _answer_hops(sources: list[Path]) -> dict[str, float]:
    """:func:`calibrate.samples.answer_hops` over the load-run sources' visits, within
    each run."""
    from calibrate.samples import answer_hops

    cols = ["component", "batch", "hop_s"]
    frames = [
        pd.read_parquet(s / "visits.parquet").assign(run=k)
        for k, s in enumerate(sources)
        if s.is_dir() and (s / "visits.parquet").is_file()
    ]
    frames = [f[[*cols, "run"]] for f in frames if set(cols) <= set(f.columns)]
    return answer_hops(pd.concat(frames, ignore_index=True)) if frames else {}


def _onward_stages(sc: Scenario) -> set[str]:
    """Stage components of steps another step depends on (their items go on)."""
    out = set()
    for p in sc.processes:
        needed = {d for st in p.steps for d in st.depends_on}
        out |= {
            st.component
            for st in p.steps
            if st.name in needed and sc.component(st.component).is_stage
        }
    return out


def _call_levels(sources: list[Path], sc: Scenario) -> list:
    """Per load-run source with a steady offered rate: its stages' items per call and
    the twin's call windows for them (:class:`calibrate.calibration.CallLevel`)."""
    from calibrate.calibration import CallLevel
    from calibrate.samples import call_sizes, call_windows
    from twin.spec import SteadyWorkload

    upstream: dict[str, str | None] = {}
    for p in sc.processes:
        by_name = {st.name: st for st in p.steps}
        for st in p.steps:
            if sc.component(st.component).is_stage:
                deps = [by_name[d].component for d in st.depends_on]
                upstream[st.component] = deps[0] if len(deps) == 1 else None
    out = []
    for s in sources:
        workload = _run_workload(s)
        if not isinstance(workload, SteadyWorkload) or not (s / "visits.parquet").is_file():
            continue
        rate = float(workload.rate_per_s)
        sizes = call_sizes(pd.read_parquet(s / "visits.parquet"))
        if sizes and rate > 0:
            windows = call_windows(sizes, rate, upstream)
            out.append(CallLevel(rate_per_s=rate, items_per_call=sizes, window_ms=windows))
    return out


def _timer_lateness(sources: list[Path], sc: Scenario, dep: Deployment) -> dict[str, float]:
    """:func:`calibrate.samples.timer_lateness` per load-run source; their median per stage."""
    from calibrate.samples import timer_lateness

    per: dict[str, list[float]] = {}
    for s in sources:
        if s.is_dir() and (s / "visits.parquet").is_file():
            visits = pd.read_parquet(s / "visits.parquet")
            for k, v in timer_lateness(visits, sc, dep).items():
                per.setdefault(k, []).append(v)
    return {k: float(np.median(v)) for k, v in per.items()}


def _pool_overheads(ovs: list[dict]) -> dict[str, float] | None:
    """Request-weighted means of several runs' overheads."""
    ovs = [o for o in ovs if o.get("n_requests")]
    if not ovs:
        return None
    n = sum(o["n_requests"] for o in ovs)
    pooled = {k: sum(o[k] * o["n_requests"] for o in ovs) / n for k in ("hop_ms", "request_ms")}
    return {**pooled, "n_requests": n}


@app.command()
def apply(
    calibration_file: Annotated[Path, typer.Argument(help="Calibration file (calibrate fit).")],
    scenario: Annotated[Path, typer.Option("--scenario", "-s", help="Scenario YAML.")],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="Calibrated scenario YAML.")],
    cpu_share: Annotated[
        float | None, typer.Option(help="CPU share (host cores) of the stages.")
    ] = None,
    rate: Annotated[
        float | None,
        typer.Option(help="Set the request overhead for this offered rate (req/s)."),
    ] = None,
) -> None:
    """Write the scenario with the fitted service times and per-request overhead."""
    from calibrate import calibration as cal

    try:
        sc = load_scenario(scenario)
        doc = cal.load(calibration_file)
        try:
            cal.check_matches(sc, doc)
            new, untouched = cal.calibrated_scenario(sc, doc, cpu_share, rate_per_s=rate)
        except ValueError as exc:
            raise ValueError(f"{calibration_file}: {exc}") from None
        out_file.parent.mkdir(parents=True, exist_ok=True)
        out_file.write_text(cal.dump_model(new, exclude_defaults=True))
    except (SpecError, ValueError, KeyError, OSError) as exc:
        fail(str(exc))
        return
    print(str(out_file))
    if untouched:
        err.print(f"not profiled (kept as in the scenario): {', '.join(untouched)}")


def floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        fail(f"expected comma-separated numbers, got {text!r}")
        raise AssertionError from None  # unreachable: fail exits


def default_shares(scenario_file: Path) -> tuple[tuple[float, ...], float | None]:
    """The CPU shares the testbed gives this scenario's servers (and 1 core), and its factor."""
    try:
        from testbed.capacity import plan_capacity

        cap = plan_capacity(load_scenario(scenario_file))
    except (ImportError, ValueError):
        return (0.5, 1.0), None
    shares = sorted({round(n.cpu_cores, 4) for n in cap.nodes} | {1.0})
    return tuple(shares), cap.factor


@app.command()
def profile(
    scenario: Annotated[Path, typer.Option("--scenario", "-s", help="Scenario YAML.")] = Path(
        "examples/digits-pipeline.yaml"
    ),
    batches: Annotated[str, typer.Option(help="Batch sizes, comma-separated.")] = "1,4,8",
    shares: Annotated[
        str, typer.Option(help="CPU shares (host cores); default: the testbed's quotas and 1.")
    ] = "",
    stages: Annotated[str, typer.Option(help="Only these stages (comma-separated).")] = "",
    variants: Annotated[str, typer.Option(help="Only these variants (comma-separated).")] = "",
    samples: Annotated[int, typer.Option(help="Batch executions per cell.")] = 40,
    models: Annotated[Path, typer.Option(help="Model zoo folder.")] = Path("data/models"),
    out_root: Annotated[Path, typer.Option("--out-root", help="Profiles folder.")] = Path(
        "data/profiles"
    ),
    target: Annotated[
        str | None,
        typer.Option(help="Profile this Open Inference Protocol (V2) server instead (base URL)."),
    ] = None,
    model: Annotated[str | None, typer.Option(help="--target: the V2 model name.")] = None,
    version: Annotated[str | None, typer.Option(help="--target: the model version.")] = None,
    inputs: Annotated[
        list[str] | None,
        typer.Option("--input", help="--target: NAME:DATATYPE:SHAPE per input, e.g. x:FP32:1x64."),
    ] = None,
    concurrency: Annotated[
        str, typer.Option(help="--target: concurrent clients, comma-separated.")
    ] = "1,2,4,8",
    cell_s: Annotated[float, typer.Option(help="--target: seconds per cell.")] = 4.0,
    replicas: Annotated[int, typer.Option(help="--target: model instances in the server.")] = 1,
    dispatch: Annotated[
        str,
        typer.Option(
            help="--target: how the server hands requests to its --replicas instances: "
            "round_robin (e.g. MLServer's parallel_workers), least_outstanding, random, or "
            "shared_queue (instances pull from one queue)."
        ),
    ] = "least_outstanding",
    open_s: Annotated[
        float,
        typer.Option(
            help="--target: seconds of the open-loop Poisson cell, sent by the load generator, "
            "that the service time and overhead are read from (0: closed loop only)."
        ),
    ] = 15.0,
    open_share: Annotated[
        float,
        typer.Option(help="--target: the open-loop cell's rate as a share of measured capacity."),
    ] = 0.5,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="--target: profile folder to write.")
    ] = None,
) -> None:
    """Measure service times: the testbed's stages per variant × batch × CPU share, or with
    --target any V2 server's model per batch × concurrency (writes a calibrated scenario)."""
    from calibrate.profile import Grid, run_profile

    if target is not None:
        spec = (model, version, inputs or [], scenario)
        cells = (cell_s, open_s, open_share)
        instances = (replicas, dispatch)
        _profile_target(target, *spec, batches, concurrency, cells, instances, out_dir)
        return
    try:
        sh, factor = default_shares(scenario)
        grid = Grid(
            batches=tuple(int(b) for b in floats(batches)),
            shares=floats(shares) if shares else sh,
            stages=tuple(filter(None, stages.split(","))),
            variants=tuple(filter(None, variants.split(","))),
            samples=samples,
        )
        sc = load_scenario(scenario)
        say = lambda m: err.print(m, highlight=False)  # noqa: E731
        folder = run_profile(sc, scenario, grid, models, out_root, factor, say)
    except (SpecError, ValueError, KeyError, OSError, RuntimeError, TimeoutError) as exc:
        fail(str(exc))
        return
    print(folder)


def _profile_target(
    url: str,
    model: str | None,
    version: str | None,
    inputs: list[str],
    scenario: Path,
    batches: str,
    concurrency: str,
    cells: tuple[float, float, float],
    instances: tuple[int, str],
    out_dir: Path | None,
) -> None:
    """``calibrate profile --target``: sweep a V2 server (calibrate.target) and fit it."""
    import time

    from calibrate import target as tg

    say = lambda m: err.print(m, highlight=False)  # noqa: E731
    try:
        serving = None
        if scenario.is_file() and model is None and not inputs:
            from loadgen.tensors import resolve

            procs = [p for p in load_scenario(scenario).processes if p.serving is not None]
            if procs:
                serving = resolve(procs[0].serving, scenario.parent)  # type: ignore[arg-type]
        if serving is None:
            if model is None:
                raise ValueError("--target needs --model (or a scenario with a 'serving' process)")
            meta = tg.discover(url, model, version)
            if inputs:
                serving = tg.Serving(
                    model=model, version=version, inputs=[tg.parse_input(i) for i in inputs]
                )
            else:
                serving = tg.serving_from(meta, model, version)
        else:
            tg.discover(url, serving.model, serving.version)
        grid = tg.TargetGrid(
            batches=tuple(int(b) for b in floats(batches)),
            concurrency=tuple(int(c) for c in floats(concurrency)),
            cell_s=cells[0],
            open_s=cells[1],
            open_share=cells[2],
        )
        name = tg.name_of(f"{serving.model}-{serving.version or 'default'}")
        folder = out_dir or Path("runs") / time.strftime(f"profile-{name}-%Y%m%d-%H%M%S")
        tg.run_target_profile(url, serving, folder, grid, instances[0], say, instances[1])
    except (SpecError, ValueError, KeyError, OSError, RuntimeError) as exc:
        fail(str(exc))
        return
    print(folder)
    err.print(
        f"simulate it: mlops-twin simulate {folder}/scenario.yaml -d {folder}/deployment.yaml "
        "--workload steady-50",
        highlight=False,
    )


@app.command("import-perf-analyzer")
def import_perf_analyzer(
    csv_file: Annotated[Path, typer.Argument(help="perf_analyzer -f output (CSV, microseconds).")],
    model: Annotated[str, typer.Option(help="The model it measured (V2 name).")],
    version: Annotated[str | None, typer.Option(help="The model version.")] = None,
    batch: Annotated[int, typer.Option(help="perf_analyzer's -b (rows per request).")] = 1,
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for calibration, scenario, deployment.")
    ] = Path("calibration-perf-analyzer"),
) -> None:
    """Turn a Triton perf_analyzer CSV into a calibration and a one-stage calibrated scenario."""
    from calibrate import calibration as cal
    from calibrate.perf_analyzer import import_csv
    from twin.runs import atomic_dir

    try:
        doc, scenario, dep, summary = import_csv(csv_file, model, version, batch)
        with atomic_dir(out_dir) as tmp:
            (tmp / "calibration.yaml").write_text(cal.dump(doc))
            (tmp / "scenario.yaml").write_text(cal.dump_model(scenario, exclude_defaults=True))
            (tmp / "deployment.yaml").write_text(cal.dump_model(dep, exclude_defaults=True))
    except (SpecError, ValueError, OSError) as exc:
        fail(str(exc))
        return
    table = Table(title=f"perf_analyzer {csv_file.name} → {out_dir}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        number = isinstance(value, float | int) and not isinstance(value, bool)
        table.add_row(key, f"{value:.4g}" if number else str(value))
    out.print(table)
