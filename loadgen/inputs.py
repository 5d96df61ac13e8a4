"""Real request inputs: scikit-learn's 8×8 digits (shipped with the package) or entity ids.

``image`` requests carry the 64 pixel values (0..16) of a digit — by default
scikit-learn's clean digits, or an ``.npz`` file with ``x`` (n × 64) and ``y``
(n) such as the testbed's held-out *noisy* test set
(``data/models/digits-test.npz``, what the pipeline is built for); ``entity``
requests carry the digit's index as a feature-store entity id (the testbed's
feature store ingests the same digits under their index). Either way the true
label of request ``pid`` is known, so accuracy can be measured from the run.
"""

from __future__ import annotations

import functools
from typing import Literal

import numpy as np

InputKind = Literal["image", "entity"]


@functools.lru_cache(maxsize=4)
def digits(path: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images (n, 64) float in 0..16, labels (n,) int)``: a file's, or all 1797 digits."""
    if path is not None:
        try:
            data = np.load(path)
            x, y = np.asarray(data["x"], dtype=float), np.asarray(data["y"], dtype=np.int64)
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(
                f"inputs file {path}: need an .npz with x (n×64) and y ({exc})"
            ) from None
        if x.ndim != 2 or x.shape[1] != 64 or len(y) != len(x) or len(x) == 0:
            raise ValueError(f"inputs file {path}: x must be n×64 and y n labels, got {x.shape}")
        return x, y
    from sklearn.datasets import load_digits

    data = load_digits()
    return np.asarray(data.data, dtype=float), np.asarray(data.target, dtype=np.int64)


def payload(kind: InputKind, index: int, pid: int, path: str | None = None) -> dict:
    """The JSON body of ``POST /v1/infer`` for input ``index`` as request ``pid``."""
    if kind == "image":
        images, _ = digits(path)
        return {"id": str(pid), "image": [float(x) for x in images[index]]}
    if kind == "entity":
        return {"id": str(pid), "entity_id": int(index)}
    raise ValueError(f"unknown input kind {kind!r} (use 'image' or 'entity')")


def n_inputs(path: str | None = None) -> int:
    """Size of the input set."""
    return len(digits(path)[1])
