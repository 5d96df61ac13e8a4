"""Request bodies for Open Inference Protocol (V2) servers, from a scenario's ``serving``.

A request process's ``serving`` names the model (and version) and describes
each input tensor: name, datatype, shape, and its data — rows of an ``.npy``
file or uniform draws in [low, high]. :func:`body_pool` turns that into a pool
of ready JSON bodies (bytes), built once before the clock starts, so a Locust
sender only picks one; request ``pid`` uses body ``input % len(pool)``.

Without ``serving`` the target is taken to be our testbed's gateway: model
``pipeline``, input ``image`` (1 × 64 floats) from the digits set, whose true
labels are known, so the run's accuracy is measured as over ``/v1``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from testbed.services.v2 import DATATYPES, encode_tensor, infer_path
from twin.spec import Serving, TensorInput

POOL = 256  # distinct generated bodies per run (cycled)
MAX_POOL = 4096  # bodies kept in memory, however long a data file is
GATEWAY_MODEL = "pipeline"


def gateway_serving() -> Serving:
    """The testbed gateway's V2 model: one 8×8 digit image as FP32 [1, 64]."""
    return Serving(
        model=GATEWAY_MODEL, inputs=[TensorInput(name="image", datatype="FP32", shape=[1, 64])]
    )


def resolve(serving: Serving, base: Path | None) -> Serving:
    """``serving`` with its data files made absolute (relative to ``base``: the scenario folder)."""
    if base is None:
        return serving
    inputs = [
        t.model_copy(update={"data_file": str((base / t.data_file).resolve())})
        if t.data_file
        else t
        for t in serving.inputs
    ]
    return serving.model_copy(update={"inputs": inputs})


def _tensor_data(t: TensorInput, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` tensors of ``t.shape`` (file rows cycled, or generated)."""
    dtype = DATATYPES[t.datatype]
    shape = tuple(t.shape)
    if t.data_file:
        try:
            rows = np.load(t.data_file, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ValueError(f"serving.inputs[{t.name}].data_file {t.data_file}: {e}") from None
        per = int(np.prod(shape))
        if rows.ndim < 1 or rows.size % per or rows.size // per < 1:
            raise ValueError(
                f"serving.inputs[{t.name}].data_file {t.data_file}: shape {list(rows.shape)} "
                f"cannot be split into tensors of shape {list(shape)}"
            )
        rows = rows.reshape(-1, *shape)
        return rows[np.arange(n) % len(rows)].astype(dtype)
    draw = rng.uniform(t.low, t.high, size=(n, *shape))
    if np.issubdtype(dtype, np.integer) or dtype is np.bool_:
        draw = np.rint(draw)
    return draw.astype(dtype)


def body_pool(
    serving: Serving, digits_file: str | None = None, seed: int = 0, size: int = POOL
) -> tuple[list[bytes], np.ndarray | None]:
    """JSON request bodies and, for the gateway's digits, each body's true label (else None)."""
    if serving.model == GATEWAY_MODEL and [t.name for t in serving.inputs] == ["image"]:
        from loadgen.inputs import digits

        x, y = digits(digits_file)
        bodies = [
            json.dumps({"inputs": [encode_tensor("image", row[None, :].astype(np.float32))]})
            for row in x
        ]
        return [b.encode() for b in bodies], y
    rng = np.random.default_rng(seed)
    rows = [len(np.load(t.data_file, mmap_mode="r")) for t in serving.inputs if t.data_file]
    size = min(max([size, *rows]), MAX_POOL)
    data = {t.name: _tensor_data(t, size, rng) for t in serving.inputs}
    bodies = [
        json.dumps({"inputs": [encode_tensor(k, v[i]) for k, v in data.items()]}).encode()
        for i in range(size)
    ]
    return bodies, None


def path_of(serving: Serving) -> str:
    """The infer path the requests go to."""
    return infer_path(serving.model, serving.version)
