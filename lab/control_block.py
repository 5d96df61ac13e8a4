"""Several policies controlling one testbed, one after another (a block of repeats).

Bringing the testbed up and down costs more than a 40-s control cycle, so a block
brings it up once for a (workload, repeat) and runs every policy in turn. Before
each policy the deployment is reset to the same initial configuration, warmed
with a few requests, and waited on until no request is in flight; then its
replicas, variants and batch sizes and the empty queue are checked and recorded
beside the run (``start_check`` in its summary). A policy whose start differs
stops the block: its runs would not be comparable. The order of the policies
rotates from one repeat to the next, so no policy always runs first (on the
freshest testbed) or last.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from twin.console import err
from twin.load import dump_yaml
from twin.spec import Deployment

WARM_REQUESTS = 40  # through the gateway after a reset, 4 at a time (every replica gets some)
SETTLE_LIMIT_S = 30.0  # the longest wait for the queue to empty after a run
# Stage servers (uvicorn) close a keep-alive connection idle for 5 s; the gateway's
# client keeps one 30 s. A request sent on a connection the server is just closing
# fails (ServerDisconnected), the gateway marks that replica dead for 1 s, and a stage
# with one replica answers 503. The load's first request comes 3-5 s after the
# warm-up: inside that window (2 failed requests in 2 of 5 runs of a block). So the
# warm-up's connections are left to close first, and the load opens fresh ones, as
# on a testbed just brought up.
QUIET_S = 6.0


class BlockTestbed(Protocol):
    """What a block needs of a running testbed (``LiveBlockTestbed`` for the real one)."""

    def up(self, deployment: Path) -> Any: ...

    def down(self) -> None: ...

    def apply_live(self, deployment: Deployment) -> list[dict]: ...

    def instances(self) -> list[dict]:
        """Every serving replica: stage, node, variant, batch, healthy."""
        ...

    def outstanding(self) -> float:
        """Requests in flight at the gateway plus those outstanding at its replicas."""
        ...

    def warm(self, n: int) -> int:
        """``n`` requests through the gateway; how many did not answer 200."""
        ...


@dataclass
class BlockMember:
    """One policy's run in a block: its run, environments, decider factory and folder."""

    run: Any  # lab.control.ControlRun
    env: Any
    make_decider: Callable[[], Any]
    twin_env: Any
    target: Path


def rotated(policies: list[str], repeat: int) -> list[str]:
    """The policies in the order repeat ``repeat`` runs them (rotated by one per repeat)."""
    k = repeat % len(policies) if policies else 0
    return [*policies[k:], *policies[:k]]


def wanted(deployment: Deployment) -> dict[str, dict[str, Any]]:
    """Per stage: the variant, batch and replicas per node ``deployment`` asks for."""
    return {
        stage: {
            "variant": cfg.variant,
            "batch": cfg.batch,
            "nodes": {m: n for m, n in deployment.allocation.get(stage, {}).items() if n > 0},
        }
        for stage, cfg in deployment.stages.items()
    }


def start_check(instances: list[dict], want: dict[str, dict[str, Any]], outstanding: float) -> dict:
    """Whether the testbed runs exactly ``want`` (``wanted``) with an empty queue.

    ``instances``: rows with stage, node, variant, batch, healthy. Returns the
    configuration seen per stage, ``config_matches``, ``healthy``, ``outstanding``
    and ``ok`` (all of them).
    """
    seen: dict[str, dict[str, Any]] = {}
    for row in instances:
        s = seen.setdefault(row["stage"], {"variants": set(), "batches": set(), "nodes": Counter()})
        s["variants"].add(row["variant"])
        s["batches"].add(int(row["batch"]))
        s["nodes"][row["node"]] += 1
    matches = set(seen) == set(want)
    for stage, w in want.items():
        s = seen.get(stage)
        if s is None:
            continue
        same = s["variants"] == {w["variant"]} and s["batches"] == {int(w["batch"])}
        matches = matches and same and dict(s["nodes"]) == w["nodes"]
    healthy = all(bool(r["healthy"]) for r in instances)
    config = {
        stage: {
            "variants": sorted(s["variants"]),
            "batches": sorted(s["batches"]),
            "nodes": dict(sorted(s["nodes"].items())),
        }
        for stage, s in sorted(seen.items())
    }
    return {
        "config": config,
        "config_matches": matches,
        "healthy": healthy,
        "outstanding": float(outstanding),
        "ok": bool(matches and healthy and outstanding == 0),
    }


