"""``calibrate profile --target URL``: profile any Open Inference Protocol (V2) server.

The server is a black box: what we can measure is the round trip of a request
of ``b`` rows when ``c`` clients send back to back (closed loop). The sweep,
per batch size ``b`` and concurrency ``c``: ``c`` threads, each with its own
keep-alive connection, send requests of ``b`` rows for ``cell_s`` seconds
after a short warm-up; one raw row per request (``samples.parquet``).

The fit reads the server as one queue behind a pure delay, the shape of a
single-threaded (or ``replicas``-threaded) model server:

- capacity ``X(b)`` = the highest throughput (requests/s) over concurrencies;
  the service time of one request of ``b`` rows on one of ``replicas``
  instances is ``S(b) = replicas / X(b)``;
- a request that finds the server idle pays its overhead plus its service:
  the overhead (client, network, parsing, waking an idle server — time that
  holds no capacity) is ``L − S`` on average. ``L`` comes from a
  *paced* client (one request at a time, exponential think time between
  them, ``concurrency`` 0 in the samples), because open-loop traffic finds
  the server idle, not warm from a back-to-back request: measured on MLServer,
  an isolated request took 4.8 ms against 3.5 ms back to back. Without the
  paced cell (``paced_s`` 0) the ``c = 1`` latencies are used;
- the service's spread comes from the gaps between answers in the closed-loop
  cells where the server is saturated (≥ 2 clients, ≥ 90 % of capacity): one
  request's service time each, in whatever order the server takes them
  (:func:`saturated_gaps`; without such a cell, the latencies' spread). The
  overhead gets the rest of the idle latencies' variance (:func:`overhead_samples`),
  so that overhead + service spread as the idle latencies did;
- with an **open-loop cell** (``open_s`` > 0, the default; ``concurrency`` −1 in the
  samples): Poisson arrivals at ``open_share`` of the measured capacity, sent by
  the load generator (``load run --protocol v2``'s Locust workers), as production
  traffic and held-out measurements arrive. A closed loop keeps the server warm:
  each poll of an event-loop server finds the next request already read, and
  several clients' requests are taken in rounds (MLServer at 4 clients answered
  them in a fixed rotation, 60 % after ≈ 3 and 30 % after ≈ 6 service times).
  Arriving one at a time, MLServer's requests took 3.8 ms (cv 0.45) against 3.1 ms
  (cv 0.12) back to back. So the service's mean and cv at the cell's batch size
  come from the cell's busy-server answer gaps (:func:`busy_gaps`; every batch's
  mean scaled by the same factor), and the overhead from the cell's requests that
  found none ahead (:func:`fit_open_loop`) — the same client as ``load run``, so
  its client cost is in the overhead too. Two guards keep that fit consistent with
  what was measured: its service mean is **bounded** by the closed-loop one (a server
  that answered at ``X(b)`` requests/s back to back needs at most ``replicas / X(b)``
  per request; the rest of an idle request's latency stays in the overhead), and the
  fitted twin is **checked** against the cell's own p50/p95 at the cell's rate
  (:func:`cell_check`): when it misses them by more than ``CHECK_LIMITS`` and the
  closed-loop fit comes closer, the closed-loop fit is kept, and either way a
  warning says how far the kept fit is from the cell (:func:`choose_fit`). Measured
  on MLServer on a quiet host, its answer gaps under Poisson arrivals were 6.9 ms at
  79 requests/s, 6.0 at 134 and 5.1 at 160, against 3.6 ms back to back: the server
  got faster with load, so no one service time holds across rates, and an
  unbounded fit at 134/s had saturated the twin at 160/s, where MLServer answered
  at p50 9.9 ms;
- service times are fitted per batch with :func:`calibrate.fit.fit_samples`
  (lognormal or gamma, linear in b or a table), the overhead with
  :func:`calibrate.fit.fit_overhead`, into the usual calibration file: the
  model is the component, its version the variant.

Outputs (a folder, written atomically): ``samples.parquet``, ``manifest.json``
(URL, model, grid, measured capacity), ``calibration.yaml``, ``scenario.yaml``
— a one-stage scenario of the server, calibrated, with the V2 ``serving``
description and steady workloads at 25/50/75 % of capacity — and
``deployment.yaml``; ``mlops-twin simulate scenario.yaml -d deployment.yaml``
predicts the server at any rate.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from twin.spec import (
    Deployment,
    GammaServiceTime,
    LognormalServiceTime,
    Scenario,
    ServiceTime,
    Serving,
    TablePoint,
    TableServiceTime,
    TensorInput,
)

SAMPLE_FIELDS = ("batch", "concurrency", "client", "t_send_s", "latency_ms", "status")
# how a server of several instances hands requests to them (the twin's names):
# a dispatcher sending each to one instance's own queue — round-robin (MLServer's
# parallel_workers), the least busy, or at random — or instances pulling from one queue
DISPATCH = ("least_outstanding", "round_robin", "random", "shared_queue")
PACED, OPEN = 0, -1  # ``concurrency`` of the paced client's rows and the open-loop cell's
# how close (relative) the fitted twin must come to the open-loop cell's own p50, p95
CHECK_LIMITS = (0.10, 0.15)
_NAME = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True)
class TargetGrid:
    """What to sweep: batch sizes (rows per request) × concurrent clients."""

    batches: tuple[int, ...] = (1, 4, 8)
    concurrency: tuple[int, ...] = (1, 2, 4, 8)
    cell_s: float = 4.0  # measured seconds per cell
    warmup: int = 3  # requests per client dropped at the start of a cell
    timeout_s: float = 30.0
    paced_s: float = 4.0  # seconds of the paced single client (0: none), smallest batch
    think_ms: float = 20.0  # its mean think time between requests (exponential)
    open_s: float = 15.0  # seconds of the open-loop Poisson cell (0: none; module doc)
    open_share: float = 0.5  # its offered rate as a share of the measured capacity

    def __post_init__(self) -> None:
        if not self.batches or min(self.batches) < 1:
            raise ValueError(f"batch sizes must be ≥ 1, got {self.batches}")
        if not self.concurrency or min(self.concurrency) < 1:
            raise ValueError(f"concurrency levels must be ≥ 1, got {self.concurrency}")
        if 1 not in self.concurrency:
            raise ValueError("the concurrency levels must include 1 (latency without queueing)")
        if self.cell_s <= 0:
            raise ValueError(f"cell seconds must be > 0, got {self.cell_s}")
        if self.paced_s < 0 or self.think_ms <= 0:
            raise ValueError(f"paced_s must be ≥ 0 and think_ms > 0, got {self}")
        if self.open_s < 0 or not 0 < self.open_share < 1:
            raise ValueError(
                f"open_s must be ≥ 0 and open_share in (0, 1), got {self.open_s}, {self.open_share}"
            )


def name_of(text: str) -> str:
    """A spec name (letters, digits, '-', '_') for a model or version string."""
    name = _NAME.sub("-", text).strip("-_") or "model"
    return name if name[0].isalnum() else f"m{name}"[:64]


# --------------------------------------------------------------------------- discovery


def discover(url: str, model: str, version: str | None = None) -> dict:
    """The server's metadata of ``model`` (``GET /v2/models/…``); ValueError if not ready."""
    import httpx

    base = f"{url.rstrip('/')}/v2/models/{model}" + (f"/versions/{version}" if version else "")
    try:
        ready = httpx.get(f"{base}/ready", timeout=10)
        meta = httpx.get(base, timeout=10)
    except httpx.HTTPError as e:
        raise ValueError(f"{url}: no answer from a V2 server ({type(e).__name__}: {e})") from None
    if ready.status_code != 200:
        raise ValueError(
            f"{base}/ready answered {ready.status_code}: is the model loaded? {ready.text[:200]}"
        )
    return meta.json() if meta.status_code == 200 else {}


