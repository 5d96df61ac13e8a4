"""MLServer (Seldon's V2 inference server) on 127.0.0.1, for tests and benchmarks.

A server we did not write, to check that the load generator, ``calibrate
profile --target`` and the twin work on a real Open Inference Protocol
endpoint. MLServer's pins clash with ours, so it lives in a virtual
environment of its own (``.venv-mlserver``, made by :func:`ensure_venv` or
``make mlserver-venv``: ``mlserver==1.7.1 mlserver-sklearn==1.7.1``, ~30 s,
~530 MB). The model is a scikit-learn random forest on the digits that
scikit-learn ships, trained by that venv's own Python (a pickle is only
safe to load with the scikit-learn that wrote it).

Steps: :func:`ensure_venv` → :func:`write_repository` (model + settings) →
:func:`serve` (start, wait for ``/v2/health/ready``, stop the process group).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

PINS = ("mlserver==1.7.1", "mlserver-sklearn==1.7.1")
VENV = Path(__file__).resolve().parents[1] / ".venv-mlserver"
MODEL = "digits-forest"
VERSION = "v1"

_TRAIN = """
import sys, joblib
from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier
x, y = load_digits(return_X_y=True)
model = RandomForestClassifier(n_estimators=int(sys.argv[2]), max_depth=12, random_state=0,
                               n_jobs=1).fit(x[:1400], y[:1400])
print(round(model.score(x[1400:], y[1400:]), 4))
joblib.dump(model, sys.argv[1])
"""


def ensure_venv(venv: Path = VENV, python: str = sys.executable) -> Path:
    """MLServer's virtual environment (created with pip on first use); its bin folder."""
    stamp = venv / f".installed-{'-'.join(PINS)}"
    if not stamp.is_file():
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "--disable-pip-version-check", *PINS], check=True)
        stamp.touch()
    return venv / "bin"


# perf_analyzer asks ``GET /v2/models/{m}/config`` (Triton's model-configuration extension
# of V2) before it sends anything; MLServer has no such route. A custom handler answers it
# with the Triton configuration of the model (full-shape inputs, no server batching).
_RUNTIME = """
from mlserver.handlers import custom_handler
from mlserver_sklearn import SKLearnModel

CONFIG = {config}


class DigitsForest(SKLearnModel):
    @custom_handler(rest_path="/v2/models/{model}/config", rest_method="GET")
    async def triton_config(self) -> dict:
        return CONFIG

    async def predict(self, payload):
        # Triton's client takes an output that has parameters for one with binary data
        # and asks for their size; MLServer puts its content type there
        response = await super().predict(payload)
        for out in response.outputs:
            out.parameters = None
        response.parameters = None
        return response
"""
INPUT = {"name": "x", "datatype": "FP32", "shape": [-1, 64]}
OUTPUT = {"name": "predict", "datatype": "INT64", "shape": [-1, 1]}


def triton_config() -> dict:
    """The model as Triton's config endpoint describes it (what perf_analyzer reads)."""
    return {
        "name": MODEL,
        "platform": "mlserver_sklearn",
        "max_batch_size": 0,
        "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [-1, 64]}],
        "output": [{"name": "predict", "data_type": "TYPE_INT64", "dims": [-1, 1]}],
    }


def write_repository(
    folder: Path, port: int, bin_dir: Path, trees: int = 50, workers: int = 0
) -> float:
    """Train the model and write MLServer's settings into ``folder``; its held-out accuracy.

    ``workers``: MLServer's ``parallel_workers`` (inference processes; 0 runs the
    model in the HTTP process: with 1.7.1 and uvloop 0.22 here, a worker process dies at
    start with "no current event loop", so 0 is the default). The gRPC and metrics
    ports are ``port + 1``/``+ 2``.
    """
    model_dir = folder / MODEL
    model_dir.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        [str(bin_dir / "python"), "-c", _TRAIN, str(model_dir / "model.joblib"), str(trees)],
        check=True,
        capture_output=True,
        text=True,
    )
    settings = {
        "debug": False,
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": port + 1,
        "metrics_port": port + 2,
        "parallel_workers": workers,
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    # the sklearn runtime, plus the config route (see _RUNTIME); inputs/outputs declared so
    # the metadata lists them
    (model_dir / "digits_runtime.py").write_text(
        _RUNTIME.replace("{config}", repr(triton_config())).replace("{model}", MODEL)
    )
    model = {
        "name": MODEL,
        "implementation": "digits_runtime.DigitsForest",
        "inputs": [INPUT],
        "outputs": [OUTPUT],
        "parameters": {"uri": "./model.joblib", "version": VERSION},
    }
    (model_dir / "model-settings.json").write_text(json.dumps(model))
    return float(out.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def serve(folder: Path, port: int, bin_dir: Path, timeout_s: float = 120.0) -> Iterator[str]:
    """Run ``mlserver start folder``; yield its base URL once ready; stop it on exit."""
    import httpx

    log = (folder / "mlserver.log").open("ab")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.Popen(
        [str(bin_dir / "mlserver"), "start", str(folder)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**env, "OMP_NUM_THREADS": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlserver exited ({proc.returncode}); see {log.name}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/v2/models/{MODEL}/ready", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"mlserver not ready after {timeout_s:.0f} s; see {log.name}")
            time.sleep(0.25)
        yield url
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        log.close()
