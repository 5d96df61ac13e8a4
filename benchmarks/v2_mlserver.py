"""Twin vs a real V2 server we did not write (MLServer), after ``calibrate profile --target``.

MLServer (own venv, ``testbed.mlserver``) serves a scikit-learn forest on
127.0.0.1. ``mlops-twin calibrate profile --target`` sweeps batch × concurrency
(closed loop) and writes a calibrated one-stage scenario; then open-loop
Poisson load (``load run --protocol v2``'s code) at held-out rates the profile
never ran, and the twin's p50/p95 at the same rates. Acceptance: within
10 % / 15 %. Host steal during each run is recorded (``/proc/stat``).

The same against our own testbed's gateway, which speaks V2 too (``testbed``
part, result ``v2_testbed.md``): the profile sees it as a black box.

Run under the shared lock: ``flock /work/bench.lock python benchmarks/v2_mlserver.py
[mlserver] [testbed]`` (each part ≈ 2–3 min).
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
OPEN_S = 15.0  # the profile's open-loop cell (at half the closed-loop capacity)
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PRIORITY = ""
ARGS = ""  # this run's options, for the results' "Reproduce" line


def steal_share() -> float:
    """Cumulative steal seconds of the host (all CPUs)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")


def busy_s() -> float:
    """Cumulative busy CPU seconds of the host (user+nice+system+irq+softirq)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return (f[0] + f[1] + f[2] + f[5] + f[6]) / os.sysconf("SC_CLK_TCK")


def per_cpu_busy_s() -> list[float]:
    """Cumulative busy seconds of each CPU (``cpuN`` lines of /proc/stat)."""
    out = []
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3].isdigit():
            f = [int(x) for x in line.split()[1:8]]
            out.append((f[0] + f[1] + f[2] + f[5] + f[6]) / os.sysconf("SC_CLK_TCK"))
    return out


def server_cpu_s(markers: tuple[str, ...]) -> dict[int, float]:
    """CPU seconds so far of the served processes (command line holds a marker; not the
    load generator's workers), by pid."""
    import psutil

    out = {}
    for p in psutil.process_iter(["pid", "cmdline", "cpu_times"]):
        line = " ".join(p.info["cmdline"] or [])
        if "loadgen.worker" in line or p.info["cpu_times"] is None:
            continue
        if any(m in line for m in markers):
            out[p.info["pid"]] = p.info["cpu_times"].user + p.info["cpu_times"].system
    return out


def others_cpu_s(mine: set[int]) -> dict[int, float]:
    """CPU seconds so far of every process outside ``mine`` (pids), by pid."""
    import psutil

    out = {}
    for p in psutil.process_iter(["pid", "cpu_times"]):
        if p.info["pid"] not in mine and p.info["cpu_times"] is not None:
            out[p.info["pid"]] = p.info["cpu_times"].user + p.info["cpu_times"].system
    return out


def our_pids(extra: tuple[str, ...] = ()) -> set[int]:
    """This process, its children, and processes whose command line holds ``extra``."""
    import psutil

    me = psutil.Process()
    pids = {me.pid, *(c.pid for c in me.children(recursive=True))}
    for p in psutil.process_iter(["pid", "cmdline"]):
        line = " ".join(p.info["cmdline"] or [])
        if any(e in line for e in extra):
            pids.add(p.info["pid"])
    return pids


def profile_and_hold_out(
    url: str,
    model: str,
    version: str | None,
    tensor: str,
    grid: dict,
    work: Path,
    ours: tuple[str, ...] = (),
) -> tuple[list[list], dict]:
    """``calibrate profile --target`` on ``url``, then open-loop held-out rates vs the twin."""
    from calibrate.target import predict
    from loadgen.run import LoadRun, execute
    from twin.load import load_deployment, load_scenario
    from twin.spec import SteadyWorkload

    prof = work / "profile"
    cli = [sys.executable, "-c", "from mlops_twin.cli import main; main()"]
    argv = [*cli, "calibrate", "profile", "--target", url, "--model", model]
    argv += ["--version", version] if version else []
    argv += ["--input", tensor, "--batches", grid["batches"], "--concurrency", grid["concurrency"]]
    argv += ["--cell-s", str(grid["cell_s"]), "--open-s", str(OPEN_S), "--out", str(prof)]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise SystemExit(res.stderr)
    meta = json.loads((prof / "manifest.json").read_text())
    cap = max(c["throughput_per_s"] for c in meta["capacity"] if c["batch"] == 1)
    sc = load_scenario(prof / "scenario.yaml")
    dep = load_deployment(prof / "deployment.yaml")
    rows = []
    for f in FRACTIONS:
        rate = round(f * cap, 1)
        w = SteadyWorkload(kind="steady", name=f"held-out-{int(f * 100)}", rate_per_s=rate)
        run = LoadRun(sc, w, url, DURATION_S, seed=7, protocol="v2", drain_s=5)
        mine = our_pids(ours)
        s0, b0, o0, t0 = steal_share(), busy_s(), others_cpu_s(mine), time.time()
        c0, v0, k0 = per_cpu_busy_s(), server_cpu_s(ours), os.times()
        result = execute(run, work / f"raw-{f:g}")
        wall = time.time() - t0
        c1, v1, k1 = per_cpu_busy_s(), server_cpu_s(ours), os.times()
        n_sent = max(len(result.requests), 1)
        # CPU per request: the server's processes, and the load generator's workers
        # (children of this process, waited for by execute)
        server_ms = 1e3 * sum(v1[p] - v0[p] for p in v1 if p in v0) / n_sent
        load_ms = 1e3 * (
            k1.children_user + k1.children_system - k0.children_user - k0.children_system
        )
        load_ms /= n_sent
        cores = "/".join(f"{(b - a) / wall:.2f}" for a, b in zip(c0, c1, strict=True))
        steal = (steal_share() - s0) / wall / (os.cpu_count() or 1)
        o1 = others_cpu_s(our_pids(ours))
        others = sum(o1[p] - o0[p] for p in o1 if p in o0) / wall  # cores used by others
        busy = (busy_s() - b0) / wall
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
                f"{len(ok)}/{len(result.requests)}",
                f"{len(result.requests) / DURATION_S:.1f}",
                round(measured[50], 2),
                round(twin["p50_ms"], 2),
                f"{e50:+.1f}",
                round(measured[95], 2),
                round(twin["p95_ms"], 2),
                f"{e95:+.1f}",
                "yes" if abs(e50) <= 10 and abs(e95) <= 15 else "no",
                f"{100 * steal:.1f}",
                f"{busy:.2f}",
                cores,
                f"{others:.2f}",
                f"{server_ms:.2f}",
                f"{load_ms:.2f}",
            ]
        )
    variant = sc.components[0].variants[0]
    over = sc.processes[0].request_overhead
    fit = {
        "capacity_per_s": cap,
        "service": f"{variant.service_time.kind}, mean "
        f"{variant.service_time.batch_mean_ms(1):.2f} ms",
        "overhead": f"mean {over.batch_mean_ms(1):.2f} ms" if over else "none",
        "capacity_table": meta["capacity"],
        "open_loop": meta.get("open_loop") or {},
    }
    return rows, fit


