"""calibrate.quota: model and server CPU from a run's counters, and the twin under a quota."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from calibrate import calibration as cal
from calibrate.fit import fit_variant
from calibrate.quota import quota_scenario, stage_cpu
from twin.criteria import stage_capacity_rps
from twin.load import load_deployment, load_scenario
from twin.spec import Scenario

EXAMPLE = Path("examples/digits-pipeline.yaml")
DEPLOYMENT = Path("examples/digits-pipeline.deployment.yaml")


def encoder_run(
    folder: Path, rate: float, seconds: float = 20.0, stall: float = 1.0, speed: float = 0.9
) -> Path:
    """A run's metrics.parquet: the encoder alone on node-2, 3 ms of model CPU per item
    (batch 1), 0.4 ms of server CPU per call, 0.01 idle cores; wall = CPU / speed × stall."""
    items = rate * seconds
    model = items * 0.003
    counters = {
        ("agent:node-2", "node_cpu_seconds"): model + items * 0.0004 + 0.01 * seconds,
        ("encoder-node-2-2", "stage_compute_cpu_seconds_total"): model,
        ("encoder-node-2-2", "stage_items_total"): items,
        ("encoder-node-2-2", "stage_calls_total"): items,
        ("encoder-node-2-2", "stage_batch_size_count"): items,
        ("encoder-node-2-2", "stage_service_seconds_sum"): model / speed * stall,
    }
    rows = [
        {"t": t, "target": tgt, "metric": m, "labels": "", "value": v * t / seconds}
        for (tgt, m), v in counters.items()
        for t in (0.0, seconds)
    ]
    folder.mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(folder / "metrics.parquet")
    return folder


def test_stage_cpu_separates_model_server_idle_and_host_speed(tmp_path: Path) -> None:
    dep = load_deployment(DEPLOYMENT)
    runs = [encoder_run(tmp_path / "a", 30), encoder_run(tmp_path / "b", 120, stall=1.6)]
    cpu = stage_cpu(runs, dep)
    assert set(cpu) == {"encoder"}  # the other nodes have no counters here
    enc = cpu["encoder"]
    assert abs(enc.batch_ms - 3.0) < 1e-6 and abs(enc.per_item_ms - 3.0) < 1e-6
    assert abs(enc.per_call_ms - 0.4) < 1e-6
    assert abs(enc.idle_cores - 0.01) < 1e-6
    # host speed from the lighter run, where the quota did not stall the model
    assert abs(enc.host_speed - 0.9) < 1e-9


def test_quota_scenario_gives_the_stage_cpu_work_and_its_node_the_quota(tmp_path: Path) -> None:
    sc, dep = load_scenario(EXAMPLE), load_deployment(DEPLOYMENT)
    rng = np.random.default_rng(0)
    fits = [
        fit_variant(
            np.ones(50, dtype=int),
            rng.lognormal(np.log(ms), 0.1, 50),
            component=c,
            variant=v,
            cpu_share=0.5,
        )
        for c, v, ms in (
            ("denoise", "d-small", 0.2),
            ("encoder", "e-large", 4.5),
            ("classifier", "c-mlp", 0.1),
        )
    ]
    calibration = cal.build(fits, sc)
    runs = [encoder_run(tmp_path / "a", 30), encoder_run(tmp_path / "b", 120, stall=1.6)]
    cpu = stage_cpu(runs, dep)
    twin = quota_scenario(sc, calibration, dep, cpu, {"encoder": 0.5})
    enc = twin.component("encoder")
    st = enc.variant("e-large").service_time
    assert abs(st.batch_mean_ms(1) - 3.0 / 0.9) < 1e-6  # CPU at the host's speed, not wall
    assert enc.server_overhead is not None
    assert abs(enc.server_overhead.per_item_ms - 0.4 / 0.9) < 1e-6
    # each machine gets its own quota: only node-2 (the encoder's) had counters here
    quota = {s.name: s.cpu_quota_cores for s in twin.servers}
    assert quota["node-1"] is None and quota["node-3"] is None
    assert abs(quota["node-2"] - 0.49 / 0.9) < 1e-6
    assert twin.server_instances() == sc.server_instances()
    # capacity: (quota − idle) over CPU per item, in host CPU: 0.49 / 3.4 ms
    assert abs(stage_capacity_rps(twin, dep, "encoder") - 490 / 3.4) < 1e-6


def _amortised_run(folder: Path, rate: float, seconds: float = 20.0) -> Path:
    """A run whose node spends 0.02 idle cores and 3.2 ms per item at the margin, with
    3.0 ms of model CPU per item: its CPU per item falls with the load (as the testbed's
    does, 3.9 → 3.4 ms from 25 to 120 items/s)."""
    items = rate * seconds
    counters = {
        ("agent:node-2", "node_cpu_seconds_total"): 0.02 * seconds + 0.0032 * items,
        ("encoder-node-2-2", "stage_compute_cpu_seconds_total"): items * 0.003,
        ("encoder-node-2-2", "stage_items_total"): items,
        ("encoder-node-2-2", "stage_calls_total"): items,
        ("encoder-node-2-2", "stage_batch_size_count"): items,
        ("encoder-node-2-2", "stage_service_seconds_sum"): items * 0.0033,
    }
    rows = [
        {"t": t, "target": tgt, "metric": m, "labels": "", "value": v * t / seconds}
        for (tgt, m), v in counters.items()
        for t in (0.0, seconds)
    ]
    folder.mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(folder / "metrics.parquet")
    return folder


def _encoder_calibration(sc: Scenario, seed: int, items: int) -> cal.Calibration:
    """A calibration whose encoder e-large serves ``items`` batch-1 items of about 4.5 ms."""
    rng = np.random.default_rng(seed)
    fit = fit_variant(
        np.ones(items, dtype=int),
        rng.lognormal(np.log(4.5), 0.1, items),
        component="encoder",
        variant="e-large",
        cpu_share=0.5,
    )
    return cal.build([fit], sc)


def test_the_capacity_is_the_nodes_marginal_cpu_over_all_runs(tmp_path: Path) -> None:
    sc, dep = load_scenario(EXAMPLE), load_deployment(DEPLOYMENT)
    calibration = _encoder_calibration(sc, seed=1, items=50)
    runs = [_amortised_run(tmp_path / f"r{r}", r) for r in (25, 50, 100, 140)]
    enc = stage_cpu(runs, dep)["encoder"]
    assert enc.capacity_scale != 1.0
    assert abs(enc.idle_cores - 0.02) < 1e-6
    # model + server CPU per item at the margin: 3.2 ms, whatever the split
    per_item = (enc.per_item_ms + enc.per_call_ms * enc.calls_per_item) / 1e3
    assert abs(per_item - 0.0032) < 1e-9
    twin = quota_scenario(sc, calibration, dep, {"encoder": enc}, {"encoder": 0.5})
    assert abs(stage_capacity_rps(twin, dep, "encoder") - 0.48 / 0.0032) < 1e-6
    # the light-load service is still the measured wall time, not the scaled CPU
    st = twin.component("encoder").variant("e-large").service_time
    assert abs(st.batch_mean_ms(1) - 3.3) < 1e-6
    # which runs are held out moves the capacity by little: it is one line
    caps = []
    for i in range(len(runs)):
        held = stage_cpu(runs[:i] + runs[i + 1 :], dep)
        caps.append(
            stage_capacity_rps(quota_scenario(sc, calibration, dep, held, 0.5), dep, "encoder")
        )
    assert max(caps) - min(caps) < 1e-6
    # runs at one load give no slope: the per-run fit stands
    flat = stage_cpu(
        [_amortised_run(tmp_path / "f1", 60), _amortised_run(tmp_path / "f2", 61)], dep
    )
    assert flat["encoder"].capacity_scale == 1.0


def test_quota_scenario_carries_the_kernels_leftover_runtime(tmp_path: Path) -> None:
    sc, dep = load_scenario(EXAMPLE), load_deployment(DEPLOYMENT)
    cpu = stage_cpu([encoder_run(tmp_path / "a", 30), encoder_run(tmp_path / "b", 120)], dep)
    calibration = _encoder_calibration(sc, seed=2, items=20)
    twin = quota_scenario(sc, calibration, dep, cpu, 0.5)
    assert twin.settings.cpu_quota_carry_ms == 1.0
    assert twin.settings.cpu_quota_tick_ms == 4.0  # the kernel enforces it at HZ=250's tick
    assert twin.component("encoder").server_overhead.concurrent  # the server's own thread
    none = quota_scenario(sc, calibration, dep, cpu, 0.5, carry_ms=0.0, tick_ms=0.0)
    assert none.settings.cpu_quota_carry_ms == 0.0
    assert none.settings.cpu_quota_tick_ms == 0.0


def _scraped_run(folder: Path, rate: float, node_cores: float, seconds: int = 12) -> Path:
    """A run scraped every second: the encoder serves ``rate`` items/s (batch 1, 3.0 ms
    of model CPU each) while its node spends ``node_cores``; the stage is scraped 30 ms
    after the agent, as the testbed's scraper does."""
    per_s = {
        ("agent:node-2", "node_cpu_seconds_total"): node_cores,
        ("encoder-node-2-2", "stage_compute_cpu_seconds_total"): 0.003 * rate,
        ("encoder-node-2-2", "stage_items_total"): rate,
        ("encoder-node-2-2", "stage_calls_total"): rate,
        ("encoder-node-2-2", "stage_batch_size_count"): rate,
        ("encoder-node-2-2", "stage_service_seconds_sum"): 0.0033 * rate,
    }
    rows = [
        {"t": t, "target": tgt, "metric": m, "labels": "", "value": v * t}
        for (tgt, m), v in per_s.items()
        for t in np.arange(seconds + 1) + (0.0 if tgt.startswith("agent") else 0.03)
    ]
    folder.mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(folder / "metrics.parquet")
    return folder


