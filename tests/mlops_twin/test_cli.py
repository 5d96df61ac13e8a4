"""The umbrella ``mlops-twin``: every package's commands, mounted lazily."""

from __future__ import annotations

import subprocess
import sys


def test_console_script_help_lists_commands_fast() -> None:
    # The umbrella command must not import the heavy packages to print --help.
    code = (
        "import sys; sys.argv=['mlops-twin','--help']\n"
        "from mlops_twin.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'onnxruntime', 'pymoo', 'locust', 'dask') "
        "if m in sys.modules]\n"
        "print('HEAVY', heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "simulate" in out.stdout and "validate" in out.stdout
    assert "HEAVY []" in out.stdout


def test_groups_gather_the_lab_commands() -> None:
    # calibrate validate and rl control drive a live testbed: the lab adds them to the groups
    for group, command, other in (("calibrate", "validate", "profile"), ("rl", "control", "train")):
        res = subprocess.run(
            [sys.executable, "-m", "mlops_twin", group, "--help"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode == 0, res.stderr
        assert command in res.stdout and other in res.stdout