HEAD = [
    "rate/s",
    "of capacity",
    "answered/sent",
    "sent/s",
    "p50 ms",
    "twin p50",
    "err %",
    "p95 ms",
    "twin p95",
    "err %",
    "within 10/15 %",
    "steal %",
    "host busy cores",
    "per CPU",
    "others' cores",
    "server CPU ms/req",
    "load gen CPU ms/req",
]


def open_loop_line(info: dict) -> str:
    """What the profile's open-loop cell measured (the fit's service and overhead)."""
    if not info:
        return "- no open-loop cell: service and overhead from the closed-loop cells"
    return (
        f"- profile's open-loop cell (Poisson, the load generator, {OPEN_S:g} s): "
        f"{info['rate_per_s']:.1f} requests/s, {info['requests']} requests, "
        f"{info['idle_requests']} found none ahead, {info['busy_gaps']} answer gaps of a busy "
        f"server, gap mean {info['gap_mean_ms']:.2f} ms → service mean "
        f"{info['service_mean_ms']:.2f} ms"
        + (" (bounded by the closed-loop 1/capacity)" if info["service_bounded"] else "")
        + f", cv {info['service_cv']:.2f}, overhead mean {info['overhead_mean_ms']:.2f} ms"
        + "".join(
            f"; {name.replace('_', '-')} fit vs the cell's own p50/p95 "
            f"({c['p50_ms']:.2f}/{c['p95_ms']:.2f} ms): {100 * c['err_p50']:+.1f} / "
            f"{100 * c['err_p95']:+.1f} %"
            for name, c in info["check"].items()
        )
        + f"; kept: the {info['kept'].replace('_', '-')} fit"
        + (f" (warning: {info['warning']})" if info.get("warning") else "")
    )


