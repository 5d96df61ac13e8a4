"""A stand-in testbed for the lab's tests: a fake gateway honouring testbed.api."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "loadgen"))
from fake_gateway import FakeGateway

from testbed.client import Targets


class FakeTestbed:
    """Records the calls; ``fail_on_up`` makes ``up`` start the gateway and then fail.

    ``gateway_server`` is the emulated server the gateway's metrics are attributed to,
    ``replica_nodes`` the gateway replica → server map the testbed reports.
    """

    def __init__(
        self,
        fail_on_up: bool = False,
        gateway_server: str = "node-1",
        replica_nodes: dict[str, str] | None = None,
    ) -> None:
        self.calls: list[str] = []
        self.fail_on_up = fail_on_up
        self.gateway_server = gateway_server
        self.replica_nodes = replica_nodes or {}
        self.gateway: FakeGateway | None = None

    def build_models(self) -> None:
        self.calls.append("build")

    def up(self, scenario: Path, deployment: Path) -> Targets:
        self.calls.append("up")
        self.gateway = FakeGateway().__enter__()
        if self.fail_on_up:
            raise RuntimeError("node agent did not become healthy")
        url = self.gateway.url
        return Targets(
            gateway=url,
            metrics={"gateway": url},
            server_of={"gateway": self.gateway_server},
            replica_nodes=dict(self.replica_nodes),
            factor=0.5,
        )

    def down(self) -> None:
        self.calls.append("down")
        if self.gateway is not None:
            self.gateway.__exit__(None, None, None)
            self.gateway = None
