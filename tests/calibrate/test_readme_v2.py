"""The README's "Calibrate against your own server" commands, run against MLServer.

A new user follows that section with a V2 endpoint they already run: here MLServer
1.7.1 (its own venv, ``testbed.mlserver``) serving a scikit-learn forest. The shell
block is taken from the README as it is; only what names the user's server changes
(URL, model, version, input) and the load run is shortened. Each command must exit 0
and leave what the section says it leaves.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Calibrate against your own server"


def readme_block() -> str:
    """The first ```bash block of the section."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(SECTION) :]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def test_readme_block_is_there_and_names_a_v2_server():
    block = readme_block()
    for needle in ("calibrate profile --target", "--protocol v2", "simulate", "/ready"):
        assert needle in block, needle


def test_readme_commands_work_against_mlserver(tmp_path):
    from testbed import mlserver
    from testbed.services.node_agent import free_port

    bin_dir = mlserver.ensure_venv()
    port = free_port("127.0.0.1")
    mlserver.write_repository(tmp_path / "repo", port, bin_dir, trees=20)
    block = readme_block()
    url = f"http://127.0.0.1:{port}"
    venv_bin = str(Path(sys.executable).parent)
    script = (
        block.replace("http://127.0.0.1:8080", url)
        .replace("my-model", mlserver.MODEL)
        .replace("--version 1", f"--version {mlserver.VERSION}")
        .replace("/versions/1/", f"/versions/{mlserver.VERSION}/")
        .replace("input-0:FP32:1x64", "x:FP32:1x64")
        .replace("--duration 60", "--duration 10")
        .replace(".venv/bin/", f"{venv_bin}/")
    )
    (tmp_path / "walk.sh").write_text("set -euo pipefail\n" + script)
    with mlserver.serve(tmp_path / "repo", port, bin_dir):
        done = subprocess.run(
            ["bash", str(tmp_path / "walk.sh")],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    prof = tmp_path / "runs" / mlserver.MODEL
    for name in ("samples.parquet", "calibration.yaml", "scenario.yaml", "deployment.yaml"):
        assert (prof / name).is_file(), name
    meta = json.loads((prof / "manifest.json").read_text())
    assert meta["model"] == mlserver.MODEL and meta["capacity"]
    assert any((tmp_path / "runs" / f"{mlserver.MODEL}-sim").iterdir())
    load = tmp_path / "runs" / f"{mlserver.MODEL}-load"
    assert any(load.iterdir())
