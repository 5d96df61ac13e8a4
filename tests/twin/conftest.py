from __future__ import annotations

from pathlib import Path

import pytest

from twin.load import load_deployment, load_scenario
from twin.spec import Deployment, Scenario

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="session")
def edge_cloud() -> tuple[Scenario, Deployment]:
    return (
        load_scenario(EXAMPLES / "edge-cloud.yaml"),
        load_deployment(EXAMPLES / "edge-cloud.deployment.yaml"),
    )


@pytest.fixture(scope="session")
def digits() -> tuple[Scenario, Deployment]:
    return (
        load_scenario(EXAMPLES / "digits-pipeline.yaml"),
        load_deployment(EXAMPLES / "digits-pipeline.deployment.yaml"),
    )


def one_stage(**component: object) -> Scenario:
    """A request pipeline of one stage on one 8-core machine, for engine tests."""
    comp = {
        "name": "stage",
        "max_batch": 16,
        "max_replicas": 8,
        "variants": [
            {
                "name": "fast",
                "accuracy": 0.9,
                "cpu_cores": 1,
                "service_time": {"kind": "constant", "ms": 10, "per_item_ms": 1},
            },
            {
                "name": "slow",
                "accuracy": 0.95,
                "cpu_cores": 1,
                "service_time": {"kind": "constant", "ms": 40, "per_item_ms": 4},
            },
        ],
    }
    comp.update(component)
    return Scenario.model_validate(
        {
            "name": "one-stage",
            "servers": [{"name": "m", "cpu_cores": 8, "ram_gb": 32}],
            "components": [comp],
            "processes": [
                {
                    "name": "req",
                    "kind": "request",
                    "steps": [{"name": "s", "component": "stage"}],
                    "arrivals": {"kind": "poisson", "rate_per_s": 20},
                }
            ],
            "settings": {"batch_timeout_ms": 5},
        }
    )
