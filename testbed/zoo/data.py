"""The digits task every stage model is built for: noisy 8×8 digits, fixed seeds.

Images are scikit-learn's digits (shipped with the package, nothing downloaded):
64 pixel values in 0..16. The pipeline's input is a *noisy* image (Gaussian noise
and a dropped-out patch), so the denoising stage matters for accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NOISE_SD = 3.0  # on the 0..16 pixel scale
PATCH = 3  # side of the zeroed square patch (pixels)
TEST_FRACTION = 1 / 3


@dataclass(frozen=True)
class DigitsSplit:
    """Clean and noisy images (float32, 0..16, shape (n, 64)) with labels."""

    train_clean: np.ndarray
    train_noisy: np.ndarray
    train_y: np.ndarray
    test_clean: np.ndarray
    test_noisy: np.ndarray
    test_y: np.ndarray
    draws: int  # noise draws of each training image (train arrays are draws × images)


def add_noise(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise plus one zeroed PATCH×PATCH square per image, clipped to 0..16."""
    x = images.reshape(-1, 8, 8).astype(np.float32).copy()
    x += rng.normal(0.0, NOISE_SD, size=x.shape).astype(np.float32)
    rows = rng.integers(0, 8 - PATCH + 1, size=len(x))
    cols = rng.integers(0, 8 - PATCH + 1, size=len(x))
    for i, (r, c) in enumerate(zip(rows, cols, strict=True)):
        x[i, r : r + PATCH, c : c + PATCH] = 0.0
    return np.clip(x, 0.0, 16.0).reshape(-1, 64)


def load_split(seed: int = 0, train_draws: int = 2) -> DigitsSplit:
    """A stratified train/test split; each training image gets ``train_draws`` noise draws."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.data.astype(np.float32)
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=seed, stratify=y
    )
    ss = np.random.SeedSequence(seed)
    train_rng, test_rng = (np.random.default_rng(s) for s in ss.spawn(2))
    clean = np.concatenate([x_tr] * train_draws)
    noisy = add_noise(clean, train_rng)
    return DigitsSplit(
        train_clean=clean,
        train_noisy=noisy,
        train_y=np.concatenate([y_tr] * train_draws),
        test_clean=x_te,
        test_noisy=add_noise(x_te, test_rng),
        test_y=y_te,
        draws=train_draws,
    )
