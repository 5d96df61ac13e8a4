"""The testbed's client contract: everything that drives a running testbed goes through here.

``up`` → :class:`Targets` (gateway, scrape targets, replica → server map, the
capacity factor, the trainer as a batch hook), ``apply`` a new deployment,
``status``, ``down`` (safe after a half-way ``up``), and a load run in the
background. :class:`CliTestbed` calls the testbed's own CLI in subprocesses,
so the caller never hosts a service (and never imports Locust); tests hand
the lab a fake that follows the :class:`Testbed` protocol.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from twin.spec import Deployment, Scenario

Hook = Callable[[str, int], None]
"""Runs one execution of batch process ``name`` (execution ``pid``); raises on failure."""


def command_hook(argv: Sequence[str], timeout_s: float = 600.0) -> Hook:
    """A hook that runs ``argv`` (e.g. the testbed's trainer job) to completion."""

    def run(name: str, pid: int) -> None:
        subprocess.run(
            list(argv), check=True, timeout=timeout_s, capture_output=True, stdin=subprocess.DEVNULL
        )

    return run


@dataclass
class Targets:
    """What a running testbed offers the load generator (URLs without trailing slash)."""

    gateway: str
    metrics: dict[str, str] = field(default_factory=dict)  # scrape target → base URL
    server_of: dict[str, str] = field(default_factory=dict)  # scrape target → emulated server
    replica_nodes: dict[str, str] = field(default_factory=dict)  # gateway replica → server
    factor: float | None = None  # host cores per emulated core, as the testbed recorded it
    notes: list[str] = field(default_factory=list)
    batch_hook: Hook | None = None  # runs one batch-process execution (e.g. the trainer)


class Testbed(Protocol):
    """The part of the testbed the lab drives."""

    def build_models(self) -> None: ...

    def up(self, scenario: Path, deployment: Path) -> Targets: ...

    def down(self) -> None: ...


def targets_from_status(status: dict, endpoints: dict | None = None) -> Targets:
    """Scrape targets, replica → server map and trainer hook of a running testbed.

    ``status``: ``testbed status --json``; ``endpoints``: the ``endpoints`` of
    ``testbed up --json`` (node agents, registry, feature store), when known.
    """
    endpoints = endpoints or {}
    gateway = status["gateway"].rstrip("/")
    metrics = {"gateway": gateway}
    server_of = {"gateway": "platform"}
    replica_nodes = {}
    host = gateway.split("//", 1)[-1].rsplit(":", 1)[0]
    nodes = endpoints.get("nodes") or {}
    for inst in status.get("instances", []):
        if endpoints.get("node_hosts") and inst["node"] in nodes:
            # instances in containers are reached through their node agent (Compose)
            metrics[inst["name"]] = (
                f"{nodes[inst['node']].rstrip('/')}/instances/{inst['name']}/http"
            )
        else:
            metrics[inst["name"]] = f"http://{host}:{inst['port']}"
        server_of[inst["name"]] = inst["node"]
        replica_nodes[inst["name"]] = inst["node"]
    for service in ("registry", "features"):
        if endpoints.get(service):
            metrics[service] = endpoints[service].rstrip("/")
            server_of[service] = "platform"
    for node, url in (endpoints.get("nodes") or {}).items():
        metrics[f"agent:{node}"] = url.rstrip("/")
        server_of[f"agent:{node}"] = node
    hook = None
    if endpoints.get("registry") and endpoints.get("features"):
        # the scenario's batch processes (retraining) run the testbed's trainer job
        hook = command_hook(
            [
                sys.executable,
                "-m",
                "testbed.services.trainer",
                "--registry",
                endpoints["registry"],
                "--features",
                endpoints["features"],
                "--steps",
                "50",
            ]
        )
    return Targets(
        gateway=gateway,
        metrics=metrics,
        server_of=server_of,
        replica_nodes=replica_nodes,
        factor=status.get("factor"),
        notes=[f"backend {status.get('backend', '?')}"],
        batch_hook=hook,
    )


def planned_factor(scenario: Scenario, host_cores: float | None = None) -> float:
    """The CPU factor ``testbed up`` will give ``scenario`` on this host (its capacity plan)."""
    from testbed.capacity import plan_capacity

    return plan_capacity(scenario, host_cores).factor


def _env() -> dict[str, str]:
    return {**os.environ, "ORT_DISABLE_TELEMETRY": "1"}


def _last_line(res: subprocess.CompletedProcess[str]) -> str:
    return (res.stderr.strip().splitlines() or ["no message"])[-1]


class CliTestbed:
    """The testbed driven through ``mlops-twin testbed …`` in subprocesses.

    Services run in their own processes whatever happens here; ``down`` is safe to
    call when ``up`` failed half-way (the testbed's own ``down`` cleans up by state).
    ``log``: a file every command's output is appended to.
    """

    def __init__(
        self, backend: str = "local", state_dir: Path | None = None, log: Path | None = None
    ) -> None:
        self.backend, self.state_dir, self.log = backend, state_dir, log
        self.up_json: dict = {}  # the last ``testbed up --json`` answer

    def _cli(self, *args: str, timeout_s: float = 900.0) -> str:
        argv = [sys.executable, "-m", "testbed.cli", *args]
        if self.state_dir is not None and args[0] in ("up", "apply", "down", "status"):
            argv += ["--state-dir", str(self.state_dir)]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, env=_env())
        if self.log is not None:
            with self.log.open("a") as f:
                f.write(f"$ mlops-twin testbed {' '.join(args)}\n{res.stdout}{res.stderr}\n")
        if res.returncode != 0:
            raise RuntimeError(f"mlops-twin testbed {args[0]} failed: {_last_line(res)}")
        return res.stdout

    def build_models(self) -> None:
        """Build the model zoo (``testbed build-models``)."""
        self._cli("build-models")

    def up(self, scenario: Path, deployment: Path) -> Targets:
        """Start the testbed with ``deployment``; what it offers the load generator."""
        argv = ("up", str(scenario), "-d", str(deployment), "--backend", self.backend, "--json")
        self.up_json = json.loads(self._cli(*argv))
        if self.up_json.get("endpoints", {}).get("node_hosts"):
            # Compose: scrapes go through the gateway's admin proxy, which needs the
            # testbed's token in this process (and the load runs it starts).
            from testbed.backends.base import DEFAULT_STATE_DIR
            from testbed.services.guard import use_token

            use_token(self.state_dir or DEFAULT_STATE_DIR)
        return targets_from_status(self.status(), self.up_json.get("endpoints"))

    def apply(self, deployment: Path, timeout_s: float = 120.0) -> list[dict]:
        """Bring the running testbed to ``deployment`` without dropping requests.

        Returns the changes made: kind (variant, batch, replica-start, routes,
        replica-stop), stage and the seconds each took.
        """
        return json.loads(self._cli("apply", str(deployment), "--json", timeout_s=timeout_s))[
            "changes"
        ]

    def apply_live(self, deployment: Deployment) -> list[dict]:
        """:meth:`apply` in this process: for a controller that reconfigures every few
        seconds, where a CLI subprocess per change would cost ≈ 1 s of the host's CPU
        (interpreter start and imports) beside the load it measures."""
        from testbed.controller import Controller
        from twin.deployment import require_feasible

        if self.state_dir is None:
            raise RuntimeError("apply_live needs the testbed's state folder")
        controller = Controller.load(self.state_dir)
        require_feasible(controller.scenario, deployment)
        return controller.deploy(deployment)

    def status(self) -> dict:
        """``testbed status --json``: gateway, instances, capacity factor, backend."""
        return json.loads(self._cli("status", "--json"))

    def down(self) -> None:
        """Stop everything the testbed started."""
        self._cli("down", timeout_s=180.0)


