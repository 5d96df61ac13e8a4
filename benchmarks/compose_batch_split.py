"""What the held-out twin gets wrong in a batch deployment, per level and stage.

For each level of a ``testbed_knee.py`` sweep (offline, no testbed, no lock): per run
(testbed) and for the level's held-out twin (the report's ``twin``, 8 seeds), per stage

- the items' batch size (mean over items, and the share of items in batches > 1),
- the batch wait (queue p50 / mean / p95: the timeout at low rates, the queue later),
- the service per item and by batch size (fixed + per item),
- the HTTP hop by batch size (testbed only: the twin holds hops in the overhead),
- the items per HTTP call (testbed: the server's call stamps, ``calibrate.samples.call_sizes``;
  twin: its call layer's calls with ``KNEE_CALLS=on``, else the items that reach the stage at
  one instant, as ``KNEE_ONWARD=on`` sends a batch's items on),

and per request the overhead (latency − all stage visits) and the host's others' work
beside the run (:func:`testbed_knee.others_cores`).

    KNEE_RUNS=runs/knee-compose-s11quiet python benchmarks/compose_batch_split.py \\
        --deployment batch --result compose_batch_split11
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import testbed_knee as knee
from _report import machine_line, markdown_table, write_result

from calibrate.samples import call_sizes
from twin.sim import simulate_replication
from twin.spec import SteadyWorkload

STAGES = ("denoise", "encoder", "classifier")


def stage_rows(req: pd.DataFrame, vis: pd.DataFrame, calls: dict[str, float] | None = None) -> dict:
    """Per stage: batch, wait, service and hop figures (ms), items per call (``calls``,
    default: from the visits' call stamps); and the overhead's."""
    calls = call_sizes(vis) if calls is None else calls
    vis = vis.assign(
        q=1e3 * (vis["t_start"] - vis["t_arrive"]), s=1e3 * (vis["t_end"] - vis["t_start"])
    )
    inside = (vis["q"] + vis["s"]).groupby(vis["pid"]).sum()
    r = req.set_index("pid")
    pids = r.index.intersection(inside.index)
    over = 1e3 * (r.loc[pids, "t_end"] - r.loc[pids, "t_arrive"]) - inside.loc[pids]
    out: dict = {"overhead": (float(over.mean()), float(over.median()))}
    for c in STAGES:
        g = vis[vis["component"].astype(str) == c]
        b = g["batch"].clip(upper=4)
        by_b = g.groupby(b)["s"].agg(["mean", "size"])
        hop = (1e3 * g["hop_s"]).groupby(b).agg(["mean", "size"]) if "hop_s" in g else by_b[:0]
        out[c] = {
            "batch": f"{g['batch'].mean():.2f} ({100 * (g['batch'] > 1).mean():.0f} %)",
            "wait": f"{g['q'].median():.2f}/{g['q'].mean():.2f}/{np.percentile(g['q'], 95):.2f}",
            "service": f"{g['s'].mean():.2f}",
            "by_b": " ".join(f"{k}:{v['mean']:.2f}" for k, v in by_b.iterrows() if v["size"] >= 20),
            "hop": " ".join(f"{k}:{v['mean']:.2f}" for k, v in hop.iterrows() if v["size"] >= 20),
            "calls": f"{calls.get(c, 1.0):.2f}",
        }
    return out


def _pool(pairs: list[tuple[pd.DataFrame, pd.DataFrame]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Several runs as one: pids made distinct per run."""
    reqs, viss = [], []
    for i, (req, vis) in enumerate(pairs):
        reqs.append(req.assign(pid=req["pid"] + i * 10**8))
        viss.append(vis.assign(pid=vis["pid"] + i * 10**8))
    return pd.concat(reqs, ignore_index=True), pd.concat(viss, ignore_index=True)


def level(name: str, rho: float, runs: pd.DataFrame, seeds: int = 8) -> list[list[str]]:
    """The level's rows: each testbed run, then the held-out twin."""
    g = runs[runs["rho"] == rho]
    rows = []
    for r in g.itertuples():
        f = knee.OUT / name / r.run
        req = pd.read_parquet(f / "requests.parquet")
        req = req[req["ok"]]
        vis = pd.read_parquet(f / "visits.parquet")
        vis = vis[vis["pid"].isin(req["pid"])]
        tag = f"{r.run} ({r.others_cores:+.2f} cores{'' if r.usable else ', left out'})"
        rows.append(_row(rho, tag, r.p50, stage_rows(req, vis)))
    held = knee.held_out_twin(name, rho, runs)
    wl = SteadyWorkload(kind="steady", name="knee", rate_per_s=held["rate"])
    pairs, n_calls = [], dict.fromkeys(STAGES, 0)
    for seed in range(seeds):
        res = simulate_replication(
            held["twin"], held["deployment"], wl, float(g["duration"].mean()), seed
        )
        pairs.append((res.requests.dropna(subset=["t_end"]), res.visits))
        for c in STAGES:  # without a call layer: the items that arrive at one instant
            at = res.visits[res.visits["component"] == c]
            n_calls[c] += res.calls.get(c, at.groupby(["replica", at["t_arrive"].round(9)]).ngroups)
    req, vis = _pool(pairs)
    p50 = float(np.percentile(1e3 * (req["t_end"] - req["t_arrive"]), 50))
    per_call = {c: float((vis["component"] == c).sum()) / max(n, 1) for c, n in n_calls.items()}
    rows.append(_row(rho, "twin (held out)", p50, stage_rows(req, vis, per_call)))
    return rows


def _row(rho: float, tag: str, p50: float, s: dict) -> list[str]:
    return [
        f"{rho:.1f}",
        tag,
        f"{p50:.1f}",
        f"{s['overhead'][0]:.2f}/{s['overhead'][1]:.2f}",
        *(s[c]["batch"] for c in STAGES),
        *(s[c]["wait"] for c in STAGES),
        *(s[c]["service"] for c in STAGES),
        "/".join(s[c]["calls"] for c in STAGES),
        s["encoder"]["by_b"],
        " | ".join(f"{c[:3]} {s[c]['hop']}" for c in STAGES if s[c]["hop"]),
    ]


def report(name: str, rhos: list[float], result: str) -> str:
    runs = knee._levels(name)
    rows = [row for r in rhos if (runs["rho"] == r).any() for row in level(name, r, runs)]
    text = [
        f"# A batch deployment's twin, per level and stage ({name}, {knee.OUT})",
        "",
        f"- {machine_line()}",
        "- command: `"
        + "".join(
            f"{k}={os.environ[k]} "
            for k in ("KNEE_CALLS", "KNEE_ONWARD", "KNEE_ANSWER", "KNEE_TIMER")
            if os.environ.get(k)
        )
        + f"KNEE_RUNS={os.path.relpath(knee.OUT, knee.ROOT)} python benchmarks/"
        f"compose_batch_split.py --deployment {name} --backend {knee.BACKEND} --result "
        f"{result}` (offline; under the lock, niced)",
        "- ms; batch: mean batch size over items (share of items in batches > 1); wait: the "
        "stage's queue p50/mean/p95 (the batch timeout at low rates); service: per item; "
        "by batch size: the encoder's service of a batch of b (4 = 4 or more); hop by batch "
        "size: the testbed's HTTP hop of a visit (the twin holds hops in its per-request "
        "overhead); overhead: latency − all stage visits, mean/median; a run's others' "
        "cores: the host's busy cores outside the nodes above the sweep's quiet line "
        "(> 0.35: left out of the figures and fits)",
        "",
        markdown_table(
            [
                "ρ",
                "run",
                "p50",
                "overhead",
                *(f"{c} batch" for c in STAGES),
                *(f"{c} wait" for c in STAGES),
                *(f"{c} service" for c in STAGES),
                "items per call (den/enc/cla)",
                "encoder service by batch size",
                "hop by batch size",
            ],
            rows,
        ),
        "",
    ]
    out = "\n".join(text)
    write_result(result, out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--deployment", default="batch", choices=list(knee.DEPLOYMENTS))
    ap.add_argument("--rhos", default="0.2,0.4,0.6,0.8,0.9", help="levels, comma-separated")
    ap.add_argument("--backend", default="compose", choices=list(knee.OUTS))
    ap.add_argument("--result", default="compose_batch_split", help="name in benchmarks/results")
    a = ap.parse_args()
    if os.environ.get("KNEE_RUNS"):
        knee.OUTS[a.backend] = Path(os.environ["KNEE_RUNS"])
    knee.use_backend(a.backend)
    report(a.deployment, [float(x) for x in a.rhos.split(",")], a.result)


if __name__ == "__main__":
    main()
