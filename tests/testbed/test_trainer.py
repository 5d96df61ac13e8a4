"""Trainer job: features in, a new registered ONNX version out."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
from sklearn.datasets import load_digits

from testbed.services import feature_store, registry, trainer
from testbed.zoo.manifest import ort_session
from tests.testbed.helpers import serve_app


def test_trainer_registers_successive_versions(tmp_path: Path) -> None:
    digits = load_digits()
    rows = [
        {"id": i, "features": digits.data[i].tolist(), "label": int(digits.target[i])}
        for i in range(400)
    ]
    table = feature_store.FeatureTable(tmp_path / "f.sqlite")
    with (
        serve_app(registry.create_app(tmp_path / "reg")) as reg,
        serve_app(feature_store.create_app(table)) as feats,
    ):
        assert httpx.post(f"{feats}/ingest", json={"entities": rows}).json()["ingested"] == 400
        first = trainer.run(reg, feats, "digits-retrain", steps=150, seed=0)
        second = trainer.run(reg, feats, "digits-retrain", steps=10, seed=1)
        assert (first["version"], second["version"]) == ("1", "2")
        assert first["accuracy"] > 0.8  # 150 steps on clean digits learn the task
        data, _ = registry.fetch_model(reg, "digits-retrain", "latest")
    assert first["train_rows"] == 320 and first["test_rows"] == 80
    sess = ort_session(data)
    out = sess.run(None, {"x": digits.data[:5].astype(np.float32)})[0]
    assert out.shape == (5, 10)
