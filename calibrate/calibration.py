"""The calibration file and the calibrated scenario it yields.

A calibration file (YAML, ``kind: mlops-twin-calibration``, ``version: 2``)
holds, per stage × variant × CPU share, a fitted service time *in the spec's
own format* (a ``lognormal``/``gamma`` model with ``per_item_ms``, or a
``table``), the held-out log-likelihood of every candidate, the share
exponent η, and the testbed's per-request overhead: everything a request's
latency holds beyond its stages' queue and service time (client ↔ gateway,
the gateway's own work, the HTTP hop of *every* stage visit), fitted as one
lognormal or gamma distribution. :func:`calibrated_scenario` turns it into a
scenario whose variants carry the fitted service times and whose request
processes carry the overhead as ``Process.request_overhead``, which
``mlops-twin simulate`` and every other command consume unchanged. Because
the overhead already holds the HTTP hops, the calibrated scenario's network
latencies are 0.

Format 1 (before ``Process.request_overhead``) modelled the overhead with the
offered rate as a 'batch size' axis and added draws to the twin's latencies
after the fact; :func:`load` refuses it with a request to refit.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field

from calibrate.fit import VariantFit, share_exponent
from twin.load import SpecError, parse, read_yaml
from twin.spec import (
    GammaServiceTime,
    LognormalServiceTime,
    Scenario,
    ServerOverhead,
    ServiceTime,
    TablePoint,
    TableServiceTime,
)

KIND = "mlops-twin-calibration"
FORMAT = 2  # version of the file layout; see the module doc


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class FitRecord(_Model):
    component: str
    variant: str
    cpu_share: float = Field(gt=0, description="Host cores the stage's server had.")
    n: int = Field(ge=1, description="Batch executions fitted.")
    batches: list[int]
    dist: str
    structure: str
    service_time: ServiceTime
    heldout_loglik: dict[str, float] = Field(
        default_factory=dict, description="Candidate → mean held-out log-likelihood (nats)."
    )


class RateLevel(_Model):
    """The measured overhead at one offered rate of the fit runs (how much it moves with load)."""

    rate_per_s: float
    n: int
    mean_ms: float
    p50_ms: float
    p95_ms: float
    dispatch_lag_ms: float = Field(0.0, description="Mean batch dispatch lag it holds.")


class CallLevel(_Model):
    """A fit run's HTTP calls per stage (``samples.call_sizes``) at its offered rate, and
    the call window (``ServerOverhead.call_window_ms``) that gives them in the twin."""

    rate_per_s: float
    items_per_call: dict[str, float] = Field(default_factory=dict)
    window_ms: dict[str, float] = Field(default_factory=dict)


class Overheads(_Model):
    hop_ms: float = Field(0.0, ge=0, description="Mean HTTP round trip of one stage visit.")
    request_ms: float = Field(0.0, ge=0, description="Mean client↔gateway time per request.")
    n_requests: int = 0
    dispatch_lag_ms: float = Field(
        0.0,
        ge=0,
        description="Mean per request of the stages' batch dispatch lag (ms): queue time "
        "the twin's batching does not produce (timer and event-loop lag), held in per_request.",
    )
    per_request: ServiceTime | None = Field(
        None,
        description="Fitted distribution of a request's whole overhead at batch size 1 (ms): "
        "latency minus its stages' queue and service time (client lag, gateway, every HTTP "
        "hop). The calibrated scenario's request processes carry it as request_overhead.",
    )
    heldout_loglik: dict[str, float] = Field(
        default_factory=dict, description="Family → mean held-out log-likelihood (nats)."
    )
    by_rate: list[RateLevel] = Field(
        default_factory=list, description="The measured overhead per offered rate of the fit."
    )
    answer_ms: dict[str, float] = Field(
        default_factory=dict,
        description="Per batching stage: the serial time per answer of a batch (ms; "
        "ServerOverhead.answer_ms), fitted from how its visits' HTTP hop grows with the "
        "batch (samples.answer_hops). per_request no longer holds that growth.",
    )
    timer_late_ms: dict[str, float] = Field(
        default_factory=dict,
        description="Per batching stage: how late its batch timer fires (ms; "
        "ServerOverhead.timer_late_ms, samples.timer_lateness). dispatch_lag_ms and "
        "per_request hold only the lag beyond it.",
    )
    answers_onward: bool = Field(
        False,
        description="A batch's items that go on leave it together once all its answers are "
        "read (ServerOverhead.answers_onward); per_request no longer holds their wait.",
    )
    calls_by_rate: list[CallLevel] = Field(
        default_factory=list,
        description="Per fit run: the stages' items per HTTP call and the twin's call window "
        "for it (calibrated_scenario interpolates the window to a rate). Empty: no call layer.",
    )


class CpuModel(_Model):
    """Host CPU of one emulated server beyond its stages' batch compute (fitted on the fit runs).

    cores = idle_cores + per_visit_ms / 1000 × stage visits per second: the
    stage servers' HTTP handling, (de)serialisation, node agent and runtime —
    work the twin's stages do not simulate. The twin's CPU use is its batch
    compute plus this.
    """

    server: str
    idle_cores: float
    per_visit_ms: float
    rates: list[float] = Field(default_factory=list, description="Visits/s of the fit runs.")


class Calibration(_Model):
    kind: str = KIND
    version: int = Field(FORMAT, ge=FORMAT, le=FORMAT, description="File layout version.")
    scenario: str
    scenario_sha256: str = ""
    source: str = ""
    fits: list[FitRecord] = Field(min_length=1)
    share_exponent: dict[str, float] = Field(
        default_factory=dict, description="'component/variant' → η in mean ∝ share^(−η)."
    )
    overheads: Overheads = Overheads()
    cpu: list[CpuModel] = Field(
        default_factory=list, description="Per emulated server: CPU beyond batch compute."
    )


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def build(
    fits: list[VariantFit],
    scenario: Scenario,
    scenario_sha256: str = "",
    source: str = "",
    overheads: dict[str, float] | None = None,
    per_request: ServiceTime | None = None,
    heldout_loglik: dict[str, float] | None = None,
    by_rate: list[RateLevel] | None = None,
    dispatch_lag_ms: float = 0.0,
    cpu: list[CpuModel] | None = None,
    answer_ms: dict[str, float] | None = None,
    timer_late_ms: dict[str, float] | None = None,
    calls_by_rate: list[CallLevel] | None = None,
    answers_onward: bool = False,
) -> Calibration:
    """A calibration document from fitted variants (and measured overheads).

    ``overheads``: mean ``hop_ms``/``request_ms`` and ``n_requests``;
    ``per_request``: the fitted overhead distribution (ms, batch size 1).
    """
    known = {(c.name, v.name) for c in scenario.components for v in c.variants}
    unknown = sorted({f"{f.component}/{f.variant}" for f in fits} - {f"{c}/{v}" for c, v in known})
    if unknown:
        raise ValueError(f"fits for stages/variants not in scenario {scenario.name!r}: {unknown}")
    records = [
        FitRecord(
            component=f.component,
            variant=f.variant,
            cpu_share=f.cpu_share,
            n=f.n,
            batches=list(f.batches),
            dist=f.dist,
            structure=f.structure,
            service_time=f.service_time,
            heldout_loglik=f.heldout_loglik,
        )
        for f in fits
    ]
    eta = {f"{c}/{v}": e for (c, v), e in share_exponent(fits).items()}
    ov = overheads or {}
    clean = {k: ov.get(k, 0.0) for k in ("hop_ms", "request_ms")}
    clean = {k: (max(v, 0.0) if math.isfinite(v) else 0.0) for k, v in clean.items()}
    return Calibration(
        scenario=scenario.name,
        scenario_sha256=scenario_sha256,
        source=source,
        fits=records,
        share_exponent=eta,
        overheads=Overheads(
            **clean,
            n_requests=int(ov.get("n_requests", 0) or 0),
            per_request=per_request,
            heldout_loglik=heldout_loglik or {},
            by_rate=by_rate or [],
            dispatch_lag_ms=max(float(dispatch_lag_ms), 0.0),
            answer_ms=dict(answer_ms or {}),
            timer_late_ms=dict(timer_late_ms or {}),
            calls_by_rate=list(calls_by_rate or []),
            answers_onward=answers_onward,
        ),
        cpu=cpu or [],
    )


def dump_model(model: BaseModel, exclude_defaults: bool = False) -> str:
    """A model as YAML that its loader reads back.

    Python mode, not JSON mode: JSON turns a table's integer batch sizes into
    string keys, which the spec (rightly) refuses. ``twin.load.dump_yaml`` has
    that problem, so calibrated scenarios are written with this.
    """
    data = model.model_dump(mode="python", exclude_defaults=exclude_defaults)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def dump(calibration: Calibration) -> str:
    """The calibration file's text (YAML)."""
    return dump_model(calibration)


