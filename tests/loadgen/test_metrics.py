"""Metric collection: Prometheus text → long table, counter rates, prometheus.yml."""

from __future__ import annotations

import json

import httpx
import pandas as pd
import pytest
import yaml
from fake_gateway import FakeGateway

from loadgen.metrics import Scraper, parse_samples, prometheus_config, rate

PAGE = """# HELP stage_queue_length requests waiting
# TYPE stage_queue_length gauge
stage_queue_length{stage="encoder"} 3.0
# HELP process_cpu_seconds_total CPU time
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 12.5
# HELP stage_batch_size batch sizes
# TYPE stage_batch_size histogram
stage_batch_size_bucket{le="4.0"} 2.0
stage_batch_size_bucket{le="+Inf"} 5.0
stage_batch_size_count 5.0
stage_batch_size_sum 21.0
"""


def test_parse_samples_keeps_names_labels_and_values():
    samples = {(m, lab): v for m, lab, v in parse_samples(PAGE)}
    assert samples[("stage_queue_length", json.dumps({"stage": "encoder"}))] == 3.0
    assert samples[("process_cpu_seconds_total", "{}")] == 12.5
    assert samples[("stage_batch_size_bucket", json.dumps({"le": "+Inf"}))] == 5.0
    assert samples[("stage_batch_size_sum", "{}")] == 21.0


def test_scraper_records_up_and_samples_and_marks_dead_targets():
    with FakeGateway() as gw:
        httpx.post(gw.url + "/v1/infer", json={"id": "1", "image": [1.0] * 64}).raise_for_status()
        dead = "http://127.0.0.1:9"  # discard port: nothing listens
        scraper = Scraper({"gateway": gw.url, "dead": dead}, interval_s=0.5)
        with httpx.Client(timeout=2) as client:
            scraper.scrape_once(client)
            scraper.scrape_once(client)
    frame = scraper.frame()
    up = frame[frame["metric"] == "up"].groupby("target", observed=True)["value"].max()
    assert up["gateway"] == 1.0 and up["dead"] == 0.0
    served = frame[(frame["metric"] == "gateway_requests_total") & (frame["target"] == "gateway")]
    assert len(served) == 2 and served["value"].max() == 1.0
    assert (frame["target"] == "dead").sum() == 2  # only the two `up` rows


def test_counter_rate_per_target_ignores_resets():
    frame = pd.DataFrame(
        {
            "t": [0.0, 1.0, 2.0, 0.0, 2.0, 3.0],
            "target": ["a", "a", "a", "b", "b", "b"],
            "metric": ["process_cpu_seconds_total"] * 6,
            "labels": ["{}"] * 6,
            "value": [1.0, 1.5, 2.5, 10.0, 11.0, 0.5],
        }
    )
    r = rate(frame, "process_cpu_seconds_total")
    assert r[r["target"] == "a"]["rate"].tolist() == [0.5, 1.0]
    assert r[r["target"] == "b"]["rate"].tolist() == [0.5, 0.0]


def test_prometheus_config_scrapes_the_same_targets():
    text = prometheus_config(
        {"gateway": "http://127.0.0.1:8000", "node-1": "http://127.0.0.1:8101/proxy"}, 0.5
    )
    cfg = yaml.safe_load(text)
    assert cfg["global"] == {"scrape_interval": "500ms", "scrape_timeout": "500ms"}
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert jobs["gateway"]["static_configs"][0]["targets"] == ["127.0.0.1:8000"]
    assert jobs["gateway"]["metrics_path"] == "/metrics"
    assert jobs["node-1"]["metrics_path"] == "/proxy/metrics"


@pytest.mark.parametrize("interval", [0.05])
def test_background_scraper_collects_several_rounds(interval):
    import time

    with FakeGateway() as gw:
        scraper = Scraper({"gateway": gw.url}, interval_s=interval).start()
        deadline = time.monotonic() + 10
        while (scraper.frame()["metric"] == "up").sum() < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        frame = scraper.stop()
    ups = frame[frame["metric"] == "up"]
    assert len(ups) >= 3 and ups["t"].is_monotonic_increasing
