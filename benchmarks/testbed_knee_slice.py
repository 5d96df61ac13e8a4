"""Why does the testbed's bottleneck stall after short idle gaps? A locked A/B of the CFS knobs.

The knee sweeps showed the testbed stalling 25–32 % of the encoder's items after
0.5–5-ms idle gaps at ρ 0.6, the twin 9–19 % (``testbed_knee_stalls.md``). Candidate
mechanism: the kernel hands a group's quota to each CPU in slices of
``sched_cfs_bandwidth_slice_us`` (5 ms here), which at 0.5 core over a 10-ms period is
the whole period's quota, so the stage server's event-loop thread and its infer thread
on the other CPU strand it. Arms, each on a freshly started testbed, default knee
deployment, levels ρ 0.6 and 0.8:

- ``slice5000``: the host as it is (slice 5000 µs, period 10 ms);
- ``slice1000``: slice 1000 µs (root: written to ``/proc/sys/kernel/…`` for the run and
  restored to what it was after, whatever happens);
- ``period100``: slice 5000 µs, period 100 ms (``MLOPS_TWIN_CPU_PERIOD_US=100000``:
  the same 0.5 core, a 50-ms quota per period).

Order ``--part 0``: slice5000, slice1000, period100; ``--part 1``: the reverse (so a
drift within the hour falls on every arm alike). Each arm's settings, as read back
from the kernel, are recorded in ``setting.json`` beside its runs.

Usage (each part under the lock, about 5 min; restore the slice in a trap too)::

    flock /work/bench.lock bash -c \
        'trap "echo 5000 > /proc/sys/kernel/sched_cfs_bandwidth_slice_us" EXIT;
        python benchmarks/testbed_knee_slice.py run --part 0'
    python benchmarks/testbed_knee_slice.py report        # no lock

Run folders ``runs/knee-slice/<arm>-<part>/default/``; the result
``benchmarks/results/testbed_knee_slice.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import testbed_knee as knee
import testbed_knee_stalls as stalls
from _report import machine_line, markdown_table, write_result

from calibrate.enforce import stall_share
from loadgen.host import host_series
from testbed.cgroups import PERIOD_ENV
from twin.sim import simulate_replication
from twin.spec import SteadyWorkload

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(os.environ.get("KNEE_SLICE_RUNS", ROOT / "runs" / "knee-slice"))
SLICE = Path("/proc/sys/kernel/sched_cfs_bandwidth_slice_us")
ARMS = {  # arm → (slice µs, period µs)
    "slice5000": (5000, 10_000),
    "slice1000": (1000, 10_000),
    "period100": (5000, 100_000),
}
PARTS = (("slice5000", "slice1000", "period100"), ("period100", "slice1000", "slice5000"))
LEVELS = (0.6, 0.8)


@contextmanager
def host_slice(us: int):
    """The host's CFS bandwidth slice set to ``us`` µs for the block, restored after."""
    before = int(SLICE.read_text())
    SLICE.write_text(str(us))
    try:
        yield int(SLICE.read_text())
    finally:
        SLICE.write_text(str(before))


def run(part: int, duration_s: float, arms: tuple[str, ...]) -> None:
    """One part's arms in order; an arm whose runs are all done is skipped (resumable)."""
    for arm in (a for a in PARTS[part] if a in arms):
        folder = OUT / f"{arm}-{part}"
        if all((folder / "default" / f"rho{r:.1f}-0" / "summary.json").exists() for r in LEVELS):
            continue
        slice_us, period_us = ARMS[arm]
        os.environ[PERIOD_ENV] = str(period_us)
        knee.OUT = folder
        print(f"{arm}-{part}: ρ {LEVELS}, {duration_s:g} s each", file=sys.stderr)
        with host_slice(slice_us) as read_back:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "setting.json").write_text(
                json.dumps({"slice_us": read_back, "period_us": period_us, "arm": arm})
            )
            knee.run("default", duration_s, 1, LEVELS)
    os.environ.pop(PERIOD_ENV, None)


