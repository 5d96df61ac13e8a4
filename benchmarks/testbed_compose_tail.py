"""Where the Compose backend's latency tail comes from: low-load runs that separate the causes.

One testbed (digits pipeline, the knee benchmark's default deployment: encoder e-large
batch 1, the bottleneck) at ρ ≈ 0.2 (30 req/s). For the Compose backend it records:

- each node container's CFS period and quota (``cpu.cfs_period_us``/``cpu.cfs_quota_us``
  of its cgroup) and, for every phase, the throttling counters (``cpu.stat``:
  periods, throttled periods, throttled time) and the container's CPU;
- idle CPU and throttling with no load (what the health probes and agents cost);
- the CPU of one health probe, ``docker exec``-ed into the encoder's container, for
  the old probe (the venv's python) and the new one (bash ``/dev/tcp``);
- load runs that switch one suspect at a time: through the published port
  (docker-proxy) with the metrics scrape through the gateway's admin proxy, the same
  without scraping, and straight to the gateway's IP on the bridge (no docker-proxy).

Two switches separate the causes: ``--probe python`` gives every container the old
health probe (the venv's python, every second, inside the emulated server's quota;
``--probe shell``: the fix, a bash probe for the platform services and none for the
emulated servers), and ``--docker-cgroup`` leaves the containers in Docker's own
cgroup (before; the fix puts them under a parent with the local backend's weight).
``--backend local`` runs the same load on the local backend, for the ratio p95/p50 to
compare with. Each ``run`` is one locked command of ≈ 2–2.5 min::

    flock /work/bench.lock .venv/bin/python benchmarks/testbed_compose_tail.py run \
        --probe python --docker-cgroup                       # as it was
    flock /work/bench.lock .venv/bin/python benchmarks/testbed_compose_tail.py run --probe python
    flock /work/bench.lock .venv/bin/python benchmarks/testbed_compose_tail.py run  # both fixes
    flock /work/bench.lock .venv/bin/python benchmarks/testbed_compose_tail.py run --backend local
    .venv/bin/python benchmarks/testbed_compose_tail.py report

Run folders land in ``runs/compose-tail/<label>/``; the result in
``benchmarks/results/testbed_compose_tail.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import testbed_knee as knee
from _report import machine_line, markdown_table, write_result

from testbed.backends.compose import (
    CGROUP_PARENT,
    CGROUP_PARENT_ENV,
    HEALTH_PROBE_ENV,
    project_containers,
)
from testbed.client import CliTestbed

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "compose-tail"
RATE = 30.0  # ρ ≈ 0.2 of the encoder's ≈ 150/s
CPU_ROOT = Path("/sys/fs/cgroup/cpu")
ACCT_ROOT = Path("/sys/fs/cgroup/cpuacct")
PROBES = {
    "python": [
        "/opt/venv/bin/python",
        "-c",
        "import sys, urllib.request; sys.exit(urllib.request.urlopen("
        "'http://127.0.0.1:8090/healthz', timeout=2).status != 200)",
    ],
    "shell": [
        "bash",
        "-c",
        "exec 3<>/dev/tcp/127.0.0.1/8090 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 "
        "&& head -n 1 <&3 | grep -q ' 200 '",
    ],
}


def _files(d: Path) -> tuple[Path, Path]:
    """The knee benchmark's default deployment and a steady ``knee`` workload."""
    return knee._files("default", d)


def _cgroup(cid: str) -> tuple[Path, Path]:
    """cpu and cpuacct folders of a container's cgroup (cgroupfs driver, v1)."""
    for parent in (CGROUP_PARENT, "docker", "system.slice"):
        cpu = CPU_ROOT / parent / cid
        if cpu.is_dir():
            acct = ACCT_ROOT / parent / cid
            return cpu, acct if acct.is_dir() else cpu
    found = sorted(CPU_ROOT.rglob(f"*{cid}*"))
    if not found:
        raise RuntimeError(f"no cgroup for container {cid[:12]} under {CPU_ROOT}")
    acct = ACCT_ROOT / found[0].relative_to(CPU_ROOT)
    return found[0], acct if acct.is_dir() else found[0]


