"""Training of the stage models (torch, fixed seeds, a few epochs on the digits task).

Compatibility across variants: denoisers learn the clean 32×32 image; the
reference encoder and the deep classifier are trained together on the reference
denoiser's output; the other encoders are distilled to the reference encoder's
feature map (plus the task loss through the frozen deep classifier); the other
classifiers learn on the reference encoder's features.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from testbed.zoo.data import DigitsSplit
from testbed.zoo.models import REFERENCE, VARIANTS

BATCH = 64


def _batches(n: int, gen: torch.Generator) -> list[torch.Tensor]:
    return list(torch.randperm(n, generator=gen).split(BATCH))


def _fit(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    epochs: int,
    seed: int,
    lr: float = 3e-3,
) -> None:
    """Adam over shuffled minibatch indices; ``loss_fn(idx)`` returns the batch loss."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=epochs * ((n + BATCH - 1) // BATCH)
    )
    model.train()
    for _ in range(epochs):
        for idx in _batches(n, gen):
            opt.zero_grad()
            loss_fn(idx).backward()
            opt.step()
            sched.step()
    model.eval()


@torch.no_grad()
def _apply(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(chunk) for chunk in x.split(512)])


def upscaled_clean(images: np.ndarray) -> torch.Tensor:
    """Target of the denoisers: the clean image upscaled to 32×32 on the 0..1 scale."""
    x = torch.from_numpy(images).reshape(-1, 1, 8, 8) / 16.0
    return F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False).reshape(-1, 1024)


def train_all(
    split: DigitsSplit, seed: int, epochs: int, denoise_epochs: int = 3, reference_epochs: int = 4
) -> dict[str, dict[str, nn.Module]]:
    """Every variant of every stage, trained; stage → variant → model (eval mode).

    Denoisers see one noise draw of the training images (each image gives 1024
    pixel targets, so few epochs suffice and full-resolution convs are the costly
    part of the build); the reference encoder (a ResNet at 64×64, the build's
    costliest part: ≈ 20 ms per item per training step on one core) learns with
    the deep classifier for ``reference_epochs`` over every noise draw; the other
    stages see every draw for ``epochs`` epochs.
    """
    torch.manual_seed(seed)  # parameter initialisation; data order uses its own generators
    noisy = torch.from_numpy(split.train_noisy)
    target = upscaled_clean(split.train_clean)
    y = torch.from_numpy(split.train_y)
    n = len(y)
    out: dict[str, dict[str, nn.Module]] = {s: {} for s in VARIANTS}

    n_once = len(split.train_y) // split.draws
    for i, (name, make) in enumerate(VARIANTS["denoise"].items()):
        torch.manual_seed(seed + i)
        m = make()
        _fit(
            m,
            lambda idx, m=m: F.mse_loss(m(noisy[idx]), target[idx]),
            n_once,
            denoise_epochs,
            seed + i,
        )
        out["denoise"][name] = m

    z = _apply(out["denoise"][REFERENCE["denoise"]], noisy)
    torch.manual_seed(seed + 10)
    enc_ref = VARIANTS["encoder"][REFERENCE["encoder"]]()
    head_ref = VARIANTS["classifier"][REFERENCE["classifier"]]()
    joint = nn.Sequential(enc_ref, head_ref)
    _fit(joint, lambda idx: F.cross_entropy(joint(z[idx]), y[idx]), n, reference_epochs, seed + 10)
    out["encoder"][REFERENCE["encoder"]] = enc_ref
    out["classifier"][REFERENCE["classifier"]] = head_ref
    for p in head_ref.parameters():
        p.requires_grad_(False)
    feats = _apply(enc_ref, z)

    for i, (name, make) in enumerate(VARIANTS["encoder"].items()):
        if name == REFERENCE["encoder"]:
            continue
        torch.manual_seed(seed + 20 + i)
        m = make()

        def distil(idx: torch.Tensor, m: nn.Module = m) -> torch.Tensor:
            f = m(z[idx])
            return F.mse_loss(f, feats[idx]) + 0.1 * F.cross_entropy(head_ref(f), y[idx])

        _fit(m, distil, n, epochs, seed + 20 + i)
        out["encoder"][name] = m

    for i, (name, make) in enumerate(VARIANTS["classifier"].items()):
        if name == REFERENCE["classifier"]:
            continue
        torch.manual_seed(seed + 30 + i)
        m = make()
        _fit(m, lambda idx, m=m: F.cross_entropy(m(feats[idx]), y[idx]), n, epochs, seed + 30 + i)
        out["classifier"][name] = m
    # keep the declared variant order
    return {s: {v: out[s][v] for v in VARIANTS[s]} for s in VARIANTS}
