"""The ``mlops-twin testbed`` commands: help and one-paragraph errors."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from testbed.cli import app

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
runner = CliRunner()


def test_status_and_apply_without_a_testbed(tmp_path: Path) -> None:
    r = runner.invoke(app, ["status", "--state-dir", str(tmp_path)])
    assert r.exit_code == 2 and "no testbed is up" in r.output
    assert "Traceback" not in r.output
    dep = EXAMPLES / "digits-pipeline.deployment.yaml"
    r = runner.invoke(app, ["apply", str(dep), "--state-dir", str(tmp_path)])
    assert r.exit_code == 2 and "no testbed is up" in r.output


def test_up_refuses_oversubscription_before_starting_anything(tmp_path: Path) -> None:
    r = runner.invoke(
        app,
        [
            "up",
            str(EXAMPLES / "digits-pipeline.yaml"),
            "--deployment",
            str(EXAMPLES / "digits-pipeline.deployment.yaml"),
            "--backend",
            "local",
            "--factor",
            "5",
            "--state-dir",
            str(tmp_path),
        ],
    )
    assert r.exit_code == 2 and "oversubscribed" in r.output
    assert not (tmp_path / "local.json").exists()


def test_down_with_nothing_up_is_fine(tmp_path: Path) -> None:
    r = runner.invoke(app, ["down", "--state-dir", str(tmp_path)])
    assert r.exit_code == 0