def _mode_cores(m: pd.DataFrame, mode: str) -> float:
    """Mean cores the host spent in /proc/stat ``mode`` over the run (``nice``: others'
    low-priority work on this shared host)."""
    x = m[(m["target"] == "host") & (m["metric"] == "host_cpu_seconds_total")]
    x = x[x["labels"].map(lambda s: json.loads(s).get("mode") == mode)].sort_values("t")
    if len(x) < 2:
        return float("nan")
    return float(x["value"].iloc[-1] - x["value"].iloc[0]) / float(x["t"].iloc[-1] - x["t"].iloc[0])


def run_row(folder: Path) -> dict[str, float]:
    """One run's latency, stall and host figures."""
    s = json.loads((folder / "summary.json").read_text())
    m = pd.read_parquet(folder / "metrics.parquet")
    m = m.assign(target=m["target"].astype(str), metric=m["metric"].astype(str))
    h = host_series(m)
    base, share, table = stalls.testbed_stalls(folder) or (np.nan, np.nan, None)
    row = {
        "offered/s": s["offered_rps"],
        "p50 ms": 1e3 * s["p50_s"],
        "p95 ms": 1e3 * s["p95_s"],
        "p99 ms": 1e3 * s["p99_s"],
        "lag p99 ms": 1e3 * s["lag_p99_s"],
        "stalled %": 100 * share,
        "unstalled ms": base,
    }
    if table is not None:
        for b in table.index[:5]:
            row[f"stalled % gap {b}"] = 100 * float(table.loc[b, "stall"])
    return row | {
        "host busy cores": float(h["busy_cores"].mean()),
        "nice cores (others)": _mode_cores(m, "nice"),
        "steal cores": float(h["steal_cores"].mean()),
        "probe ms": float(h["probe_ms"].median()),
    }


def twin_periods(sweep: Path, seconds: float = 60.0, seeds: int = 4) -> list[str]:
    """Markdown: the twin's p50/p95/p99 and stall share at the A/B's rates under a 10-ms
    and a 100-ms period (the same cores), from the held-out twins of another sweep's
    levels ρ 0.6 and 0.8 (``testbed_knee.held_out_twin``, quota check fitted): does the
    twin predict what the longer period does to the testbed?"""
    knee.OUT = sweep
    runs = knee._levels("default")
    rows = []
    for rho in LEVELS:
        held = knee.held_out_twin("default", rho, runs)
        tb = {}
        for arm in ("slice5000", "period100"):
            rs = [run_row(f) for f in sorted(OUT.glob(f"{arm}-*/default/rho{rho:.1f}-0"))]
            if rs:
                tb[arm] = {k: np.mean([r[k] for r in rs]) for k in rs[0]}
        if len(tb) < 2:
            continue
        rate = tb["slice5000"]["offered/s"]
        out = {}
        for period_ms in (10.0, 100.0):
            settings = held["twin"].settings.model_copy(update={"cpu_period_ms": period_ms})
            sc = held["twin"].model_copy(update={"settings": settings})
            wl = SteadyWorkload(kind="steady", name="knee", rate_per_s=rate)
            lat, service = [], []
            for seed in range(seeds):
                res = simulate_replication(sc, held["deployment"], wl, seconds, seed)
                r = res.requests
                lat.append((r["t_end"] - r["t_arrive"]).dropna().to_numpy() * 1e3)
                v = res.visits
                e = v[v["component"].astype(str) == knee.BOTTLENECK]
                service.append((e["t_end"] - e["t_start"]).to_numpy() * 1e3)
            p = np.percentile(np.concatenate(lat), [50, 95, 99])
            out[period_ms] = (*p, 100 * stall_share(np.concatenate(service)))
        t10, t100 = tb["slice5000"], tb["period100"]
        rows.append(
            [
                f"{rho:g} ({rate:.0f}/s)",
                f"{t10['p50 ms']:.1f}/{t10['p95 ms']:.1f}/{t10['p99 ms']:.1f}, "
                f"{t10['stalled %']:.0f} %",
                "/".join(f"{x:.1f}" for x in out[10.0][:3]) + f", {out[10.0][3]:.0f} %",
                f"{t100['p50 ms']:.1f}/{t100['p95 ms']:.1f}/{t100['p99 ms']:.1f}, "
                f"{t100['stalled %']:.0f} %",
                "/".join(f"{x:.1f}" for x in out[100.0][:3]) + f", {out[100.0][3]:.0f} %",
                f"{t100['p95 ms'] / t10['p95 ms']:.2f}",
                f"{out[100.0][1] / out[10.0][1]:.2f}",
                f"{held['tick_ms']:g}",
            ]
        )
    if not rows:
        return []
    return [
        f"## The twin under both periods (held-out twins of {sweep.name}, {seeds} seeds × "
        f"{seconds:g} s at the A/B's rates)",
        "",
        markdown_table(
            [
                "ρ",
                "testbed 10 ms: p50/p95/p99 ms, stalled",
                "twin 10 ms",
                "testbed 100 ms",
                "twin 100 ms",
                "testbed p95 100/10 ms",
                "twin p95 100/10 ms",
                "twin quota check ms (fitted)",
            ],
            rows,
        ),
        "",
    ]