class BackgroundLoad:
    """``mlops-twin load run`` of one scenario workload against ``gateway``, in the background.

    ``wait`` returns the run's one-line JSON summary (or the tail of its
    errors); ``stop`` ends it early. Either way the process is gone afterwards.
    """

    def __init__(
        self,
        scenario: Path,
        shape: str,
        gateway: str,
        out_dir: Path,
        duration_s: float,
        seed: int = 1,
        rate_scale: float = 1.0,
    ) -> None:
        self.argv = [
            sys.executable,
            "-m",
            "loadgen.cli",
            "run",
            "-s",
            str(scenario),
            "--shape",
            shape,
            "--target",
            gateway,
            "--out",
            str(out_dir),
            "--duration",
            str(duration_s),
            "--seed",
            str(seed),
            "--rate-scale",
            repr(float(rate_scale)),
            "--json",
        ]
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> BackgroundLoad:
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
        )
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self, timeout_s: float) -> str:
        """Wait for the run to end (at most ``timeout_s``); its summary line."""
        assert self.proc is not None, "start() first"
        out, err = self.proc.communicate(timeout=timeout_s)
        return out.strip().splitlines()[-1] if out.strip() else err[-400:]

    def stop(self) -> None:
        if self.running():
            assert self.proc is not None
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