def parse_input(text: str) -> TensorInput:
    """``NAME:DATATYPE:D1xD2…`` (e.g. ``input-0:FP32:1x64``) → a tensor description."""
    parts = text.split(":")
    if len(parts) != 3:
        raise ValueError(f"--input expects NAME:DATATYPE:SHAPE (e.g. x:FP32:1x64), got {text!r}")
    name, datatype, shape = parts
    try:
        dims = [int(d) for d in shape.lower().split("x")]
    except ValueError:
        raise ValueError(f"--input {text!r}: shape must be like 1x64") from None
    return TensorInput(name=name, datatype=datatype.upper(), shape=dims)  # type: ignore[arg-type]


def serving_from(meta: dict, model: str, version: str | None) -> Serving:
    """A serving description from the model's metadata (−1 dimensions become 1)."""
    inputs = []
    for t in meta.get("inputs") or []:
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in t.get("shape", [1])]
        inputs.append(TensorInput(name=t["name"], datatype=t.get("datatype", "FP32"), shape=shape))
    if not inputs:
        raise ValueError(
            f"the server's metadata of {model!r} lists no inputs; describe them with "
            "--input NAME:DATATYPE:SHAPE or give a scenario whose process has 'serving'"
        )
    return Serving(model=model, version=version, inputs=inputs)


