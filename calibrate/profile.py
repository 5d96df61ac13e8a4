"""``mlops-twin calibrate profile``: service times of the testbed's stage servers on a grid.

For each stage × variant × CPU share the testbed's own stage server
(``testbed.services.stage_server`` on the model zoo's ONNX file, one
onnxruntime thread) runs confined to a cgroup with that CPU quota (10 ms
period, like an emulated server); for each batch size the profiler sends
batches of exactly that many rows, one at a time (closed loop: no queueing),
and keeps the server's own timing of every batch — in-server compute time
``service_ms``, the wait for the batch ``queue_ms`` — and the client's round
trip. One row per batch execution: raw samples, nothing aggregated.

Results land in ``data/profiles/<profile-id>/``: ``samples.parquet`` and
``manifest.json`` (scenario hash, git revision, library versions, CPU model,
the testbed's capacity factor, the grid). The profile id is a hash of the
scenario and the grid, so the same profile on the same inputs lands in the
same folder (Vidur caches its predictors the same way).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from calibrate.calibration import file_sha256
from calibrate.fit import SAMPLE_COLUMNS
from twin.runs import atomic_dir
from twin.spec import Scenario

PROFILES = Path("data/profiles")
MODELS = Path("data/models")


@dataclass(frozen=True)
class Grid:
    """What to profile. Empty ``stages``/``variants``: every stage/variant with a model file."""

    batches: tuple[int, ...] = (1, 4, 8)
    shares: tuple[float, ...] = (0.5, 1.0)  # host cores of the stage's cgroup
    stages: tuple[str, ...] = ()
    variants: tuple[str, ...] = ()
    samples: int = 40  # batch executions kept per cell
    warmup: int = 5  # batch executions dropped per cell (session warm-up, caches)

    def __post_init__(self) -> None:
        if not self.batches or min(self.batches) < 1:
            raise ValueError(f"batch sizes must be ≥ 1, got {self.batches}")
        if not self.shares or min(self.shares) <= 0:
            raise ValueError(f"CPU shares must be > 0 host cores, got {self.shares}")
        if self.samples < 8:
            raise ValueError(f"need ≥ 8 samples per cell to fit, got {self.samples}")


@dataclass
class Environment:
    """Where a profile was measured (written to the manifest)."""

    git_revision: str
    onnxruntime: str
    torch: str
    numpy: str
    cpu_model: str
    host_cores: int
    python: str
    confined: bool  # False: no cgroups here, shares are nominal
    capacity_factor: float | None = None
    notes: list[str] = field(default_factory=list)


def environment(confined: bool, factor: float | None) -> Environment:
    """Versions, CPU model and git revision of this machine and checkout."""
    from importlib.metadata import PackageNotFoundError, version

    def ver(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "testbed", "calibrate"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        rev = f"{rev}{'+dirty' if dirty else ''}" if rev else "unknown"
    except (OSError, subprocess.SubprocessError):
        rev = "unknown"
    return Environment(
        git_revision=rev,
        onnxruntime=ver("onnxruntime"),
        torch=ver("torch"),
        numpy=ver("numpy"),
        cpu_model=cpu or "unknown",
        host_cores=os.cpu_count() or 1,
        python=platform.python_version(),
        confined=confined,
        capacity_factor=factor,
    )


def profile_id(scenario_sha256: str, grid: Grid, models_sha: str) -> str:
    """Short hash of what was profiled: same scenario, models and grid ⇒ same id."""
    key = json.dumps([scenario_sha256, models_sha, asdict(grid)], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- one server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def stage_server(
    model_file: Path, variant: str, component: str, share: float | None, log: Path
) -> Iterator[str]:
    """A stage server on ``model_file`` in a cgroup of ``share`` host cores; yields its URL.

    ``share`` None runs it unconfined. The server and its cgroup are removed on exit.
    """
    from testbed.backends.base import service_argv, service_env
    from testbed.cgroups import Cgroup

    port = _free_port()
    argv = service_argv(
        "stage",
        port,
        name=f"profile-{component}",
        component=component,
        model_file=model_file,
        variant=variant,
        batch=1,
        batch_timeout_ms=0,
        threads=1,
    )
    group = None
    if share is not None:
        name = f"profile-{os.getpid()}-{component}-{variant}"
        group = Cgroup.create(name, share, 2.0)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv, env=service_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        if group is not None:
            group.add(proc.pid)
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, proc)
        yield url
    finally:
        _stop(proc)
        if group is not None:
            group.remove()


def _wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"stage server exited (code {proc.returncode}) before it was ready")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=2.0).status_code == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"stage server at {url} not healthy after {timeout_s:.0f} s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def measure_cell(
    url: str, rows: np.ndarray, batch: int, n: int, warmup: int
) -> list[tuple[float, float, float]]:
    """``n`` batch executions of ``batch`` rows: (service_ms, queue_ms, client_ms) each.

    Closed loop: the next batch is sent when the previous answer arrived, so
    the server never queues and ``service_ms`` is pure compute at that size.
    """
    import httpx

    out = []
    with httpx.Client(timeout=30.0) as client:
        r = client.post(f"{url}/admin/config", json={"batch": batch, "batch_timeout_ms": 0})
        r.raise_for_status()
        d = rows.shape[1]
        for i in range(warmup + n):
            start = (i * batch) % max(len(rows) - batch, 1)
            x = np.ascontiguousarray(rows[start : start + batch], dtype=np.float32)
            t0 = time.perf_counter()
            r = client.post(
                f"{url}/v1/batch", content=x.tobytes(), headers={"x-shape": f"{batch},{d}"}
            )
            client_ms = (time.perf_counter() - t0) * 1e3
            r.raise_for_status()
            timings = [t.split(",") for t in r.headers["x-item-timings"].split(";")]
            sizes = {int(t[2]) for t in timings}
            if sizes != {batch}:
                raise RuntimeError(f"asked for batches of {batch}, the server formed {sizes}")
            if i >= warmup:
                out.append((float(timings[0][1]), float(timings[0][0]), client_ms))
    return out


# --------------------------------------------------------------------------- the grid


def stage_inputs(manifest: dict, component: str, variant: str, n: int = 512) -> np.ndarray:
    """Rows of the width the stage takes (real digit images for the first stage)."""
    info = manifest["models"][component][variant]
    d = int(info["input_dim"])
    rng = np.random.default_rng(0)
    return (
        rng.normal(0.0, 1.0, size=(n, d)).astype(np.float32)
        if d != 64
        else (rng.uniform(0, 16, size=(n, d)).astype(np.float32))
    )


def cells(scenario: Scenario, manifest: dict, grid: Grid) -> list[tuple[str, str]]:
    """(stage, variant) pairs to profile: in the scenario, the grid and the model zoo."""
    out = []
    for c in scenario.components:
        if not c.is_stage or (grid.stages and c.name not in grid.stages):
            continue
        for v in c.variants:
            if grid.variants and v.name not in grid.variants:
                continue
            if v.name in manifest.get("models", {}).get(c.name, {}):
                out.append((c.name, v.name))
    return out


def samples_frame(rows: list[tuple]) -> pd.DataFrame:
    """The profile's samples table; ``hop_ms`` is the client's time beyond queue and service."""
    samples = pd.DataFrame(rows, columns=[*SAMPLE_COLUMNS, "queue_ms", "client_ms", "rep"])
    hop = samples["client_ms"] - samples["service_ms"] - samples["queue_ms"]
    return samples.assign(hop_ms=hop.clip(lower=0))


def run_profile(
    scenario: Scenario,
    scenario_file: Path,
    grid: Grid = Grid(),
    models: Path = MODELS,
    out_root: Path = PROFILES,
    factor: float | None = None,
    say: Callable[[str], None] = lambda _m: None,
) -> Path:
    """Profile the grid; returns ``out_root/<profile-id>`` (written atomically)."""
    from testbed.cgroups import available

    manifest_file = models / "manifest.json"
    if not manifest_file.is_file():
        raise FileNotFoundError(
            f"no model zoo at {models} (run `mlops-twin testbed build-models` first)"
        )
    zoo = json.loads(manifest_file.read_text())
    todo = cells(scenario, zoo, grid)
    if not todo:
        raise ValueError(
            f"nothing to profile: no stage of {scenario.name!r} has a model in {models}"
        )
    confined = available()
    env = environment(confined, factor)
    if not confined:
        env.notes.append("no writable cgroups (not root?): servers ran unconfined, shares nominal")
        say("warning: no cgroups here; stage servers run unconfined")
    sha = file_sha256(scenario_file)
    pid = profile_id(sha, grid, file_sha256(manifest_file))
    target = out_root / pid
    rows = []
    started = time.perf_counter()
    with atomic_dir(target) as tmp:
        (tmp / "raw").mkdir()
        log = tmp / "raw" / "servers.log"  # raw/ is not committed (.gitignore)
        for component, variant in todo:
            model_file = models / zoo["models"][component][variant]["file"]
            x = stage_inputs(zoo, component, variant)
            for share in grid.shares:
                say(f"profile {component}/{variant} at {share:g} cores")
                with stage_server(
                    model_file, variant, component, share if confined else None, log
                ) as url:
                    for b in grid.batches:
                        for i, (s, q, c) in enumerate(
                            measure_cell(url, x, b, grid.samples, grid.warmup)
                        ):
                            rows.append((component, variant, b, share, s, q, c, i))
        samples = samples_frame(rows)
        samples.to_parquet(tmp / "samples.parquet", index=False)
        meta = {
            "profile_id": pid,
            "scenario": scenario.name,
            "scenario_file": str(scenario_file),
            "scenario_sha256": sha,
            "models_manifest_sha256": file_sha256(manifest_file),
            "grid": asdict(grid),
            "environment": asdict(env),
            "mode": "direct: stage servers alone, closed loop, in-server timings",
            "cells": len(todo) * len(grid.shares) * len(grid.batches),
            "rows": len(samples),
            "wall_s": round(time.perf_counter() - started, 1),
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / "manifest.json").write_text(json.dumps(meta, indent=2))
    return target
