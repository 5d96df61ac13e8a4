"""What a knee sweep's twin misses, per request part: testbed against held-out twin.

For each level of a ``testbed_knee.py`` sweep (one deployment; offline, no testbed, no
lock) it splits every answered request into the bottleneck's queue, its service, the
other stages (queue + service) and the overhead (latency − all visits: HTTP hops,
client ↔ gateway), on the testbed's runs and on the level's held-out twin (the report's
``twin``, 8 seeds), and tests the candidates for a miss:

- *parts*: p50/p95/p99 of each part, and each part's mean over the requests at or above
  the latency p95 (what the tail is made of);
- *coupling*: Spearman's ρ of overhead and stage time, and the latency p95 with the
  overhead shuffled across requests (the twin draws them independently);
- *overhead growth*: the overhead's mean, testbed and twin, per level;
- *the queue*: the bottleneck replayed as one FIFO server (Lindley) on the testbed's
  own arrivals and per-job occupancies (service + the hand-off gap to the next job),
  then with the occupancies scaled to the twin's mean, mapped onto the twin's
  distribution in the testbed's order, or with their tail cut at the twin's p99 (mean
  kept): which of mean, shape or order makes the queue;
- *pace*: start-to-start interval per item by position in a busy period, and per sixth of
  each run (does the CPU per item rise after minutes at the quota?).

    KNEE_RUNS=runs/knee-compose-s9quiet python benchmarks/compose_knee_split.py \\
        --deployment default --result compose_knee_split9

``KNEE_BACKLOG=off`` scores the twin without :mod:`calibrate.backlog` (as the report).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import testbed_knee as knee
from _report import machine_line, markdown_table, write_result

from calibrate.backlog import busy_positions
from twin.sim import simulate_replication
from twin.spec import SteadyWorkload

BN = knee.BOTTLENECK
PARTS = ("latency", "bn_queue", "bn_service", "other", "overhead")
POSITIONS = (1, 2, 3, 5, 9, 17, 33, 65, 129)
SEED = 7


def _frame(req: pd.DataFrame, vis: pd.DataFrame) -> pd.DataFrame:
    """Per request (ms): latency and its parts, from request rows (t_arrive, t_end) and
    visit rows (component, t_arrive, t_start, t_end)."""
    vis = vis.assign(q=vis["t_start"] - vis["t_arrive"], s=vis["t_end"] - vis["t_start"])
    bn = vis[vis["component"].astype(str) == BN].groupby("pid")[["q", "s"]].sum()
    oth = vis[vis["component"].astype(str) != BN]
    oth = (oth["q"] + oth["s"]).groupby(oth["pid"]).sum()
    r = req.set_index("pid")
    pids = r.index.intersection(bn.index)
    d = 1e3 * pd.DataFrame(
        {
            "latency": r.loc[pids, "t_end"] - r.loc[pids, "t_arrive"],
            "bn_queue": bn.loc[pids, "q"],
            "bn_service": bn.loc[pids, "s"],
            "other": oth.reindex(pids).fillna(0.0),
        }
    )
    d["overhead"] = d["latency"] - d["bn_queue"] - d["bn_service"] - d["other"]
    return d.reset_index(drop=True)


def testbed_parts(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A run's per-request parts and its bottleneck's visits."""
    req = pd.read_parquet(folder / "requests.parquet")
    req = req[req["ok"]]
    vis = pd.read_parquet(folder / "visits.parquet")
    vis = vis[vis["pid"].isin(req["pid"])]
    return _frame(req, vis), vis[vis["component"].astype(str) == BN]


def twin_parts(held: dict, seconds: float, seeds: int = 8) -> tuple[pd.DataFrame, list]:
    """The held-out twin's per-request parts over ``seeds`` runs, and each run's
    bottleneck visits."""
    wl = SteadyWorkload(kind="steady", name="knee", rate_per_s=held["rate"])
    frames, visits = [], []
    for seed in range(seeds):
        res = simulate_replication(held["twin"], held["deployment"], wl, seconds, seed)
        req = res.requests.dropna(subset=["t_end"])
        frames.append(_frame(req, res.visits))
        visits.append(res.visits[res.visits["component"].astype(str) == BN])
    return pd.concat(frames, ignore_index=True), visits


