"""Build the model zoo: train, export to ONNX, measure, write ``manifest.json``.

Output (``data/models/`` by default, git-ignored)::

    <stage>/<variant>.onnx      one file per variant
    digits-test.npz             the held-out noisy images and labels (x: n×64, y: n)
    manifest.json               per variant: file, sha256, size, MACs, accuracy,
                                per-batch latency; accuracy of every variant combination

A variant's ``accuracy`` is the measured held-out accuracy of the whole pipeline
with that variant and the reference (last) variants of the other stages;
``pipelines`` holds every combination. Latency is onnxruntime with one intra-op
thread on this machine (ms per batch, median of repeated runs).
"""

from __future__ import annotations

import itertools
import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import numpy as np

from testbed.zoo.data import NOISE_SD, PATCH, load_split
from testbed.zoo.manifest import (
    DEFAULT_DIR,
    MANIFEST,
    TESTSET,
    load_manifest,
    load_testset,
    ort_session,
    pipeline_key,
    sha256_file,
)
from testbed.zoo.models import DIMS, REFERENCE, STAGES, VARIANTS, count_macs

BATCHES = (1, 2, 4, 8, 16, 32)


def measure_latency(sess: Any, input_dim: int, budget_s: float = 0.25) -> dict[int, dict]:
    """Median and coefficient of variation of one batch's run time (ms) per batch size."""
    name = sess.get_inputs()[0].name
    rng = np.random.default_rng(0)
    out: dict[int, dict] = {}
    for b in BATCHES:
        x = rng.uniform(0, 1, size=(b, input_dim)).astype(np.float32)
        sess.run(None, {name: x})  # warm-up
        times = []
        t_end = time.perf_counter() + budget_s
        while len(times) < 5 or (time.perf_counter() < t_end and len(times) < 200):
            t0 = time.perf_counter()
            sess.run(None, {name: x})
            times.append((time.perf_counter() - t0) * 1000)
        q25, med, q75 = np.percentile(times, [25, 50, 75])
        # robust spread: a shared machine adds rare huge outliers that are not the model's
        out[b] = {"median_ms": float(med), "cv": float((q75 - q25) / 1.349 / med)}
    return out


def fit_service_time(latency: dict[int, dict], max_batch: int = 8) -> dict[str, float]:
    """``t(b) = mean_ms + per_item_ms·(b−1)`` through the batch-1 time (ms).

    The slope is least squares over batches 2..``max_batch`` with the intercept
    fixed at the measured batch-1 median, so the twin's batch-1 time is exact.
    Batches above ``max_batch`` are left out of the fit: on this machine their
    activations fall out of cache and the time per item jumps (``latency_ms`` in
    the manifest keeps every batch for a table model).
    """
    t1 = float(latency[1]["median_ms"])
    b = np.array([k for k in sorted(latency) if 1 < k <= max_batch], dtype=float)
    t = np.array([latency[int(k)]["median_ms"] for k in b])
    slope = float(np.sum((b - 1) * (t - t1)) / np.sum((b - 1) ** 2)) if len(b) else 0.0
    cv = float(np.median([v["cv"] for k, v in latency.items() if k <= max_batch]))
    return {"mean_ms": t1, "per_item_ms": max(slope, 0.0), "cv": min(max(cv, 0.05), 1.0)}


def export_onnx(model: Any, input_dim: int, dest: Path | Any) -> None:
    """Export ``model`` (float32 (batch, input_dim) → (batch, out)) to ONNX, opset 17.

    The classic TorchScript exporter (``dynamo=False``) needs no onnxscript; its
    deprecation notices are silenced here, and only here.
    """
    import torch

    if isinstance(dest, Path):
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest = str(dest)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"testbed\.")
        torch.onnx.export(
            model,
            (torch.zeros(1, input_dim),),
            dest,
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        )