def report(note: str = "", twin_sweep: Path | None = None) -> None:
    parts = [
        "# The bottleneck's stalls under other CFS settings: host slice 5 vs 1 ms, "
        "period 10 vs 100 ms",
        "",
        *([f"- {note}"] if note else []),
        f"- {machine_line()}",
        "- command: `flock /work/bench.lock bash -c 'trap \"echo 5000 > "
        '/proc/sys/kernel/sched_cfs_bandwidth_slice_us" EXIT; python '
        "benchmarks/testbed_knee_slice.py run --part P'` for P in 0, 1, then `… report`; "
        "default knee deployment (encoder e-large batch 1, 0.5 core), each arm on a freshly "
        f"started testbed, runs in {os.path.relpath(OUT, ROOT)}; order part 0: "
        f"{', '.join(PARTS[0])}; part 1: {', '.join(PARTS[1])}",
        f"- stalled: service > the run's 25th percentile + {stalls.STALL_MS:g} ms; gap: the "
        "previous item's end → this item's arrival at the server (its own clock)",
        "",
    ]
    for rho in LEVELS:
        rows, per_arm = [], {}
        for part, order in enumerate(PARTS):
            for arm in order:
                f = OUT / f"{arm}-{part}" / "default" / f"rho{rho:.1f}-0"
                if not (f / "summary.json").exists():
                    continue
                setting = json.loads((OUT / f"{arm}-{part}" / "setting.json").read_text())
                r = run_row(f)
                per_arm.setdefault(arm, []).append(r)
                rows.append(
                    [
                        f"{arm}-{part}",
                        f"{setting['slice_us']}/{setting['period_us']}",
                        *(f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}" for v in r.values()),
                    ]
                )
        if not rows:
            continue
        cols = list(next(iter(per_arm.values()))[0])
        means = [
            [arm, len(rs), *(f"{np.mean([r[c] for r in rs]):.3g}" for c in cols)]
            for arm, rs in per_arm.items()
        ]
        parts += [
            f"## ρ {rho:g}",
            "",
            markdown_table(["run", "slice/period µs", *cols], rows),
            "",
            "Arm means:",
            "",
            markdown_table(["arm", "runs", *cols], means),
            "",
        ]
    if twin_sweep is not None:
        parts += twin_periods(twin_sweep)
    write_result("testbed_knee_slice", "\n".join(parts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="one part's arms (under the lock, as root)")
    r.add_argument("--part", type=int, choices=(0, 1), required=True)
    r.add_argument("--duration", type=float, default=25.0, help="s per level")
    r.add_argument("--arms", default=",".join(ARMS), help="a subset of the arms, comma-separated")
    rp = sub.add_parser("report", help="the result from the run folders")
    rp.add_argument("--note", default="", help="a line on when and on how busy a host it ran")
    rp.add_argument(
        "--twin",
        type=Path,
        default=None,
        help="a default knee sweep whose held-out twins of ρ 0.6/0.8 are run at both periods",
    )
    a = ap.parse_args()
    if a.cmd == "run":
        arms = tuple(x.strip() for x in a.arms.split(","))
        bad = [x for x in arms if x not in ARMS]
        if bad:
            ap.error(f"--arms: unknown {bad}; expected some of {list(ARMS)}")
        run(a.part, a.duration, arms)
    else:
        report(a.note, a.twin.resolve() if a.twin else None)


if __name__ == "__main__":
    main()
