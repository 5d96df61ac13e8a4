"""Stage models (plain torch): denoise 8×8 → 32×32, encode → 32×8×8 features, classify.

The families are the field's own, written out in a few lines each rather than taken
from torchvision (whose wheel does not import beside ``torch==2.13.0`` here): ResNet
basic blocks, MobileNetV2-style inverted residuals, a width multiplier. The encoder
is the heavy stage: its reference variant upsamples the denoised 32×32 image to
64×64 and runs a ResNet there (≈ 2–3 ms per item on one core, onnxruntime 1 thread),
so a replica at a fraction of a core saturates at tens to hundreds of requests per
second — compute, not HTTP, dominates its service time.

Every variant of a stage has the same input and output shape, so any variant of
one stage works with any variant of the next. Inputs and outputs are flat float32
vectors: denoise 64 → 1024, encoder 1024 → 2048, classifier 2048 → 10 logits.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.nn import functional as F

from testbed.zoo.manifest import STAGES

UPSCALE = 4  # 8×8 → 32×32
FEATURES = (32, 8, 8)
DIMS = {"denoise": (64, 1024), "encoder": (1024, 2048), "classifier": (2048, 10)}


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.ReLU())


def _conv_bn(c_in: int, c_out: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    )


class BasicBlock(nn.Module):
    """ResNet basic block: two 3×3 conv-BN, identity (or 1×1 projection) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.a = _conv_bn(c_in, c_out, stride=stride)
        self.b = _conv_bn(c_out, c_out)
        self.short = (
            nn.Identity() if stride == 1 and c_in == c_out else _conv_bn(c_in, c_out, 1, stride)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.b(F.relu(self.a(x))) + self.short(x))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1×1 expand, 3×3 depthwise, 1×1 linear projection (+ residual)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, expand: int = 4):
        super().__init__()
        mid = c_in * expand
        self.body = nn.Sequential(
            _conv_bn(c_in, mid, 1),
            nn.ReLU6(),
            _conv_bn(mid, mid, 3, stride, groups=mid),
            nn.ReLU6(),
            _conv_bn(mid, c_out, 1),
        )
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


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


class ResNetEncoder(nn.Module):
    """32×32 image → 32×8×8 features: a ResNet of basic blocks at ``size``×``size`` input.

    ``size`` 64 upsamples first (the heavy reference); ``width`` is the stem's channels
    (doubled at each of the two downsampling stages); ``depth`` blocks per stage.
    """

    def __init__(self, width: int, depth: int = 1, size: int = 32):
        super().__init__()
        self.size = size
        w = (width, 2 * width, 2 * width)
        layers: list[nn.Module] = [_conv_bn(1, w[0]), nn.ReLU()]
        c = w[0]
        for i, c_out in enumerate(w):
            for j in range(depth):
                layers.append(BasicBlock(c, c_out, stride=2 if (i > 0 and j == 0) else 1))
                c = c_out
        pool = size // 4 // FEATURES[1]  # fixed kernel: ONNX export needs static pooling
        layers += [nn.Conv2d(c, FEATURES[0], 1), nn.AvgPool2d(pool) if pool > 1 else nn.Identity()]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        img = x.reshape(-1, 1, 32, 32)
        if self.size != 32:
            img = F.interpolate(img, size=(self.size, self.size), mode="bilinear")
        return self.body(img).reshape(-1, 2048)


class MobileEncoder(nn.Module):
    """32×32 image → 32×8×8 features with MobileNetV2 inverted residuals (width ``width``)."""

    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn(1, width, stride=2),
            nn.ReLU6(),
            InvertedResidual(width, width, expand=2),
            InvertedResidual(width, FEATURES[0], stride=2, expand=2),
        )

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
        "d-large": lambda: Denoise((24, 24, 24)),
    },
    "encoder": {
        "e-small": lambda: MobileEncoder(4),
        "e-medium": lambda: ResNetEncoder(16, depth=1, size=32),
        "e-large": lambda: ResNetEncoder(32, depth=1, size=64),
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
    was_training = model.training
    model.eval()  # BatchNorm with a batch of one
    with torch.no_grad():
        model(torch.zeros(1, input_dim))
    model.train(was_training)
    for h in hooks:
        h.remove()
    return total
