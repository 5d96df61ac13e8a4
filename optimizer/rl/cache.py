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
    # the host speed the charged backend's expert scores at (``ChargedExpert.host``)
    expert_host: str = "true"


# fields added after policies were cached: left out of the key at their defaults
_LATER_FIELDS = {
    "backend": "analytic",
    "charges": None,
    "init_policy": None,
    "reward_scale": 10.0,
    "expert_host": "true",
}


def _settings_key(settings: TrainSettings) -> dict:
    out = asdict(settings)
    for k, default in _LATER_FIELDS.items():
        if out[k] == default:
            del out[k]
    if settings.charges is not None:
        out["charges"] = settings.charges.key()
    return out


def _trace_digest(path: str) -> str:
    """A trace file named by its content (``sha256:`` + 16 hex digits), so the key does not
    hold where the checkout lives; a file that cannot be read keeps its path."""
    try:
        return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    except OSError:
        return path


def _scenario_blob(scenario: Scenario, paths: Callable[[str], str]) -> dict:
    """The scenario's key fields with every trace ``path`` mapped through ``paths``."""
    out = scenario.model_dump(mode="json", exclude={"description"}, exclude_defaults=True)
    for w in out.get("workloads", []):
        if isinstance(w.get("path"), str):
            w["path"] = paths(w["path"])
    for p in out.get("processes", []):
        arrivals = p.get("arrivals")
        if isinstance(arrivals, dict) and isinstance(arrivals.get("path"), str):
            arrivals["path"] = paths(arrivals["path"])
    return out


def _key(scenario_blob: dict, process: str, workloads: list[Workload], settings: dict) -> str:
    blob = json.dumps(
        {
            "scenario": scenario_blob,
            "process": process,
            "workloads": [w.name for w in workloads],
            "settings": settings,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def policy_key(
    scenario: Scenario, process: str, workloads: list[Workload], settings: TrainSettings
) -> str:
    """12 hex digits naming (scenario, pipeline, workloads, settings).

    Trace files enter by their content, not their path (a loaded scenario holds
    absolute paths, and two checkouts in different folders must share a key).
    Fields at their defaults are left out, so a field added to the spec later (with
    a default that keeps the old behaviour) does not orphan the policies trained
    before it.
    """
    return _key(
        _scenario_blob(scenario, _trace_digest), process, workloads, _settings_key(settings)
    )


def legacy_policy_key(
    scenario: Scenario,
    process: str,
    workloads: list[Workload],
    settings: TrainSettings,
    cache_dir: Path = DEFAULT_CACHE,
    moved: tuple[Path, Path] | None = None,
) -> str:
    """The key before trace files were keyed by content: their absolute paths as loaded.

    ``moved=(now, then)``: the checkout was at ``then`` when the policy was cached and is
    at ``now`` (a trace path under ``now`` is keyed as if under ``then``). An
    ``init_policy`` that was re-keyed enters under its old name (its ``rekeyed.json``).
    """

    def paths(p: str) -> str:
        if moved is not None and Path(p).is_relative_to(moved[0]):
            return str(Path(moved[1]) / Path(p).relative_to(moved[0]))
        return p

    key = _settings_key(settings)
    if settings.init_policy is not None:
        record = Path(cache_dir) / settings.init_policy / REKEYED
        if record.is_file():
            key["init_policy"] = json.loads(record.read_text())["legacy"]
    return _key(_scenario_blob(scenario, paths), process, workloads, key)


REKEYED = "rekeyed.json"  # in a re-keyed folder: {"legacy": its old folder name}


def find_policy(
    scenario: Scenario,
    process: str,
    workloads: list[Workload],
    settings: TrainSettings,
    cache_dir: Path = DEFAULT_CACHE,
    moved_from: tuple[Path, ...] = (),
) -> Path | None:
    """The cached policy's folder, or None.

    A policy cached under the old key (absolute trace paths: this checkout's, or one of
    ``moved_from``'s, the folders this checkout was at before) is re-keyed in place: its
    folder is renamed to the new key, with a ``rekeyed.json`` naming the old one.
    """
    cache_dir = Path(cache_dir)
    folder = cache_dir / f"{scenario.name}-{policy_key(scenario, process, workloads, settings)}"
    if (folder / "policy.zip").is_file():
        return folder
    for moved in [None, *_moves(scenario, moved_from)]:
        legacy = legacy_policy_key(scenario, process, workloads, settings, cache_dir, moved)
        old = cache_dir / f"{scenario.name}-{legacy}"
        if not (old / "policy.zip").is_file():
            continue
        try:
            old.rename(folder)  # atomic within one folder; a racing re-key wins
        except OSError:
            if not (folder / "policy.zip").is_file():
                raise
        (folder / REKEYED).write_text(json.dumps({"legacy": old.name}))
        return folder
    return None


def _moves(scenario: Scenario, moved_from: tuple[Path, ...]) -> list[tuple[Path, Path]]:
    """(now, then) pairs: every folder above the first trace file, as if it had been at
    each of ``moved_from`` (the checkout's depth under its root is not known here)."""
    first = next(
        (w.path for w in scenario.workloads if isinstance(getattr(w, "path", None), str)), None
    )
    if first is None:
        return []
    return [(now, Path(then)) for then in moved_from for now in Path(first).parents]


def cached_policy(
    scenario: Scenario,
    process: str,
    workloads: list[Workload],
    predictor: LoadPredictor | None,
    settings: TrainSettings = TrainSettings(),
    cache_dir: Path = DEFAULT_CACHE,
    on_step: Callable[[int], None] | None = None,
    moved_from: tuple[Path, ...] = (),
) -> tuple[Path, bool]:
    """The folder of a policy for this scenario and settings, and whether it was trained now.

    Training runs on ``settings.backend`` (``optimizer.rl.backends``: the analytic view,
    or the charged one with ``settings.charges``) with expert guidance every
    ``expert_every`` episodes, from ``settings.init_policy``'s weights when given;
    ``on_step(n)`` reports progress.
    """
    from optimizer.rl import agent
    from optimizer.rl.cli import make_env

    found = find_policy(scenario, process, workloads, settings, cache_dir, moved_from)
    if found is not None:
        return found, False
    folder = (
        Path(cache_dir) / f"{scenario.name}-{policy_key(scenario, process, workloads, settings)}"
    )
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
        expert_host=settings.expert_host,
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
