"""From the raw request log to the twin's record tables, and per-second results.

Pure functions over DataFrames (no Locust, no I/O), so the same
``twin.criteria`` code scores the testbed and the simulator.

*requests*: the twin's columns ``process, pid, t_arrive, t_end, deadline_s``
plus ``t_send, t_response, status, error, ok, lag_s, input, label, truth``.
``t_arrive`` is the *scheduled* arrival (what the twin simulates); ``t_end`` is
NaN for a request that failed or never got an answer (the twin's "unfinished");
``t_response`` is when any answer (also an error) came back.

*visits*: the twin's columns ``process, pid, step, component, machine, replica,
part, t_arrive, t_start, t_end, batch`` plus ``replica_name, variant,
queue_s, service_s, hop_s``. The gateway reports per-stage *durations*, not
clocks, so a visit's instants are rebuilt: the stages are laid end to end from
the request's send time, half of each stage's HTTP hop before it and half
after, and the client↔gateway overhead split evenly before the first and after
the last stage. Durations are exact; instants are exact up to that split.
``t_server_s`` is when the stage server queued the call on its own clock (s from
the run's time zero; NaN when the server did not report it): the receive delay the
split cannot see.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from testbed.api import decode_timings
from twin.criteria import latency_summary
from twin.spec import Process

ON_TIME_S = 0.05  # a request released later than this after its scheduled time is late
REQUEST_EXTRA = (
    "t_send",
    "t_response",
    "status",
    "error",
    "ok",
    "lag_s",
    "input",
    "label",
    "attempts",
)
VISIT_COLUMNS = (
    "process",
    "pid",
    "step",
    "component",
    "machine",
    "replica",
    "part",
    "t_arrive",
    "t_start",
    "t_end",
    "batch",
)


def requests_table(
    raw: pd.DataFrame,
    schedule: np.ndarray,
    process: str,
    deadline_s: float | None,
) -> pd.DataFrame:
    """One row per *scheduled* arrival, answered or not (times in s from run start).

    ``schedule[pid]`` is the scheduled time of request ``pid``; a ``truth`` column
    in ``raw`` (the input's true label) is carried over (−1 when not sent).
    """
    n = schedule.size
    frame = pd.DataFrame(
        {
            "process": pd.Categorical([process] * n),
            "pid": np.arange(n, dtype=np.int64),
            "t_arrive": schedule.astype(float),
        }
    )
    attempts = raw.groupby("pid").size()
    if "attempt" in raw:  # a resent request: its answer is the last attempt's, sent at the first
        first_send = raw.groupby("pid")["t_send"].min()
        raw = raw.sort_values("attempt").drop_duplicates("pid", keep="last")
        raw = raw.assign(t_send=raw["pid"].map(first_send))
    raw = raw.drop_duplicates("pid").set_index("pid").reindex(frame["pid"])
    status = raw["status"].fillna(-1).astype(np.int32).to_numpy()
    error = raw["error"].fillna("not sent or not answered before the run ended").to_numpy()
    ok = (status == 200) & (error == "")
    frame["t_end"] = np.where(ok, raw["t_recv"].to_numpy(dtype=float), np.nan)
    frame["deadline_s"] = float("nan") if deadline_s is None else float(deadline_s)
    frame["t_send"] = raw["t_send"].to_numpy(dtype=float)
    frame["t_response"] = raw["t_recv"].to_numpy(dtype=float)
    frame["status"] = status
    frame["error"] = error.astype(str)
    frame["ok"] = ok
    frame["lag_s"] = frame["t_send"] - frame["t_arrive"]
    frame["input"] = raw["input"].fillna(-1).astype(np.int64).to_numpy()
    frame["label"] = raw["label"].fillna(-1).astype(np.int64).to_numpy()
    frame["attempts"] = attempts.reindex(frame["pid"]).fillna(0).astype(np.int32).to_numpy()
    if "truth" in raw:
        frame["truth"] = raw["truth"].fillna(-1).astype(np.int64).to_numpy()
    return frame


def _step_of(process: Process) -> dict[str, tuple[str, str]]:
    """Stage name as the gateway reports it (step or component) → (step, component)."""
    out: dict[str, tuple[str, str]] = {}
    for s in process.steps:
        out.setdefault(s.component, (s.name, s.component))
        out[s.name] = (s.name, s.component)
    return out


def visits_table(
    raw: pd.DataFrame,
    process: Process,
    replica_nodes: dict[str, str] | None = None,
    t0_unix: float | None = None,
) -> pd.DataFrame:
    """One row per stage visit of each answered request, rebuilt from the timings header.

    ``replica_nodes`` maps the gateway's replica names to machines; without it
    the replica name stands for the machine. ``replica`` numbers a component's
    replicas 0, 1, … in name order, like the twin. ``t0_unix`` (the run's time zero,
    Unix s) turns the servers' receive stamps into ``t_server_s``.
    """
    steps = _step_of(process)
    nodes = replica_nodes or {}
    rows = []
    answered = raw[(raw["status"] == 200) & (raw["timings"].fillna("") != "")]
    for pid, t_send, t_recv, header in zip(
        answered["pid"], answered["t_send"], answered["t_recv"], answered["timings"], strict=True
    ):
        stages = decode_timings(header)
        inside = sum(s.queue_ms + s.service_ms + s.hop_ms for s in stages) / 1e3
        cursor = float(t_send) + max(float(t_recv) - float(t_send) - inside, 0.0) / 2
        for st in stages:
            step, component = steps.get(st.stage, (st.stage, st.stage))
            arrive = cursor + st.hop_ms / 2e3
            start = arrive + st.queue_ms / 1e3
            end = start + st.service_ms / 1e3
            cursor = end + st.hop_ms / 2e3
            rows.append(
                (
                    process.name,
                    int(pid),
                    step,
                    component,
                    nodes.get(st.replica, st.replica),
                    st.replica,
                    0,
                    arrive,
                    start,
                    end,
                    st.batch,
                    st.variant,
                    st.queue_ms / 1e3,
                    st.service_ms / 1e3,
                    st.hop_ms / 1e3,
                    np.nan
                    if st.received_unix is None or t0_unix is None
                    else st.received_unix - t0_unix,
                )
            )
    cols = [*VISIT_COLUMNS[:5], "replica_name", *VISIT_COLUMNS[6:], "variant"]
    cols += ["queue_s", "service_s", "hop_s", "t_server_s"]
    frame = pd.DataFrame(rows, columns=cols)
    frame["replica"] = (
        frame.groupby("component")["replica_name"].rank(method="dense").astype(np.int32) - 1
        if len(frame)
        else pd.Series(dtype=np.int32)
    )
    for c in ("process", "step", "component", "machine"):
        frame[c] = frame[c].astype("category")
    frame["batch"] = frame["batch"].astype(np.int32)
    extra = ["replica_name", "variant", "queue_s", "service_s", "hop_s", "t_server_s"]
    return frame[[*VISIT_COLUMNS, *extra]]


def per_second_table(requests: pd.DataFrame, duration_s: float) -> pd.DataFrame:
    """Per-second offered, sent, answered, failed, RPS and p50/p95/p99 latency (s).

    Offered/sent count by scheduled/send second; completions, failures and the
    latency percentiles by the second the answer came back.
    """
    n = int(np.ceil(duration_s))
    bins = np.arange(n + 1, dtype=float)
    hist = lambda x: np.histogram(x.dropna(), bins)[0]  # noqa: E731
    ok = requests[requests["ok"]]
    failed = requests[~requests["ok"]]
    latency = ok["t_end"] - ok["t_arrive"]
    second = np.floor(ok["t_end"]).astype(int)
    grouped = latency.groupby(second)
    out = pd.DataFrame(
        {
            "second": np.arange(n),
            "offered": hist(requests["t_arrive"]),
            "sent": hist(requests["t_send"]),
            "rps": hist(ok["t_end"]),
            "failures": hist(failed["t_response"]),
        }
    )
    for q in (50, 95, 99):
        out[f"p{q}_s"] = grouped.quantile(q / 100).reindex(range(n)).to_numpy()
    return out


def run_summary(requests: pd.DataFrame, duration_s: float, expected: float) -> dict[str, float]:
    """Headline figures of one run: rates (requests/s), latency (s), counts, accuracy."""
    ok = requests[requests["ok"]]
    latency = (ok["t_end"] - ok["t_arrive"]).to_numpy()
    sent = requests["t_send"].notna()
    out = {
        "duration_s": float(duration_s),
        "expected_offered_rps": expected / duration_s,
        "offered_rps": len(requests) / duration_s,
        "sent_rps": float(sent.sum()) / duration_s,
        "achieved_rps": len(ok) / duration_s,
        "achieved_over_offered": len(ok) / len(requests) if len(requests) else float("nan"),
        "requests": float(len(requests)),
        "ok": float(len(ok)),
        "failures": float(len(requests) - len(ok)),
        "lag_p99_s": float(np.nanpercentile(requests["lag_s"], 99)) if sent.any() else np.nan,
        # sent within ON_TIME_S of its scheduled time (unsent requests count as late)
        "on_time": float((requests["lag_s"] <= ON_TIME_S).mean()) if len(requests) else np.nan,
    }
    out |= {f"{k}_s": v for k, v in latency_summary(latency).items()}
    if "truth" in ok and len(ok):
        out["accuracy"] = float((ok["label"] == ok["truth"]).mean())
    return out
