"""The residual features extractor: output width and the skip connection."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from optimizer.rl.extractor import ResidualBlock, ResidualExtractor


def test_output_width_and_blocks():
    space = gym.spaces.Box(0, 1, shape=(17,), dtype=np.float32)
    ext = ResidualExtractor(space, width=32, blocks=3)
    assert ext.features_dim == 32
    out = ext(torch.zeros(5, 17))
    assert out.shape == (5, 32)
    assert sum(isinstance(m, ResidualBlock) for m in ext.modules()) == 3


def test_block_is_identity_plus_body():
    block = ResidualBlock(8)
    for p in block.body.parameters():
        torch.nn.init.zeros_(p)
    x = torch.rand(3, 8)
    assert torch.equal(block(x), x)  # relu(x + 0) = x for x ≥ 0


def test_rejects_image_observations():
    with pytest.raises(ValueError, match="flat"):
        ResidualExtractor(gym.spaces.Box(0, 1, shape=(3, 4), dtype=np.float32))