def _counters(groups: dict[str, tuple[Path, Path]]) -> dict[str, dict[str, float]]:
    out = {}
    for name, (cpu, acct) in groups.items():
        stat = dict(line.split() for line in (cpu / "cpu.stat").read_text().splitlines())
        out[name] = {
            "periods": float(stat["nr_periods"]),
            "throttled": float(stat["nr_throttled"]),
            "throttled_s": float(stat["throttled_time"]) / 1e9,
            "cpu_s": int((acct / "cpuacct.usage").read_text()) / 1e9,
            "t": time.monotonic(),
        }
    return out


def _delta(a: dict, b: dict) -> dict[str, dict[str, float]]:
    out = {}
    for name in a:
        dt = b[name]["t"] - a[name]["t"]
        d = {k: b[name][k] - a[name][k] for k in a[name] if k != "t"}
        out[name] = {
            "seconds": dt,
            "cpu_cores": d["cpu_s"] / dt,
            "throttled_per_s": d["throttled"] / dt,
            "throttled_share": d["throttled"] / max(d["periods"], 1.0),
            "throttled_ms_per_s": 1e3 * d["throttled_s"] / dt,
        }
    return out


def _load(d: Path, scenario: Path, target: str, metrics: dict[str, str], duration: float) -> dict:
    out = d / "load"
    scrape = [f"{k}={v}" for k, v in metrics.items()]
    knee._load(scenario, target, scrape, out, duration, RATE, 11, drain_s=3)
    s = json.loads((out / "summary.json").read_text())
    return {
        "offered": s["offered_rps"],
        "achieved": s["achieved_rps"],
        "p50_ms": s["p50_s"] * 1e3,
        "p95_ms": s["p95_s"] * 1e3,
        "p99_ms": s["p99_s"] * 1e3,
        "lag_p99_ms": s["lag_p99_s"] * 1e3,
    }


def _probe_cost(cid: str, acct: Path, idle_cores: float, n: int = 6) -> dict[str, float]:
    """CPU (ms, in the container's cgroup, idle CPU subtracted) and wall time of one probe."""
    out = {}
    for kind, argv in PROBES.items():
        cpu, wall = [], []
        for _ in range(n):
            c0, t0 = int((acct / "cpuacct.usage").read_text()), time.monotonic()
            subprocess.run(["docker", "exec", cid, *argv], capture_output=True, check=False)
            c1, t1 = int((acct / "cpuacct.usage").read_text()), time.monotonic()
            cpu.append((c1 - c0) / 1e6 - idle_cores * (t1 - t0) * 1e3)
            wall.append((t1 - t0) * 1e3)
        out[f"{kind}_cpu_ms"] = statistics.median(cpu)
        out[f"{kind}_wall_ms"] = statistics.median(wall)
    return out


