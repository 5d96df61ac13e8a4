"""Triton's perf_analyzer and our load generator against the same MLServer, same rates.

perf_analyzer comes from PyPI (``perf-analyzer`` 2.60.0, a wheel holding the C++
binary). Its wheel is tagged manylinux_2_38 (glibc 2.38, GCC 13's libstdc++);
this host is Debian 12 (glibc 2.36), so the binary runs in a Debian 13 (trixie)
container built offline by ``compose/build-base-image.sh`` (``SUITE=trixie``),
on the host's network. MLServer needs two small things perf_analyzer expects of
a Triton server: ``GET /v2/models/{m}/config`` (Triton's model-configuration
extension) and outputs without ``parameters`` (the Triton client reads those as
binary-data descriptors); ``testbed.mlserver``'s runtime supplies both, and
perf_analyzer is told to send and read JSON tensors.

First ``calibrate profile --target`` (closed loop + the paced cell) fits the twin;
then per rate: perf_analyzer in request-rate mode (Poisson arrivals, asynchronous
requests, its time windows until stable), then ``load run --protocol v2``'s
Locust worker at the same rate. Both report client-side latency (send → answer);
throughput is answers per second; the twin's p50/p95 at the same rate (held out:
the profile ran closed loop) are the third view of the same server.

Run under the shared lock: ``flock /work/bench.lock python
benchmarks/perf_analyzer_mlserver.py [--nice -5] [--rt 10]`` (≈ 3.5 min; the first run downloads
the wheel and builds the trixie image, ≈ 1.5 min more).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from benchmarks._report import machine_line, markdown_table, write_result
from twin.spec import Serving, TensorInput

ROOT = Path(__file__).resolve().parents[1]
TOOL_DIR = ROOT / ".perf-analyzer"  # gitignored: the binary taken from the wheel
PIN = "perf-analyzer==2.60.0"
IMAGE = "mlops-twin-base:trixie"
RATES = (80.0, 160.0)
DURATION_S = 20.0  # ours, per rate
WINDOW_MS = 6000  # perf_analyzer's measurement window (≥ 3 until stable)
NICE = 0  # --nice N: this benchmark, MLServer, Locust and perf_analyzer at that priority
RT = 0  # --rt N: this script, MLServer and Locust SCHED_RR at priority N (co-tenants' CPU)


# the tensors both clients send (uniform draws in [0, 1), as the profile's)
SERVING = Serving(
    model="digits-forest",
    version="v1",
    inputs=[TensorInput(name="x", datatype="FP32", shape=[1, 64])],
)


def ensure_binary() -> Path:
    """perf_analyzer's binary, from the PyPI wheel (downloaded once)."""
    exe = TOOL_DIR / "perf_analyzer"
    if exe.is_file():
        return exe
    TOOL_DIR.mkdir(exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    pip += ["--platform", "manylinux_2_38_x86_64", "-d", str(TOOL_DIR), PIN]
    # the host's pip configuration points at local wheel folders for the host's platform
    subprocess.run(pip, check=True, env={**os.environ, "PIP_CONFIG_FILE": os.devnull})
    wheel = next(TOOL_DIR.glob("perf_analyzer-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        exe.write_bytes(z.read("perf_analyzer/bin/perf_analyzer"))
    exe.chmod(0o755)
    return exe


def ensure_image() -> None:
    """The Debian 13 base image (debootstrap + docker import, offline afterwards)."""
    env = {**os.environ, "SUITE": "trixie", "BASE_IMAGE": IMAGE}
    script = ROOT / "compose" / "build-base-image.sh"
    subprocess.run([str(script), "base"], check=True, env=env, timeout=900)


def perf_analyzer(exe: Path, port: int, model: str, rate: float, out: Path) -> dict:
    """One request-rate run; the CSV row (µs) as floats."""
    out.mkdir(parents=True, exist_ok=True)
    out.chmod(0o777)
    argv = ["/pa/perf_analyzer", "-m", model]
    argv += ["-u", f"127.0.0.1:{port}", "-i", "http", "--shape", "x:1,64"]
    # the same tensors as ours (its default random bits make floats like 1e31 whose JSON
    # is longer, and cost the server more); up to 16 requests in flight, as ours can
    argv += ["--input-data", "/out/input.json", "--max-threads", "16"]
    argv += ["--input-tensor-format=json", "--output-tensor-format=json"]
    argv += ["--request-rate-range", f"{rate:g}", "--request-distribution", "poisson"]
    # Poisson arrivals make the window averages wander more than the default 10 %
    # stability band: at 80/s perf_analyzer gave up after 4 windows ("Failed to obtain
    # stable measurement"); 50 % keeps the check against drift, not against Poisson noise
    argv += ["--measurement-interval", str(WINDOW_MS), "--max-trials", "6"]
    argv += ["--stability-percentage", "50", "-f", "/out/pa.csv"]
    # every request's timestamps (the CSV holds only the last stable windows), and the
    # client's own CPU time (bash's ``times``: children's user and system seconds)
    argv += ["--profile-export-file", "/out/profile.json"]
    (out / "input.json").write_text(json.dumps(input_data()))
    # (not SCHED_RR: Docker's cpu cgroup has no real-time budget, cpu.rt_runtime_us 0)
    inner = f"nice -n {NICE} " * bool(NICE) + " ".join(argv)
    inner += '; rc=$?; times > /out/times.txt; exit "$rc"'
    docker = ["docker", "run", "--rm", "--network", "host", "-v", f"{exe.parent}:/pa:ro"]
    docker += ["--cap-add", "SYS_NICE"] if NICE < 0 else []
    docker += ["-v", f"{out}:/out", IMAGE, "bash", "-c", inner]
    done = subprocess.run(docker, capture_output=True, text=True, timeout=300)
    (out / "stdout.txt").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"perf_analyzer failed ({done.returncode}): {done.stdout[-1500:]}")
    with (out / "pa.csv").open() as f:
        row = next(csv.DictReader(f))
    result = {k: float(v) for k, v in row.items() if v not in ("", None)}
    result.update(whole_run(out / "profile.json"))
    result["cpu_s"] = children_cpu_s(out / "times.txt")
    return result


def input_data(n: int = 64) -> dict:
    """perf_analyzer's ``--input-data`` JSON: the rows our load generator sends."""
    from loadgen.tensors import body_pool

    bodies, _ = body_pool(SERVING, seed=3, size=n)
    rows = [json.loads(b)["inputs"][0] for b in bodies]
    return {"data": [{"x": {"content": r["data"], "shape": r["shape"]}} for r in rows]}


def cpu_pressure_s() -> float:
    """Seconds so far in which some runnable task waited for a CPU (PSI ``some``)."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return float("nan")
    return int(line.rsplit("total=", 1)[1]) / 1e6


def whole_run(path: Path) -> dict:
    """p50/p95/p99 (ms) and throughput over every request in perf_analyzer's profile export."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    lat, first, last = [], float("inf"), 0.0
    for exp in doc.get("experiments", []):
        for r in exp.get("requests", []):
            answers = r.get("response_timestamps") or []
            if answers:
                lat.append((answers[-1] - r["timestamp"]) / 1e6)
                first, last = min(first, r["timestamp"]), max(last, answers[-1])
    if not lat:
        return {}
    q = np.percentile(lat, [50, 95, 99])
    span = (last - first) / 1e9
    return {
        "all_p50_ms": q[0],
        "all_p95_ms": q[1],
        "all_p99_ms": q[2],
        "all_n": len(lat),
        "all_per_s": len(lat) / span if span > 0 else float("nan"),
    }


def by_in_flight(send_s: np.ndarray, done_s: np.ndarray, most: int = 3) -> list[str]:
    """p50 latency (ms) of the requests sent while 0, 1, … ``most`` others were in flight."""
    o = np.argsort(send_s)
    send_s, done_s = send_s[o], done_s[o]
    lat = (done_s - send_s) * 1e3
    ahead = np.array([np.sum(done_s[max(0, i - 64) : i] > send_s[i]) for i in range(len(send_s))])
    out = []
    for k in range(most + 1):
        hit = lat[ahead == k]
        out.append(f"{np.percentile(hit, 50):.2f} ({hit.size})" if hit.size else "–")
    return out


def pa_times(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Send and answer times (s) of every request in perf_analyzer's profile export."""
    reqs = json.loads(path.read_text())["experiments"][0]["requests"]
    reqs = [r for r in reqs if r.get("response_timestamps")]
    send = np.array([int(r["timestamp"]) for r in reqs], dtype=float) / 1e9
    done = np.array([int(r["response_timestamps"][-1]) for r in reqs], dtype=float) / 1e9
    return send, done


def children_cpu_s(path: Path) -> float:
    """Children's user + system seconds from bash's ``times`` output (second line)."""
    try:
        line = path.read_text().splitlines()[1]
    except (OSError, IndexError):
        return float("nan")
    total = 0.0
    for part in line.split():  # e.g. 0m1.234s
        m, s_ = part.rstrip("s").split("m")
        total += 60 * float(m) + float(s_)
    return total


def server_cpu_s(marker: str) -> float:
    """CPU seconds so far of the processes whose command line holds ``marker`` (MLServer)."""
    import psutil

    total = 0.0
    for p in psutil.process_iter(["cmdline", "cpu_times"]):
        if marker in " ".join(p.info["cmdline"] or []) and p.info["cpu_times"] is not None:
            total += p.info["cpu_times"].user + p.info["cpu_times"].system
    return total


def ours(url: str, rate: float, work: Path) -> dict:
    """Our Locust worker at ``rate`` (open loop, Poisson) for DURATION_S; ms and req/s."""
    from loadgen.run import LoadRun, execute
    from twin.spec import Scenario, SteadyWorkload

    sc = Scenario.model_validate(
        {
            "name": "mlserver",
            "servers": [{"name": "s", "cpu_cores": 1, "ram_gb": 1}],
            "components": [
                {
                    "name": "forest",
                    "variants": [
                        {
                            "name": "v1",
                            "accuracy": 1,
                            "cpu_cores": 1,
                            "service_time": {"kind": "constant", "ms": 1},
                        }
                    ],
                }
            ],
            "processes": [
                {
                    "name": "infer",
                    "kind": "request",
                    "serving": SERVING.model_dump(mode="json"),
                    "steps": [{"name": "infer", "component": "forest"}],
                }
            ],
            "workloads": [{"kind": "steady", "name": "w", "rate_per_s": rate}],
        }
    )
    w = SteadyWorkload(kind="steady", name=f"rate-{int(rate)}", rate_per_s=rate)
    t0, c0 = time.time(), os.times()
    result = execute(LoadRun(sc, w, url, DURATION_S, seed=3, protocol="v2", drain_s=5), work)
    c1 = os.times()  # the Locust worker is a child process, waited for by now
    req = result.requests
    ok = req[req["ok"]]
    lat = (ok["t_end"] - ok["t_arrive"]).to_numpy() * 1e3
    sent = (ok["t_end"] - ok["t_send"]).to_numpy() * 1e3  # from the actual send, as PA
    span = float(ok["t_end"].max() - ok["t_arrive"].min()) if len(ok) else time.time() - t0
    return {
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "p99_ms": float(np.percentile(lat, 99)),
        "send_p50_ms": float(np.percentile(sent, 50)),
        "send_p95_ms": float(np.percentile(sent, 95)),
        "lag_p95_ms": float(np.percentile(ok["lag_s"].to_numpy() * 1e3, 95)),
        "throughput": len(ok) / span,
        "sent": len(req),
        "in_flight": by_in_flight(ok["t_send"].to_numpy(float), ok["t_end"].to_numpy(float)),
        "cpu_s": (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system),
    }


def profile(url: str, out: Path) -> tuple:
    """``calibrate profile --target`` on MLServer (as v2_mlserver.py); its scenario, deployment."""
    from testbed import mlserver
    from twin.load import load_deployment, load_scenario

    cli = [sys.executable, "-c", "from mlops_twin.cli import main; main()"]
    argv = [*cli, "calibrate", "profile", "--target", url, "--model", mlserver.MODEL]
    argv += ["--version", mlserver.VERSION, "--input", "x:FP32:1x64", "--batches", "1"]
    argv += ["--concurrency", "1,2,4", "--cell-s", "4", "--out", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    return load_scenario(out / "scenario.yaml"), load_deployment(out / "deployment.yaml")


def main() -> None:
    global NICE
    global RT
    args = sys.argv[1:]
    while args[:1] in (["--nice"], ["--rt"]):  # ours before co-tenants outside the lock
        if args[0] == "--nice":
            NICE = int(args[1])
            os.nice(NICE)
        else:  # children (MLServer, the Locust worker) inherit the policy
            RT = int(args[1])
            os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(RT))
        args = args[2:]
    pressure0, wall0 = cpu_pressure_s(), time.time()
    from calibrate.target import predict
    from testbed import mlserver
    from testbed.services.node_agent import free_port

    exe = ensure_binary()
    ensure_image()
    work = Path(tempfile.mkdtemp(prefix="pa-mlserver-"))
    bin_dir = mlserver.ensure_venv()
    port = free_port("127.0.0.1")
    mlserver.write_repository(work / "repo", port, bin_dir)
    rows, twin_rows, extra, flight_rows = [], [], [], []
    with mlserver.serve(work / "repo", port, bin_dir) as url:
        sc, dep = profile(url, work / "profile")
        for rate in RATES:
            marker = str(work / "repo")
            m0 = server_cpu_s(marker)
            pa = perf_analyzer(exe, port, mlserver.MODEL, rate, work / f"pa-{int(rate)}")
            m1 = server_cpu_s(marker)
            us = ours(url, rate, work / f"ours-{int(rate)}")
            m2 = server_cpu_s(marker)
            n_pa = pa.get("all_n", float("nan"))
            tw = predict(sc, dep, rate, horizon_s=600, replications=3)
            e50, e95 = (
                100 * (tw["p50_ms"] / us["p50_ms"] - 1),
                100 * (tw["p95_ms"] / us["p95_ms"] - 1),
            )
            twin_rows.append(
                [
                    f"{rate:g}",
                    f"{us['p50_ms']:.2f}",
                    f"{tw['p50_ms']:.2f}",
                    f"{e50:+.1f}",
                    f"{us['p95_ms']:.2f}",
                    f"{tw['p95_ms']:.2f}",
                    f"{e95:+.1f}",
                    "yes" if abs(e50) <= 10 and abs(e95) <= 15 else "no",
                ]
            )
            for who, q in (("PA, stable windows", None), ("PA, every request", "all")):
                if q is None:
                    v = [pa["Inferences/Second"]] + [
                        pa[f"p{k} latency"] / 1e3 for k in (50, 95, 99)
                    ]
                else:
                    v = [pa.get(f"all_{k}", float("nan")) for k in ("per_s", "p50_ms")]
                    v += [pa.get(f"all_{k}", float("nan")) for k in ("p95_ms", "p99_ms")]
                rows.append(
                    [
                        f"{rate:g}",
                        who,
                        *(f"{x:.2f}" for x in v),
                        "",
                        "",
                        f"{1e3 * pa['cpu_s'] / n_pa:.3f}",
                        f"{1e3 * (m1 - m0) / n_pa:.2f}",
                    ]
                )
            n_us = us["sent"]
            rows.append(
                [
                    f"{rate:g}",
                    "ours (Locust)",
                    f"{us['throughput']:.2f}",
                    f"{us['p50_ms']:.2f}",
                    f"{us['p95_ms']:.2f}",
                    f"{us['p99_ms']:.2f}",
                    f"{us['send_p50_ms']:.2f} / {us['send_p95_ms']:.2f}",
                    f"{us['lag_p95_ms']:.2f}",
                    f"{1e3 * us['cpu_s'] / n_us:.3f}",
                    f"{1e3 * (m2 - m1) / n_us:.2f}",
                ]
            )
            try:
                pa_flight = by_in_flight(*pa_times(work / f"pa-{int(rate)}" / "profile.json"))
            except (OSError, ValueError, KeyError, IndexError):
                pa_flight = ["–"] * 4
            flight_rows += [
                [f"{rate:g}", "PA", *pa_flight],
                [f"{rate:g}", "ours (from send)", *us["in_flight"]],
            ]
            extra.append(
                f"{rate:g}/s: PA {pa.get('Client Send', 0) / 1e3:.3f} ms client send, "
                f"{pa.get('Client Recv', 0) / 1e3:.3f} ms client recv (its CSV)"
            )
    pressure = (cpu_pressure_s() - pressure0) / (time.time() - wall0)
    head = [
        "rate/s",
        "client",
        "answers/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "ours from send p50/p95",
        "ours send lag p95 ms",
        "client CPU ms/request",
        "MLServer CPU ms/request",
    ]
    text = "\n".join(
        [
            "# perf_analyzer vs our load generator, same MLServer, same request rates",
            "",
            f"- {machine_line()}",
            f"- MLServer 1.7.1 (sklearn forest, 50 trees, parallel_workers 0) on 127.0.0.1; "
            f"perf_analyzer 2.60.0 (PyPI wheel, in a Debian 13 container, host network), "
            "request-rate mode, Poisson, JSON tensors (the same 64 rows as ours), ≤ 16 threads, "
            f"{WINDOW_MS / 1e3:g} s windows until stable (50 % band, ≤ 6); "
            f"ours: Locust FastHttpUser (`load run --protocol v2`), Poisson, {DURATION_S:g} s",
            "",
            markdown_table(head, rows),
            "",
            *(f"- {line}" for line in extra),
            "",
            "p50 latency (ms, from the send; requests in brackets) by how many of the same "
            "client's requests were still in flight when it was sent: with none, the server "
            "was idle, and the difference between the clients is their own per-request cost",
            "",
            markdown_table(["rate/s", "client", "0", "1", "2", "3"], flight_rows),
            "",
            f"Raw files (perf_analyzer CSV, profile export, our request log): {work}",
            "",
            "The twin after `calibrate profile --target` (batch 1 × clients 1,2,4, 4 s each, and "
            "4 s of a paced client: the overhead of a request that finds the server idle), "
            "against our load generator at the same rates (3 × 600 s simulated):",
            "",
            markdown_table(
                [
                    "rate/s",
                    "ours p50",
                    "twin p50",
                    "err %",
                    "ours p95",
                    "twin p95",
                    "err %",
                    "within 10/15 %",
                ],
                twin_rows,
            ),
            "",
            f"Priority: nice {NICE}, {f'SCHED_RR {RT}' if RT else 'normal scheduling'} for "
            "MLServer, both clients and this script (co-tenants outside the lock at their own); "
            f"CPU pressure during the run (some task waiting for a CPU): {pressure:.0%} of "
            "the time.",
            "",
            "Reproduce: `flock /work/bench.lock .venv/bin/python "
            "benchmarks/perf_analyzer_mlserver.py --rt 10`",
        ]
    )
    write_result("perf_analyzer_mlserver", text)


if __name__ == "__main__":
    main()