def test_the_quota_bound_cpu_per_item_sets_the_capacity(tmp_path: Path) -> None:
    """Compose's nodes spend more per item while their quota binds than the line through
    the runs says; the bound factor, fitted from those scrape intervals, shrinks the
    twin's quota so its capacity is the items a bound quota serves."""
    sc, dep = load_scenario(EXAMPLE), load_deployment(DEPLOYMENT)
    calibration = _encoder_calibration(sc, seed=3, items=50)
    light = [_scraped_run(tmp_path / f"r{r}", r, 0.02 + 0.0032 * r) for r in (25, 50, 100)]
    # backlogged: 140 items/s at 0.49 cores, 3.36 ms above idle against the line's 3.2
    runs = [*light, _scraped_run(tmp_path / "sat", 140, 0.49)]
    enc = stage_cpu(runs, dep, 0.5)["encoder"]
    assert enc.bound_s > 10 and enc.bound_factor > 1.01
    twin = quota_scenario(sc, calibration, dep, {"encoder": enc}, 0.5)
    cap = stage_capacity_rps(twin, dep, "encoder")
    # a bound quota's items, scaled from the intervals' 0.49 cores to the whole quota
    # (within the 30 ms by which the first interval's items are read late: 0.25 %)
    assert abs(cap / (140 * (0.5 - enc.idle_cores) / (0.49 - enc.idle_cores)) - 1) < 0.004
    # the light-load service is unchanged: the extra CPU is spent only while bound
    st = twin.component("encoder").variant("e-large").service_time
    assert abs(st.batch_mean_ms(1) - 3.3) < 1e-6
    # without the quota the bound intervals are not found: the line alone
    assert stage_cpu(runs, dep)["encoder"].bound_factor == 1.0
    # a node whose bound CPU per item is the line's (the local backend): factor 1
    on_line = [*light, _scraped_run(tmp_path / "line", 143.75, 0.02 + 0.0032 * 143.75)]
    assert abs(stage_cpu(on_line, dep, 0.5)["encoder"].bound_factor - 1.0) < 0.004