def capacity_lines(table: list[dict]) -> list[str]:
    return [
        "| batch | clients | requests/s | mean latency ms |",
        "|---:|---:|---:|---:|",
        *(
            f"| {c['batch']} | {c['concurrency']} | {c['throughput_per_s']:.1f} | "
            f"{c['latency_ms']:.2f} |"
            for c in table
        ),
    ]


def run_mlserver() -> None:
    """MLServer 1.7.1 (its own venv) serving a scikit-learn forest."""
    from testbed import mlserver
    from testbed.services.node_agent import free_port

    work = Path(tempfile.mkdtemp(prefix="v2-mlserver-"))
    bin_dir = mlserver.ensure_venv()
    port = free_port("127.0.0.1")
    mlserver.write_repository(work / "repo", port, bin_dir)
    grid = {"batches": "1,4", "concurrency": "1,2,4", "cell_s": 4}
    with mlserver.serve(work / "repo", port, bin_dir) as url:
        rows, fit = profile_and_hold_out(
            url, mlserver.MODEL, mlserver.VERSION, "x:FP32:1x64", grid, work, (str(work),)
        )
    text = "\n".join(
        [
            "# Twin vs MLServer (V2) after `calibrate profile --target`",
            "",
            f"- {machine_line()}",
            f"- MLServer 1.7.1 (mlserver-sklearn, parallel_workers 0), model {mlserver.MODEL} "
            f"(random forest, 50 trees) on 127.0.0.1; profile grid batch {grid['batches']} × "
            f"clients {grid['concurrency']}, {grid['cell_s']} s per cell; capacity at batch 1: "
            f"{fit['capacity_per_s']:.1f} requests/s",
            f"- fitted service time: {fit['service']} at batch 1; "
            f"request overhead {fit['overhead']}",
            open_loop_line(fit["open_loop"]),
            f"- held-out: open-loop Poisson (Locust, `load run --protocol v2`'s code), "
            f"{DURATION_S:g} s per rate (rates not in the closed-loop profile); twin: 3 × 600 s",
            "",
            markdown_table(HEAD, rows),
            "",
            NOTE.format(priority=PRIORITY),
            "",
            "Profile (closed loop):",
            "",
            *capacity_lines(fit["capacity_table"]),
            "",
            "Reproduce: `flock /work/bench.lock .venv/bin/python "
            f"benchmarks/v2_mlserver.py {ARGS}mlserver`",
        ]
    )
    write_result("v2_mlserver", text)