# --------------------------------------------------------------------------- the sweep


def batch_bodies(serving: Serving, batch: int, n: int = 32, seed: int = 0) -> list[bytes]:
    """``n`` request bodies whose tensors have ``batch`` rows (first dimension)."""
    from loadgen.tensors import body_pool

    wide = [t.model_copy(update={"shape": [batch, *t.shape[1:]]}) for t in serving.inputs]
    if any(t.data_file for t in serving.inputs):  # rows of a file: stack b of them per tensor
        pool, _ = body_pool(serving, seed=seed, size=n * batch)
        docs = [json.loads(b)["inputs"] for b in pool]
        bodies = []
        for i in range(n):
            group = docs[i * batch : (i + 1) * batch]
            tensors = []
            for k, t in enumerate(wide):
                data = [x for d in group for x in d[k]["data"]]
                tensors.append({**group[0][k], "shape": list(t.shape), "data": data})
            bodies.append(json.dumps({"inputs": tensors}).encode())
        return bodies
    pool, _ = body_pool(serving.model_copy(update={"inputs": wide}), seed=seed, size=n)
    return pool


def measure_cell(
    url: str,
    path: str,
    bodies: list[bytes],
    concurrency: int,
    grid: TargetGrid,
    think_ms: float = 0.0,
    seconds: float | None = None,
) -> list[tuple]:
    """One cell: ``concurrency`` closed-loop clients for ``seconds`` (default
    ``grid.cell_s``), each waiting an exponential ``think_ms`` after each answer; a row
    per request."""
    import httpx

    rows: list[tuple] = []
    lock = threading.Lock()
    start = threading.Barrier(concurrency)
    t_zero: list[float] = []

    def client(k: int) -> None:
        mine = []
        headers = {"content-type": "application/json"}
        with httpx.Client(base_url=url, timeout=grid.timeout_s) as http:
            for i in range(grid.warmup):
                http.post(path, content=bodies[(k + i) % len(bodies)], headers=headers)
            start.wait()
            if k == 0:
                t_zero.append(time.perf_counter())
            t_end = time.perf_counter() + (seconds or grid.cell_s)
            rng = np.random.default_rng(k)
            i = 0
            while (t0 := time.perf_counter()) < t_end:
                try:
                    r = http.post(path, content=bodies[(k + i) % len(bodies)], headers=headers)
                    status = r.status_code
                except httpx.HTTPError:
                    status = 0
                mine.append((k, t0, (time.perf_counter() - t0) * 1e3, status))
                i += 1
                if think_ms > 0:
                    time.sleep(rng.exponential(think_ms / 1e3))
        with lock:
            rows.extend(mine)

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    t0 = t_zero[0] if t_zero else 0.0
    return [(k, t - t0, lat, status) for k, t, lat, status in rows]


def open_loop_cell(
    url: str, serving: Serving, rate_per_s: float, seconds: float, seed: int = 0
) -> list[tuple[float, float, int]]:
    """Poisson arrivals at ``rate_per_s`` for ``seconds``, sent by the load generator
    (``load run --protocol v2``'s Locust workers, the serving's own tensors); per
    scheduled request: (arrival s, latency ms from the arrival, status; 0 if unanswered)."""
    import tempfile

    from loadgen.run import LoadRun, execute
    from twin.spec import SteadyWorkload

    sc, _ = target_scenario(serving, name_of(serving.model), "default", 1, 1, rate_per_s)
    w = SteadyWorkload(kind="steady", name="open-loop", rate_per_s=rate_per_s)
    run = LoadRun(sc, w, url, seconds, seed=seed, protocol="v2", drain_s=2.0, serving=serving)
    with tempfile.TemporaryDirectory(prefix="profile-open-") as tmp:
        req = execute(run, Path(tmp)).requests
    lat = ((req["t_end"] - req["t_arrive"]) * 1e3).to_numpy(dtype=float)
    status = np.where(np.isfinite(lat), req["status"].to_numpy(), 0)
    return [
        (float(t), float(x) if np.isfinite(x) else float("nan"), int(s))
        for t, x, s in zip(req["t_arrive"].to_numpy(dtype=float), lat, status, strict=True)
    ]


