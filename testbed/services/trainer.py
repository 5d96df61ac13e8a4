"""Trainer: a batch job that retrains a model from the feature store and registers it.

Reads every labelled entity from the feature store's offline data (Feast's
parquet file), trains a small MLP (64 → hidden → 10) for ``--steps`` Adam steps in
torch (fixed seed), exports it to ONNX (opset 17), checks the export against torch,
and registers it in the model registry as ``--name``: with MLflow a run of the
``retrain`` experiment (params, accuracy, the model) and a new model version, the
``--alias`` moved to it when given; with the builtin registry the next integer version.
Prints one JSON line (version, sha256, held-out accuracy, seconds) and exits;
``--port``/``--host`` are accepted so the node agent can start it like any other service, unused.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from typing import Any

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import numpy as np


def fetch_features(features_url: str) -> tuple[np.ndarray, np.ndarray]:
    """Labelled feature vectors (n × d float32) and labels from the feature store's
    offline data (Feast's parquet, or the builtin store's export)."""
    from testbed.services.platform_clients import training_set

    x, y, _ = training_set(features_url)
    if not len(y):
        raise RuntimeError("the feature store holds no labelled entities to train on")
    return x, y


def train(x: np.ndarray, y: np.ndarray, steps: int, seed: int, hidden: int = 128) -> dict[str, Any]:
    """Train on 80 % of the rows, score on the rest; returns the model, ONNX bytes, accuracy."""
    import torch
    from torch import nn

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    perm = torch.randperm(len(y), generator=gen)
    n_tr = max(int(0.8 * len(y)), 1)
    xt, yt = torch.from_numpy(x / 16.0), torch.from_numpy(y)
    tr, te = perm[:n_tr], perm[n_tr:]
    model = nn.Sequential(nn.Linear(x.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        idx = tr[torch.randint(len(tr), (64,), generator=gen)]
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
        opt.step()
    model.eval()

    class Scaled(nn.Module):  # the served model takes raw 0..16 pixels like the pipeline
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, v: torch.Tensor) -> torch.Tensor:
            return self.m(v / 16.0)

    with torch.no_grad():
        acc = float((model(xt[te]).argmax(1) == yt[te]).float().mean()) if len(te) else float("nan")
    from testbed.zoo.build import export_onnx

    buf = io.BytesIO()
    export_onnx(Scaled(), x.shape[1], buf)
    return {
        "onnx": buf.getvalue(),
        "accuracy": acc,
        "train_rows": n_tr,
        "test_rows": len(te),
        "torch_model": Scaled(),
    }


def next_version(registry_url: str, name: str) -> str:
    """The integer version after the newest one of ``name`` (builtin registry)."""
    from testbed.services.platform_clients import model_versions

    numbers = [int(v) for v in model_versions(registry_url, name) if v.isdigit()]
    return str(max(numbers, default=0) + 1)


def run(
    registry_url: str,
    features_url: str,
    name: str,
    steps: int,
    seed: int,
    alias: str | None = None,
) -> dict[str, Any]:
    """The whole job; returns its summary. MLflow: a run of experiment ``retrain`` with
    its params, accuracy and model, registered as a new version of ``name`` (``alias``
    moved to it when given)."""
    from testbed.services.platform_clients import api_of, register_model
    from testbed.zoo.manifest import ort_session

    t0 = time.perf_counter()
    x, y = fetch_features(features_url)
    out = train(x, y, steps, seed)
    # the exported model must compute what torch computed
    import torch

    sess = ort_session(out["onnx"])
    probe = x[: min(len(x), 32)]
    with torch.no_grad():
        ref = out["torch_model"](torch.from_numpy(probe)).numpy()
    got = sess.run(None, {"x": probe})[0]
    if not np.allclose(ref, got, atol=1e-4):
        raise RuntimeError("ONNX export differs from the torch model")
    meta = register_model(
        registry_url,
        name,
        out["onnx"],
        alias=alias
        or (None if api_of(registry_url) == "mlflow" else next_version(registry_url, name)),
        experiment="retrain",
        params={"steps": steps, "seed": seed, "train_rows": out["train_rows"]},
        metrics={"accuracy": out["accuracy"]},
    )
    return {
        "name": name,
        "version": meta["version"],
        "sha256": meta["sha256"],
        "accuracy": out["accuracy"],
        "train_rows": out["train_rows"],
        "test_rows": out["test_rows"],
        "steps": steps,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description="Retrain a model from the feature store.")
    p.add_argument("--port", type=int, default=0, help="unused (uniform service interface)")
    p.add_argument("--host", default="127.0.0.1", help="unused")
    p.add_argument("--registry", required=True)
    p.add_argument("--features", required=True)
    p.add_argument("--name", default="digits-retrain")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--alias", default=None, help="MLflow alias to move to the new version")
    a = p.parse_args()
    try:
        summary = run(
            a.registry.rstrip("/"), a.features.rstrip("/"), a.name, a.steps, a.seed, a.alias
        )
    except Exception as e:
        print(f"trainer failed: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
