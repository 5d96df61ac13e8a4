"""From raw visit records to one service-time sample per batch execution.

Both the twin's visits (``t_start``/``t_end`` of each visit) and the testbed's
(the gateway's per-stage ``service_s``, rebuilt by :mod:`loadgen.records`)
have one row per *request* visit, so a batch of b requests appears b times
with the same service time. Fitting those rows as they are would weigh each
batch b times and understate the variance; a batch execution is one sample.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from calibrate.fit import SAMPLE_COLUMNS
from twin.deployment import effective_stage
from twin.spec import Deployment, Scenario, Workload
from twin.workload import rate_at


def _stage_rows(visits: pd.DataFrame, scenario: Scenario) -> pd.DataFrame:
    stages = {c.name for c in scenario.components if c.is_stage}
    rows = visits[visits["component"].astype(str).isin(stages)]
    return rows[np.isfinite(rows["t_end"].to_numpy(dtype=float))]


def twin_samples(
    visits: pd.DataFrame, scenario: Scenario, deployment: Deployment, cpu_share: float = 1.0
) -> pd.DataFrame:
    """Samples from the twin's visits: service time (ms) at cpu_speed 1 per batch execution.

    A visit's ``t_end − t_start`` is the batch's service time divided by its
    machine's ``cpu_speed`` (no core contention: ``cpu_overcommit`` 1), so it
    is multiplied back. The variant is the deployment's for the stage.
    """
    rows = _stage_rows(visits, scenario)
    speed = {m: s.cpu_speed for m, s in scenario.server_of().items()}
    rows = rows.drop_duplicates(["component", "machine", "replica", "t_start", "batch"])
    component = rows["component"].astype(str)
    variant = component.map(
        lambda c: effective_stage(scenario, deployment, scenario.component(c)).variant
    )
    factor = rows["machine"].astype(str).map(speed).to_numpy(dtype=float)
    out = pd.DataFrame(
        {
            "component": component.to_numpy(),
            "variant": variant.to_numpy(),
            "batch": rows["batch"].to_numpy(dtype=np.int64),
            "cpu_share": float(cpu_share),
            "service_ms": (rows["t_end"] - rows["t_start"]).to_numpy(dtype=float) * 1e3 * factor,
        }
    )
    return out[list(SAMPLE_COLUMNS)].reset_index(drop=True)


def testbed_samples(visits: pd.DataFrame, cpu_share: float) -> pd.DataFrame:
    """Samples from a load run's ``visits.parquet`` (in-server ``service_s`` per visit).

    Requests served in one batch of b carry the same in-server time from the
    same replica; each run of b such rows (in time order) is collapsed to one
    row. Times are rounded to 0.1 µs on the wire, so different batches rarely
    collide, and when they do (a stand-in with fixed timings) the count of
    batch executions is still right.
    """
    need = {"component", "variant", "batch", "service_s", "replica_name"}
    missing = sorted(need - set(visits.columns))
    if missing:
        raise ValueError(f"visits lack the testbed's columns {missing}; is this a load run?")
    rows = _batch_executions(visits)
    rows = rows.drop_duplicates(["component", "replica_name", "batch", "_ms", "_exec"])
    out = pd.DataFrame(
        {
            "component": rows["component"].astype(str).to_numpy(),
            "variant": rows["variant"].astype(str).to_numpy(),
            "batch": rows["batch"].to_numpy(dtype=np.int64),
            "cpu_share": float(cpu_share),
            "service_ms": rows["_ms"].to_numpy(dtype=float),
        }
    )
    return out[out["service_ms"] > 0].reset_index(drop=True)


def overheads(requests: pd.DataFrame, visits: pd.DataFrame) -> dict[str, float]:
    """Gateway/network overheads of a load run (ms): per stage hop and per request rest.

    ``hop_ms`` is a stage visit's HTTP round trip beyond queue and service;
    ``request_ms`` is what remains of client-observed latency after all stage
    visits (client ↔ gateway, gateway's own work). Means, sds and counts.
    """
    if "hop_s" not in visits or "t_send" not in requests:
        raise ValueError("overheads need a testbed load run (hop_s and t_send columns)")
    hop = visits["hop_s"].to_numpy(dtype=float) * 1e3
    inside = (
        (visits["queue_s"] + visits["service_s"] + visits["hop_s"]).groupby(visits["pid"]).sum()
    )
    ok = requests[requests["ok"]].set_index("pid")
    pids = ok.index.intersection(inside.index)
    rest = (ok.loc[pids, "t_response"] - ok.loc[pids, "t_send"] - inside.loc[pids]) * 1e3
    rest = rest.to_numpy(dtype=float)
    stages = visits.groupby("pid").size().reindex(pids)
    return {
        "hop_ms": float(np.nanmean(hop)) if hop.size else float("nan"),
        "hop_sd_ms": float(np.nanstd(hop)) if hop.size else float("nan"),
        "request_ms": float(np.nanmean(rest)) if rest.size else float("nan"),
        "request_sd_ms": float(np.nanstd(rest)) if rest.size else float("nan"),
        "stages_per_request": float(stages.mean()) if len(stages) else float("nan"),
        "n_requests": float(rest.size),
    }


def _batch_executions(visits: pd.DataFrame) -> pd.DataFrame:
    """``visits`` with ``_exec``: rows of one batch execution share (component, replica,
    batch, rounded service time, _exec) — see :func:`testbed_samples`."""
    keys = ["component", "replica_name", "batch", "_ms"]
    rows = visits.assign(_ms=(visits["service_s"] * 1e3).round(4))
    rows = rows.sort_values([*keys, "t_start"], kind="stable")
    nth = rows.groupby(keys, observed=True, sort=False).cumcount().to_numpy()
    return rows.assign(_exec=nth // rows["batch"].clip(lower=1).to_numpy())


def _dispatch(
    visits: pd.DataFrame,
    scenario: Scenario,
    deployment: Deployment,
    timer_late_ms: dict[str, float] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(``visits``' rows with their batch execution's keys, one row per batch execution
    with its ``_late`` start (s) and whether its batch timer decided it, ``_timer``)."""
    rows = _batch_executions(visits)
    size, timeout = {}, {}
    for c in scenario.components:
        if c.is_stage:
            eff = effective_stage(scenario, deployment, c)
            size[c.name] = eff.batch
            timeout[c.name] = (eff.batch_timeout_ms + (timer_late_ms or {}).get(c.name, 0.0)) / 1e3
    keys = ["component", "replica_name", "batch", "_ms", "_exec"]
    arrive = rows["t_start"] - rows["queue_s"]
    grouped = rows.assign(_arrive=arrive).groupby(keys, observed=True, sort=False)
    ex = grouped.agg(
        start=("t_start", "min"),
        service=("service_s", "first"),
        newest=("_arrive", "max"),
        oldest=("_arrive", "min"),
    ).reset_index()
    comp = ex["component"].astype(str)
    ex = ex.assign(end=ex["start"] + ex["service"]).sort_values(
        ["component", "replica_name", "start"]
    )
    prev_end = ex.groupby(["component", "replica_name"], observed=True)["end"].shift(1)
    prev_end = prev_end.fillna(-np.inf).to_numpy()
    full = ex["batch"].to_numpy() >= comp.map(size).fillna(1).reindex(ex.index).to_numpy()
    timer = ex["oldest"].to_numpy() + comp.map(timeout).fillna(0).reindex(ex.index).to_numpy()
    ready = np.where(full, ex["newest"].to_numpy(), timer)
    late = np.clip(ex["start"].to_numpy() - np.maximum(ready, prev_end), 0.0, None)
    # only batching stages: a stage of batch 1 has no timer, and its late starts are the
    # worker waking up — under a CPU quota the quota's stall, which the twin makes itself
    batching = comp.map(lambda c: size.get(c, 1) > 1).reindex(ex.index).to_numpy(dtype=bool)
    late = np.where(batching, late, 0.0)
    return rows, ex.assign(_late=late, _timer=batching & ~full & (timer >= prev_end))


def dispatch_lag(
    visits: pd.DataFrame,
    scenario: Scenario,
    deployment: Deployment,
    timer_late_ms: dict[str, float] | None = None,
) -> pd.Series:
    """Per stage visit: how much later its batch started than the twin's batching says (s).

    The twin starts a batch when its replica is free and the batch is full, or
    its oldest item has waited the batch timeout. On the testbed a batch that was
    not full became ready when its oldest item had waited the timeout, a full one
    when its newest item arrived (arrival = ``t_start − queue_s``); neither can
    start before the replica's previous batch ended (``t_start + service_s``). The
    start beyond both, ≥ 0, is timer and event-loop lag: it holds no capacity and
    grows with the host's load. The queue behind a busy replica is *not* lag — the
    twin's queue makes it. Aligned with ``visits``' index (0 for components that
    are not stages and for stages of batch 1). ``timer_late_ms``
    (:func:`timer_lateness`, per stage): the twin's timer fires that late too
    (``ServerOverhead.timer_late_ms``), so only the rest is lag.
    """
    rows, ex = _dispatch(visits, scenario, deployment, timer_late_ms)
    keys = ["component", "replica_name", "batch", "_ms", "_exec"]
    per_row = rows[keys].merge(ex[[*keys, "_late"]], on=keys, how="left")["_late"].to_numpy()
    return pd.Series(per_row, index=rows.index).reindex(visits.index)


def timer_lateness(
    visits: pd.DataFrame, scenario: Scenario, deployment: Deployment
) -> dict[str, float]:
    """Per batching stage: how late its batch timer fires (ms), the median start beyond
    the timeout of the batches the timer decided (not full, replica free by then).
    Stages with fewer than 10 such batches are left out.
    :attr:`twin.spec.ServerOverhead.timer_late_ms`."""
    _, ex = _dispatch(visits, scenario, deployment)
    out: dict[str, float] = {}
    timed = ex[ex["_timer"]]
    for comp, g in timed.groupby(timed["component"].astype(str), sort=True):
        if len(g) >= 10:
            out[str(comp)] = float(np.median(g["_late"])) * 1e3
    return out


def answer_hops(visits: pd.DataFrame) -> dict[str, float]:
    """Per stage that ran batches > 1: the serial time per answer of a batch (ms).

    A stage server sends a batch's answers one by one, so a visit's HTTP hop
    (``hop_s``) grows with its batch: the k-th answer (0-based) waits k answers,
    a visit of a batch of n (n − 1) / 2 on average. The least-squares slope of the
    hop on (n − 1) / 2 over ``visits``, floored at 0; stages without batches > 1 are
    left out. With a ``run`` column, within each run (hop and batch less their run's
    means): across runs the hop also grows with the load, and so do the batches, which
    a pooled slope would count as per-answer time (on Compose s11 2.2 ms at the encoder
    against 0.7–2.0 within its runs). :attr:`twin.spec.ServerOverhead.answer_ms`.
    """
    out: dict[str, float] = {}
    rows = visits.dropna(subset=["hop_s"])
    for comp, g in rows.groupby(rows["component"].astype(str), sort=True):
        n = g["batch"].to_numpy(dtype=float)
        if (n > 1).sum() < 10 or (n == 1).sum() < 10:
            continue
        x = pd.Series((n - 1) / 2, index=g.index)
        y = g["hop_s"].astype(float) * 1e3
        if "run" in g:
            x = x - x.groupby(g["run"]).transform("mean")
            y = y - y.groupby(g["run"]).transform("mean")
        else:
            x, y = x - x.mean(), y - y.mean()
        sxx = float((x * x).sum())
        if sxx > 0:
            out[str(comp)] = max(float((x * y).sum()) / sxx, 0.0)
    return out


def call_sizes(visits: pd.DataFrame) -> dict[str, float]:
    """Per stage: the mean items per HTTP call of a load run's visits (1 = one item a call).

    The gateway sends the items of one event-loop turn to a replica in one call; the
    server stamps each call when it queues it (``t_server_s``, to the µs), so visits
    of one replica with one stamp came in one call. Stages without stamps are left out.
    """
    out: dict[str, float] = {}
    if "t_server_s" not in visits:
        return out
    rows = visits.dropna(subset=["t_server_s"])
    for comp, g in rows.groupby(rows["component"].astype(str), sort=True):
        calls = g.groupby([g["replica_name"].astype(str), g["t_server_s"].round(6)]).ngroups
        if calls:
            out[str(comp)] = len(g) / calls
    return out


def call_windows(
    sizes: dict[str, float], rate_per_s: float, upstream: dict[str, str | None]
) -> dict[str, float]:
    """Per stage: the twin's call window (ms, ``ServerOverhead.call_window_ms``) that gives
    a run's items per call (:func:`call_sizes`) at its item rate (``rate_per_s``, /s).

    In the twin a call opens with an item and takes those sent to the replica within
    the window after it. At the first stage (``upstream`` None) items come one by one,
    about as a Poisson stream, so a call holds 1 + rate × window items on average. A
    later stage's items already come in groups — a call answered as one reaches the
    next stage as one — so its window only has to add what it has beyond its upstream
    stage's call size: window = (size − upstream size) / rate, floored at 0. Written by
    hand: no library models our gateway's loop turn."""
    out: dict[str, float] = {}
    if not rate_per_s > 0:
        return out
    for comp, size in sizes.items():
        if comp not in upstream:
            continue
        before = sizes.get(upstream[comp] or "", 1.0) if upstream[comp] else 1.0
        out[comp] = max(size - before, 0.0) / rate_per_s * 1e3
    return out


def request_overheads(
    requests: pd.DataFrame,
    visits: pd.DataFrame,
    workload: Workload | None = None,
    lag_s: pd.Series | None = None,
    answer_ms: dict[str, float] | None = None,
    onward: set[str] | None = None,
) -> pd.DataFrame:
    """Per answered request: offered rate at arrival and latency minus stage time (ms).

    The overhead is everything the twin's stage queues do not simulate: the
    client's send lag, client ↔ gateway, the gateway's own work, every
    stage's HTTP hop and — given ``lag_s`` (:func:`dispatch_lag`, per visit)
    — the part of each queue time the twin's batching does not produce.
    Latency is from the *scheduled* arrival, as in the twin. ``rate_per_s``
    is ``workload``'s offered rate at that instant (NaN without a workload);
    it only says how the overhead moves with load. ``answer_ms`` (:func:`answer_hops`):
    each visit's expected wait for the answers ahead of it in its batch leaves the
    overhead, as the twin adds it per visit (``ServerOverhead.answer_ms``). ``onward``:
    stages whose answered items go on together (``ServerOverhead.answers_onward``): each
    of their visits waits for the whole batch's answers, (n − 1) × answer_ms — on the
    testbed the k-th answer's hop holds k of them and the next stage's hop the rest
    (the gateway sends the next call when it has read them all).
    """
    stage = visits["queue_s"] + visits["service_s"]
    if answer_ms:
        per = visits["component"].astype(str).map(answer_ms).fillna(0.0).astype(float)
        ahead = (visits["batch"].astype(float) - 1) / 2
        if onward:
            ahead = ahead.where(~visits["component"].astype(str).isin(onward), ahead * 2)
        stage = stage + per / 1e3 * ahead
    lag = pd.Series(0.0, index=visits.index)
    if lag_s is not None:
        lag = lag_s.reindex(visits.index).fillna(0.0)
    inside = (stage - lag).groupby(visits["pid"]).sum()
    lag_sum = lag.groupby(visits["pid"]).sum()
    ok = requests[requests["ok"]].set_index("pid")
    pids = ok.index.intersection(inside.index)
    arrive = ok.loc[pids, "t_arrive"].to_numpy(dtype=float)
    total = ok.loc[pids, "t_end"].to_numpy(dtype=float) - arrive
    over = ((total - inside.loc[pids].to_numpy(dtype=float)) * 1e3).clip(min=1e-3)
    if workload is None:
        rates = np.full(arrive.size, np.nan)
    else:
        rates = np.array([rate_at(workload, t) for t in arrive], dtype=float)
    return pd.DataFrame(
        {
            "rate_per_s": rates,
            "overhead_ms": over,
            "lag_ms": lag_sum.loc[pids].to_numpy(dtype=float) * 1e3,
        }
    )