def load(path: str | Path) -> Calibration:
    """Read and validate a calibration file (errors name the file and field)."""
    data = read_yaml(path)
    if isinstance(data, dict) and data.get("kind") == KIND and "version" not in data:
        raise SpecError(
            f"{path}: a format-1 calibration file (per-request overhead by offered rate, "
            f"added outside the twin); this calibrate reads format {FORMAT}, which puts the "
            "overhead into the scenario's request processes: refit it (calibrate fit or "
            "calibrate validate)"
        )
    return parse(Calibration, data, str(path))


def scale_service_time(model: ServiceTime, factor: float) -> ServiceTime:
    """The same model with every mean multiplied by ``factor`` (cv unchanged)."""
    if isinstance(model, TableServiceTime):
        points = {
            b: TablePoint(mean_ms=p.mean_ms * factor, cv=p.cv) for b, p in model.points.items()
        }
        return model.model_copy(update={"points": points})
    if isinstance(model, LognormalServiceTime | GammaServiceTime):
        return model.model_copy(
            update={"mean_ms": model.mean_ms * factor, "per_item_ms": model.per_item_ms * factor}
        )
    raise ValueError(f"cannot scale a {model.kind} service time")


def service_time_at(
    calibration: Calibration, component: str, variant: str, share: float
) -> ServiceTime | None:
    """The fitted model at CPU ``share``: the nearest measured share, scaled by share^(−η).

    Without a measured η the nearest share's model is used as it is. None when
    the stage × variant was not profiled.
    """
    recs = [f for f in calibration.fits if f.component == component and f.variant == variant]
    if not recs:
        return None
    near = min(recs, key=lambda f: abs(math.log(f.cpu_share / share)))
    eta = calibration.share_exponent.get(f"{component}/{variant}")
    if eta is None or math.isclose(near.cpu_share, share, rel_tol=1e-6):
        return near.service_time
    return scale_service_time(near.service_time, (near.cpu_share / share) ** eta)


