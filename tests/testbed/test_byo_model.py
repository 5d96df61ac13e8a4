"""A user's own ONNX model named in the scenario: merged into the zoo's models, served as is."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from testbed.services.stage_server import make_runner
from testbed.zoo.build import export_onnx
from testbed.zoo.manifest import with_scenario_models
from twin.load import load_scenario

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


class ImageNet(nn.Module):
    """Takes (batch, 1, 32, 32) images, as a user's exported vision model would."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, stride=4, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).flatten(1)


def _export(path: Path, model: nn.Module | None = None) -> None:
    with torch.no_grad():
        torch.onnx.export(
            (model or ImageNet()).eval(),
            (torch.zeros(1, 1, 32, 32),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=["y"],
            dynamic_axes={"image": {0: "batch"}, "y": {0: "batch"}},
        )


def _with_model(model: str) -> str:
    """The example scenario with encoder e-small stated at accuracy 0.5 and ``model``."""
    text, n = re.subn(
        r"\{name: e-small, +accuracy: [0-9.]+,",
        "{name: e-small, accuracy: 0.5, " + model + ",",
        (EXAMPLES / "digits-pipeline.yaml").read_text(),
    )
    assert n == 1, "the example's e-small line changed; update this test"
    # the trace workload's file lies beside the example, not in the test's folder
    return "\n".join(line for line in text.splitlines() if "kind: trace" not in line)


def test_scenario_model_joins_the_manifest(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _export(tmp_path / "mine.onnx")
    text = _with_model("model: {file: mine.onnx, input_name: image, input_shape: [1, 32, 32]}")
    (tmp_path / "sc.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    sc = load_scenario(tmp_path / "sc.yaml")
    zoo = {"models": {"encoder": {"e-small": {"file": "encoder/e-small.onnx"}}}}
    merged = with_scenario_models(zoo, sc)
    entry = merged["models"]["encoder"]["e-small"]
    assert Path(entry["file"]) == tmp_path / "mine.onnx"
    assert entry["input_dim"] == 1024 and entry["accuracy"] == 0.5
    assert zoo["models"]["encoder"]["e-small"]["file"] == "encoder/e-small.onnx"  # not mutated


def test_missing_model_file_names_the_field(tmp_path: Path) -> None:
    text = _with_model("model: {file: nowhere.onnx, input_shape: [1024]}")
    (tmp_path / "sc.yaml").write_text(text)
    with pytest.raises(FileNotFoundError, match=r"variants\[e-small\]\.model\.file"):
        with_scenario_models({"models": {}}, load_scenario(tmp_path / "sc.yaml"))


def test_flat_rows_are_reshaped_to_the_models_input(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ImageNet().eval()
    _export(tmp_path / "mine.onnx", model)
    run = make_runner((tmp_path / "mine.onnx").read_bytes(), threads=1)
    x = np.random.default_rng(0).uniform(size=(3, 1024)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x).reshape(3, 1, 32, 32)).numpy()
    np.testing.assert_allclose(run(x), ref, atol=1e-5)
    # the same rows through a flat-input zoo model still work unchanged
    flat = tmp_path / "flat.onnx"
    export_onnx(nn.Linear(1024, 10).eval(), 1024, flat)
    assert make_runner(flat.read_bytes(), threads=1)(x).shape == (3, 10)
