"""A stand-in testbed for calibrate's tests: a fake gateway honouring testbed.api."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "loadgen"))
from fake_gateway import FakeGateway

from calibrate.experiment import Targets


class FakeTestbed:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.gateway: FakeGateway | None = None

    def build_models(self) -> None:
        self.calls.append("build")

    def up(self, scenario: Path, deployment: Path) -> Targets:
        self.calls.append("up")
        self.gateway = FakeGateway().__enter__()
        url = self.gateway.url
        return Targets(gateway=url, metrics={"gateway": url}, server_of={"gateway": "node-1"},
                       factor=0.5)  # fmt: skip

    def down(self) -> None:
        self.calls.append("down")
        if self.gateway is not None:
            self.gateway.__exit__(None, None, None)
            self.gateway = None
