"""Real request inputs: scikit-learn's 8×8 digits (shipped with the package) or entity ids.

``image`` requests carry the 64 pixel values (0..16) of a digit; ``entity``
requests carry the digit's index as a feature-store entity id (the testbed's
feature store ingests the same digits under their index). Either way the true
label of request ``pid`` is known, so accuracy can be measured from the run.
"""

from __future__ import annotations

import functools
from typing import Literal

import numpy as np

InputKind = Literal["image", "entity"]


@functools.lru_cache(maxsize=1)
def digits() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits: ``(images (n, 64) float in 0..16, labels (n,) int)``."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return np.asarray(data.data, dtype=float), np.asarray(data.target, dtype=np.int64)


def payload(kind: InputKind, index: int, pid: int) -> dict:
    """The JSON body of ``POST /v1/infer`` for input ``index`` as request ``pid``."""
    if kind == "image":
        images, _ = digits()
        return {"id": str(pid), "image": [float(x) for x in images[index]]}
    if kind == "entity":
        return {"id": str(pid), "entity_id": int(index)}
    raise ValueError(f"unknown input kind {kind!r} (use 'image' or 'entity')")


def n_inputs() -> int:
    """Size of the input set."""
    return len(digits()[1])
