"""Re-score a finished ``v2_mlserver.py`` run folder offline with the current fit.

``v2_mlserver.py`` keeps its work folder (``/tmp/v2-mlserver-*``: the profile's
``samples.parquet`` and ``manifest.json``, and each held-out rate's raw requests in
``raw-<fraction>/``). This refits the profile with the current
``calibrate.target.fit_target`` and asks the twin for the held-out rates again, so a
change of the fit can be scored on old measurements without a server or the lock
(the twin's runs are not timings). ``--cell-from 0.3`` lets the first 15 s of a
held-out run stand in for the open-loop cell (for runs made before the profile had
one). Prints one line per held-out rate; no results file.

    python benchmarks/v2_rescore.py /tmp/v2-mlserver-ptw_q_79 --cell-from 0.6
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

DURATION_S, SEED, CELL_S = 40.0, 7, 15.0  # as v2_mlserver.py ran them


def held_out(folder: Path, fraction: str, rate: float) -> tuple[np.ndarray, np.ndarray]:
    """(scheduled arrival s, latency ms from it) of a held-out run's answered requests."""
    from loadgen.schedule import arrival_schedule
    from twin.spec import SteadyWorkload

    raw = pd.concat(
        pd.read_parquet(p) for p in sorted((folder / f"raw-{fraction}").glob("*.parquet"))
    )
    raw = raw[raw["status"] == 200].sort_values("attempt").drop_duplicates("pid", keep="last")
    name = f"held-out-{int(float(fraction) * 100)}"
    w = SteadyWorkload(kind="steady", name=name, rate_per_s=rate)
    t = arrival_schedule(w, "infer", DURATION_S, SEED)[raw["pid"].to_numpy()]
    return t, (raw["t_recv"].to_numpy() - t) * 1e3


def rescore(folder: Path, cell_from: str | None = None) -> list[str]:
    """One line on the fit and one per held-out rate: measured vs twin p50/p95 (ms)."""
    from calibrate.target import OPEN, TargetGrid, fit_target, predict
    from twin.spec import Serving

    meta = json.loads((folder / "profile" / "manifest.json").read_text())
    samples = pd.read_parquet(folder / "profile" / "samples.parquet")
    grid = {**meta["grid"], "batches": tuple(meta["grid"]["batches"])}
    grid["concurrency"] = tuple(grid["concurrency"])
    cap = max(c["throughput_per_s"] for c in meta["capacity"] if c["batch"] == 1)
    rates = {f: round(float(f) * cap, 1) for f in ("0.3", "0.6")}
    measured = {f: held_out(folder, f, r) for f, r in rates.items()}
    if cell_from:
        t, lat = measured[cell_from]
        keep = t < CELL_S
        cell = pd.DataFrame(
            {"batch": 1, "concurrency": OPEN, "client": 0, "t_send_s": t[keep]}
            | {"latency_ms": lat[keep], "status": 200}
        )
        samples = pd.concat([samples[samples["concurrency"] != OPEN], cell], ignore_index=True)
        grid["open_s"] = CELL_S
    serving = Serving.model_validate(meta["serving"])
    _doc, sc, dep, _cap, info = fit_target(samples, serving, TargetGrid(**grid))
    service = sc.components[0].variants[0].service_time.batch_mean_ms(1)
    over = sc.processes[0].request_overhead
    lines = [
        f"{folder.name} (open-loop cell: {cell_from or 'its own'}): service mean "
        f"{service:.2f} ms, overhead {over.batch_mean_ms(1) if over else 0:.2f} ms, "
        f"kept {info.get('kept', 'closed_loop')}"
        + (f", gap mean {info['gap_mean_ms']:.2f} ms" if info else "")
        + (f"; warning: {info['warning']}" if info.get("warning") else "")
    ]
    for f, rate in rates.items():
        lat = measured[f][1]
        twin = predict(sc, dep, rate, horizon_s=600, replications=3)
        m50, m95 = np.percentile(lat, 50), np.percentile(lat, 95)
        e50, e95 = 100 * (twin["p50_ms"] / m50 - 1), 100 * (twin["p95_ms"] / m95 - 1)
        ok = "yes" if abs(e50) <= 10 and abs(e95) <= 15 else "no"
        lines.append(
            f"  {f} of capacity ({rate:g}/s): measured p50/p95 {m50:.2f}/{m95:.2f} ms, twin "
            f"{twin['p50_ms']:.2f}/{twin['p95_ms']:.2f} ms, err {e50:+.1f}/{e95:+.1f} % "
            f"(within 10/15 %: {ok})"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="a v2_mlserver.py work folder (/tmp/v2-*)")
    ap.add_argument("--cell-from", choices=("0.3", "0.6"), help="held-out run as the cell")
    a = ap.parse_args()
    print("\n".join(rescore(a.folder, a.cell_from)))


if __name__ == "__main__":
    main()
