"""Fixtures: the 3-stage chain of examples/pipelines and tiny environments."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from twin.load import load_deployment, load_scenario
from twin.spec import Scenario

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    # Two shared cores: torch's default thread pool only adds contention here.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def chain() -> Scenario:
    return load_scenario(EXAMPLES / "pipelines" / "chain-3x3.yaml")


@pytest.fixture(scope="session")
def chain2() -> Scenario:
    return load_scenario(EXAMPLES / "pipelines" / "chain-2x2.yaml")


@pytest.fixture(scope="session")
def digits() -> Scenario:
    return load_scenario(EXAMPLES / "digits-pipeline.yaml")


@pytest.fixture(scope="session")
def edge() -> Scenario:
    return load_scenario(EXAMPLES / "edge-cloud.yaml")


@pytest.fixture(scope="session")
def edge_base():
    return load_deployment(EXAMPLES / "edge-cloud.deployment.yaml")