def sweep(
    url: str, serving: Serving, grid: TargetGrid, say: Callable[[str], None] = lambda _m: None
) -> pd.DataFrame:
    """Every cell of the grid; raw rows (``SAMPLE_FIELDS``)."""
    from loadgen.tensors import path_of

    path = path_of(serving)
    out = []
    for b in grid.batches:
        bodies = batch_bodies(serving, b)
        for c in grid.concurrency:
            say(f"profile {serving.model}: batch {b}, {c} client(s), {grid.cell_s:g} s")
            for k, t, lat, status in measure_cell(url, path, bodies, c, grid):
                out.append((b, c, k, t, lat, status))
        if grid.paced_s > 0 and b == min(grid.batches):
            say(f"profile {serving.model}: batch {b}, paced client, {grid.paced_s:g} s")
            rows = measure_cell(url, path, bodies, 1, grid, grid.think_ms, grid.paced_s)
            out += [(b, PACED, k, t, lat, status) for k, t, lat, status in rows]
    if grid.open_s > 0:
        b = int(serving.inputs[0].shape[0]) if serving.inputs[0].shape else 1
        mine = [r for r in out if r[0] == min(grid.batches) and r[1] > 0 and r[5] == 200]
        best = max(sum(1 for r in mine if r[1] == c) for c in grid.concurrency) / grid.cell_s
        rate = grid.open_share * best
        say(f"profile {serving.model}: open loop, {rate:.1f} requests/s, {grid.open_s:g} s")
        for t, lat, status in open_loop_cell(url, serving, rate, grid.open_s):
            out.append((b, OPEN, 0, t, lat, status))
    frame = pd.DataFrame(out, columns=list(SAMPLE_FIELDS))
    bad = frame[frame["status"] != 200]
    if len(bad) > 0.05 * len(frame):
        raise RuntimeError(
            f"{len(bad)} of {len(frame)} requests to {url}{path} failed "
            f"(statuses {sorted(bad['status'].unique().tolist())}): check the model and inputs"
        )
    return frame


# --------------------------------------------------------------------------- the fit


def capacity(samples: pd.DataFrame, cell_s: float) -> pd.DataFrame:
    """Per batch × concurrency: throughput (requests/s) and mean latency (ms)."""
    ok = samples[(samples["status"] == 200) & (samples["concurrency"] > 0)]  # not the paced
    g = ok.groupby(["batch", "concurrency"])
    return pd.DataFrame(
        {"throughput_per_s": g.size() / cell_s, "latency_ms": g["latency_ms"].mean()}
    ).reset_index()


def saturated_gaps(
    good: pd.DataFrame, cap: pd.DataFrame, replicas: int = 1, share: float = 0.9, least: int = 30
) -> dict[int, np.ndarray]:
    """Per batch size: the gaps (ms) between consecutive answers in the closed-loop
    cells of ≥ 2 clients that reach ``share`` of the batch's capacity, times ``replicas``.

    There the server always has work waiting, so one instance's gap between two
    answers is one request's service time, whatever order the server takes them in
    and whatever the clients add: the server's own spread under load. Batches with
    fewer than ``least`` gaps are left out."""
    best = cap.groupby("batch")["throughput_per_s"].max()
    out: dict[int, list[np.ndarray]] = {}
    for (b, c), g in good[good["concurrency"] >= 2].groupby(["batch", "concurrency"]):
        hit = cap[(cap["batch"] == b) & (cap["concurrency"] == c)]["throughput_per_s"]
        if hit.empty or float(hit.iloc[0]) < share * float(best[b]):
            continue
        done = np.sort((g["t_send_s"] + g["latency_ms"] / 1e3).to_numpy(dtype=float))
        gap = np.diff(done) * 1e3 * replicas
        out.setdefault(int(b), []).append(gap[gap > 0])
    joined = {b: np.concatenate(v) for b, v in out.items()}
    return {b: v for b, v in joined.items() if v.size >= least}


