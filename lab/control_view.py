"""The scenario as the testbed runs it: what the policies decide on and the twin replays.

The testbed gives every emulated server a CPU quota of ``cpu_cores × cpu_speed ×
factor`` host cores (``testbed.capacity``) and each stage replica is one
single-threaded process, so a replica alone on its server computes at
``min(1, quota)`` of a host core. The view scales each server's ``cpu_speed`` by
that, adds the stage servers' own CPU per call and per item (HTTP parsing,
(de)serialisation, batching: it shares the replica's core) where the scenario
has none, and a per-request overhead outside the stages (client ↔ gateway and
the HTTP hops) where the pipeline has none. Placement, budget W_max, accuracies
and costs are the scenario's own.

Known gap: replicas that share an emulated server share its one quota on the
testbed, while the twin and the analytic model give each its own speed; with one
busy replica per server (what the worst-fit packer does up to three replicas of
the bottleneck) the two agree.

The defaults are measurements of earlier rounds, not fits to the control runs:
stage server CPU ≈ 0.20–0.27 ms per call at batch 1 and ≈ 0.06 ms per item in
full batches (``/work/shared/MEASURED.md``), and ≈ 6 ms per request outside the
stages at low load (the knee sweep's p50 minus its stage times,
``benchmarks/results/testbed_knee.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

from twin.load import parse
from twin.spec import Scenario, ServerOverhead
from twin.workload import scale_workload


@dataclass(frozen=True)
class ViewDefaults:
    """Server CPU per call and per item (ms at speed 1), request overhead (ms, its CV)."""

    server_per_call_ms: float = 0.2
    server_per_item_ms: float = 0.05
    request_overhead_ms: float = 6.0
    request_overhead_cv: float = 0.5


def replica_speed(cpu_cores: float, cpu_speed: float, factor: float) -> float:
    """Host cores one single-threaded replica gets on a server of this size (≤ 1)."""
    if not factor > 0:
        raise ValueError(f"the testbed's CPU factor must be > 0, got {factor}")
    return min(1.0, cpu_cores * cpu_speed * factor)


def testbed_view(
    scenario: Scenario,
    factor: float,
    defaults: ViewDefaults = ViewDefaults(),
    rate_scale: float = 1.0,
) -> Scenario:
    """``scenario`` with the testbed's CPU factor folded into server speeds (see module
    doc) and every workload's rates times ``rate_scale`` (as ``load run --rate-scale``)."""
    if rate_scale != 1.0:
        scaled = [scale_workload(w, rate_scale) for w in scenario.workloads]
        scenario = scenario.model_copy(update={"workloads": scaled})
    data = scenario.model_dump(mode="json")
    for s in data["servers"]:
        s["cpu_speed"] = replica_speed(s["cpu_cores"], s["cpu_speed"], factor)
    for c in data["components"]:
        if c.get("variants") and c.get("server_overhead") is None:
            c["server_overhead"] = ServerOverhead(
                per_call_ms=defaults.server_per_call_ms,
                per_item_ms=defaults.server_per_item_ms,
            ).model_dump(mode="json")
    overhead = {
        "kind": "lognormal",
        "mean_ms": defaults.request_overhead_ms,
        "cv": defaults.request_overhead_cv,
    }
    for p in data["processes"]:
        if p["kind"] == "request" and p.get("request_overhead") is None:
            p["request_overhead"] = overhead
    data["name"] = f"{scenario.name}-testbed-x{factor:g}-load{rate_scale:g}".replace(".", "p")
    data["description"] = (
        f"{scenario.description} — as the testbed runs it at CPU factor {factor:g}"
    ).strip()
    return parse(Scenario, data, f"{scenario.name} (testbed view)")


# What the testbed charges beyond the view, measured on it (rl-7.md, rl-7b.md): the stage
# server's CPU per call and a node's idle CPU from the node agents' counters of the
# session-7 idle-path blocks (``node_cpu``: 0.48-0.50 ms, 0.03 cores), the fitted host
# speed, the replica start's median on the idle start path (1.56 s, n 7; 1.0-2.4 s on
# the quiet blocks) and the variant switch's median (0.11 s, n 280). The slowest host
# seen runs e-large 1.3x its fastest (encoder 4.4-6.3 ms/item before any change, all
# PPO/IPA runs of sessions 5-7): each training episode draws its speed from 0.75-1.
MEASURED_CHARGES = {
    "per_call_ms": 0.49,
    "idle_cores": 0.03,
    "host_speed": 0.97,
    "slow_min": 0.75,
    "start_s": 1.56,
    "switch_s": 0.11,
}


def testbed_charges(scenario: Scenario, factor: float, defaults: ViewDefaults = ViewDefaults()):  # type: ignore[no-untyped-def]
    """The :class:`optimizer.rl.charged.TestbedCharges` of ``scenario`` on the testbed at
    CPU ``factor``: its servers' quota (one size needed) and :data:`MEASURED_CHARGES`."""
    from optimizer.rl.charged import TestbedCharges

    quotas = {s.cpu_cores * s.cpu_speed * factor for s in scenario.servers}
    if len(quotas) != 1:
        raise ValueError(
            f"{scenario.name}: servers of different quotas {sorted(quotas)}; the charged "
            "training twin needs one server size"
        )
    return TestbedCharges(
        node_quota_cores=quotas.pop(),
        request_overhead_ms=defaults.request_overhead_ms,
        **MEASURED_CHARGES,
    )
