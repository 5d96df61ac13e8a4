"""Replica choice for the gateway: least outstanding requests, skipping dead replicas."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Replica:
    """One instance of a stage as the gateway sees it."""

    name: str
    url: str
    outstanding: int = 0
    dead_until: float = 0.0  # monotonic seconds; dead replicas are skipped until then
    failures: int = 0


@dataclass
class StageRoute:
    """A stage of the pipeline and its replicas."""

    name: str
    replicas: list[Replica] = field(default_factory=list)


class Picker:
    """Least-outstanding choice among live replicas, ties broken at random.

    A replica that failed is marked dead for ``dead_s`` seconds and not chosen
    again in that time unless every replica is dead (then the least recently
    failed is tried, so a restarted replica is found again).
    """

    def __init__(
        self,
        dead_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ):
        self.dead_s = dead_s
        self.clock = clock
        self.rng = rng or random.Random(0)

    def pick(self, route: StageRoute, exclude: set[str] = frozenset()) -> Replica | None:  # type: ignore[assignment]
        """The replica to send to, or None when none is left to try."""
        now = self.clock()
        candidates = [r for r in route.replicas if r.name not in exclude]
        if not candidates:
            return None
        live = [r for r in candidates if r.dead_until <= now]
        if not live:
            return min(candidates, key=lambda r: r.dead_until)
        least = min(r.outstanding for r in live)
        return self.rng.choice([r for r in live if r.outstanding == least])

    def mark_dead(self, replica: Replica) -> None:
        replica.failures += 1
        replica.dead_until = self.clock() + self.dead_s

    def mark_alive(self, replica: Replica) -> None:
        replica.dead_until = 0.0