def overhead_samples(
    latency_ms: np.ndarray, service_mean_ms: float, service_var: float
) -> np.ndarray:
    """Overheads (ms) of an idle server's latencies: mean ``L − S`` and the variance
    ``Var(L) − Var(S)``, so that overhead + service, drawn independently as the twin
    does, spread as the measured latencies do. (Splitting each latency in proportion
    would make the two perfectly correlated, and the twin's independent draws would
    narrow the sum by up to √2.) At least a tenth of the latencies' variance is kept."""
    lat = np.asarray(latency_ms, dtype=float)
    var = float(lat.var())
    keep = np.sqrt(max(var - service_var, 0.1 * var) / var) if var > 0 else 0.0
    return float(lat.mean()) - service_mean_ms + (lat - lat.mean()) * keep


def in_flight_at_send(t_send_s: np.ndarray, latency_ms: np.ndarray) -> np.ndarray:
    """Per request (in the given order): how many requests sent before it were not yet
    answered when it was sent — what it found ahead of it (ties count as answered)."""
    send = np.asarray(t_send_s, dtype=float)
    end = send + np.asarray(latency_ms, dtype=float) / 1e3
    order = np.argsort(send, kind="stable")
    # every request sent later ends after this send, so the answered ones among the
    # earlier are all requests that ended by now
    answered = np.searchsorted(np.sort(end), send[order], side="right")
    out = np.empty(send.size, dtype=np.int64)
    out[order] = np.arange(send.size) - answered
    return out


def _reshaped(model: ServiceTime, factor: float, cv: float) -> ServiceTime:
    """``model`` with every mean times ``factor`` and every cv set to ``cv``."""
    if isinstance(model, TableServiceTime):
        points = {b: TablePoint(mean_ms=p.mean_ms * factor, cv=cv) for b, p in model.points.items()}
        return model.model_copy(update={"points": points})
    if isinstance(model, LognormalServiceTime | GammaServiceTime):
        update = {"mean_ms": model.mean_ms * factor, "per_item_ms": model.per_item_ms * factor}
        return model.model_copy(update={**update, "cv": cv})
    raise ValueError(f"cannot reshape a {model.kind} service time")


def busy_gaps(t_send_s: np.ndarray, latency_ms: np.ndarray, lead_ms: float) -> np.ndarray:
    """Gaps (ms) between consecutive answers where the later answered request was sent
    at least ``lead_ms`` before the earlier answer: it had reached the server and was
    waiting, so the server went straight from one to the next and the gap is one
    service time (a single FIFO server; what it spends between requests included)."""
    send = np.asarray(t_send_s, dtype=float)
    end = send + np.asarray(latency_ms, dtype=float) / 1e3
    order = np.argsort(end, kind="stable")
    send, end = send[order], end[order]
    waiting = send[1:] <= end[:-1] - lead_ms / 1e3
    return np.diff(end)[waiting] * 1e3


