"""Where the Compose backend's tail comes from, beside the local backend's, at the same own ρ.

Reads two knee sweeps (``testbed_knee.py run`` folders; no testbed, no lock). For every
answered request of every run: its latency from the scheduled arrival, its *stage* time
(Σ queue + service of its visits: what the twin's queues make), its *hops* (Σ the
visits' HTTP round trips beyond queue and service) and the *rest* (client ↔ gateway and
the gateway's own work). Overhead = hops + rest, the part the twin draws from one
lognormal per request, independent of the stages.

Per level, per backend:

- p50/p95/p99 of latency, stage time and overhead;
- the overhead's own tail against the lognormal with its mean and cv (the twin's shape);
- Spearman's ρ of overhead with stage time (the twin draws them independently), and the
  latency p95 with the overhead shuffled across requests (what independence costs);
- swap: Compose's stage times with the local sweep's overheads at the nearest own ρ
  (resampled), and the local stage times with Compose's overheads — how much of
  Compose's p95 beyond local's is the container hop and how much the stage queues;
- the host while it ran: user, nice (others' niced work), system, steal, idle, in cores.

Own ρ = offered / the sweep's answers per second over the second half of its most loaded
level, when that level was backlogged (as ``testbed_knee.py report`` prints).

    python benchmarks/compose_overhead.py --compose runs/knee-compose-7 \
        --local /work/main/runs/knee-s7quiet --deployment default
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, markdown_table, write_result

from loadgen.host import CPU_SECONDS, HOST_TARGET

MODES = ("user", "nice", "system", "softirq", "steal", "idle")
SEED = 7


def parts(folder: Path) -> pd.DataFrame:
    """Per answered request of one run: ``latency``, ``stage``, ``hops``, ``rest`` and
    ``overhead`` (= hops + rest), in ms."""
    req = pd.read_parquet(folder / "requests.parquet")
    vis = pd.read_parquet(folder / "visits.parquet")
    vis = vis[vis["pid"].isin(req["pid"])]
    by = vis.groupby("pid")
    stage = (vis["queue_s"] + vis["service_s"]).groupby(vis["pid"]).sum()
    hops = by["hop_s"].sum()
    ok = req[req["ok"]].set_index("pid")
    pids = ok.index.intersection(stage.index)
    lat = (ok.loc[pids, "t_end"] - ok.loc[pids, "t_arrive"]).to_numpy(dtype=float)
    st, hp = stage.loc[pids].to_numpy(dtype=float), hops.loc[pids].to_numpy(dtype=float)
    rest = lat - st - hp
    return pd.DataFrame(
        {
            "latency": lat * 1e3,
            "stage": st * 1e3,
            "hops": hp * 1e3,
            "rest": rest * 1e3,
            "overhead": (hp + rest) * 1e3,
        }
    )


def host_modes(folder: Path) -> dict[str, float]:
    """The host's CPU time per mode over the run, in cores (mean over its scrapes)."""
    try:
        m = pd.read_parquet(folder / "metrics.parquet")
    except FileNotFoundError:
        return dict.fromkeys(MODES, math.nan)
    cpu = m[(m["target"].astype(str) == HOST_TARGET) & (m["metric"].astype(str) == CPU_SECONDS)]
    if cpu.empty:
        return dict.fromkeys(MODES, math.nan)
    cpu = cpu.assign(mode=cpu["labels"].map(lambda s: json.loads(s)["mode"]))
    wide = cpu.pivot_table(index="t", columns="mode", values="value", aggfunc="last")
    span = wide.index.max() - wide.index.min()
    d = wide.iloc[-1] - wide.iloc[0]
    return {k: float(d.get(k, 0.0) / span) if span > 0 else math.nan for k in MODES}


def _served(folder: Path) -> float:
    ps = pd.read_parquet(folder / "per_second.parquet")
    half = ps[ps["second"] >= ps["second"].max() / 2]
    return float(half["rps"].mean()) if len(half) else math.nan


