"""LSTM load predictor: the largest load of the next 20 s from the last 120 s.

As in the paper: one LSTM layer of 25 units and a one-unit dense output,
fed the per-second load of the last two minutes. Inputs are divided by the
window's mean (plus one) and the output is the predicted peak in the same
units, so one model serves loads from a few to hundreds of requests per
second. Weights are saved as a torch ``state_dict`` (tensors only) and loaded
with ``weights_only=True``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

HISTORY_S = 120
HORIZON_S = 20


class LSTMNet(nn.Module):
    """LSTM(1 → units) then Linear(units → 1) on the last hidden state, plus one.

    Inputs are scaled by the window's mean, so "the peak equals the mean" is
    an output of 1: the dense layer learns the departure from it, and an
    untrained net starts from that guess instead of from zero.
    """

    def __init__(self, units: int = 25) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size=1, hidden_size=units, batch_first=True)
        self.head = nn.Linear(units, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x.unsqueeze(-1))
        return 1.0 + self.head(out[:, -1, :]).squeeze(-1)


def windows(
    trace: np.ndarray, stride: int = 5, history: int = HISTORY_S, horizon: int = HORIZON_S
) -> tuple[np.ndarray, np.ndarray]:
    """(inputs n×history, targets n) of a per-second trace: the max of the next ``horizon``."""
    n = len(trace) - history - horizon + 1
    if n <= 0:
        return np.empty((0, history)), np.empty(0)
    starts = np.arange(0, n, stride)
    x = np.stack([trace[s : s + history] for s in starts])
    y = np.array([trace[s + history : s + history + horizon].max() for s in starts])
    return x, y


def smape(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Symmetric mean absolute percentage error in percent (0 when both are 0)."""
    a, p = np.asarray(actual, float), np.asarray(predicted, float)
    denom = (np.abs(a) + np.abs(p)) / 2
    ratio = np.divide(np.abs(a - p), denom, out=np.zeros_like(a), where=denom > 0)
    return float(100 * ratio.mean())


@dataclass
class LoadPredictor:
    """A trained LSTM and how to feed it; ``predict`` takes raw per-second loads."""

    net: LSTMNet

    @staticmethod
    def _scale(x: np.ndarray) -> np.ndarray:
        return x.mean(axis=-1, keepdims=True) + 1.0

    def predict(self, history: np.ndarray) -> float:
        """Predicted max load (req/s) of the next 20 s from the last ``HISTORY_S`` seconds.

        Shorter histories are padded on the left with their first value.
        """
        return float(self.predict_many(np.asarray(history, float)[None, :])[0])

    def predict_many(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, float)
        if x.shape[1] < HISTORY_S:
            pad = np.repeat(
                x[:, :1] if x.shape[1] else np.zeros((len(x), 1)), HISTORY_S - x.shape[1], axis=1
            )
            x = np.concatenate([pad, x], axis=1)
        x = x[:, -HISTORY_S:]
        scale = self._scale(x)
        with torch.no_grad():
            out = self.net(torch.as_tensor(x / scale, dtype=torch.float32)).numpy()
        return np.clip(out * scale[:, 0], 0.0, None)

    def save(self, path: str | Path) -> None:
        torch.save(self.net.state_dict(), Path(path))

    @classmethod
    def load(cls, path: str | Path, units: int = 25) -> LoadPredictor:
        net = LSTMNet(units)
        net.load_state_dict(torch.load(Path(path), weights_only=True))
        net.eval()
        return cls(net)


def train(
    traces: list[np.ndarray],
    epochs: int = 15,
    seed: int = 0,
    units: int = 25,
    stride: int = 5,
    batch_size: int = 256,
    lr: float = 5e-3,
) -> tuple[LoadPredictor, list[float]]:
    """Fit the LSTM on windows of ``traces``; returns the predictor and loss per epoch."""
    parts = [windows(t, stride) for t in traces]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    if len(x) == 0:
        raise ValueError(f"traces are shorter than {HISTORY_S + HORIZON_S} s: no windows")
    scale = LoadPredictor._scale(x)
    xt = torch.as_tensor(x / scale, dtype=torch.float32)
    yt = torch.as_tensor(y / scale[:, 0], dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = LSTMNet(units)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    # SMAPE-like objective: absolute error relative to the target's size.
    losses = []
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for i in range(0, len(xt), batch_size):
            idx = perm[i : i + batch_size]
            pred = net(xt[idx])
            loss = (torch.abs(pred - yt[idx]) / (yt[idx].abs() + pred.abs() + 1e-3)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / len(xt))
    net.eval()
    return LoadPredictor(net), losses


def evaluate(predictor: LoadPredictor, traces: list[np.ndarray], stride: int = 5) -> float:
    """SMAPE (%) of the predicted 20-s peak over windows of held-out traces."""
    parts = [windows(t, stride) for t in traces]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    return smape(y, predictor.predict_many(x))