def run_testbed() -> None:
    """Our testbed's gateway (digits pipeline, default deployment, local backend) over V2."""
    from testbed.client import CliTestbed

    work = Path(tempfile.mkdtemp(prefix="v2-testbed-"))
    testbed = CliTestbed("local", work / ".testbed", log=work / "testbed.log")
    grid = {"batches": "1", "concurrency": "1,2,4,8", "cell_s": 4}
    try:
        targets = testbed.up(
            EXAMPLES / "digits-pipeline.yaml", EXAMPLES / "digits-pipeline.deployment.yaml"
        )
        services = (str(work), "testbed.services")  # the testbed's processes count as ours
        rows, fit = profile_and_hold_out(
            targets.gateway, "pipeline", None, "image:FP32:1x64", grid, work, services
        )
    finally:
        testbed.down()
    text = "\n".join(
        [
            "# Twin vs the V2-speaking testbed after `calibrate profile --target`",
            "",
            f"- {machine_line()}",
            "- testbed: `examples/digits-pipeline.yaml` with its default deployment, local "
            "backend; target: the gateway's V2 model `pipeline` (3 ONNX stages behind it), "
            "seen as a black box, exactly as a user's own server",
            f"- profile grid batch {grid['batches']} × clients {grid['concurrency']}, "
            f"{grid['cell_s']} s per cell; capacity at batch 1: {fit['capacity_per_s']:.1f} "
            "requests/s",
            f"- fitted service time: {fit['service']} at batch 1; "
            f"request overhead {fit['overhead']}",
            open_loop_line(fit["open_loop"]),
            f"- held-out: open-loop Poisson (Locust), {DURATION_S:g} s per rate; twin: 3 × 600 s",
            "",
            markdown_table(HEAD, rows),
            "",
            NOTE.format(priority=PRIORITY),
            "",
            "Profile (closed loop):",
            "",
            *capacity_lines(fit["capacity_table"]),
            "",
            "Reproduce: `flock /work/bench.lock .venv/bin/python "
            f"benchmarks/v2_mlserver.py {ARGS}testbed`",
        ]
    )
    write_result("v2_testbed", text)


NOTE = (
    "Columns 'host busy cores' and \"others' cores\": CPU the whole host used during the "
    "held-out run, and the part used by processes that are not this benchmark's (other "
    "jobs on the shared 2-core host); 'per CPU': each CPU's busy share (/proc/stat). "
    "'server CPU ms/req' and 'load gen CPU ms/req': CPU time per sent request of the served "
    "processes and of the load generator's workers (all on this host). {priority}"
)


def main() -> None:
    args = sys.argv[1:]
    nice = 0
    if "--nice" in args:  # e.g. --nice -5: our processes (and children) before co-tenants
        i = args.index("--nice")
        nice = int(args[i + 1])
        del args[i : i + 2]
        os.nice(nice)
    rt = 0
    if "--rt" in args:  # e.g. --rt 10: SCHED_RR, inherited by MLServer and the Locust worker
        i = args.index("--rt")
        rt = int(args[i + 1])
        del args[i : i + 2]
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(rt))
    global PRIORITY, ARGS
    ARGS = " ".join(a for a in sys.argv[1:] if a not in ("mlserver", "testbed"))
    ARGS += " " if ARGS else ""
    PRIORITY = (
        f"This run: the benchmark and every process it started at nice {nice}"
        + (f", real-time SCHED_RR priority {rt}" if rt else "")
        + " (co-tenants at their own), so that jobs outside the shared lock take less from it."
        if nice or rt
        else "This run: default priority."
    )
    if "--duration" in args:  # seconds per held-out rate (default 40), to fit a lock turn
        i = args.index("--duration")
        global DURATION_S
        DURATION_S = float(args[i + 1])
        del args[i : i + 2]
    which = args or ["mlserver", "testbed"]
    unknown = set(which) - {"mlserver", "testbed"}
    if unknown:
        raise SystemExit(
            f"usage: v2_mlserver.py [--nice N] [--rt N] [--duration S] [mlserver] [testbed] "
            f"(unknown: {sorted(unknown)})"
        )
    if "mlserver" in which:
        run_mlserver()
    if "testbed" in which:
        run_testbed()


if __name__ == "__main__":
    main()