def run(backend: str, probe: str, duration: float, parent: bool) -> None:
    label = (
        f"compose-{probe}-{'weighted' if parent else 'docker'}" if backend == "compose" else backend
    )
    d = OUT / label
    scenario, deployment = _files(d)
    os.environ[HEALTH_PROBE_ENV] = probe
    os.environ[CGROUP_PARENT_ENV] = CGROUP_PARENT if parent else "none"
    testbed = CliTestbed(backend, d / ".testbed", log=d / "testbed.log")
    result: dict = {
        "backend": backend,
        "probe": probe if backend == "compose" else None,
        "cgroup_parent": parent if backend == "compose" else None,
    }
    t0 = time.monotonic()
    targets = testbed.up(scenario, deployment)
    result["up_s"] = time.monotonic() - t0
    try:
        phases = []
        if backend == "local":
            phases.append(("published + scrape", targets.gateway, targets.metrics))
            phases.append(("no scrape", targets.gateway, {}))
            groups = {}
        else:
            from testbed.backends.compose import project_name

            containers = project_containers(project_name(d / ".testbed"))
            groups, roles = {}, {}
            for c in containers:
                labels = c["Config"]["Labels"]
                svc = labels.get("com.docker.compose.service", c["Id"][:12])
                roles[svc] = c["Id"]
                groups[svc] = _cgroup(c["Id"])
            result["cfs"] = {
                svc: {
                    "period_us": int((cpu / "cpu.cfs_period_us").read_text()),
                    "quota_us": int((cpu / "cpu.cfs_quota_us").read_text()),
                }
                for svc, (cpu, _) in groups.items()
            }
            gw = next(
                c
                for c in containers
                if c["Config"]["Labels"].get("org.mlops-twin.role") == "gateway"
            )
            ips = [
                n["IPAddress"]
                for k, n in gw["NetworkSettings"]["Networks"].items()
                if k.endswith("_frontend")
            ]
            a = _counters(groups)
            time.sleep(5.0)
            idle = _delta(a, _counters(groups))
            result["idle"] = idle
            enc = "node-2"  # the encoder's machine in the default deployment
            result["probe_cost"] = _probe_cost(roles[enc], groups[enc][1], idle[enc]["cpu_cores"])
            phases.append(("published + scrape", targets.gateway, targets.metrics))
            phases.append(("published, no scrape", targets.gateway, {}))
            if ips:
                phases.append(("bridge IP, no scrape", f"http://{ips[0]}:8080", {}))
        result["phases"] = []
        for name, target, metrics in phases:
            a = _counters(groups)
            row = _load(
                d / name.replace(" ", "_").replace(",", "").replace("+", "and"),
                scenario,
                target,
                metrics,
                duration,
            )
            row["phase"] = name
            row["cgroups"] = _delta(a, _counters(groups))
            print(
                f"{label} {name}: p50 {row['p50_ms']:.1f} p95 {row['p95_ms']:.1f} "
                f"p99 {row['p99_ms']:.1f} ms",
                file=sys.stderr,
            )
            result["phases"].append(row)
    finally:
        testbed.down()
        (d / "diag.json").write_text(json.dumps(result, indent=1))