def fit_open_loop(
    doc, base: Scenario, rows: pd.DataFrame, replicas: int = 1, least: int = 50
) -> tuple:
    """The calibration with service and overhead read from the open-loop cell.

    Closed-loop clients keep the server warm: each poll of its event loop finds the
    next request already there. Under Poisson arrivals, as in production and in
    ``load run``, requests come one at a time; measured on MLServer, its service
    then took 3.8 ms (cv 0.45) against 3.1 ms (cv 0.12) back to back. So, from the
    cell's own requests:

    - service: :func:`busy_gaps`, with the lead a median latency of a request that
      found none ahead (an arrival sent that long before the previous answer has
      surely reached the server) — mean and cv at the cell's batch size; every
      batch's mean is scaled by the same factor and gets that cv (times
      ``replicas`` for the gaps of several instances). The mean is bounded by the
      closed-loop fit's at that batch size (``replicas`` over the measured capacity):
      a server cannot need longer per request than its back-to-back throughput
      allows, so the bound holds the capacity the closed loop measured;
    - overhead: the requests that found none ahead (:func:`in_flight_at_send`) paid
      overhead + service; the overhead gets their mean minus the service's and what
      is left of their variance (as :func:`overhead_samples`).

    Returns ``(calibration, calibrated scenario, figures)``; ValueError when the cell
    has fewer than ``least`` busy gaps or idle requests (a rate too low or too high)."""
    from calibrate import calibration as cal

    t_send = rows["t_send_s"].to_numpy(dtype=float)
    lat = rows["latency_ms"].to_numpy(dtype=float)
    idle = lat[in_flight_at_send(t_send, lat) == 0]
    if idle.size < least:
        raise ValueError(f"the open-loop cell has {idle.size} requests that found none ahead")
    gaps = busy_gaps(t_send, lat, float(np.median(idle))) * replicas
    if gaps.size < least:
        raise ValueError(f"the open-loop cell has {gaps.size} answers of a busy server")
    fit = doc.fits[0]
    batch = int(rows["batch"].iloc[0])
    gap_mean, cv = float(gaps.mean()), float(gaps.std() / gaps.mean())
    # the bound (module doc): never a capacity below the one measured back to back
    closed_mean = fit.service_time.batch_mean_ms(batch)
    s_mean = min(gap_mean, closed_mean)
    factor = s_mean / closed_mean
    o_mean = max(float(idle.mean()) - s_mean, 0.05 * float(idle.mean()))
    o_var = max(float(idle.var()) - float(gaps.var()), 0.1 * float(idle.var()))
    over = doc.overheads.per_request.model_copy(
        update={"mean_ms": o_mean, "cv": float(np.sqrt(o_var)) / o_mean}
    )
    new = doc.model_copy(
        update={
            "fits": [
                fit.model_copy(update={"service_time": _reshaped(fit.service_time, factor, cv)}),
                *doc.fits[1:],
            ],
            "overheads": doc.overheads.model_copy(update={"per_request": over}),
        }
    )
    info = {
        "requests": int(lat.size),
        "idle_requests": int(idle.size),
        "busy_gaps": int(gaps.size),
        "gap_mean_ms": gap_mean,
        "service_bounded": gap_mean > closed_mean,
        "service_mean_ms": s_mean,
        "service_cv": cv,
        "service_factor": factor,
        "overhead_mean_ms": o_mean,
    }
    return new, cal.calibrated_scenario(base, new, 1.0)[0], info