def overhead_at(
    calibration: Calibration, rate_per_s: float, shape: bool = False
) -> ServiceTime | None:
    """The fitted overhead with its mean moved to ``rate_per_s`` (req/s offered); cv kept.

    The mean is interpolated linearly between the fit levels' measured means
    (``overheads.by_rate``) and held at the nearest level's outside them: the
    overhead stays flat at light load and grows faster as the host's cores fill,
    so a straight line through the levels is too low below them and too high
    above. With fewer than two levels the fitted distribution as it is.

    ``shape`` (a lognormal overhead only): the cv too, interpolated the same way
    between the levels' own, each from its mean and median (a lognormal's
    ``cv = sqrt((mean / median)² − 1)``). On the quiet Compose default sweep the
    overhead's cv rose from 0.40 at 27/s to 0.57–0.58 at 109–122/s (mean 7.3 → 8.4
    ms, median 6.8 → 7.3) against the pooled 0.45: the pooled shape put the twin's
    median above the testbed's and its tail below at high rates.
    """
    model = calibration.overheads.per_request
    levels = calibration.overheads.by_rate
    if (
        model is None
        or len(levels) < 2
        or not isinstance(model, LognormalServiceTime | GammaServiceTime)
    ):
        return model
    order = sorted(levels, key=lambda lv: lv.rate_per_s)
    x = np.array([lv.rate_per_s for lv in order])
    y = np.array([lv.mean_ms for lv in order])
    update = {"mean_ms": float(np.interp(rate_per_s, x, y))}
    ratio = np.array([lv.mean_ms / lv.p50_ms if lv.p50_ms > 0 else np.nan for lv in order])
    if shape and isinstance(model, LognormalServiceTime) and np.all(ratio > 1):
        update["cv"] = float(np.interp(rate_per_s, x, np.sqrt(ratio**2 - 1)))
    return model.model_copy(update=update)


