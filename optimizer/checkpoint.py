"""Checkpoint files that an untrusted run folder cannot turn into code.

A search checkpoint holds pymoo's algorithm object (operators, population, the
random generator), which only pickle captures exactly — and unpickling runs
whatever the file says. So each checkpoint is signed: an HMAC-SHA256 of the
pickled bytes under a key kept outside every run folder, in the user's state
directory (``$MLOPS_TWIN_STATE/checkpoint.key``, by default
``~/.local/state/mlops-twin``; created with mode 0600 on first use). A
checkpoint is unpickled only when its signature verifies, so a run folder
copied from someone else, or a checkpoint edited after it was written, is
refused with a message instead of being executed.

Layout: ``MAGIC`` line, the hex signature line, then the pickle.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import pickle
import secrets
from pathlib import Path
from typing import Any

import cloudpickle

MAGIC = b"mlops-twin checkpoint v1\n"
KEY_FILE = "checkpoint.key"
# A search checkpoint holds the evaluation cache: tens of MB for long runs.
MAX_CHECKPOINT_BYTES = 2 << 30


class CheckpointError(ValueError):
    """A checkpoint that will not be loaded; the message says why."""


def key_dir() -> Path:
    """Where the signing key lives (never inside a run folder)."""
    env = os.environ.get("MLOPS_TWIN_STATE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "mlops-twin"


def signing_key() -> bytes:
    """This user's checkpoint key, created on first use (32 random bytes, mode 0600)."""
    path = key_dir() / KEY_FILE
    try:
        key = path.read_bytes()
        if len(key) >= 32:
            return key
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
    return key


def _sign(payload: bytes) -> bytes:
    return hmac.new(signing_key(), payload, hashlib.sha256).hexdigest().encode()


def dump(obj: Any, path: Path) -> None:
    """Pickle ``obj`` (cloudpickle: pymoo holds local functions), sign it, write atomically."""
    payload = cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(MAGIC + _sign(payload) + b"\n" + payload)
    os.replace(tmp, path)


def load(path: str | Path) -> Any:
    """The object in a checkpoint this user wrote; CheckpointError for anything else."""
    from twin.inputs import read_bytes

    data = read_bytes(path, MAX_CHECKPOINT_BYTES, "an optimizer checkpoint")
    if not data.startswith(MAGIC):
        raise CheckpointError(
            f"{path}: not a signed mlops-twin checkpoint (an old or foreign file); "
            "it is not loaded because unpickling it could run code — start the run anew"
        )
    signature, sep, payload = data[len(MAGIC) :].partition(b"\n")
    if not sep or not hmac.compare_digest(signature, _sign(payload)):
        raise CheckpointError(
            f"{path}: signature does not match this user's key ({key_dir() / KEY_FILE}); "
            "a checkpoint is resumed only by the user who wrote it, unchanged"
        )
    return pickle.loads(payload)