def occupancy(v: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The bottleneck's jobs in arrival order: arrival (s), occupancy (s: service + the
    gap to the next job's start when that one waited, else + the median such gap),
    queue (s), and the position in its busy period (1 = found the server idle)."""
    v = v.sort_values("t_start")
    ta, ts, te = (v[c].to_numpy(dtype=float) for c in ("t_arrive", "t_start", "t_end"))
    nxt = np.append(ts[1:], np.inf)
    waited_next = np.append(ta[1:] < te[:-1], False)
    gap = float(np.median((nxt - te)[waited_next])) if waited_next.any() else 0.0
    occ = np.where(waited_next, nxt - ts, te - ts + gap)
    _, pos = busy_positions(ta, te)
    o = np.argsort(ta, kind="stable")
    return ta[o], occ[o], (ts - ta)[o], pos[o]


def lindley_ms(arrive: np.ndarray, occ: np.ndarray) -> np.ndarray:
    """Waits (ms) of one FIFO server with these arrivals and occupancies (s)."""
    wait = np.empty(len(arrive))
    free = -np.inf
    for i, (a, o) in enumerate(zip(arrive, occ, strict=True)):
        start = max(a, free)
        wait[i] = start - a
        free = start + o
    return 1e3 * wait


def _q(x: np.ndarray) -> str:
    return "/".join(f"{np.percentile(x, q):.1f}" for q in (50, 95, 99))


def pace_by_position(v: pd.DataFrame) -> list[float]:
    """Start-to-start interval (ms) of jobs whose next one waited, per position bin."""
    v = v.sort_values("t_start")
    ta, ts, te = (v[c].to_numpy(dtype=float) for c in ("t_arrive", "t_start", "t_end"))
    waited, pos = busy_positions(ta, te)
    step = np.r_[np.diff(ts), np.nan]
    ok = np.r_[waited[1:], False]
    edges = (*POSITIONS, 10**9)
    return [
        float(1e3 * np.mean(step[ok & (pos >= lo) & (pos < hi)]))
        if (ok & (pos >= lo) & (pos < hi)).sum() >= 20
        else float("nan")
        for lo, hi in itertools.pairwise(edges)
    ]


def level(name: str, rho: float, runs: pd.DataFrame) -> dict:
    """Every table row of one level."""
    g = runs[runs["rho"] == rho]
    g = g[g["usable"]] if g["usable"].any() else g
    tb = [testbed_parts(knee.OUT / name / r) for r in g["run"]]
    tbp = pd.concat([p for p, _ in tb], ignore_index=True)
    held = knee.held_out_twin(name, rho, runs)
    twp, twv = twin_parts(held, float(g["duration"].mean()))
    rng = np.random.default_rng(SEED)
    out: dict = {"rho": rho, "offered": float(g["offered"].mean()), "backlog": held["backlog"]}
    for key, p in (("tb", tbp), ("twin", twp)):
        tail = p[p["latency"] >= np.percentile(p["latency"], 95)]
        stage = p["bn_queue"] + p["bn_service"] + p["other"]
        shuffled = stage.to_numpy() + rng.permutation(p["overhead"].to_numpy())
        out[key] = {
            "q": {c: _q(p[c].to_numpy()) for c in PARTS},
            "tail": {c: float(tail[c].mean()) for c in PARTS},
            "spearman": float(p["overhead"].rank().corr(stage.rank())),
            "p95": float(np.percentile(p["latency"], 95)),
            "shuffled_p95": float(np.percentile(shuffled, 95)),
            "over_mean": float(p["overhead"].mean()),
            "over_cv": float(p["overhead"].std() / p["overhead"].mean()),
        }
    tw_occ = np.concatenate([occupancy(v)[1] for v in twv])
    replays = []
    for run, (_, v) in zip(g["run"], tb, strict=True):
        ta, occ, q, _ = occupancy(v)
        ranks = np.argsort(np.argsort(occ))
        mapped = np.sort(tw_occ)[(ranks * len(tw_occ) // len(occ)).clip(0, len(tw_occ) - 1)]
        cut = np.minimum(occ, np.percentile(tw_occ, 99))
        cut *= occ.mean() / cut.mean()
        sixths = np.floor(6 * (ta - ta[0]) / (ta[-1] - ta[0] + 1e-9)).astype(int)
        replays.append(
            [
                run,
                _q(1e3 * q),
                _q(lindley_ms(ta, occ)),
                f"{1e3 * occ.mean():.2f} → {1e3 * tw_occ.mean():.2f}",
                _q(lindley_ms(ta, occ * tw_occ.mean() / occ.mean())),
                _q(lindley_ms(ta, mapped)),
                _q(lindley_ms(ta, cut)),
                " ".join(f"{1e3 * occ[sixths == k].mean():.2f}" for k in range(6)),
            ]
        )
    out["replays"] = replays
    out["pace"] = [(r, pace_by_position(v)) for r, (_, v) in zip(g["run"], tb, strict=True)]
    out["pace"] += [(f"twin seed {i}", pace_by_position(v)) for i, v in enumerate(twv[:2])]
    return out


def report(name: str, rhos: list[float], result: str) -> str:
    runs = knee._levels(name)
    levels = [level(name, r, runs) for r in rhos if (runs["rho"] == r).any()]
    text = [
        f"# What the held-out twin misses, per request part ({name}, {knee.OUT})",
        "",
        f"- {machine_line()}",
        f"- command: `KNEE_RUNS={os.path.relpath(knee.OUT, knee.ROOT)} python benchmarks/"
        f"compose_knee_split.py --deployment {name} --rhos {','.join(map(str, rhos))} "
        f"--result {result}` (offline, no lock)"
        + (" with KNEE_BACKLOG=off" if os.environ.get("KNEE_BACKLOG") == "off" else ""),
        f"- bottleneck {BN}; ms; testbed pooled over the level's usable runs; twin: the "
        "level's held-out twin of `testbed_knee.py report` (8 seeds)",
        "",
        "## Parts: p50/p95/p99, and the mean of each over the requests at or above the latency p95",
        "",
    ]
    rows = []
    for lv in levels:
        for key in ("tb", "twin"):
            s = lv[key]
            rows.append(
                [
                    f"{lv['rho']:.1f} ({lv['offered']:.0f}/s)",
                    "testbed" if key == "tb" else f"twin (pace ×{lv['backlog']:.3f})",
                    *(s["q"][c] for c in PARTS),
                    " / ".join(f"{s['tail'][c]:.1f}" for c in PARTS[1:]),
                    f"{s['over_mean']:.2f}, {s['over_cv']:.2f}",
                    f"{s['spearman']:+.2f}",
                    f"{s['p95']:.1f} → {s['shuffled_p95']:.1f}",
                ]
            )
    text += [
        markdown_table(
            [
                "ρ",
                "",
                "latency",
                f"{BN} queue",
                f"{BN} service",
                "other stages",
                "overhead",
                "tail means: queue / service / other / overhead",
                "overhead mean, cv",
                "Spearman(overhead, stage)",
                "p95 → overhead shuffled",
            ],
            rows,
        ),
        "",
        f"## The {BN}'s queue replayed (Lindley, one FIFO server) on the testbed's arrivals",
        "",
    ]
    rows = [[f"{lv['rho']:.1f}", *r] for lv in levels for r in lv["replays"]]
    text += [
        markdown_table(
            [
                "ρ",
                "run",
                "queue measured",
                "replayed",
                "occupancy mean tb → twin (ms)",
                "scaled to the twin's mean",
                "the twin's distribution, testbed order",
                "tail cut at the twin's p99, mean kept",
                "occupancy mean per sixth of the run",
            ],
            rows,
        ),
        "",
        f"## The {BN}'s pace: start-to-start ms per item of jobs whose next one waited, by "
        "position in the busy period",
        "",
    ]
    edges = (*POSITIONS, None)
    head = [f"{a}–{b - 1}" if b else f"{a}+" for a, b in itertools.pairwise(edges)]
    rows = [
        [f"{lv['rho']:.1f}", r, *(f"{x:.2f}" for x in p)] for lv in levels for r, p in lv["pace"]
    ]
    text += [markdown_table(["ρ", "run", *head], rows), ""]
    out = "\n".join(text)
    write_result(result, out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--deployment", default="default", choices=list(knee.DEPLOYMENTS))
    ap.add_argument("--rhos", default="0.2,0.4,0.6,0.8,0.9", help="levels, comma-separated")
    ap.add_argument("--backend", default="compose", choices=list(knee.OUTS))
    ap.add_argument("--result", default="compose_knee_split", help="name in benchmarks/results")
    a = ap.parse_args()
    if os.environ.get("KNEE_RUNS"):
        knee.OUTS[a.backend] = Path(os.environ["KNEE_RUNS"])
    knee.use_backend(a.backend)
    report(a.deployment, [float(x) for x in a.rhos.split(",")], a.result)


if __name__ == "__main__":
    main()
