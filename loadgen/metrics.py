"""Metric collection: scrape every service's ``/metrics`` into one long table.

A background thread GETs each target's Prometheus text page every
``interval_s`` and parses it with ``prometheus_client.parser``; every sample
becomes a row ``t, target, metric, labels, value`` (``t`` in s from the run's
time zero, ``labels`` as sorted JSON). Like Prometheus, each scrape also adds
``up`` (1 answered, 0 not). Whatever the services export (CPU seconds, resident
memory, queue lengths, batch-size histograms, instance counts) is kept as is;
:func:`rate` turns counters such as ``process_cpu_seconds_total`` into
per-second rates. :func:`prometheus_config` writes the same targets as a
``prometheus.yml`` a real Prometheus server can scrape. Each round also records
the host's own CPU counters (target ``host``, :mod:`loadgen.host`): steal and
pressure tell a disturbed host from a slow service.
"""

from __future__ import annotations

import json
import threading
import time
from urllib.parse import urlsplit

import httpx
import pandas as pd
import yaml
from prometheus_client.parser import text_string_to_metric_families

from loadgen.host import HOST_TARGET, host_samples
from testbed.api import METRICS_PATH
from testbed.services.guard import token_headers

METRIC_COLUMNS = ("t", "target", "metric", "labels", "value")


def parse_samples(text: str) -> list[tuple[str, str, float]]:
    """``(sample name, labels JSON, value)`` of every sample in a Prometheus text page."""
    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.append((s.name, json.dumps(s.labels, sort_keys=True), float(s.value)))
    return out


class Scraper:
    """Scrapes ``targets`` (name → base URL) every ``interval_s`` s in a daemon thread.

    ``host=True`` adds the host's counters (target ``host``) to every round.
    """

    def __init__(
        self,
        targets: dict[str, str],
        interval_s: float = 1.0,
        t0: float | None = None,
        host: bool = True,
    ) -> None:
        self.targets = dict(targets)
        self.interval_s = interval_s
        self.host = host
        self.t0 = time.time() if t0 is None else t0
        self.rows: list[tuple[float, str, str, str, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def scrape_once(self, client: httpx.Client) -> None:
        """One round over every target, then the host's counters."""
        for name, base in self.targets.items():
            t = time.time() - self.t0
            # Targets behind a gateway's admin proxy (the Compose backend publishes only
            # the gateway) need the testbed's admin token; nothing else is sent it.
            headers = token_headers() if "/admin/" in base else {}
            try:
                resp = client.get(base.rstrip("/") + METRICS_PATH, headers=headers)
                resp.raise_for_status()
                samples = parse_samples(resp.text)
            except (httpx.HTTPError, ValueError):
                self.rows.append((t, name, "up", "{}", 0.0))
                continue
            self.rows.append((t, name, "up", "{}", 1.0))
            self.rows.extend((t, name, m, lab, v) for m, lab, v in samples)
        if self.host:
            t = time.time() - self.t0
            self.rows.extend((t, HOST_TARGET, m, lab, v) for m, lab, v in host_samples())

    def _loop(self) -> None:
        with httpx.Client(timeout=max(self.interval_s, 0.5)) as client:
            next_at = time.monotonic()
            while not self._stop.is_set():
                self.scrape_once(client)
                next_at += self.interval_s
                self._stop.wait(max(next_at - time.monotonic(), 0.0))

    def start(self) -> Scraper:
        if self.targets or self.host:
            self._thread = threading.Thread(target=self._loop, name="scraper", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> pd.DataFrame:
        """Stop scraping; returns every sample collected."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        return self.frame()

    def frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(list(self.rows), columns=list(METRIC_COLUMNS))
        for c in ("target", "metric"):
            frame[c] = frame[c].astype("category")
        return frame


def rate(metrics: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per-second rate of a counter per target and label set: ``t, target, labels, rate``.

    For ``process_cpu_seconds_total`` the rate is the cores in use.
    """
    rows = metrics[metrics["metric"] == metric].sort_values("t")
    parts = []
    for (target, labels), g in rows.groupby(["target", "labels"], observed=True):
        dt = g["t"].diff()
        dv = g["value"].diff().clip(lower=0)  # a counter reset (restart) is not negative work
        parts.append(
            pd.DataFrame(
                {"t": g["t"], "target": target, "labels": labels, "rate": (dv / dt)}
            ).dropna()
        )
    if not parts:
        return pd.DataFrame(columns=["t", "target", "labels", "rate"])
    return pd.concat(parts, ignore_index=True)


def prometheus_config(targets: dict[str, str], interval_s: float = 1.0) -> str:
    """``prometheus.yml`` scraping the same targets (one job per target)."""
    jobs = []
    for name, base in targets.items():
        url = urlsplit(base)
        jobs.append(
            {
                "job_name": name,
                "scheme": url.scheme or "http",
                "metrics_path": (url.path.rstrip("/") + METRICS_PATH),
                "static_configs": [{"targets": [url.netloc], "labels": {"service": name}}],
            }
        )
    # Prometheus durations are integers with a unit, and the timeout may not exceed the interval.
    every = f"{max(round(interval_s * 1000), 1)}ms"
    config = {
        "global": {"scrape_interval": every, "scrape_timeout": every},
        "scrape_configs": jobs,
    }
    return yaml.safe_dump(config, sort_keys=False)
