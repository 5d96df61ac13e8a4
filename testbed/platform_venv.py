"""The virtual environment of the platform components: Feast and MLflow.

Feast 0.67 and MLflow 3.17 pin pandas < 3 and protobuf 7, which clash with the
project's venv (pandas 3.1, protobuf 6.33), so both servers run from a venv of
their own, ``.venv-platform`` beside the project (override: the environment
variable ``MLOPS_TWIN_PLATFORM_VENV``). It is made on first use by
:func:`ensure_venv` or ``make platform-venv`` (~1 min with a warm pip cache,
~1 GB). Our code never imports feast or mlflow: the services start their
command-line servers from this venv and talk to them over HTTP.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

# mlflow 3.18 needs mlflow-tracing 3.18, which was not published; 3.17.2 is the newest pair.
# prometheus-flask-exporter: what ``mlflow server --expose-prometheus`` imports.
PINS = ("feast==0.67.0", "mlflow==3.17.2", "prometheus-flask-exporter==0.23.2")
VENV_ENV = "MLOPS_TWIN_PLATFORM_VENV"
DEFAULT_VENV = Path(__file__).resolve().parents[1] / ".venv-platform"


def venv_dir() -> Path:
    """Where the platform venv lives."""
    return Path(os.environ.get(VENV_ENV) or DEFAULT_VENV)


def _stamp(venv: Path) -> Path:
    return venv / f".installed-{'-'.join(PINS)}"


def is_ready(venv: Path | None = None) -> bool:
    """True when the venv holds exactly :data:`PINS`."""
    return _stamp(venv or venv_dir()).is_file()


def ensure_venv(venv: Path | None = None, python: str = sys.executable) -> Path:
    """The platform venv's ``bin`` folder, created with pip on first use.

    Two processes that need it at once (tests, two testbeds) wait for one
    another on a lock file instead of installing into the same folder.
    """
    venv = venv or venv_dir()
    if is_ready(venv):
        return venv / "bin"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not is_ready(venv):
            print(f"creating {venv} ({', '.join(PINS)}; about a minute)", file=sys.stderr)
            subprocess.run([python, "-m", "venv", str(venv)], check=True)
            pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
            subprocess.run([*pip, "--disable-pip-version-check", *PINS], check=True)
            _stamp(venv).touch()
    return venv / "bin"


def platform_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a process of the platform venv: our PYTHONPATH left out (its
    packages must not shadow the venv's), telemetry off, one thread per library."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(
        {
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "1",
            "FEAST_USAGE": "False",
        }
    )
    env.update(extra or {})
    return env