def report() -> None:
    parts = [
        "# Where the Compose backend's latency tail comes from (ρ ≈ 0.2, 30 req/s)",
        "",
        f"- {machine_line()}",
        "- command: `flock /work/bench.lock .venv/bin/python benchmarks/testbed_compose_tail.py "
        "run [--probe python] [--docker-cgroup]` (labels: compose-<probe>-<docker|weighted>), "
        "`… run --backend local`, then `… report`; digits pipeline, knee default deployment "
        "(encoder e-large batch 1 on node-2, 0.5 core); each phase one load run",
        "",
    ]
    rows, cfs_rows, idle_rows = [], [], []
    for f in sorted(OUT.glob("*/diag.json")):
        r = json.loads(f.read_text())
        label = f.parent.name
        for p in r.get("phases", []):
            enc = p["cgroups"].get("node-2", {})
            rows.append(
                [
                    label,
                    p["phase"],
                    f"{p['achieved']:.1f}",
                    f"{p['p50_ms']:.1f}",
                    f"{p['p95_ms']:.1f}",
                    f"{p['p99_ms']:.1f}",
                    f"{p['p95_ms'] / p['p50_ms']:.2f}",
                    f"{p['p99_ms'] / p['p50_ms']:.2f}",
                    f"{p['lag_p99_ms']:.1f}",
                    f"{enc.get('cpu_cores', float('nan')):.3f}",
                    f"{enc.get('throttled_per_s', float('nan')):.2f}",
                    f"{enc.get('throttled_ms_per_s', float('nan')):.1f}",
                ]
            )
        for svc, c in (r.get("cfs") or {}).items():
            if svc.startswith("node"):
                cfs_rows.append([label, svc, c["period_us"], c["quota_us"]])
        for svc, c in (r.get("idle") or {}).items():
            idle_rows.append(
                [
                    label,
                    svc,
                    f"{c['cpu_cores']:.4f}",
                    f"{c['throttled_per_s']:.2f}",
                    f"{c['throttled_ms_per_s']:.1f}",
                ]
            )
        if r.get("probe_cost"):
            pc = r["probe_cost"]
            parts.append(
                f"- {label}: one health probe in the encoder's container costs "
                f"python {pc['python_cpu_ms']:.1f} ms CPU ({pc['python_wall_ms']:.0f} ms wall "
                f"under the quota), shell {pc['shell_cpu_ms']:.1f} ms CPU "
                f"({pc['shell_wall_ms']:.0f} ms wall) (median of 6 `docker exec`, the "
                "container's idle CPU subtracted)"
            )
    parts += [
        "",
        "## Diagnosis: one cause removed at a time (load run through the published port)",
        "",
    ]
    steps = (
        ("compose-python-docker", "as it was: Docker's own cgroup, python probe every 1 s"),
        ("compose-python-weighted", "+ containers under a parent with the local weight"),
        (
            "compose-shell-weighted-client-per-call",
            "+ no probe inside the emulated servers",
        ),
        (
            "compose-shell-weighted",
            "+ the node agent keeps one HTTP client (a new one per scrape cost ≈ 23 ms CPU)",
        ),
        ("local", "the local backend, same load"),
    )
    chain = []
    for label, what in steps:
        f = OUT / label / "diag.json"
        if not f.exists():
            continue
        by = {p["phase"]: p for p in json.loads(f.read_text()).get("phases", [])}
        for phase in ("published + scrape", "published, no scrape", "no scrape"):
            if phase in by:
                p = by[phase]
                chain.append(
                    [
                        label,
                        what,
                        phase,
                        f"{p['p50_ms']:.1f}",
                        f"{p['p95_ms']:.1f}",
                        f"{p['p99_ms']:.1f}",
                        f"{p['p95_ms'] / p['p50_ms']:.2f}",
                    ]
                )
    parts += [
        markdown_table(
            ["run", "what changed", "phase", "p50 ms", "p95 ms", "p99 ms", "p95/p50"], chain
        ),
        "",
        "## Load runs",
        "",
        markdown_table(
            [
                "run",
                "phase",
                "achieved/s",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "p95/p50",
                "p99/p50",
                "lag p99 ms",
                "encoder node CPU cores",
                "encoder throttled periods/s",
                "encoder throttled ms/s",
            ],
            rows,
        ),
        "",
        "## CFS settings of the node containers",
        "",
        markdown_table(["run", "container", "cfs_period_us", "cfs_quota_us"], cfs_rows),
        "",
        "## Idle (no load, 5 s): what the health probes and agents cost",
        "",
        markdown_table(
            ["run", "container", "CPU cores", "throttled periods/s", "throttled ms/s"], idle_rows
        ),
        "",
    ]
    write_result("testbed_compose_tail", "\n".join(parts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="one testbed's diagnosis runs")
    r.add_argument("--backend", choices=("compose", "local"), default="compose")
    r.add_argument("--probe", choices=tuple(PROBES), default="shell")
    r.add_argument("--duration", type=float, default=12.0, help="s per load run")
    r.add_argument(
        "--docker-cgroup",
        action="store_true",
        help="leave the containers in Docker's own cgroup (as before), not the weighted parent",
    )
    sub.add_parser("report", help="write the result table")
    a = ap.parse_args()
    if a.cmd == "run":
        run(a.backend, a.probe, a.duration, parent=not a.docker_cgroup)
    else:
        report()


if __name__ == "__main__":
    main()
