"""Stage models (torch): denoise 8×8 → 32×32, encode 32×32 → 32×8×8 features, classify.

Every variant of a stage has the same input and output shape, so any variant of
one stage works with any variant of the next. Inputs and outputs are flat float32
vectors: denoise 64 → 1024, encoder 1024 → 2048, classifier 2048 → 10 logits.
Widths are chosen so a stage's variants span well over 5× in compute.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.nn import functional as F

from testbed.zoo.manifest import STAGES

UPSCALE = 4  # 8×8 → 32×32: makes compute, not HTTP, dominate a stage
FEATURES = (32, 8, 8)
DIMS = {"denoise": (64, 1024), "encoder": (1024, 2048), "classifier": (2048, 10)}


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.ReLU())


class Denoise(nn.Module):
    """Upscales a noisy 0..16 digit to 32×32 and removes noise (residual conv stack)."""

    def __init__(self, widths: tuple[int, ...]):
        super().__init__()
        chans = (1, *widths)
        self.body = nn.Sequential(*[_conv(a, b) for a, b in itertools.pairwise(chans)])
        self.out = nn.Conv2d(chans[-1], 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        img = x.reshape(-1, 1, 8, 8) / 16.0
        img = F.interpolate(img, scale_factor=UPSCALE, mode="bilinear", align_corners=False)
        return (img + self.out(self.body(img))).reshape(-1, 1024)


class Encoder(nn.Module):
    """32×32 image → a 32×8×8 feature map (flattened)."""

    def __init__(self, kind: str):
        super().__init__()
        if kind == "small":
            layers = [_conv(1, 8, stride=2), _conv(8, 32, stride=2)]
        elif kind == "medium":
            layers = [_conv(1, 8), nn.MaxPool2d(2), _conv(8, 32), nn.MaxPool2d(2), _conv(32, 32)]
        elif kind == "large":
            layers = [
                _conv(1, 16),
                nn.MaxPool2d(2),
                _conv(16, 32),
                _conv(32, 32),
                nn.MaxPool2d(2),
                _conv(32, 32),
            ]
        else:
            raise ValueError(f"unknown encoder kind {kind!r}")
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.reshape(-1, 1, 32, 32)).reshape(-1, 2048)


class Classifier(nn.Module):
    """32×8×8 features → 10 logits."""

    def __init__(self, kind: str):
        super().__init__()
        if kind == "linear":  # linear on 4×4-pooled features: cheap and coarse
            self.body = nn.Sequential(
                nn.Unflatten(1, FEATURES), nn.AvgPool2d(4), nn.Flatten(), nn.Linear(32 * 2 * 2, 10)
            )
        elif kind == "mlp":  # MLP on 2×2-pooled features
            self.body = nn.Sequential(
                nn.Unflatten(1, FEATURES),
                nn.AvgPool2d(2),
                nn.Flatten(),
                nn.Linear(32 * 4 * 4, 128),
                nn.ReLU(),
                nn.Linear(128, 10),
            )
        elif kind == "deep":
            self.body = nn.Sequential(
                nn.Unflatten(1, FEATURES),
                _conv(32, 64),
                nn.MaxPool2d(2),
                _conv(64, 64),
                nn.Flatten(),
                nn.Linear(64 * 4 * 4, 256),
                nn.ReLU(),
                nn.Linear(256, 10),
            )
        else:
            raise ValueError(f"unknown classifier kind {kind!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


# stage → variant → constructor; the last variant of each stage is the reference one
VARIANTS: dict[str, dict[str, object]] = {
    "denoise": {
        "d-tiny": lambda: Denoise((4,)),
        "d-small": lambda: Denoise((8, 8)),
        "d-large": lambda: Denoise((16, 16, 16)),
    },
    "encoder": {
        "e-small": lambda: Encoder("small"),
        "e-medium": lambda: Encoder("medium"),
        "e-large": lambda: Encoder("large"),
    },
    "classifier": {
        "c-linear": lambda: Classifier("linear"),
        "c-mlp": lambda: Classifier("mlp"),
        "c-deep": lambda: Classifier("deep"),
    },
}
assert tuple(VARIANTS) == STAGES
REFERENCE = {stage: list(v)[-1] for stage, v in VARIANTS.items()}


def count_macs(model: nn.Module, input_dim: int) -> int:
    """Multiply-accumulates of one item through the model's convs and linears."""
    total = 0

    def conv_hook(m: nn.Conv2d, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
        total += int(out[0].numel() * k)

    def lin_hook(m: nn.Linear, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        total += int(m.in_features * m.out_features)

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(lin_hook))
    with torch.no_grad():
        model(torch.zeros(1, input_dim))
    for h in hooks:
        h.remove()
    return total