def reset(
    testbed: BlockTestbed,
    deployment: Deployment,
    settle_s: float = SETTLE_LIMIT_S,
    quiet_s: float = QUIET_S,
) -> dict:
    """Back to ``deployment``, warmed, queue empty; the :func:`start_check` of that state
    (with the changes the reset made and the seconds it took). Returns ``quiet_s``
    after the check: the warm-up's idle connections are closed by then (``QUIET_S``)."""
    started = time.perf_counter()
    changes = testbed.apply_live(deployment) or []
    warm_failed = testbed.warm(WARM_REQUESTS)
    deadline = time.monotonic() + settle_s
    left = testbed.outstanding()
    while left > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
        left = testbed.outstanding()
    check = start_check(testbed.instances(), wanted(deployment), left)
    time.sleep(quiet_s)
    return {
        **check,
        "ok": check["ok"] and warm_failed == 0,
        "warm_failed": warm_failed,
        "reset_changes": [f"{c['kind']} {c['stage']}".strip() for c in changes],
        "reset_s": round(time.perf_counter() - started, 3),
        "quiet_s": quiet_s,
    }


def run_block(
    members: list[BlockMember],
    testbed: BlockTestbed,
    control: Callable[[BlockTestbed, Any, BlockMember, Path], Any],
    write: Callable[[BlockMember, Any, Path, dict], dict],
    block: str = "",
    quiet_s: float = QUIET_S,
) -> list[dict]:
    """Bring ``testbed`` up once, run every member in order from the same start, down.

    ``control(testbed, targets, member, work)`` runs one policy on the live testbed
    and returns what it measured; ``write(member, measured, work, extra)`` writes its
    folder (after the testbed is down, so replays cost no testbed time) and returns
    its summary. Every member must start from the same initial configuration.
    """
    if not members:
        return []
    first = members[0].env.current
    for m in members:
        if m.env.current != first:
            raise ValueError(
                f"{m.run.policy}: its environment starts from another configuration than "
                f"{members[0].run.policy}'s; a block compares runs from one start"
            )
    initial = members[0].env.space.deployment(first, name="rl-initial")
    root = Path(tempfile.mkdtemp(prefix="rl-block-"))
    (root / "initial.deployment.yaml").write_text(dump_yaml(initial))
    measured: list[tuple[BlockMember, Any, Path, dict]] = []
    error: BaseException | None = None
    try:
        targets = testbed.up(root / "initial.deployment.yaml")
        for k, m in enumerate(members):
            check = reset(testbed, initial, quiet_s=quiet_s)
            check.update(block=block, position=k, order=[x.run.policy for x in members])
            if not check["ok"]:
                raise RuntimeError(
                    f"block {block}: {m.run.policy} would not start from the initial "
                    f"configuration: {check}"
                )
            err.print(f"{block} {k + 1}/{len(members)}: {m.run.policy}", highlight=False)
            work = root / f"{k}-{m.run.policy}"
            work.mkdir()
            measured.append((m, control(testbed, targets, m, work), work, check))
    except BaseException as exc:  # an interrupt too: the runs measured so far are written
        error = exc
    finally:
        testbed.down()
    out = [write(m, tb, work, {"start_check": check}) for m, tb, work, check in measured]
    if error is not None:
        raise error
    shutil.rmtree(root, ignore_errors=True)  # kept on a failure: the load runs are in it
    return out


class LiveBlockTestbed:
    """A :class:`BlockTestbed` over ``testbed.client.CliTestbed`` (``run``: any member's)."""

    def __init__(self, cli: Any, run: Any) -> None:
        self.cli, self.run = cli, run

    def up(self, deployment: Path) -> Any:
        from lab.control import bring_up

        return bring_up(self.cli, self.run, deployment)

    def down(self) -> None:
        from lab.control import stop

        stop(self.cli)

    def apply_live(self, deployment: Deployment) -> list[dict]:
        return self.cli.apply_live(deployment)

    def _controller(self) -> Any:
        from testbed.controller import Controller

        return Controller.load(self.cli.state_dir)

    def instances(self) -> list[dict]:
        st = self._controller().status(self.cli.backend)
        return [
            {
                "stage": i.component,
                "node": i.node,
                "variant": i.variant,
                "batch": i.batch,
                "healthy": i.healthy,
            }
            for i in st.instances
        ]

    def outstanding(self) -> float:
        from optimizer.rl.online import parse_gateway

        ctl = self._controller()
        gateway = ctl.endpoints.gateway
        routes = ctl.http.get(f"{gateway}/admin/routes").json()
        at_replicas = sum(r["outstanding"] for s in routes["stages"] for r in s["replicas"])
        return parse_gateway(ctl.http.get(f"{gateway}/metrics").text).inflight + at_replicas

    def warm(self, n: int) -> int:
        """``n`` inferences through the gateway, 4 at a time (features by entity id);
        how many did not answer 200."""
        import httpx

        from testbed.api import INFER_PATH

        ctl = self._controller()
        url = ctl.endpoints.gateway + INFER_PATH

        def one(k: int) -> bool:
            try:
                return ctl.http.post(url, json={"id": f"warm-{k}", "entity_id": k}).is_success
            except httpx.HTTPError:
                return False

        with ThreadPoolExecutor(4) as pool:
            return sum(not ok for ok in pool.map(one, range(n)))
