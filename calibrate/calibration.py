"""The calibration file and the calibrated scenario it yields.

A calibration file (YAML, ``kind: mlops-twin-calibration``) holds, per stage ×
variant × CPU share, a fitted service time *in the spec's own format* (a
``lognormal``/``gamma`` model with ``per_item_ms``, or a ``table``), the
held-out log-likelihood of every candidate, the share exponent η, and the
testbed's gateway/network overheads. :func:`calibrated_scenario` turns it
into a scenario whose variants carry the fitted service times, which
``mlops-twin simulate`` and every other command consume unchanged.

What the spec cannot express (yet) is a fixed per-request overhead: the
testbed's client ↔ gateway time and the HTTP hop of *every* stage visit
(the twin adds network latency only between different machines). The
calibrated scenario therefore sets the twin's network latencies to zero and
:func:`request_overhead_ms` gives the constant to add to the twin's latency.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field

from calibrate.fit import VariantFit, share_exponent
from twin.load import parse, read_yaml
from twin.service import make_sampler
from twin.spec import (
    GammaServiceTime,
    LognormalServiceTime,
    Scenario,
    ServiceTime,
    TablePoint,
    TableServiceTime,
)

KIND = "mlops-twin-calibration"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


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


class Overheads(_Model):
    hop_ms: float = Field(0.0, ge=0, description="Mean HTTP round trip of one stage visit.")
    request_ms: float = Field(0.0, ge=0, description="Mean client↔gateway time per request.")
    n_requests: int = 0
    per_request: ServiceTime | None = Field(
        None,
        description="Fitted distribution of a request's whole overhead (ms): latency minus "
        "its stages' queue and service time (client lag, gateway, every HTTP hop). Its "
        "'batch size' axis is the offered rate (req/s, rounded) when the request arrived: "
        "on a shared host the gateway's and servers' CPU contention grows with load.",
    )


class Calibration(_Model):
    kind: str = KIND
    scenario: str
    scenario_sha256: str = ""
    source: str = ""
    fits: list[FitRecord] = Field(min_length=1)
    share_exponent: dict[str, float] = Field(
        default_factory=dict, description="'component/variant' → η in mean ∝ share^(−η)."
    )
    overheads: Overheads = Overheads()


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def build(
    fits: list[VariantFit],
    scenario: Scenario,
    scenario_sha256: str = "",
    source: str = "",
    overheads: dict[str, float] | None = None,
    per_request: ServiceTime | None = None,
) -> Calibration:
    """A calibration document from fitted variants (and measured overheads)."""
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
            **clean, n_requests=int(ov.get("n_requests", 0) or 0), per_request=per_request
        ),
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
    return parse(Calibration, read_yaml(path), str(path))


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


def service_time_at(calibration: Calibration, component: str, variant: str, share: float
                    ) -> ServiceTime | None:  # fmt: skip
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


def calibrated_scenario(
    scenario: Scenario, calibration: Calibration, shares: dict[str, float] | float | None = None
) -> tuple[Scenario, list[str]]:
    """The scenario with profiled variants' service times replaced; and what stayed as it was.

    ``shares`` gives the CPU share (host cores) each stage runs with on the
    testbed — one number for all, or per component; None: the most-sampled
    share of each variant. With measured overheads the twin's network
    latencies are set to 0 (see the module doc). Returns the new scenario and
    the 'component/variant' names that kept their original service time.
    """
    untouched: list[str] = []
    components = []
    for c in scenario.components:
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
        components.append(c.model_copy(update={"variants": variants}))
    settings = scenario.settings
    if calibration.overheads.n_requests > 0:
        net = settings.network.model_copy(
            update={"intra_zone_latency_ms": 0.0, "inter_zone_latency_ms": 0.0}
        )
        settings = settings.model_copy(update={"network": net})
    new = scenario.model_copy(update={"components": components, "settings": settings})
    # Re-validate: a fitted model must still be a valid spec model.
    return Scenario.model_validate(new.model_dump()), untouched


def request_overhead_ms(calibration: Calibration, stage_visits: int) -> float:
    """Constant latency (ms) the testbed adds beyond what the calibrated twin simulates."""
    ov = calibration.overheads
    return ov.request_ms + stage_visits * ov.hop_ms


def overhead_ms(
    calibration: Calibration, rates_per_s: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """One independent draw of the per-request overhead (ms) per request.

    ``rates_per_s`` is the offered rate when each request arrived (the
    model's covariate). Zeros when the calibration has no overhead model.
    """
    rates = np.maximum(np.rint(np.asarray(rates_per_s, dtype=float)), 1).astype(int)
    model = calibration.overheads.per_request
    if model is None:
        return np.zeros(rates.size)
    sample = make_sampler(model, rng)
    return np.array([sample(int(r)) for r in rates]) * 1e3
