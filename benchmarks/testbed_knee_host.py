"""How busy the host was during each run of a knee sweep: steal and others' cores per level.

On this shared host other sessions' unlocked work runs niced beside the locked sweeps; its
CPU shows in /proc/stat's ``nice`` mode, which the scraper records (``host`` target). Per
run: offered and achieved rate, release lag p99, the host's busy cores, the ``nice`` cores
(others' low-priority work), steal, and the host probe (a fixed piece of interpreter work:
larger is a slower host).

Usage (no lock: reads run folders)::

    python benchmarks/testbed_knee_host.py runs/knee-s8 --result testbed_knee_s8_host
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, markdown_table, write_result
from testbed_knee_slice import _mode_cores

from loadgen.host import host_series

ROOT = Path(__file__).resolve().parents[1]


def heaviest_item_cpu_ms(m: pd.DataFrame) -> float:
    """The model CPU per item (ms) of the costliest stage replica in a run: the host's speed
    as the bottleneck feels it (the same model costs more on a slower hour)."""

    def delta(metric: str) -> pd.Series:
        c = m[m["metric"] == metric].sort_values("t").groupby("target")["value"]
        return c.last() - c.first()

    items = delta("stage_items_total")
    cpu = delta("stage_compute_cpu_seconds_total").reindex(items.index)
    per_item = (1e3 * cpu / items)[items > 0]
    return float(per_item.max()) if len(per_item) else float("nan")


def run_row(folder: Path) -> list[str]:
    s = json.loads((folder / "summary.json").read_text())
    m = pd.read_parquet(folder / "metrics.parquet")
    m = m.assign(target=m["target"].astype(str), metric=m["metric"].astype(str))
    h = host_series(m)
    return [
        f"{s['offered_rps']:.1f}",
        f"{s['achieved_rps']:.1f}",
        f"{1e3 * s['lag_p99_s']:.1f}",
        f"{h['busy_cores'].mean():.2f}",
        f"{_mode_cores(m, 'nice'):.2f}",
        f"{h['steal_cores'].mean():.4f}",
        f"{h['probe_ms'].median():.3f}",
        f"{heaviest_item_cpu_ms(m):.2f}",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("sweep", type=Path)
    ap.add_argument("--result", required=True, help="name of the result file")
    a = ap.parse_args()
    parts = [
        f"# Host load per run of {a.sweep.name}",
        "",
        f"- {machine_line()}",
        f"- command: `python benchmarks/testbed_knee_host.py {os.path.relpath(a.sweep)} "
        f"--result {a.result}` (no lock)",
        "- nice cores: /proc/stat's nice mode over the run (other sessions' niced work on "
        "this shared host); probe: the scraper's fixed interpreter work, median ms; the "
        "heaviest stage's model CPU per item: its replicas' compute-CPU counter over items",
        "",
    ]
    for dep in sorted(p for p in a.sweep.iterdir() if p.is_dir() and not p.name.startswith(".")):
        runs = sorted(f.parent for f in dep.glob("*/summary.json"))
        if not runs:
            continue
        parts += [
            f"## {dep.name}",
            "",
            markdown_table(
                [
                    "run",
                    "offered/s",
                    "achieved/s",
                    "lag p99 ms",
                    "host busy cores",
                    "nice cores (others)",
                    "steal cores",
                    "probe ms",
                    "heaviest stage's model CPU ms/item",
                ],
                [[r.name, *run_row(r)] for r in runs],
            ),
            "",
        ]
    write_result(a.result, "\n".join(parts))


if __name__ == "__main__":
    main()
