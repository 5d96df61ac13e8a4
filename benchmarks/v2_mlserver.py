"""Twin vs a real V2 server we did not write (MLServer), after ``calibrate profile --target``.

MLServer (own venv, ``testbed.mlserver``) serves a scikit-learn forest on
127.0.0.1. ``mlops-twin calibrate profile --target`` sweeps batch × concurrency
(closed loop) and writes a calibrated one-stage scenario; then open-loop
Poisson load (``load run --protocol v2``'s code) at held-out rates the profile
never ran, and the twin's p50/p95 at the same rates. Acceptance: within
10 % / 15 %. Host steal during each run is recorded (``/proc/stat``).

Run under the shared lock: ``flock /work/bench.lock python benchmarks/v2_mlserver.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from benchmarks._report import machine_line, markdown_table, write_result

FRACTIONS = (0.3, 0.6)  # held-out rates as fractions of the profiled capacity
DURATION_S = 40.0


def steal_share() -> float:
    """Cumulative steal seconds of the host (all CPUs)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    from calibrate.target import predict
    from loadgen.run import LoadRun, execute
    from testbed import mlserver
    from testbed.services.node_agent import free_port
    from twin.load import load_deployment, load_scenario
    from twin.spec import SteadyWorkload

    work = Path(tempfile.mkdtemp(prefix="v2-mlserver-"))
    bin_dir = mlserver.ensure_venv()
    port = free_port("127.0.0.1")
    mlserver.write_repository(work / "repo", port, bin_dir)
    rows = []
    with mlserver.serve(work / "repo", port, bin_dir) as url:
        prof = work / "profile"
        cli = [sys.executable, "-c", "from mlops_twin.cli import main; main()"]
        res = subprocess.run(
            [
                *cli,
                "calibrate",
                "profile",
                "--target",
                url,
                "--model",
                mlserver.MODEL,
                "--version",
                mlserver.VERSION,
                "--input",
                "x:FP32:1x64",
                "--batches",
                "1,4",
                "--concurrency",
                "1,2,4",
                "--cell-s",
                "4",
                "--out",
                str(prof),
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if res.returncode != 0:
            raise SystemExit(res.stderr)
        meta = json.loads((prof / "manifest.json").read_text())
        cap = max(c["throughput_per_s"] for c in meta["capacity"] if c["batch"] == 1)
        sc = load_scenario(prof / "scenario.yaml")
        dep = load_deployment(prof / "deployment.yaml")
        for f in FRACTIONS:
            rate = round(f * cap, 1)
            w = SteadyWorkload(kind="steady", name=f"held-out-{int(f * 100)}", rate_per_s=rate)
            run = LoadRun(sc, w, url, DURATION_S, seed=7, protocol="v2", drain_s=5)
            s0, t0 = steal_share(), time.time()
            result = execute(run, work / f"raw-{f:g}")
            steal = (steal_share() - s0) / (time.time() - t0) / (os.cpu_count() or 1)
            ok = result.requests[result.requests["ok"]]
            lat = (ok["t_end"] - ok["t_arrive"]).to_numpy() * 1e3
            measured = {q: float(np.percentile(lat, q)) for q in (50, 95)}
            twin = predict(sc, dep, rate, horizon_s=600, replications=3)
            e50 = 100 * (twin["p50_ms"] / measured[50] - 1)
            e95 = 100 * (twin["p95_ms"] / measured[95] - 1)
            rows.append(
                [
                    f"{rate:g}",
                    f"{f:g}",
                    len(ok),
                    round(measured[50], 2),
                    round(twin["p50_ms"], 2),
                    f"{e50:+.1f}",
                    round(measured[95], 2),
                    round(twin["p95_ms"], 2),
                    f"{e95:+.1f}",
                    "yes" if abs(e50) <= 10 and abs(e95) <= 15 else "no",
                    f"{100 * steal:.1f}",
                ]
            )
    head = [
        "rate/s",
        "of capacity",
        "answered",
        "p50 ms",
        "twin p50",
        "err %",
        "p95 ms",
        "twin p95",
        "err %",
        "within 10/15 %",
        "steal %",
    ]
    fit = sc.component(sc.components[0].name).variants[0].service_time
    text = "\n".join(
        [
            "# Twin vs MLServer (V2) after `calibrate profile --target`",
            "",
            f"- {machine_line()}",
            f"- MLServer 1.7.1 (mlserver-sklearn, parallel_workers 0), model {mlserver.MODEL} "
            f"(random forest, 50 trees) on 127.0.0.1; profile grid batch 1,4 × clients 1,2,4, "
            f"4 s per cell; capacity at batch 1: {cap:.1f} requests/s",
            f"- fitted service time: {fit.kind}, mean {fit.batch_mean_ms(1):.2f} ms at batch 1; "
            f"request overhead mean {sc.processes[0].request_overhead.batch_mean_ms(1):.2f} ms",
            f"- held-out: open-loop Poisson, {DURATION_S:g} s per rate (rates not in the "
            "closed-loop profile); twin: 3 × 600 s",
            "",
            markdown_table(head, rows),
            "",
            "Reproduce: `flock /work/bench.lock .venv/bin/python benchmarks/v2_mlserver.py`",
        ]
    )
    write_result("v2_mlserver", text)


if __name__ == "__main__":
    main()
