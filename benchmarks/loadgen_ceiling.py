"""The load generator's own ceiling on this machine, and achieved/offered at given rates.

A trivial endpoint (a bare ASGI app under uvicorn with httptools, in its own
process, answering ``POST /v1/infer`` with a fixed body and timings header) is
driven by the same open-loop path a real run uses (Poisson schedule → releaser
→ FastHttpUser pool → request log):

* **ceiling**: offer far more than can be sent (open loop, capped pool) and count
  answers per second in the steady part of the run; with 1 and 2 load-generator
  processes.
* **achieved/offered**: steady Poisson rates; achieved = answered / scheduled,
  with the release lag (send − scheduled time) and latency percentiles.

The machine is shared (its load average is printed); ratios within one run are
what to compare. Usage::

    .venv/bin/python benchmarks/loadgen_ceiling.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from loadgen.run import LoadRun, execute
from twin.load import load_scenario
from twin.spec import SteadyWorkload

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_result

ROOT = Path(__file__).resolve().parents[1]

TRIVIAL_APP = r"""
import sys, uvicorn
BODY = b'{"id": "0", "label": 1, "stages": [], "gateway_ms": 0.0}'
HEADERS = [(b"content-type", b"application/json"),
           (b"x-mlops-timings", b"s:r:v:1:0.0:0.0:0.0")]
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
            http="httptools", loop="uvloop", access_log=False)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TrivialServer:
    def __enter__(self) -> TrivialServer:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-c", TRIVIAL_APP, str(self.port)])
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.post(self.url + "/v1/infer", json={}).raise_for_status()
                return self
            except httpx.HTTPError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("trivial server did not start") from None
                time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def measure(url: str, rate: float, duration: float, workers: int, max_users: int) -> dict:
    sc = load_scenario(ROOT / "examples" / "digits-pipeline.yaml")
    w = SteadyWorkload(kind="steady", name=f"steady-{rate:g}", rate_per_s=rate)
    run = LoadRun(
        sc,
        w,
        url,
        duration_s=duration,
        seed=1,
        workers=workers,
        drain_s=3,
        max_users=max_users,
        timeout_s=10,
    )
    with tempfile.TemporaryDirectory() as tmp:
        res = execute(run, Path(tmp))
    req, per = res.requests, res.per_second
    steady = per[(per["second"] >= 1) & (per["second"] < duration)]
    ok = req[req["ok"]]
    lat = (ok["t_end"] - ok["t_arrive"]).to_numpy()
    lag = req["lag_s"].dropna().to_numpy()
    return {
        "offered": len(req) / duration,
        "answered_per_s": float(steady["rps"].mean()),
        "achieved_over_offered": len(ok) / max(len(req), 1),
        "lag_p50_ms": 1e3 * float(np.percentile(lag, 50)) if lag.size else np.nan,
        "lag_p99_ms": 1e3 * float(np.percentile(lag, 99)) if lag.size else np.nan,
        "lat_p50_ms": 1e3 * float(np.percentile(lat, 50)) if lat.size else np.nan,
        "lat_p99_ms": 1e3 * float(np.percentile(lat, 99)) if lat.size else np.nan,
        "failures": int((~req["ok"]).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs, fewer rates")
    args = parser.parse_args()
    duration = 6.0 if args.quick else 12.0
    rates = [50, 150, 300, 600, 1000] if args.quick else [50, 150, 300, 600, 1000, 2000, 3000]
    load0 = os.getloadavg()[0]
    lines = [
        "# Load generator: ceiling and achieved/offered",
        "",
        f"Machine: {os.cpu_count()} cores, load average {load0:.1f} at start (shared with "
        f"other work). Trivial endpoint: bare ASGI app, uvicorn + httptools, own process. "
        f"Runs of {duration:g} s of Poisson arrivals; `python benchmarks/loadgen_ceiling.py"
        f"{' --quick' if args.quick else ''}`.",
        "",
        "## Ceiling (open loop, offered far above capacity)",
        "",
        "| load-generator processes | max users | offered /s | answered /s (steady part) |",
        "|---:|---:|---:|---:|",
    ]
    with TrivialServer() as server:
        for workers in (1, 2):
            for users in (64, 1000):
                r = measure(server.url, 5000.0, duration, workers, max_users=users)
                lines.append(
                    f"| {workers} | {users} | {r['offered']:.0f} | {r['answered_per_s']:.0f} |"
                )
            print(lines[-1], file=sys.stderr, flush=True)
        lines += [
            "",
            "## Achieved/offered at steady Poisson rates (1 process)",
            "",
            "| offered /s | achieved/offered | answered /s | release lag p50 / p99 (ms) "
            "| latency p50 / p99 (ms) | failures |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for rate in rates:
            r = measure(server.url, float(rate), duration, 1, max_users=1000)
            lines.append(
                f"| {r['offered']:.0f} | {r['achieved_over_offered']:.3f} | "
                f"{r['answered_per_s']:.0f} | {r['lag_p50_ms']:.2f} / {r['lag_p99_ms']:.1f} | "
                f"{r['lat_p50_ms']:.2f} / {r['lat_p99_ms']:.1f} | {r['failures']} |"
            )
            print(lines[-1], file=sys.stderr, flush=True)
    lines += ["", f"Load average at the end: {os.getloadavg()[0]:.1f}."]
    write_result("loadgen_ceiling", "\n".join(lines))


if __name__ == "__main__":
    main()
