"""``calibrate import-perf-analyzer``: Triton ``perf_analyzer`` results as a calibration.

``perf_analyzer -f FILE.csv`` writes one row per load level: the level
(``Concurrency`` or ``Request Rate``), ``Inferences/Second``, and the mean time
of each part of a request in **microseconds** — ``Client Send``,
``Network+Server Send/Recv``, ``Server Queue``, ``Server Compute Input``,
``Server Compute Infer``, ``Server Compute Output``, ``Client Recv`` — with the
latency percentiles ``p50 latency`` … ``p99 latency``.

What the twin needs from it, read at the lowest load level (where nothing
queues, so the parts are the model's own and the path's):

- the service time of one request of ``batch`` rows = Compute Input + Infer +
  Output; the overhead (time that holds no capacity) = Client Send +
  Network+Server Send/Recv + Client Recv;
- their spread: the file has only means and latency percentiles, so the cv is
  the one of a lognormal whose p95/p50 ratio is the level's
  (σ = ln(p95/p50) / 1.645), given to both.

A server without Triton's statistics extension (MLServer, KServe, any other V2
server) gives a file with client-side columns only (``Client Send``, ``Client
Recv``, the percentiles). Then the service time is what the load levels show of
the server from outside, as ``calibrate profile --target`` reads it: one
request's share of the best throughput (a serial server), at most the lowest
level's p50; the overhead is the rest of that p50.

The result is the same calibration format (model → component, version →
variant) and the same one-stage scenario as ``calibrate profile --target``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from twin.spec import LognormalServiceTime, Serving, TableServiceTime, TensorInput

PARTS = (
    "Client Send",
    "Network+Server Send/Recv",
    "Server Queue",
    "Server Compute Input",
    "Server Compute Infer",
    "Server Compute Output",
    "Client Recv",
)
PERCENTILES = ("p50 latency", "p90 latency", "p95 latency", "p99 latency")
SERVER_PARTS = PARTS[1:6]  # absent when the server has no Triton statistics extension
LEVELS = ("Concurrency", "Request Rate")
THROUGHPUT = "Inferences/Second"


def read_csv(path: Path) -> pd.DataFrame:
    """The file's rows, checked; ValueError naming the file, row and column otherwise."""
    try:
        frame = pd.read_csv(path, skipinitialspace=True, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a perf_analyzer CSV ({type(e).__name__}: {e})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    level = next((c for c in LEVELS if c in frame), None)
    if level is None:
        raise ValueError(
            f"{path}: no load-level column; expected '{LEVELS[0]}' or '{LEVELS[1]}' "
            f"(perf_analyzer -f), found {list(frame.columns)}"
        )
    server = [c for c in SERVER_PARTS if c in frame]
    parts = PARTS if server else ("Client Send", "Client Recv")  # all server columns, or none
    missing = [c for c in (THROUGHPUT, *parts, "p50 latency", "p95 latency") if c not in frame]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {missing}; a perf_analyzer CSV has {level}, {THROUGHPUT}, "
            f"{', '.join(PARTS)} and {', '.join(PERCENTILES)} (microseconds); without a "
            f"Triton server, Client Send and Client Recv but none of {', '.join(SERVER_PARTS)}"
        )
    if frame.empty:
        raise ValueError(f"{path}: no rows (perf_analyzer measured no load level)")
    cols = [level, THROUGHPUT, *parts, *(p for p in PERCENTILES if p in frame)]
    for c in cols:
        values = pd.to_numeric(frame[c], errors="coerce")
        bad = values.isna() | (values < 0)
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise ValueError(
                f"{path}: row {row + 2}, column '{c}': expected a number ≥ 0, "
                f"got {frame[c].iloc[row]!r}"
            )
        frame[c] = values
    return frame.rename(columns={level: "level"}).assign(level_kind=level)


def lognormal_cv(p50: float, p95: float) -> float:
    """cv of the lognormal with this p95/p50 ratio (0 when p95 ≤ p50)."""
    if p50 <= 0 or p95 <= p50:
        return 0.0
    sigma = math.log(p95 / p50) / 1.645
    return math.sqrt(math.expm1(sigma**2))


def import_csv(
    path: Path,
    model: str,
    version: str | None = None,
    batch: int = 1,
    inputs: list[TensorInput] | None = None,
) -> tuple:
    """``(calibration, scenario, deployment, summary)`` from a perf_analyzer CSV (module doc)."""
    from calibrate import calibration as cal
    from calibrate.target import name_of, target_scenario

    if batch < 1:
        raise ValueError(f"--batch must be ≥ 1, got {batch}")
    frame = read_csv(path).sort_values("level")
    low = frame.iloc[0]
    server_times = SERVER_PARTS[0] in frame
    if server_times:
        service_us = sum(float(low[c]) for c in PARTS[3:6])
        overhead_us = float(
            low["Client Send"] + low["Network+Server Send/Recv"] + low["Client Recv"]
        )
    else:  # client side only: the server seen from outside (module doc)
        best_rps = float(frame[THROUGHPUT].max()) / batch
        p50 = float(low["p50 latency"])
        service_us = min(p50, 1e6 / best_rps) if best_rps > 0 else p50
        overhead_us = max(p50 - service_us, float(low["Client Send"] + low["Client Recv"]))
    if service_us <= 0:
        raise ValueError(
            f"{path}: Server Compute Input + Infer + Output is 0 at {low['level_kind']} "
            f"{low['level']:g}: the file's server-side times are all 0"
        )
    cv = lognormal_cv(float(low["p50 latency"]), float(low["p95 latency"]))
    component, variant = name_of(model), name_of(version or "default")
    serving = Serving(
        model=model, version=version, inputs=inputs or [TensorInput(name="INPUT0", shape=[batch])]
    )
    service = TableServiceTime(
        kind="table", dist="lognormal", points={batch: {"mean_ms": service_us / 1e3, "cv": cv}}
    )
    overhead = LognormalServiceTime(kind="lognormal", mean_ms=max(overhead_us / 1e3, 1e-3), cv=cv)
    rate = float(frame["Inferences/Second"].max()) / batch  # requests/s at the best level
    base, dep = target_scenario(serving, component, variant, batch, 1, rate)
    record = cal.FitRecord(
        component=component,
        variant=variant,
        cpu_share=1.0,
        n=len(frame),
        batches=[batch],
        dist="lognormal",
        structure="table",
        service_time=service,
    )
    doc = cal.Calibration(
        scenario=base.name,
        source=f"perf_analyzer {path.name}",
        fits=[record],
        overheads=cal.Overheads(request_ms=overhead_us / 1e3, n_requests=0, per_request=overhead),
    )
    scenario, _ = cal.calibrated_scenario(base, doc, 1.0)
    summary = {
        "level": f"{low['level_kind']} {low['level']:g}",
        "service_ms": service_us / 1e3,
        "queue_ms": float(low["Server Queue"]) / 1e3 if server_times else None,
        "server_times": server_times,
        "overhead_ms": overhead_us / 1e3,
        "cv": cv,
        "max_inferences_per_s": float(frame["Inferences/Second"].max()),
        "levels": len(frame),
    }
    return doc, scenario, dep, summary
