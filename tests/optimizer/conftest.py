"""Shared fixtures: the small 4 × 3 placement instance and a cheap fidelity."""

from __future__ import annotations

from pathlib import Path

import pytest

from optimizer.evaluation import Fidelity
from optimizer.genome import Genome
from twin.load import load_scenario
from twin.spec import Scenario

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SMALL = EXAMPLES / "small-placement.yaml"
EDGE = EXAMPLES / "edge-cloud.yaml"

# Two minutes of simulated time, one replication: enough to exercise every
# path (one retraining, ~120 requests) at ~10 ms per candidate.
CHEAP = Fidelity(workload=None, horizon_s=120.0, replications=1, seed=3)


@pytest.fixture(scope="session")
def small() -> Scenario:
    return load_scenario(SMALL)


@pytest.fixture(scope="session")
def edge() -> Scenario:
    return load_scenario(EDGE)


@pytest.fixture()
def genome(small: Scenario) -> Genome:
    return Genome(small)
