"""The twin a control run is replayed against, calibrated from other control runs.

The uncalibrated replay simulates the policies' view (:mod:`lab.control_view`):
manifest service times at the replica's CPU share and a guessed 6 ms request
overhead. Here the lab's own calibration (:func:`lab.fitruns.fit_run_calibration`,
what ``make testbed`` fits from its fit runs) is fitted on the raw rows of
*other* control runs' load runs instead: per stage × variant the batch service
time at the CPU share the replica had, and the per-request overhead (latency
minus stage time: client, gateway, HTTP hops). Variants no run served keep the
view's service time (manifest time at the share).

The calibrated scenario only replaces what the simulation draws; the replay
scores every interval on the view (Q, C and E from the modelled capacity), as the
testbed side is scored, so only latency can move.

Known gap: the CPU a replica start takes from co-located stages, and replicas
sharing one node's quota, are not in the twin; nor is the quota's stall
(``calibrate.quota`` models it for a fixed deployment; a control run changes its
deployment every interval).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from calibrate import calibration as cal
from lab.control_view import replica_speed
from lab.fitruns import fit_run_calibration
from loadgen.run import LoadResult
from twin.spec import Scenario, Workload


def load_result(folder: Path) -> LoadResult:
    """A finished load-run folder (``requests``/``visits`` parquet, ``run.json``) as a result."""
    need = ("requests.parquet", "visits.parquet", "run.json")
    missing = [n for n in need if not (folder / n).is_file()]
    if missing:
        raise ValueError(f"{folder}: not a finished load run (missing {', '.join(missing)})")
    meta = json.loads((folder / "run.json").read_text())
    summary = folder / "summary.json"

    def table(name: str) -> pd.DataFrame:
        f = folder / f"{name}.parquet"
        return pd.read_parquet(f) if f.is_file() else pd.DataFrame()

    return LoadResult(
        t0=float(meta["t0_unix_s"]),
        requests=table("requests"),
        visits=table("visits"),
        per_second=table("per_second"),
        metrics=table("metrics"),
        batch=pd.DataFrame(),
        summary=json.loads(summary.read_text()) if summary.is_file() else {},
        wall_s=float(meta.get("duration_s", 0.0)),
    )


def replica_shares(scenario: Scenario, factor: float) -> dict[str, float]:
    """Host cores of a stage replica (one single-threaded process) on the testbed.

    Control runs move replicas between servers, so this needs one server size.
    """
    sizes = {replica_speed(s.cpu_cores, s.cpu_speed, factor) for s in scenario.servers}
    if len(sizes) != 1:
        raise ValueError(
            f"{scenario.name}: servers give replicas different CPU shares {sorted(sizes)}; "
            "the calibrated replay needs one server size"
        )
    share = sizes.pop()
    return {c.name: share for c in scenario.components if c.is_stage}


def calibrated_twin(
    scenario: Scenario,
    scenario_file: Path,
    runs: list[tuple[Path, Workload]],
    factor: float,
    rate_per_s: float | None = None,
) -> tuple[Scenario, cal.Calibration]:
    """The scenario calibrated on the load runs of ``runs`` (load-run folder, its workload).

    ``scenario``: as the testbed ran it (rates scaled, servers unscaled);
    ``factor``: the testbed's CPU factor; ``rate_per_s``: the per-request overhead
    at this offered rate (:func:`calibrate.calibration.overhead_at`: it grows with
    load) instead of the fit runs' pooled one. Returns the scenario to simulate and
    the calibration.
    """
    if not runs:
        raise ValueError("calibrating the replay needs at least one other control run")
    shares = replica_shares(scenario, factor)
    fits = [(load_result(folder), w) for folder, w in runs]
    calibration = fit_run_calibration(scenario, scenario_file, fits, shares)
    sc, untouched = cal.calibrated_scenario(scenario, calibration, shares, rate_per_s)
    if untouched:
        # not served in any run: the manifest time at the replica's share (the view's)
        comps = []
        for c in sc.components:
            slow = 1.0 / shares.get(c.name, 1.0)
            vs = [
                v.model_copy(update={"service_time": cal.scale_service_time(v.service_time, slow)})
                if f"{c.name}/{v.name}" in untouched
                else v
                for v in c.variants
            ]
            comps.append(c.model_copy(update={"variants": vs}))
        sc = Scenario.model_validate(sc.model_copy(update={"components": comps}).model_dump())
    return sc, calibration