def _pipeline_accuracy(sessions: dict, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Held-out accuracy of every variant combination (ONNX, as served)."""

    def run(stage: str, variant: str, inp: np.ndarray) -> np.ndarray:
        return sessions[stage][variant].run(None, {"x": inp})[0]

    acc: dict[str, float] = {}
    for d in VARIANTS["denoise"]:
        zd = run("denoise", d, x)
        for e in VARIANTS["encoder"]:
            ze = run("encoder", e, zd)
            for c in VARIANTS["classifier"]:
                pred = run("classifier", c, ze).argmax(axis=1)
                acc[f"{d}/{e}/{c}"] = float((pred == y).mean())
    return acc


def build(
    out_dir: Path = DEFAULT_DIR,
    seed: int = 0,
    epochs: int = 8,
    threads: int = 2,
    progress: Callable[[str], None] = lambda _msg: None,
) -> dict[str, Any]:
    """Train, export and measure every variant; write and return the manifest.

    Two torch threads by default: the reference encoder (a ResNet at 64×64) is
    heavy enough to use both cores of a small machine; run the build alone.
    """
    import torch

    torch.set_num_threads(threads)
    from testbed.zoo.train import train_all

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    split = load_split(seed)
    progress(f"training {sum(len(v) for v in VARIANTS.values())} models")
    models = train_all(split, seed, epochs)
    np.savez_compressed(out_dir / TESTSET, x=split.test_noisy, y=split.test_y)

    entries: dict[str, dict[str, Any]] = {}
    sessions: dict[str, dict[str, Any]] = {s: {} for s in STAGES}
    for stage, variants in models.items():
        entries[stage] = {}
        d_in, d_out = DIMS[stage]
        for variant, model in variants.items():
            path = out_dir / stage / f"{variant}.onnx"
            export_onnx(model, d_in, path)
            sessions[stage][variant] = ort_session(path)
            entries[stage][variant] = {
                "file": f"{stage}/{variant}.onnx",
                "sha256": sha256_file(path),
                "size_bytes": path.stat().st_size,
                "params": int(sum(p.numel() for p in model.parameters())),
                "macs": count_macs(model, d_in),
                "input_dim": d_in,
                "output_dim": d_out,
            }
    progress("measuring accuracy and latency")
    pipelines = _pipeline_accuracy(sessions, split.test_noisy, split.test_y)
    for stage in STAGES:
        for variant, entry in entries[stage].items():
            key = pipeline_key({**REFERENCE, stage: variant})
            entry["accuracy"] = pipelines[key]
            lat = measure_latency(sessions[stage][variant], entry["input_dim"])
            entry["latency_ms"] = {str(b): v for b, v in lat.items()}
            entry["service_time"] = fit_service_time(lat)
    manifest = {
        "task": "noisy sklearn digits, 8x8 upscaled to 32x32 (the reference encoder at 64x64)",
        "noise": {"sd": NOISE_SD, "patch": PATCH},
        "seed": seed,
        "epochs": epochs,
        "test_size": len(split.test_y),
        "testset": TESTSET,
        "onnxruntime_threads": 1,
        "stages": list(STAGES),
        "reference": REFERENCE,
        "models": entries,
        "pipelines": pipelines,
        "build_seconds": round(time.perf_counter() - t0, 1),
    }
    tmp = out_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(out_dir / MANIFEST)
    (out_dir / "manifest.md").write_text(manifest_table(manifest))
    return manifest


def manifest_table(manifest: dict[str, Any]) -> str:
    """Markdown: per stage and variant, MACs, ms per item (batch 1 and 8), accuracy; and spans."""
    lines = [
        f"# Model zoo ({manifest['task']}; onnxruntime 1 thread, one core)",
        "",
        "| stage | variant | MMACs | ms/item b=1 | ms/item b=8 | accuracy |",
        "|---|---|---:|---:|---:|---:|",
    ]
    spans = []
    for stage, variants in manifest["models"].items():
        costs, accs = [], []
        for v, e in variants.items():
            b1 = e["latency_ms"]["1"]["median_ms"]
            b8 = e["latency_ms"]["8"]["median_ms"] / 8
            costs.append(b1)
            accs.append(e["accuracy"])
            lines.append(
                f"| {stage} | {v} | {e['macs'] / 1e6:.2f} | {b1:.3f} | {b8:.3f} "
                f"| {e['accuracy']:.3f} |"
            )
        spans.append(
            f"- {stage}: cost span {max(costs) / min(costs):.1f}×, accuracy span "
            f"{100 * (max(accs) - min(accs)):.1f} points"
        )
    return "\n".join([*lines, "", *spans, ""])


def combos() -> list[dict[str, str]]:
    """Every stage → variant combination."""
    return [dict(zip(STAGES, c, strict=True)) for c in itertools.product(*VARIANTS.values())]


__all__ = [
    "DEFAULT_DIR",
    "build",
    "fit_service_time",
    "load_manifest",
    "load_testset",
    "manifest_table",
    "measure_latency",
    "ort_session",
    "pipeline_key",
    "sha256_file",
]
