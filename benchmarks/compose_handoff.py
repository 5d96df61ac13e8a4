"""The stage server's hand-off in the held-out twin: which lever gives the knee's pace.

For each level asked for, the level's held-out twin (as ``testbed_knee.py report``
builds it, with ``KNEE_BACKLOG=off``) is simulated (8 seeds × the runs' duration) as:

- ``base``: the quota twin as it was;
- ``backlog``: the bottleneck's quota × the cached ``backlog.json`` factor
  (:mod:`calibrate.backlog`, the merged model);
- ``hand-off``: :attr:`twin.spec.ServerOverhead.handoff` fitted by
  :mod:`calibrate.handoff` (holds the instance, takes no CPU);
- ``hand-off + backlog``: both;
- ``cpu X``: an X-ms hand-off drawn on the node's quota
  (:attr:`~twin.spec.ServerOverhead.handoff_cpu`), for each X in ``--cpu-ms``.

Per twin: p50/p95/p99 latency and error % against the level's testbed mean, the
encoder's pace in long busy periods (:func:`calibrate.backlog.backlogged_interval`;
the testbed's is in ``backlog.json``), its mean hand-off gap and its service p50 (two
seeds). Usage (offline; niced)::

    KNEE_RUNS=runs/knee-compose-s9quiet python benchmarks/compose_handoff.py \\
        --rhos 0.6,0.8,0.9 --cpu-ms 0.1,0.15,0.2 --result compose_handoff9
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ["KNEE_BACKLOG"] = "off"
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import testbed_knee as tk
from _report import machine_line, markdown_table, write_result

from calibrate.backlog import backlogged_interval, stage_machine, with_quota_scale
from calibrate.handoff import (
    fit_handoff,
    handoff_gaps,
    run_handoff_gaps,
    with_cpu_handoff,
    with_handoff,
)
from twin.sim import simulate_replication
from twin.spec import SteadyWorkload


def level_rows(name: str, rho: float, cpu_ms: list[float]) -> list[list[object]]:
    """One row per twin variant of level ``rho`` of deployment ``name``."""
    runs = tk._levels(name)
    held = tk.held_out_twin(name, rho, runs)
    dep, rate, sc = held["deployment"], held["rate"], held["twin"]
    stage = tk.BOTTLENECK
    other = runs[(runs["rho"] != rho) & (runs["rho"] < 1.0) & runs["usable"]]
    d = tk.OUT / name
    fit = fit_handoff(
        [(float(r.offered), run_handoff_gaps(d / r.run, stage)) for r in other.itertuples()], rate
    )
    cache = d / f"twin-rho{rho:.1f}" / "backlog.json"
    backlog = json.loads(cache.read_text()) if cache.exists() else {"factor": 1.0, "fit": None}
    factor = float(backlog["factor"])
    tb_pace = backlog["fit"]["testbed_ms"] if backlog.get("fit") else float("nan")
    m = stage_machine(dep, stage)
    variants = {"base": sc, "backlog": with_quota_scale(sc, m, factor)}
    if fit is not None:
        variants["hand-off"] = with_handoff(sc, stage, fit)
        variants["hand-off + backlog"] = with_quota_scale(variants["hand-off"], m, factor)
        for x in cpu_ms:
            variants[f"cpu {x:g} ms"] = with_cpu_handoff(sc, stage, x)
    tb = runs[runs["rho"] == rho][["p50", "p95", "p99"]].mean().to_numpy()
    wl = SteadyWorkload(kind="steady", name="knee", rate_per_s=rate)
    horizon = float(runs[runs["rho"] == rho]["duration"].mean())
    rows = []
    for key, v in variants.items():
        lat, pace, gap, svc = [], [], [], []
        for seed in range(8):
            r = simulate_replication(v, dep, wl, horizon, seed)
            lat.append((r.requests["t_end"] - r.requests["t_arrive"]).dropna().to_numpy() * 1e3)
            if seed < 2:
                pace.append(backlogged_interval(r.visits, stage)[0])
                g = handoff_gaps(r.visits.dropna(subset=["t_end"]), stage)
                gap.append(float(g.mean()) if len(g) else float("nan"))
                e = r.visits[r.visits["component"].astype(str) == stage]
                svc.append(float(np.nanmedian((e["t_end"] - e["t_start"]) * 1e3)))
        p = np.percentile(np.concatenate(lat), [50, 95, 99])
        err = 100 * (p / tb - 1)
        rows.append(
            [
                f"{rho:g}",
                key,
                "/".join(f"{x:.1f}" for x in p),
                "/".join(f"{x:+.1f}" for x in err),
                f"{np.nanmean(pace):.2f} (tb {tb_pace:.2f})",
                f"{np.nanmean(gap):.2f}",
                f"{np.mean(svc):.2f}",
            ]
        )
    note = (
        f"ρ {rho:g}: {rate:.1f}/s, testbed p50/p95/p99 {'/'.join(f'{x:.1f}' for x in tb)} ms; "
        + (
            "no hand-off fit"
            if fit is None
            else f"hand-off fit {fit.mean_ms:.2f} ms (cv {fit.cv:.1f}, {fit.gaps} gaps)"
        )
        + f"; backlog ×{factor:.3f}"
    )
    rows.append([note, "", "", "", "", "", ""])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--deployment", default="default")
    ap.add_argument("--rhos", default="0.6,0.8,0.9")
    ap.add_argument("--cpu-ms", default="0.1,0.15,0.2")
    ap.add_argument("--result", default="compose_handoff")
    a = ap.parse_args()
    cpu = [float(x) for x in a.cpu_ms.split(",") if x]
    rows = [
        row
        for rho in (float(x) for x in a.rhos.split(","))
        for row in level_rows(a.deployment, rho, cpu)
    ]
    text = "\n".join(
        [
            f"# Hand-off between jobs in the held-out twin ({a.deployment}, {tk.OUT})",
            "",
            f"- {machine_line()}",
            f"- command: `KNEE_RUNS={os.path.relpath(tk.OUT, tk.ROOT)} python "
            f"benchmarks/compose_handoff.py --deployment {a.deployment} --rhos {a.rhos} "
            f"--cpu-ms {a.cpu_ms} --result {a.result}`",
            "",
            markdown_table(
                [
                    "ρ",
                    "twin",
                    "p50/p95/p99 ms",
                    "err p50/p95/p99 %",
                    "encoder pace ms/item (testbed)",
                    "hand-off gap ms",
                    "encoder service p50 ms",
                ],
                rows,
            ),
        ]
    )
    write_result(a.result, text)


if __name__ == "__main__":
    main()
