"""Trained PPO policies cached by what they were trained on.

A policy is only good for the scenario (servers, variants, budget, QoS
weights) and the training settings it saw, so its folder is named by a hash
of both: ``<cache>/<scenario name>-<hash12>/`` with ``policy.zip``, the
training curves (``curves.parquet``/``.csv`` and ``curves.png``) and
``training.json`` (the settings and the wall time). :func:`cached_policy`
trains one when the folder is missing (the caller shows progress through
``on_step``) and writes the folder atomically, so a crash leaves no half policy.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from optimizer.rl.charged import TestbedCharges
from optimizer.rl.predictor import LoadPredictor
from twin.runs import atomic_dir, write_table
from twin.spec import Scenario, Workload

DEFAULT_CACHE = Path("runs") / "rl-policies"


@dataclass(frozen=True)
class TrainSettings:
    """What a cached policy is trained with (part of its cache key)."""

    steps: int = 120_000  # the mean episode reward levels off after ≈ 90k (36k: still rising)
    seed: int = 0
    gamma: float = 0.9
    expert_every: int = 4
    reward_cost: float | None = None
    cycle_s: float = 1200.0
    # the training backend: "analytic" (the policies' view) or "charged" (what the
    # testbed charges, with ``charges``); ``init_policy``: the cached policy (its folder
    # name in the cache) whose weights training starts from
    backend: str = "analytic"
    charges: TestbedCharges | None = None
    init_policy: str | None = None
    reward_scale: float = 10.0  # the environment's reward divisor (PipelineEnv)


# fields added after policies were cached: left out of the key at their defaults
_LATER_FIELDS = {"backend": "analytic", "charges": None, "init_policy": None, "reward_scale": 10.0}


def _settings_key(settings: TrainSettings) -> dict:
    out = asdict(settings)
    for k, default in _LATER_FIELDS.items():
        if out[k] == default:
            del out[k]
    if settings.charges is not None:
        out["charges"] = settings.charges.key()
    return out


def policy_key(
    scenario: Scenario, process: str, workloads: list[Workload], settings: TrainSettings
) -> str:
    """12 hex digits naming (scenario, pipeline, workloads, settings).

    Fields at their defaults are left out, so a field added to the spec later (with
    a default that keeps the old behaviour) does not orphan the policies trained
    before it.
    """
    blob = json.dumps(
        {
            "scenario": scenario.model_dump(
                mode="json", exclude={"description"}, exclude_defaults=True
            ),
            "process": process,
            "workloads": [w.name for w in workloads],
            "settings": _settings_key(settings),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def cached_policy(
    scenario: Scenario,
    process: str,
    workloads: list[Workload],
    predictor: LoadPredictor | None,
    settings: TrainSettings = TrainSettings(),
    cache_dir: Path = DEFAULT_CACHE,
    on_step: Callable[[int], None] | None = None,
) -> tuple[Path, bool]:
    """The folder of a policy for this scenario and settings, and whether it was trained now.

    Training runs on ``settings.backend`` (``optimizer.rl.backends``: the analytic view,
    or the charged one with ``settings.charges``) with expert guidance every
    ``expert_every`` episodes, from ``settings.init_policy``'s weights when given;
    ``on_step(n)`` reports progress.
    """
    from optimizer.rl import agent
    from optimizer.rl.cli import make_env

    folder = (
        Path(cache_dir) / f"{scenario.name}-{policy_key(scenario, process, workloads, settings)}"
    )
    if (folder / "policy.zip").is_file():
        return folder, False
    env = make_env(
        scenario,
        process,
        workloads,
        settings.backend,
        predictor,
        cycle_s=settings.cycle_s,
        expert_every=settings.expert_every,
        reward_cost=settings.reward_cost,
        charges=settings.charges,
        reward_scale=settings.reward_scale,
    )
    model, writer = agent.make_agent(env, seed=settings.seed, gamma=settings.gamma)
    if settings.init_policy is not None:
        # same observation and action spaces: start from the given policy's weights
        init = Path(cache_dir) / settings.init_policy / "policy.zip"
        if not init.is_file():
            raise ValueError(f"init_policy: {init} not found")
        model.set_parameters(str(init), exact_match=True)
    started = time.perf_counter()
    curves = agent.train(model, writer, settings.steps, on_step=on_step)
    wall = time.perf_counter() - started
    folder.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(folder) as tmp:
        model.save(tmp / "policy.zip")
        write_table(curves, tmp / "curves")
        curves.to_csv(tmp / "curves.csv", index=False)
        agent.plot_curves(
            curves, tmp / "curves.png", f"PPO on {scenario.name} ({settings.backend})"
        )
        info = {
            "scenario": scenario.name,
            "process": process,
            "workloads": [w.name for w in workloads],
            **asdict(settings),
            "charges": asdict(settings.charges) if settings.charges else None,
            "reward_cost_used": env.weights.reward_cost,
            "wall_s": round(wall, 1),
        }
        (tmp / "training.json").write_text(json.dumps(info, indent=2))
    return folder, True
