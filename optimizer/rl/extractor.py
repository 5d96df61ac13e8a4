"""Features extractor of the paper: a fully connected layer, then residual blocks.

Node and pipeline state arrive as one flat vector; a linear layer brings
them to ``width`` features and ``blocks`` residual blocks (two linear layers
with a skip connection, He et al.) refine them. Plugs into stable-baselines3
as ``policy_kwargs={"features_extractor_class": ResidualExtractor}``.
"""

from __future__ import annotations

import gymnasium as gym
import torch
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn


class ResidualBlock(nn.Module):
    """x + W2·relu(W1·x), followed by a ReLU."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
        self.out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x + self.body(x))


class ResidualExtractor(BaseFeaturesExtractor):
    """Linear(obs → width) + ReLU, then ``blocks`` residual blocks; outputs ``width``."""

    def __init__(self, observation_space: gym.spaces.Box, width: int = 128, blocks: int = 2):
        if len(observation_space.shape or ()) != 1:
            raise ValueError(f"need a flat Box observation, got shape {observation_space.shape}")
        super().__init__(observation_space, features_dim=width)
        n_in = int(observation_space.shape[0])
        self.net = nn.Sequential(
            nn.Linear(n_in, width), nn.ReLU(), *[ResidualBlock(width) for _ in range(blocks)]
        )

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return self.net(observations)
