"""The LSTM load predictor: windows, SMAPE, shapes, and that training learns something."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.rl import predictor as P
from optimizer.rl import traces as T


def test_windows_target_is_the_next_peak():
    trace = np.arange(200, dtype=float)
    x, y = P.windows(trace, stride=10)
    assert x.shape[1] == P.HISTORY_S
    assert y[0] == P.HISTORY_S + P.HORIZON_S - 1
    assert np.all(y == x[:, -1] + P.HORIZON_S)


def test_smape_known_values():
    assert P.smape(np.array([100.0]), np.array([100.0])) == 0
    assert P.smape(np.array([100.0]), np.array([50.0])) == pytest.approx(100 * 50 / 75)
    assert P.smape(np.array([0.0]), np.array([0.0])) == 0


def test_generated_traces_cover_the_three_kinds():
    traces = T.generate(2, 300, seed=1)
    assert [k for k, _ in traces].count("fluctuating") == 2
    assert {k for k, _ in traces} == set(T.KINDS)
    assert all(len(t) == 300 and np.all(t >= 0) for _, t in traces)


def test_tiny_training_learns_the_peak_of_poisson_load(tmp_path):
    """Steady Poisson load at 30/s: the 20-s peak is ~30 + 2·√30, which the mean misses."""
    rng = np.random.default_rng(0)
    train = [rng.poisson(30, 400).astype(float) for _ in range(3)]
    test = [np.random.default_rng(9).poisson(30, 400).astype(float)]
    trained, losses = P.train(train, epochs=5, seed=0, stride=10, batch_size=16)
    assert losses[-1] < losses[0]
    x, y = P.windows(test[0], stride=10)
    mean_guess = P.smape(y, x.mean(axis=1))  # ~30 %: the peak is well above the mean
    assert P.evaluate(trained, test, stride=10) < 0.5 * mean_guess
    path = tmp_path / "lstm.pt"
    trained.save(path)
    again = P.LoadPredictor.load(path)
    hist = test[0][:150]
    assert again.predict(hist) == pytest.approx(trained.predict(hist))
    assert trained.predict_many(np.ones((4, 30))).shape == (4,)  # short history is padded
