"""`mlops-twin rl train|evaluate|decision-time` end to end on the smallest pipeline."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from optimizer.rl.cli import app

from .conftest import EXAMPLES

CHAIN2 = str(EXAMPLES / "pipelines" / "chain-2x2.yaml")


def test_train_then_evaluate_writes_run_folders(tmp_path):
    runner = CliRunner()
    train_dir = tmp_path / "train"
    res = runner.invoke(
        app,
        [
            "train",
            CHAIN2,
            "--steps",
            "120",
            "--predictor",
            "none",
            "--reward-cost",
            "0.5",
            "--out",
            str(train_dir),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 120
    assert summary["reward_cost"] == 0.5
    assert (train_dir / "policy.zip").is_file() and (train_dir / "curves.png").is_file()
    eval_dir = tmp_path / "eval"
    res = runner.invoke(
        app,
        [
            "evaluate",
            CHAIN2,
            "--policy",
            str(train_dir / "policy.zip"),
            "--workloads",
            "steady-low,steady-high",
            "--backend",
            "analytic",
            "--cycle-s",
            "30",
            "--predictor",
            "none",
            "--out",
            str(eval_dir),
            "--baselines",
            "ipa,ipa-paper,greedy,random",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout.strip().splitlines()[-1])
    assert {r["policy"] for r in rows} == {"ppo", "ipa", "ipa-paper", "greedy", "random"}
    assert len(rows) == 10
    assert (eval_dir / "over-time-steady-high.png").is_file()
    assert "PPO relative to ipa" in (eval_dir / "report.md").read_text()


def test_errors_are_one_paragraph(tmp_path):
    res = CliRunner().invoke(app, ["evaluate", CHAIN2, "--workloads", "nope"])
    assert res.exit_code == 2
    assert "no workload 'nope'" in res.output
    assert "Traceback" not in res.output
