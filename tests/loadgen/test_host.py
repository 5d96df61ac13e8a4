"""The host's CPU counters: parsed from /proc files, turned into per-interval rates."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from loadgen.host import (
    CPU_SECONDS,
    HOST_TARGET,
    PRESSURE_SECONDS,
    PROBE_SECONDS,
    host_samples,
    host_series,
    host_summary,
)
from loadgen.metrics import Scraper

TICK = os.sysconf("SC_CLK_TCK")


def _stat(user: int, idle: int, steal: int) -> str:
    # user nice system idle iowait irq softirq steal guest guest_nice
    return f"cpu  {user} 0 0 {idle} 0 0 0 {steal} 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n"


def _psi(total_us: int) -> str:
    return (
        f"some avg10=1.00 avg60=0.50 avg300=0.10 total={total_us}\n"
        "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
    )


def _frame(rounds: list[tuple[float, str, str]], tmp_path) -> pd.DataFrame:
    rows = []
    for t, stat, psi in rounds:
        (tmp_path / "stat").write_text(stat)
        (tmp_path / "psi").write_text(psi)
        samples = host_samples(tmp_path / "stat", tmp_path / "psi")
        rows += [(t, HOST_TARGET, m, lab, v) for m, lab, v in samples]
    return pd.DataFrame(rows, columns=["t", "target", "metric", "labels", "value"])


def test_samples_read_every_mode_in_seconds_and_the_pressure_total(tmp_path):
    (tmp_path / "stat").write_text(_stat(3 * TICK, 5 * TICK, TICK // 2))
    (tmp_path / "psi").write_text(_psi(2_500_000))
    got = {(m, lab): v for m, lab, v in host_samples(tmp_path / "stat", tmp_path / "psi")}
    assert got[(CPU_SECONDS, '{"mode": "user"}')] == 3.0
    assert got[(CPU_SECONDS, '{"mode": "idle"}')] == 5.0
    assert got[(CPU_SECONDS, '{"mode": "steal"}')] == pytest.approx(0.5, abs=1 / TICK)
    assert got[(PRESSURE_SECONDS, "{}")] == 2.5
    assert len([k for k in got if k[0] == CPU_SECONDS]) == 8  # the modes, no per-CPU rows
    probe = {lab: v for (m, lab), v in got.items() if m == PROBE_SECONDS}
    assert 0 < probe['{"clock": "cpu"}'] <= probe['{"clock": "wall"}'] + 1e-3


def test_missing_files_leave_their_counters_out(tmp_path):
    left = host_samples(tmp_path / "no-stat", tmp_path / "no-psi")
    assert {m for m, _, _ in left} == {PROBE_SECONDS}  # the probe needs no file
    (tmp_path / "stat").write_text(_stat(1, 1, 0))
    assert {m for m, _, _ in host_samples(tmp_path / "stat", tmp_path / "no-psi")} == {
        CPU_SECONDS,
        PROBE_SECONDS,
    }


def test_series_turns_counters_into_cores_and_a_pressure_share(tmp_path):
    # 2 s apart: 1.0 s more user, 2.0 s more idle, 1.0 s more steal (of 2 CPUs × 2 s),
    # then 1 s apart with nothing stolen; pressure 0.5 s, then 1.0 s
    frame = _frame(
        [
            (0.0, _stat(10 * TICK, 10 * TICK, 0), _psi(0)),
            (2.0, _stat(11 * TICK, 12 * TICK, TICK), _psi(500_000)),
            (3.0, _stat(13 * TICK, 12 * TICK, TICK), _psi(1_500_000)),
        ],
        tmp_path,
    )
    s = host_series(frame)
    assert s["t"].tolist() == [2.0, 3.0]
    assert s["busy_cores"].tolist() == pytest.approx([0.5, 2.0])
    assert s["steal_cores"].tolist() == pytest.approx([0.5, 0.0])
    assert s["pressure"].tolist() == pytest.approx([0.25, 1.0])
    assert s["probe_ms"].gt(0).all()
    only_last = {k: v for k, v in host_summary(frame, t_from=2.0).items() if k != "probe_ms"}
    assert only_last == pytest.approx({"busy_cores": 2.0, "steal_cores": 0.0, "pressure": 1.0})


def test_a_run_without_host_counters_has_an_empty_series_and_nan_summary():
    frame = Scraper({}, host=False).frame()
    assert host_series(frame).empty
    assert all(v != v for v in host_summary(frame).values())  # NaN


def test_scraper_records_the_host_each_round():
    scraper = Scraper({}, interval_s=0.05)
    scraper.scrape_once(None)  # no targets: the client is never used
    scraper.scrape_once(None)
    frame = scraper.frame()
    host = frame[frame["target"] == HOST_TARGET]
    if not os.path.exists("/proc/stat"):
        pytest.skip("no /proc on this system")
    assert host["t"].nunique() == 2
    steal = host[host["labels"] == '{"mode": "steal"}']["value"]
    assert steal.is_monotonic_increasing and len(steal) == 2
