"""Seeded random placement instances small enough for exhaustive search, with cached true fronts.

A search that was tuned on one scenario proves nothing about the next one, so
the benchmark draws many. :func:`generate` turns a seed into a scenario of
3–5 components × 2–4 machines that varies what decides placement:

- machines from three archetypes (a slow cheap edge box, a rack server, a
  priced GPU box), with a drawn price spread, bandwidths and zones (or one
  zone for all);
- components with drawn CPU/RAM per instance, always-on or on demand, and
  1–3 replicas at most; their demands are scaled so that one instance of
  everything takes a drawn share (the *tightness*, separately for CPU and
  RAM) of the machines' total;
- one request process (Poisson arrivals, a chain of 2–3 steps) and, most
  of the time, a periodic batch job whose steps may have GPU work and move
  data between machines; each deadline is either slack, binding (drawn
  around the work's nominal time) or absent.

A draw whose enumeration is too large (or whose feasible set is too small
to budget 5 % of it) is redrawn from the next child stream, so
``generate(seed)`` is a pure function of the seed.

:func:`exhaustive_front` simulates every feasible allocation in chunks on a
process pool and caches the scores in ``cache_dir``, keyed by a hash of the
scenario, the fidelity and the twin's source; an interrupted computation
resumes from the chunks already saved.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from optimizer.baselines import count_candidates, enumerate_feasible
from optimizer.evaluation import Fidelity, evaluate_matrix
from optimizer.genome import Genome
from twin.criteria import CRITERIA
from twin.spec import Scenario

TWIN_DIR = Path(__file__).resolve().parents[1] / "twin"
MAX_CANDIDATES = 400_000  # matrices enumerated per instance (capacity checked on all)
MIN_FEASIBLE = 800  # 5 % of it is a budget of 40 simulations
MAX_FEASIBLE = 8_000  # keeps one exhaustive front under ~2 min on 2 cores

# Archetypes: (cores, speed, gpus, ram GB, bandwidth Mbit/s, price per hour, zone)
ARCHETYPES = {
    "edge": ((2, 4), (0.5, 0.8), 0, (4, 8), (50, 200), (0.02, 0.10), "edge"),
    "rack": ((4, 8), (0.9, 1.1), 0, (16, 32), (500, 2000), (0.20, 0.50), "onprem"),
    "gpu": ((4, 8), (1.0, 1.4), 1, (16, 64), (1000, 10000), (0.80, 3.00), "cloud"),
}
ROLES = ("gateway", "features", "model", "prep", "trainer")


@dataclass(frozen=True)
class InstanceInfo:
    """How an instance was drawn (for the benchmark's table)."""

    seed: int
    attempt: int  # child stream that gave an acceptable draw
    n_components: int
    n_machines: int
    cpu_tightness: float  # one instance of everything / total cores
    ram_tightness: float
    price_spread: float  # most / least expensive machine per hour
    has_gpu_step: bool
    has_batch: bool
    deadlines: str  # e.g. "request binding, batch slack"
    zones: int
    candidates: int
    feasible: int


def _u(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(rng.uniform(*lo_hi))


def _draw(rng: np.random.Generator) -> tuple[dict, dict]:
    """One scenario as a plain dict, and the drawn knobs."""
    n_m = int(rng.integers(2, 5))
    n_c = int(rng.integers(3, 6))
    kinds = ["edge", "rack", "gpu"]
    machine_kinds = list(rng.choice(kinds, size=n_m, replace=True))
    if "gpu" not in machine_kinds and rng.random() < 0.7:
        machine_kinds[int(rng.integers(n_m))] = "gpu"
    one_zone = rng.random() < 0.3
    spread = float(np.exp(rng.uniform(np.log(1.5), np.log(60.0))))
    servers = []
    for j, kind in enumerate(machine_kinds):
        cores, speed, gpus, ram, bw, price, zone = ARCHETYPES[kind]
        servers.append(
            {
                "name": f"{kind}{j}",
                "cpu_cores": int(rng.integers(cores[0], cores[1] + 1)),
                "cpu_speed": round(_u(rng, speed), 2),
                "gpus": gpus,
                "gpu_speed": round(_u(rng, (0.8, 1.5)), 2),
                "ram_gb": float(rng.integers(ram[0], ram[1] + 1)),
                "bandwidth_mbps": round(float(np.exp(_u(rng, np.log(bw)))), 0),
                "price_per_hour": _u(rng, price),
                "zone": "default" if one_zone else zone,
            }
        )
    # Price spread: map log-prices onto [1, spread] × the cheapest, keeping their order.
    p = np.array([s["price_per_hour"] for s in servers])
    if p.max() > p.min():
        lp = (np.log(p) - np.log(p.min())) / (np.log(p.max()) - np.log(p.min()))
        p = p.min() * spread**lp
    for s, v in zip(servers, p, strict=True):
        s["price_per_hour"] = round(float(v), 4)

    roles = [
        "gateway",
        "model",
        *list(rng.choice(["features", "prep", "trainer"], size=n_c - 2, replace=n_c - 2 > 3)),
    ]
    comps = []
    for i, role in enumerate(roles):
        on_demand = role == "trainer" and rng.random() < 0.7
        comps.append(
            {
                "name": f"{role}{i}",
                "keepalive_cpu_cores": round(_u(rng, (0.1, 0.5)), 2),
                "keepalive_ram_gb": round(_u(rng, (0.25, 6.0)), 2),
                "always_on": not on_demand,
                "cpu_cores": round(_u(rng, (0.25, 3.0)), 2),
                "max_replicas": int(rng.integers(1, 4)),
            }
        )
    # Tightness: one instance of everything takes this share of all cores / all RAM.
    tight_cpu, tight_ram = _u(rng, (0.15, 0.7)), _u(rng, (0.15, 0.7))
    cap_cpu = sum(s["cpu_cores"] for s in servers)
    cap_ram = sum(s["ram_gb"] for s in servers)
    dem_cpu = sum(c["cpu_cores"] + c["keepalive_cpu_cores"] * c["always_on"] for c in comps)
    dem_ram = sum(c["keepalive_ram_gb"] for c in comps)
    for c in comps:
        f = tight_cpu * cap_cpu / dem_cpu
        c["cpu_cores"] = round(c["cpu_cores"] * f, 3)
        c["keepalive_cpu_cores"] = round(c["keepalive_cpu_cores"] * f, 3)
        c["keepalive_ram_gb"] = round(c["keepalive_ram_gb"] * tight_ram * cap_ram / dem_ram, 3)

    names = [c["name"] for c in comps]
    serving = [n for n in names if not n.startswith("trainer")]
    chain = [
        names[0],
        *list(
            rng.choice(
                serving[1:], size=min(len(serving) - 1, int(rng.integers(1, 3))), replace=False
            )
        ),
    ]
    if names[1] not in chain:
        chain[-1] = names[1]
    steps, nominal_s = [], 0.0
    for i, comp in enumerate(chain):
        work_ms = float(np.exp(_u(rng, (np.log(2), np.log(150)))))
        nominal_s += work_ms / 1000
        steps.append(
            {
                "name": f"r{i}",
                "component": comp,
                "cpu_work": {"kind": "lognormal", "mean_ms": round(work_ms, 2), "cv": 0.5},
                "data_out_mb": round(float(np.exp(_u(rng, (np.log(0.01), np.log(2))))), 3),
                **({"depends_on": [f"r{i - 1}"]} if i else {}),
            }
        )
    deadline_kinds = []
    request = {
        "name": "requests",
        "kind": "request",
        "arrivals": {"kind": "poisson", "rate_per_s": round(_u(rng, (0.3, 2.0)), 2)},
        "steps": steps,
    }
    d = rng.choice(["binding", "slack", "none"], p=[0.5, 0.3, 0.2])
    deadline_kinds.append(f"request {d}")
    if d != "none":
        factor = _u(rng, (0.9, 2.5)) if d == "binding" else _u(rng, (10, 30))
        request["deadline_s"] = round(nominal_s * factor + 0.02, 3)
    processes = [request]

    # Components no request step uses get work in the batch job (so none is idle weight).
    unused = [n for n in names if n not in chain]
    has_batch = bool(unused) or rng.random() < 0.7
    has_gpu = False
    if has_batch:
        batch_comps = unused or [str(rng.choice(names))]
        bsteps, nominal_b = [], 0.0
        for i, comp in enumerate(batch_comps):
            work_s = float(np.exp(_u(rng, (np.log(2), np.log(40)))))
            nominal_b += work_s
            step = {
                "name": f"b{i}",
                "component": comp,
                "cpu_work": {"kind": "lognormal", "mean_ms": round(work_s * 1000, 1), "cv": 0.3},
                "data_out_mb": round(float(np.exp(_u(rng, (np.log(10), np.log(1000))))), 1),
                "max_parallel": int(rng.integers(1, 3)),
                **({"depends_on": [f"b{i - 1}"]} if i else {}),
            }
            if comp.startswith("trainer") or rng.random() < 0.25:
                has_gpu = True
                step["gpu_work"] = {
                    "kind": "lognormal",
                    "mean_ms": round(work_s * 1000 * _u(rng, (0.5, 2.0)), 1),
                    "cv": 0.2,
                }
            bsteps.append(step)
        period = round(_u(rng, (120, 300)), 1)
        batch = {
            "name": "batch",
            "arrivals": {"kind": "periodic", "period_s": period, "offset_s": 10.0},
            "steps": bsteps,
        }
        d = rng.choice(["binding", "slack", "none"], p=[0.5, 0.3, 0.2])
        deadline_kinds.append(f"batch {d}")
        if d != "none":
            factor = _u(rng, (0.6, 1.5)) if d == "binding" else _u(rng, (4, 8))
            batch["deadline_s"] = round(nominal_b * factor, 1)
        processes.append(batch)

    scenario = {
        "name": "generated",
        "servers": servers,
        "components": comps,
        "processes": processes,
        "settings": {
            "network": {
                "intra_zone_latency_ms": 0.2,
                "inter_zone_latency_ms": round(_u(rng, (5, 40)), 1),
            }
        },
    }
    knobs = {
        "n_components": n_c,
        "n_machines": n_m,
        "cpu_tightness": round(tight_cpu, 3),
        "ram_tightness": round(tight_ram, 3),
        "price_spread": round(float(p.max() / p.min()), 2),
        "has_gpu_step": has_gpu,
        "has_batch": has_batch,
        "deadlines": ", ".join(deadline_kinds),
        "zones": len({s["zone"] for s in servers}),
    }
    return scenario, knobs


def generate(seed: int, max_attempts: int = 200) -> tuple[Scenario, InstanceInfo]:
    """The placement instance of ``seed`` and how it was drawn.

    Draws from child streams of ``SeedSequence(seed)`` until one gives at
    most :data:`MAX_CANDIDATES` matrices to enumerate and between
    :data:`MIN_FEASIBLE` and :data:`MAX_FEASIBLE` feasible ones.
    """
    children = np.random.SeedSequence(seed).spawn(max_attempts)
    for attempt, child in enumerate(children):
        raw, knobs = _draw(np.random.default_rng(child))
        raw["name"] = f"generated-{seed}"
        scenario = Scenario.model_validate(raw)
        genome = Genome(scenario)
        if np.any(genome.cell_bounds().max(axis=1) == 0):
            continue  # some component fits on no machine
        n = count_candidates(genome)
        if n > MAX_CANDIDATES:
            continue
        feasible = len(enumerate_feasible(genome, MAX_CANDIDATES))
        if MIN_FEASIBLE <= feasible <= MAX_FEASIBLE:
            return scenario, InstanceInfo(
                seed=seed, attempt=attempt, candidates=n, feasible=feasible, **knobs
            )
    raise RuntimeError(f"seed {seed}: no acceptable instance in {max_attempts} draws")


# ------------------------------------------------------------------ exhaustive fronts


def cache_key(scenario: Scenario, fidelity: Fidelity) -> str:
    """Hash of the scenario, the fidelity and the twin's source (any change re-simulates)."""
    h = hashlib.sha1(scenario.model_dump_json().encode())
    h.update(repr(fidelity).encode())
    for p in sorted(TWIN_DIR.glob("*.py")):
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


@dataclass
class Front:
    """Every feasible allocation of an instance with its criteria (exhaustive scores)."""

    X: np.ndarray  # n × K·S
    F: np.ndarray  # n × 4, CRITERIA order
    wall_s: float  # simulation wall time summed over chunks


def _score_chunk(
    scenario: Scenario,
    shape: tuple[int, int],
    X: np.ndarray,
    fidelity: Fidelity,
    screening: bool = False,
) -> np.ndarray:
    base = Genome(scenario).base
    if screening:
        # Imported here: the screening twin is only needed for screen tables.
        from optimizer.multifidelity import screen_matrix as score
    else:
        score = evaluate_matrix
    return np.array([score(scenario, base, x.reshape(shape), fidelity).mean for x in X])


def exhaustive_front(
    scenario: Scenario,
    fidelity: Fidelity,
    cache_dir: Path,
    workers: int = 2,
    chunk: int = 250,
    stop_at: float | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
    screening: bool = False,
) -> Front | None:
    """Scores of every feasible allocation, from ``cache_dir`` or simulated (and saved).

    ``screening``: scores of the screening twin (:mod:`twin.screen`) instead of
    the DES, cached under their own key (for multi-fidelity searches on a table).

    Chunks of ``chunk`` allocations are saved as they finish, so an
    interrupted call resumes. ``stop_at`` (a ``time.monotonic()`` value)
    stops between chunks and returns None while the front is incomplete.
    ``on_chunk(done, total)`` reports progress.
    """
    key = cache_key(scenario, fidelity) + ("-screen" if screening else "")
    final = cache_dir / f"{key}.parquet"
    genome = Genome(scenario)
    X = enumerate_feasible(genome, MAX_CANDIDATES)
    if final.is_file():
        frame = pd.read_parquet(final)
        return Front(X, frame[list(CRITERIA)].to_numpy(), float(frame["wall_s"].iloc[0]))
    parts = cache_dir / f"{key}.parts"
    parts.mkdir(parents=True, exist_ok=True)
    (cache_dir / f"{key}.scenario.json").write_text(scenario.model_dump_json(indent=1))
    starts = list(range(0, len(X), chunk))
    todo = [s for s in starts if not (parts / f"{s:07d}.npy").is_file()]
    wall_file = parts / "wall_s.txt"
    wall = float(wall_file.read_text()) if wall_file.is_file() else 0.0
    with ProcessPoolExecutor(max_workers=max(workers, 1)) as pool:
        # Submit in pairs of rounds so a stop between chunks wastes little work.
        while todo:
            if stop_at is not None and time.monotonic() > stop_at:
                return None
            batch, todo = todo[: 2 * workers], todo[2 * workers :]
            t0 = time.perf_counter()
            futures = {
                s: pool.submit(
                    _score_chunk, scenario, genome.shape, X[s : s + chunk], fidelity, screening
                )
                for s in batch
            }
            for s, fut in futures.items():
                tmp = parts / f"{s:07d}.tmp.npy"
                np.save(tmp, fut.result())
                tmp.replace(parts / f"{s:07d}.npy")
            wall += time.perf_counter() - t0
            wall_file.write_text(f"{wall:.3f}")
            if on_chunk is not None:
                on_chunk(len(starts) - len(todo), len(starts))
    F = np.vstack([np.load(parts / f"{s:07d}.npy") for s in starts])
    frame = pd.DataFrame(F, columns=list(CRITERIA)).assign(wall_s=wall)
    tmp = final.with_name(final.name + ".tmp")
    frame.to_parquet(tmp)
    tmp.replace(final)
    for p in parts.iterdir():
        p.unlink()
    parts.rmdir()
    return Front(X, F, wall)
