"""The load generator's own host: CPU time by mode and CPU pressure, as counters.

Every testbed service shares this host with the load generator, so when the
host is disturbed — the hypervisor takes CPU from the guest (``steal``), or more
runnable work than cores waits (pressure stall information) — every latency the
run measures moves together, and no model of the services explains it. The
scraper records these counters beside the services' metrics (target ``host``)
so a run's report can say how disturbed the host was while it ran.

The names follow Prometheus's node_exporter (``node_cpu_seconds_total{mode}``,
``node_pressure_cpu_waiting_seconds_total``) with ``host_`` for ``node_``, which
in this project names an emulated server.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

HOST_TARGET = "host"
CPU_SECONDS = "host_cpu_seconds_total"  # summed over the host's CPUs, by mode
PRESSURE_SECONDS = "host_pressure_cpu_waiting_seconds_total"  # PSI cpu "some" total
# A fixed piece of interpreter work, timed each round: its thread CPU time rises when
# the host runs this guest's code slower (a busy sibling hyperthread, shared caches,
# clock speed) — what neither steal nor pressure shows.
PROBE_SECONDS = "host_probe_seconds"
PROBE_LOOPS = 8_000  # about 0.6 ms on this project's 2-core hosts
# /proc/stat's columns after "cpu", in the kernel's order
MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")

_STAT = Path("/proc/stat")
_PSI = Path("/proc/pressure/cpu")


def host_samples(stat: Path = _STAT, psi: Path = _PSI) -> list[tuple[str, str, float]]:
    """``(metric, labels JSON, value)`` counters of the host, in s; empty off Linux.

    ``host_cpu_seconds_total{mode}`` sums the CPUs' time in each mode;
    ``host_pressure_cpu_waiting_seconds_total`` is the time at least one runnable
    task waited for a CPU (tasks held back by a cgroup's CPU quota count too);
    ``host_probe_seconds{clock}`` the CPU and wall time of one fixed piece of
    interpreter work (a gauge: larger is a slower host). A file that is missing (no
    ``/proc``, a kernel without PSI) leaves its counters out.
    """
    out: list[tuple[str, str, float]] = []
    w0, c0 = time.perf_counter(), time.thread_time()
    _probe_work()
    c1, w1 = time.thread_time(), time.perf_counter()
    out.append((PROBE_SECONDS, json.dumps({"clock": "cpu"}), c1 - c0))
    out.append((PROBE_SECONDS, json.dumps({"clock": "wall"}), w1 - w0))
    try:
        first = stat.read_text().split("\n", 1)[0].split()
    except OSError:
        first = []
    if first and first[0] == "cpu":
        tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        for mode, v in zip(MODES, first[1:], strict=False):
            out.append((CPU_SECONDS, json.dumps({"mode": mode}), int(v) / tick))
    try:
        for line in psi.read_text().splitlines():
            kind, *fields = line.split()
            if kind == "some":
                total = dict(f.split("=", 1) for f in fields)["total"]
                out.append((PRESSURE_SECONDS, "{}", int(total) / 1e6))
    except (OSError, KeyError, ValueError):
        pass
    return out


def _probe_work() -> int:
    total = 0
    for i in range(PROBE_LOOPS):
        total += i * i % 7
    return total


def host_series(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per scrape interval: ``t`` (end, s), ``busy_cores``, ``steal_cores``, ``pressure``,
    ``probe_ms``.

    ``busy_cores`` is the CPUs' time outside idle, iowait and steal per second;
    ``steal_cores`` the time the hypervisor ran something else while the guest
    wanted to run; ``pressure`` the share of wall time some task waited for a CPU.
    Empty when the run recorded no host counters.
    """
    cols = ["t", "busy_cores", "steal_cores", "pressure", "probe_ms"]
    host = metrics[metrics["target"].astype(str) == HOST_TARGET]
    cpu = host[host["metric"].astype(str) == CPU_SECONDS]
    if cpu.empty:
        return pd.DataFrame(columns=cols)
    modes = cpu.assign(mode=cpu["labels"].map(lambda s: json.loads(s)["mode"]))
    wide = modes.pivot_table(index="t", columns="mode", values="value", aggfunc="last")
    psi = host[host["metric"].astype(str) == PRESSURE_SECONDS].set_index("t")["value"]
    wide = wide.join(psi.rename("psi")) if len(psi) else wide.assign(psi=np.nan)
    probe = host[
        (host["metric"].astype(str) == PROBE_SECONDS) & (host["labels"] == '{"clock": "cpu"}')
    ].set_index("t")["value"]
    d = wide.sort_index().diff()
    dt = pd.Series(d.index, index=d.index).diff()
    idle = d.reindex(columns=["idle", "iowait", "steal"], fill_value=0.0).sum(axis=1)
    total = d.reindex(columns=list(MODES), fill_value=0.0).sum(axis=1)
    out = pd.DataFrame(
        {
            "busy_cores": (total - idle) / dt,
            "steal_cores": d.get("steal", pd.Series(0.0, index=d.index)) / dt,
            "pressure": d["psi"] / dt,
            "probe_ms": 1000 * probe.reindex(d.index),
        }
    ).iloc[1:]
    return out.reset_index(names="t")[cols]


def host_summary(metrics: pd.DataFrame, t_from: float = 0.0, t_to: float = np.inf) -> dict:
    """Means over the intervals ending in ``(t_from, t_to]``: busy and steal in cores,
    pressure as a share of time, the probe's median CPU time (ms); NaN without host
    counters."""
    s = host_series(metrics)
    s = s[(s["t"] > t_from) & (s["t"] <= t_to)]
    keys = ("busy_cores", "steal_cores", "pressure")
    if s.empty:
        return dict.fromkeys((*keys, "probe_ms"), np.nan)
    return {**{k: float(s[k].mean()) for k in keys}, "probe_ms": float(s["probe_ms"].median())}