def cell_check(
    scenario: Scenario, deployment: Deployment, rows: pd.DataFrame, rate_per_s: float
) -> dict[str, float]:
    """The twin of ``scenario`` at the open-loop cell's rate against the cell's own
    p50/p95 (ms): relative errors ``err_p50``/``err_p95`` and ``score``, the larger of
    the two errors over its limit (``CHECK_LIMITS``; ≤ 1: within both)."""
    lat = rows["latency_ms"].to_numpy(dtype=float)
    lat = lat[np.isfinite(lat)]
    horizon = max(60.0, 20_000 / rate_per_s)  # ≈ 20,000 simulated requests
    twin = predict(scenario, deployment, rate_per_s, horizon, replications=2, seed=11)
    out = {"p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95))}
    out |= {"twin_p50_ms": twin["p50_ms"], "twin_p95_ms": twin["p95_ms"]}
    e50, e95 = (out[f"twin_p{q}_ms"] / out[f"p{q}_ms"] - 1 for q in (50, 95))
    out |= {"err_p50": e50, "err_p95": e95}
    out["score"] = max(abs(e50) / CHECK_LIMITS[0], abs(e95) / CHECK_LIMITS[1])
    return out


def choose_fit(open_check: dict, closed_check: dict) -> tuple[str, str]:
    """Which fit to keep — ``"open_loop"`` or ``"closed_loop"`` — and a warning ("" if
    none), from both fits' :func:`cell_check` against the open-loop cell.

    The open-loop fit is kept when it reproduces the cell (score ≤ 1) or comes at least
    as close as the closed-loop fit; else the closed-loop fit is the fallback. When
    the kept fit misses the cell, the warning says by how much: the server did not
    act as one queue with one service time at that rate."""
    keep = (
        "open_loop"
        if open_check["score"] <= 1 or open_check["score"] <= closed_check["score"]
        else "closed_loop"
    )
    kept = open_check if keep == "open_loop" else closed_check
    if kept["score"] <= 1:
        return keep, ""
    fell = "fell back to the closed-loop fit; " if keep == "closed_loop" else ""
    return keep, (
        f"the calibrated twin misses the open-loop cell's own latency ({fell}p50 "
        f"{100 * kept['err_p50']:+.0f} %, p95 {100 * kept['err_p95']:+.0f} %, limits "
        f"{100 * CHECK_LIMITS[0]:.0f}/{100 * CHECK_LIMITS[1]:.0f} %): the server did not "
        "act as one queue with one service time there; trust its predictions less"
    )


def target_scenario(
    serving: Serving,
    component: str,
    variant: str,
    max_batch: int,
    replicas: int,
    rate: float,
    dispatch: str = "least_outstanding",
) -> tuple[Scenario, Deployment]:
    """A one-stage scenario of the server (constant 1 ms service, replaced by the fit);
    ``dispatch`` (one of ``DISPATCH``): how its ``replicas`` instances get requests."""
    if dispatch not in DISPATCH:
        raise ValueError(f"dispatch must be one of {', '.join(DISPATCH)}, got {dispatch!r}")
    shared = dispatch == "shared_queue"
    sc = Scenario.model_validate(
        {
            "name": f"{component}-v2",
            "description": f"V2 model {serving.model} profiled with calibrate profile --target",
            "servers": [{"name": "server", "cpu_cores": float(replicas), "ram_gb": 4.0}],
            "components": [
                {
                    "name": component,
                    "max_batch": max_batch,
                    "max_replicas": replicas,
                    "dispatch": "shared_queue" if shared else "balanced",
                    "variants": [
                        {
                            "name": variant,
                            "accuracy": 1.0,
                            "cpu_cores": 1.0,
                            "service_time": {"kind": "constant", "ms": 1.0},
                        }
                    ],
                }
            ],
            "processes": [
                {
                    "name": "infer",
                    "kind": "request",
                    "serving": serving.model_dump(mode="json"),
                    "steps": [{"name": "infer", "component": component}],
                }
            ],
            "workloads": [
                {
                    "kind": "steady",
                    "name": f"steady-{int(f * 100)}",
                    "rate_per_s": round(f * rate, 2),
                }
                for f in (0.25, 0.5, 0.75)
            ],
            "settings": {
                "network": {"intra_zone_latency_ms": 0, "inter_zone_latency_ms": 0},
                "load_balancing": "least_outstanding" if shared else dispatch,
            },
        }
    )
    dep = Deployment.model_validate(
        {
            "name": f"{component}-server",
            "allocation": {component: {"server": replicas}},
            "stages": {component: {"variant": variant, "batch": 1, "batch_timeout_ms": 0}},
        }
    )
    return sc, dep


def fit_target(
    samples: pd.DataFrame,
    serving: Serving,
    grid: TargetGrid,
    replicas: int = 1,
    seed: int = 0,
    dispatch: str = "least_outstanding",
) -> tuple:
    """``(calibration, calibrated scenario, deployment, capacity table, open-loop match)``
    from a sweep (the match is {} without an open-loop cell). With an open-loop cell,
    both fits are checked against it (:func:`cell_check`, :func:`choose_fit`); the
    match says which was kept (``kept``), both checks (``check``) and any ``warning``."""
    from calibrate import calibration as cal
    from calibrate.fit import fit_overhead, fit_samples

    if replicas < 1:
        raise ValueError(f"replicas must be ≥ 1, got {replicas}")
    cap = capacity(samples, grid.cell_s)
    best = cap.groupby("batch")["throughput_per_s"].max()
    service_mean = replicas / best * 1e3  # ms per request of b rows on one instance
    component, variant = name_of(serving.model), name_of(serving.version or "default")
    good = samples[samples["status"] == 200]
    ok = good[good["concurrency"] == 1]
    paced = good[good["concurrency"] == 0]
    gaps = saturated_gaps(good, cap, replicas)
    rows, over = [], []
    for b, g in ok.groupby("batch"):
        if b in set(paced["batch"]):  # an idle server's latency (module doc)
            g = paced[paced["batch"] == b]
        lat = g["latency_ms"].to_numpy(dtype=float)
        s_mean = min(float(service_mean[b]), float(lat.mean()))
        # the service's spread: the gaps between answers of a saturated server when
        # measured (module doc), else the latencies' own
        shape = gaps.get(int(b), lat)
        service = shape * s_mean / shape.mean()
        rows.append(
            pd.DataFrame(
                {
                    "component": component,
                    "variant": variant,
                    "batch": int(b),
                    "cpu_share": 1.0,
                    "service_ms": service,
                }
            )
        )
        if b == min(grid.batches):
            over = overhead_samples(lat, s_mean, float(service.var()))
    fits = fit_samples(pd.concat(rows, ignore_index=True), seed=seed)
    overhead, scores = fit_overhead(np.clip(over, 1e-3, None), seed=seed)
    rate = float(best.get(1, best.iloc[0]))
    base, dep = target_scenario(
        serving, component, variant, max(grid.batches), replicas, rate, dispatch
    )
    doc = cal.build(
        fits, base, source="calibrate profile --target", per_request=overhead, heldout_loglik=scores
    )
    scenario, _ = cal.calibrated_scenario(base, doc, 1.0)
    opened = good[good["concurrency"] == OPEN]
    info: dict = {}
    if len(opened) >= 100 and grid.open_s > 0:
        new_doc, new_scenario, info = fit_open_loop(doc, base, opened, replicas)
        rate_cell = int((samples["concurrency"] == OPEN).sum()) / grid.open_s
        info["rate_per_s"] = rate_cell
        checks = {
            "open_loop": cell_check(new_scenario, dep, opened, rate_cell),
            "closed_loop": cell_check(scenario, dep, opened, rate_cell),
        }
        info["kept"], warning = choose_fit(checks["open_loop"], checks["closed_loop"])
        info["check"] = checks
        if warning:
            info["warning"] = warning
        if info["kept"] == "open_loop":
            doc, scenario = new_doc, new_scenario
    return doc, scenario, dep, cap, info


def run_target_profile(
    url: str,
    serving: Serving,
    out_dir: Path,
    grid: TargetGrid = TargetGrid(),
    replicas: int = 1,
    say: Callable[[str], None] = lambda _m: None,
    dispatch: str = "least_outstanding",
) -> Path:
    """Sweep, fit and write the profile folder (see module doc); returns it. ``replicas``
    and ``dispatch``: the server's instances and how it hands them requests (``DISPATCH``;
    from the server's own settings, e.g. MLServer's parallel_workers N: N, round_robin)."""
    from calibrate import calibration as cal
    from twin.runs import atomic_dir

    started = time.perf_counter()
    samples = sweep(url, serving, grid, say)
    doc, scenario, dep, cap, opened = fit_target(
        samples, serving, grid, replicas, dispatch=dispatch
    )
    if opened.get("warning"):
        say(f"warning: {opened['warning']}")
    with atomic_dir(out_dir) as tmp:
        samples.to_parquet(tmp / "samples.parquet", index=False)
        (tmp / "calibration.yaml").write_text(cal.dump(doc))
        (tmp / "scenario.yaml").write_text(cal.dump_model(scenario, exclude_defaults=True))
        (tmp / "deployment.yaml").write_text(cal.dump_model(dep, exclude_defaults=True))
        meta = {
            "target": url,
            "model": serving.model,
            "version": serving.version,
            "serving": serving.model_dump(mode="json"),
            "grid": asdict(grid),
            "replicas": replicas,
            "dispatch": dispatch,
            "capacity": cap.to_dict(orient="records"),
            "open_loop": opened,
            "requests": len(samples),
            "wall_s": round(time.perf_counter() - started, 1),
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / "manifest.json").write_text(json.dumps(meta, indent=2))
    return out_dir


def predict(
    scenario: Scenario,
    deployment: Deployment,
    rate_per_s: float,
    horizon_s: float = 300.0,
    replications: int = 3,
    seed: int = 1,
) -> dict[str, float]:
    """The twin's p50/p95/p99 latency (ms) of the profiled server at a steady rate."""
    from twin.evaluate import evaluate
    from twin.spec import SteadyWorkload

    w = SteadyWorkload(kind="steady", name="held-out", rate_per_s=rate_per_s)
    ev = evaluate(scenario, deployment, w, horizon_s, replications, seed, keep_records=True)
    req = ev.requests
    lat = (req["t_end"] - req["t_arrive"]).dropna().to_numpy() * 1e3
    return {f"p{q}_ms": float(np.percentile(lat, q)) for q in (50, 95, 99)}
