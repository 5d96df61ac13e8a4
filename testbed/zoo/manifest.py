"""Reading a built model zoo (no torch): manifest, test set, artifact hashes, ORT sessions."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import numpy as np

DEFAULT_DIR = Path("data/models")
MANIFEST = "manifest.json"
TESTSET = "digits-test.npz"
STAGES = ("denoise", "encoder", "classifier")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ort_session(path: Path | bytes, threads: int = 1) -> Any:
    """An onnxruntime CPU session with ``threads`` intra-op threads (no spinning)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    src = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def with_scenario_models(manifest: dict[str, Any], scenario: Any) -> dict[str, Any]:
    """The manifest with every scenario variant that names its own ONNX file (``model``).

    Such a variant replaces (or adds to) the zoo's entry of that stage and variant: its
    file (as given, so ``model_dir / file`` is the file itself when absolute), sha256,
    input width and the accuracy the scenario states. The zoo is one source of models;
    the scenario's own files are another.
    """
    out = {**manifest, "models": {k: dict(v) for k, v in manifest.get("models", {}).items()}}
    for c in scenario.components:
        for v in c.variants:
            if v.model is None:
                continue
            path = Path(v.model.file).resolve()
            if not path.is_file():
                raise FileNotFoundError(
                    f"components[{c.name}].variants[{v.name}].model.file: no file {path}"
                )
            width = 1
            for d in v.model.input_shape:
                width *= int(d)
            out["models"].setdefault(c.name, {})[v.name] = {
                "file": str(path),
                "sha256": sha256_file(path),
                "size_bytes": path.stat().st_size,
                "input_dim": width,
                "input_name": v.model.input_name,
                "input_shape": list(v.model.input_shape),
                "accuracy": v.accuracy,
                "user": True,
            }
    return out


def pipeline_key(variants: dict[str, str]) -> str:
    """Key of ``manifest['pipelines']`` for stage → variant."""
    return "/".join(variants[s] for s in STAGES)


def load_manifest(model_dir: Path = DEFAULT_DIR) -> dict[str, Any]:
    """The manifest a previous build wrote; FileNotFoundError says how to build."""
    path = Path(model_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(
            f"no model zoo at {model_dir} (missing {MANIFEST}); "
            "run `mlops-twin testbed build-models`"
        )
    return json.loads(path.read_text())


def load_testset(model_dir: Path = DEFAULT_DIR) -> tuple[np.ndarray, np.ndarray]:
    """Held-out noisy images (n×64 float32, 0..16) and labels."""
    data = np.load(Path(model_dir) / TESTSET)
    return data["x"].astype(np.float32), data["y"].astype(np.int64)