def sweep(root: Path, deployment: str) -> pd.DataFrame:
    """Per run of ``root/deployment``: level, offered, own ρ, its requests' parts, host."""
    rows = []
    for f in sorted((root / deployment).glob("rho*-*/summary.json")):
        s = json.loads(f.read_text())
        rows.append(
            {
                "rho": float(f.parent.name[3:].split("-")[0]),
                "run": f.parent,
                "offered": s["offered_rps"],
                "lag_p99_ms": s["lag_p99_s"] * 1e3,
                "served": _served(f.parent),
            }
        )
    runs = pd.DataFrame(rows)
    if runs.empty:
        return runs
    top = runs[runs["rho"] == runs["rho"].max()]
    cap = float(top["served"].mean())
    # as testbed_knee's report: only a level offered at least ρ 1 can show the capacity
    backlogged = bool(top["rho"].max() >= 1.0 and (top["served"] < 0.97 * top["offered"]).all())
    runs["own_rho"] = runs["offered"] / cap if backlogged else math.nan
    runs["capacity"] = cap if backlogged else math.nan
    return runs


def _lognormal_q(mean: float, cv: float, q: float) -> float:
    """The ``q`` quantile of the lognormal with this mean and cv."""
    s2 = math.log1p(cv * cv)
    mu = math.log(mean) - s2 / 2
    z = {0.5: 0.0, 0.95: 1.6448536269514722, 0.99: 2.3263478740408408}[q]
    return math.exp(mu + z * math.sqrt(s2))


def level_stats(p: pd.DataFrame) -> dict[str, float]:
    """Percentiles of the parts, the overhead's lognormal shape check and its coupling."""
    rng = np.random.default_rng(SEED)
    out: dict[str, float] = {"n": float(len(p))}
    for col in ("latency", "stage", "hops", "rest", "overhead"):
        for q in (50, 95, 99):
            out[f"{col}_p{q}"] = float(np.percentile(p[col], q))
    o = p["overhead"].to_numpy()
    mean, cv = float(o.mean()), float(o.std() / o.mean())
    out |= {"over_mean": mean, "over_cv": cv}
    for q in (0.95, 0.99):
        out[f"logn_p{round(q * 100)}"] = _lognormal_q(mean, cv, q)
    out["spearman"] = float(p["overhead"].rank().corr(p["stage"].rank()))
    shuffled = p["stage"].to_numpy() + rng.permutation(o)
    out["shuffled_p95"] = float(np.percentile(shuffled, 95))
    return out


def swap_p95(stage: np.ndarray, overhead: np.ndarray) -> float:
    """p95 of stage times plus overheads drawn from another sweep (with replacement), ms."""
    rng = np.random.default_rng(SEED)
    draws = [stage + rng.choice(overhead, size=stage.size) for _ in range(8)]
    return float(np.percentile(np.concatenate(draws), 95))


