"""Fit the emulated servers onto the host: one CPU factor for every server.

A machine with ``cpu_cores`` cores at ``cpu_speed`` gets a quota of
``cpu_cores × cpu_speed × factor`` host cores. The factor is the largest ≤ 1 for
which all quotas fit in the host's cores minus a reserve for the load generator
and the gateway; the twin must be told the same factor (``Capacity.factor``).
"""

from __future__ import annotations

import os

from testbed.backends.base import CPU_PERIOD_US, Capacity, NodeCapacity
from twin.spec import Scenario

MIN_QUOTA_CORES = 1000 / CPU_PERIOD_US  # the kernel's smallest CFS quota is 1 ms per period


class Oversubscribed(ValueError):
    """The requested emulated capacity does not fit the host."""


def default_reserve(host_cores: float) -> float:
    """Cores kept for loadgen + gateway: half a core on 2 cores, a quarter of larger hosts."""
    return max(0.5, 0.25 * host_cores) if host_cores > 2 else 0.5


def plan_capacity(
    scenario: Scenario,
    host_cores: float | None = None,
    reserve_cores: float | None = None,
    factor: float | None = None,
) -> Capacity:
    """Per-machine quotas and the factor; Oversubscribed with the reason otherwise.

    ``factor=None`` picks the largest factor ≤ 1 that fits; an explicit factor is
    refused when the quotas it gives exceed the host's cores minus the reserve.
    """
    host = float(host_cores if host_cores is not None else os.cpu_count() or 1)
    reserve = default_reserve(host) if reserve_cores is None else float(reserve_cores)
    available = host - reserve
    if available <= 0:
        raise Oversubscribed(
            f"no CPU left for emulated servers: host has {host:g} cores and {reserve:g} are "
            "reserved for the load generator and gateway (lower --reserve-cores)"
        )
    machines = [(n, s) for s in scenario.servers for n in s.instance_names()]
    total = sum(s.cpu_cores * s.cpu_speed for _, s in machines)
    if factor is None:
        factor = min(1.0, available / total)
    elif factor <= 0:
        raise Oversubscribed(f"the capacity factor must be > 0, got {factor:g}")
    elif total * factor > available + 1e-9:
        raise Oversubscribed(
            f"oversubscribed: {len(machines)} emulated servers with {total:g} cores × factor "
            f"{factor:g} = {total * factor:.2f} host cores, but only {available:.2f} of the "
            f"host's {host:g} are available ({reserve:g} reserved); use a factor ≤ "
            f"{available / total:.3f} or leave it out to scale automatically"
        )
    nodes = []
    for name, s in machines:
        quota = s.cpu_cores * s.cpu_speed * factor
        if quota < MIN_QUOTA_CORES:
            raise Oversubscribed(
                f"server {name} would get {quota:.3f} host cores (factor {factor:.3f}), below "
                f"the smallest quota of {MIN_QUOTA_CORES:g} cores with a "
                f"{CPU_PERIOD_US // 1000} ms period: too many or too small emulated servers "
                "for this host"
            )
        nodes.append(NodeCapacity(name, round(quota, 4), s.ram_gb, s.cpu_cores))
    return Capacity(round(factor, 6), host, reserve, tuple(nodes))