def check_matches(scenario: Scenario, calibration: Calibration) -> None:
    """ValueError unless ``calibration`` was fitted for ``scenario``: same name, and at
    least one fit for a variant the scenario has. (Fits of other variants are fine:
    a profile may cover the whole model zoo.)"""
    if calibration.scenario != scenario.name:
        raise ValueError(
            f"calibration.scenario: the calibration was fitted for scenario "
            f"{calibration.scenario!r}, not {scenario.name!r}; fit one for this scenario"
        )
    known = {(c.name, v.name) for c in scenario.components for v in c.variants}
    if not any((f.component, f.variant) in known for f in calibration.fits):
        raise ValueError(
            f"calibration.fits: no fitted variant is one of scenario {scenario.name!r}'s; "
            "the calibration belongs to another scenario"
        )


def server_cpu_of(
    calibration: Calibration, allocation: dict[str, dict[str, int]]
) -> dict[str, ServerOverhead]:
    """Per stage: its server's CPU per visit (``calibration.cpu``, ms on the host), for
    :func:`calibrated_scenario`'s ``server_cpu``.

    Only stages that are alone on their emulated server(s) get one: a server's CPU
    beyond batch compute cannot be split between co-located stages.
    """
    per_visit = {m.server: m.per_visit_ms for m in calibration.cpu}
    holders: dict[str, list[str]] = {}
    for comp, where in allocation.items():
        for server, n in where.items():
            if n > 0:
                holders.setdefault(server, []).append(comp)
    out: dict[str, ServerOverhead] = {}
    for comp, where in allocation.items():
        servers = [s for s, n in where.items() if n > 0]
        if servers and all(holders[s] == [comp] and s in per_visit for s in servers):
            ms = float(np.mean([per_visit[s] for s in servers]))
            out[comp] = ServerOverhead(per_item_ms=ms)
    return out


def call_window_at(calibration: Calibration, rate_per_s: float | None) -> dict[str, float]:
    """Per stage, the call window (ms) at ``rate_per_s`` (req/s offered): interpolated
    linearly between the fit runs' (``overheads.calls_by_rate``) and held at the nearest
    outside them, as the overhead (the gateway's loop turns grow with its load); None:
    the runs' median. Empty without a call layer."""
    levels = sorted(calibration.overheads.calls_by_rate, key=lambda lv: lv.rate_per_s)
    out: dict[str, float] = {}
    for stage in sorted({k for lv in levels for k in lv.window_ms}):
        pts = [(lv.rate_per_s, lv.window_ms[stage]) for lv in levels if stage in lv.window_ms]
        x, y = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
        out[stage] = float(np.median(y) if rate_per_s is None else np.interp(rate_per_s, x, y))
    return out