def _pool(runs: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([parts(r) for r in runs["run"]], ignore_index=True)


def report(compose: Path, local: Path, deployments: list[str], name: str) -> str:
    out = [
        "# Compose's tail against local's: per-request overhead and stage time, same own ρ",
        "",
        f"- {machine_line()}",
        f"- Compose sweep {compose}, local sweep {local}; command: `python "
        f"benchmarks/compose_overhead.py --compose {compose} --local {local} --deployment "
        f"{' --deployment '.join(deployments)}` (offline, no lock)",
        "- stage = Σ queue + service of a request's visits (the twin's queues); overhead = "
        "latency − stage = hops (the visits' HTTP round trips beyond queue and service) + "
        "rest (client ↔ gateway, gateway); all ms, pooled over a level's repeats",
        "- 'logn p95/p99': the lognormal with the overhead's mean and cv (the twin's shape); "
        "'shuffled p95': latency p95 with the overhead shuffled across the level's requests "
        "(the twin's independence); 'swap': Compose's stage + local's overhead (resampled), "
        "and local's stage + Compose's overhead, at the nearest own ρ "
        "(at the nearest offered rate when a sweep never backlogged: variant)",
        "",
    ]
    for dep in deployments:
        c, lo = sweep(compose, dep), sweep(local, dep)
        if c.empty:
            out += [f"## {dep}: no Compose runs", ""]
            continue
        out += [
            f"## {dep}",
            "",
            f"Compose capacity (backlogged, top level) {c['capacity'].iloc[0]:.1f}/s; local "
            + (f"{lo['capacity'].iloc[0]:.1f}/s" if not lo.empty else "not run"),
            "",
        ]
        rows, host_rows, swap_rows = [], [], []
        lo_levels = {}
        if not lo.empty:
            for rho, g in lo.groupby("rho"):
                lo_levels[rho] = (float(g["own_rho"].mean()), float(g["offered"].mean()), _pool(g))
        for rho, g in c.groupby("rho"):
            p = _pool(g)
            s = level_stats(p)
            own, offered = float(g["own_rho"].mean()), float(g["offered"].mean())
            label = f"{rho:.1f} ({own:.2f}, {offered:.0f}/s)"
            rows.append(["Compose", label, *_cells(s)])
            if lo_levels:
                # the same own ρ when both sweeps reached a backlog; else (a stage that is not
                # the bottleneck, as variant's) the same offered rate
                by_rho = not math.isnan(own) and not any(
                    math.isnan(v[0]) for v in lo_levels.values()
                )
                near = min(
                    lo_levels,
                    key=lambda r: (
                        abs(lo_levels[r][0] - own) if by_rho else abs(lo_levels[r][1] / offered - 1)
                    ),
                )
                lown, loff, lp = lo_levels[near]
                ls = level_stats(lp)
                lab = f"{near:.1f} ({lown:.2f}, {loff:.0f}/s)"
                rows.append(["local", lab, *_cells(ls)])
                cs_lo = swap_p95(p["stage"].to_numpy(), lp["overhead"].to_numpy())
                ls_co = swap_p95(lp["stage"].to_numpy(), p["overhead"].to_numpy())
                swap_rows.append(
                    [
                        label,
                        lab,
                        f"{s['latency_p95']:.1f}",
                        f"{ls['latency_p95']:.1f}",
                        f"{cs_lo:.1f}",
                        f"{ls_co:.1f}",
                        _share(s["latency_p95"], ls["latency_p95"], cs_lo, ls_co),
                    ]
                )
            for r in g.itertuples():
                h = host_modes(r.run)
                host_rows.append(
                    [r.run.name, f"{r.lag_p99_ms:.1f}", *(f"{h[k]:.2f}" for k in MODES)]
                )
        out += [
            markdown_table(
                [
                    "backend",
                    "ρ (own ρ, offered)",
                    "n",
                    "latency p50/p95/p99",
                    "stage p50/p95/p99",
                    "hops p50/p95/p99",
                    "rest p50/p95/p99",
                    "overhead p50/p95/p99",
                    "overhead mean, cv",
                    "logn p95/p99",
                    "Spearman(overhead, stage)",
                    "latency p95, overhead shuffled",
                ],
                rows,
            ),
            "",
        ]
        if swap_rows:
            out += [
                "Swap (latency p95, ms):",
                "",
                markdown_table(
                    [
                        "Compose ρ (own, offered)",
                        "local ρ (own, offered)",
                        "Compose",
                        "local",
                        "Compose stage + local overhead",
                        "local stage + Compose overhead",
                        "share of the gap from the overhead",
                    ],
                    swap_rows,
                ),
                "",
            ]
        out += [
            "Host per Compose run (cores; nice = other helpers' niced work):",
            "",
            markdown_table(["run", "lag p99 ms", *MODES], host_rows),
            "",
        ]
    text = "\n".join(out)
    write_result(name, text)
    return text


def _share(c: float, lo: float, c_stage_lo_over: float, lo_stage_c_over: float) -> str:
    """The p95 gap's part that goes with the overhead: the mean of the two swaps' moves."""
    gap = c - lo
    if abs(gap) < 0.5:
        return "no gap"
    by_over = ((c - c_stage_lo_over) + (lo_stage_c_over - lo)) / 2
    return f"{100 * by_over / gap:.0f} % of {gap:+.1f} ms"


def _cells(s: dict[str, float]) -> list[str]:
    def trio(col: str) -> str:
        return "/".join(f"{s[f'{col}_p{q}']:.1f}" for q in (50, 95, 99))

    return [
        f"{s['n']:.0f}",
        trio("latency"),
        trio("stage"),
        trio("hops"),
        trio("rest"),
        trio("overhead"),
        f"{s['over_mean']:.1f}, {s['over_cv']:.2f}",
        f"{s['logn_p95']:.1f}/{s['logn_p99']:.1f}",
        f"{s['spearman']:+.2f}",
        f"{s['shuffled_p95']:.1f}",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--compose", type=Path, required=True, help="Compose knee sweep folder")
    ap.add_argument("--local", type=Path, required=True, help="local knee sweep folder")
    ap.add_argument("--deployment", action="append", default=None, help="default: all three")
    ap.add_argument("--result", default="compose_overhead", help="name in benchmarks/results")
    a = ap.parse_args()
    report(a.compose, a.local, a.deployment or ["default", "variant", "batch"], a.result)


if __name__ == "__main__":
    main()