def calibrated_scenario(
    scenario: Scenario,
    calibration: Calibration,
    shares: dict[str, float] | float | None = None,
    rate_per_s: float | None = None,
    server_cpu: dict[str, ServerOverhead] | None = None,
    overhead_shape: bool = False,
) -> tuple[Scenario, list[str]]:
    """The scenario with profiled variants' service times replaced; and what stayed as it was.

    ``shares`` gives the CPU share (host cores) each stage runs with on the
    testbed — one number for all, or per component; None: the most-sampled
    share of each variant. With a fitted per-request overhead every request
    process gets it as ``request_overhead`` and the network latencies are set
    to 0 (the overhead holds the HTTP hops; see the module doc). Returns the
    new scenario and the 'component/variant' names that kept their original
    service time. ``rate_per_s``: calibrate the overhead for this offered
    rate (:func:`overhead_at`) instead of the fit levels' middle — the
    overhead grows with load and the spec has one distribution per process
    (``overhead_shape``: its cv too, see :func:`overhead_at`).
    ``server_cpu``: per stage component, its server's CPU outside the model on a
    full core (ms per batch and per item); it becomes the component's
    ``server_overhead`` at the stage's share (divided by it, as the service time
    is measured at that share), so it counts against the stage's capacity; the
    per-request overhead, which held that time as latency, loses it (floored at
    a tenth of its mean).
    """
    if rate_per_s is not None and not (math.isfinite(rate_per_s) and rate_per_s > 0):
        raise ValueError(f"--rate must be a finite rate > 0 (req/s), got {rate_per_s}")
    for name, share in shares.items() if isinstance(shares, dict) else [("all", shares)]:
        if share is not None and not (math.isfinite(share) and 0 < share <= 1024):
            raise ValueError(
                f"CPU share of {name} must be a finite number of cores in (0, 1024], got {share}"
            )
    untouched: list[str] = []
    components = []
    windows = call_window_at(calibration, rate_per_s)  # the gateway's calls, per stage
    for c in scenario.components:
        if server_cpu and c.name in server_cpu:
            share = shares.get(c.name) if isinstance(shares, dict) else shares
            cpu, div = server_cpu[c.name], (share or 1.0)
            c = c.model_copy(
                update={
                    "server_overhead": ServerOverhead(
                        per_call_ms=cpu.per_call_ms / div, per_item_ms=cpu.per_item_ms / div
                    )
                }
            )
        variants = []
        for v in c.variants:
            share = shares.get(c.name) if isinstance(shares, dict) else shares
            if share is None:
                recs = [f for f in calibration.fits if (f.component, f.variant) == (c.name, v.name)]
                share = max(recs, key=lambda f: f.n).cpu_share if recs else 1.0
            st = service_time_at(calibration, c.name, v.name, share)
            if st is None:
                untouched.append(f"{c.name}/{v.name}")
                variants.append(v)
            else:
                variants.append(v.model_copy(update={"service_time": st}))
        update: dict[str, object] = {"variants": variants}
        # the hop's growth with the batch and the timer's lateness left the per-request
        # overhead for the stage's server
        served = {
            "answer_ms": calibration.overheads.answer_ms.get(c.name, 0.0),
            "timer_late_ms": calibration.overheads.timer_late_ms.get(c.name, 0.0),
            "call_window_ms": windows.get(c.name, 0.0),
        }
        served = {k: v for k, v in served.items() if v > 0}
        if served.get("answer_ms") and calibration.overheads.answers_onward:
            served["answers_onward"] = True
        if served:
            o = c.server_overhead or ServerOverhead()
            update["server_overhead"] = o.model_copy(update=served)
        components.append(c.model_copy(update=update))
    settings, processes = scenario.settings, scenario.processes
    overhead = calibration.overheads.per_request
    if rate_per_s is not None:
        overhead = overhead_at(calibration, rate_per_s, shape=overhead_shape)
    if overhead is not None and server_cpu:
        # the servers' CPU now sits in each stage's service; it leaves the request's overhead
        moved = sum(
            (o.per_call_ms + o.per_item_ms)
            / ((shares.get(name) if isinstance(shares, dict) else shares) or 1.0)
            for name, o in server_cpu.items()
        )
        if isinstance(overhead, LognormalServiceTime | GammaServiceTime):
            overhead = overhead.model_copy(
                update={"mean_ms": max(overhead.mean_ms - moved, 0.1 * overhead.mean_ms)}
            )
    if overhead is not None:
        processes = [
            p.model_copy(update={"request_overhead": overhead}) if p.kind == "request" else p
            for p in processes
        ]
        net = settings.network.model_copy(
            update={"intra_zone_latency_ms": 0.0, "inter_zone_latency_ms": 0.0}
        )
        settings = settings.model_copy(update={"network": net})
    new = scenario.model_copy(
        update={"components": components, "processes": processes, "settings": settings}
    )
    # Re-validate: a fitted model must still be a valid spec model.
    return Scenario.model_validate(new.model_dump()), untouched


def overhead_levels(over: pd.DataFrame, max_levels: int = 6) -> list[RateLevel]:
    """The measured overhead (ms) per offered rate (``samples.request_overheads`` rows).

    One level per distinct rate (rounded to 0.1 req/s) when there are at most
    ``max_levels``, else quantile bins of the rate; none without rates.
    """
    rows = over.dropna(subset=["rate_per_s"])
    if rows.empty:
        return []
    rate = rows["rate_per_s"].round(1)
    key = rate if rate.nunique() <= max_levels else pd.qcut(rate, 4, duplicates="drop")
    levels = []
    for _, g in rows.groupby(key, observed=True, sort=True):
        x = g["overhead_ms"].to_numpy(dtype=float)
        levels.append(
            RateLevel(
                rate_per_s=round(float(g["rate_per_s"].mean()), 2),
                n=int(x.size),
                mean_ms=float(np.mean(x)),
                p50_ms=float(np.percentile(x, 50)),
                p95_ms=float(np.percentile(x, 95)),
                dispatch_lag_ms=float(g["lag_ms"].mean()) if "lag_ms" in g else 0.0,
            )
        )
    return levels
