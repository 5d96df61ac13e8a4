"""Deploy-back: an optimize run's chosen and greedy deployments, predicted vs measured."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lab.deploy_back import (
    DeployBackConfig,
    Difference,
    paired_difference,
    read_optimize_run,
    report_again,
    run_deploy_back,
    run_order,
    undisturbed_ranking_lines,
    verdict,
)
from lab.host_noise import MAX_LEFT_OUT_PCT
from twin.criteria import CRITERIA
from twin.evaluate import evaluate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_testbed import FakeTestbed

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def optimize_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("opt") / "run"
    argv = [
        sys.executable,
        "-c",
        "from mlops_twin.cli import main; main()",
        "optimize",
        str(ROOT / "examples" / "digits-pipeline.yaml"),
        "-w",
        "steady-low",
        "--base",
        str(ROOT / "examples" / "digits-pipeline.deployment.yaml"),
        "--pop",
        "8",
        "--gens",
        "2",
        "--horizon",
        "10",
        "--final-horizon",
        "10",
        "--final-replications",
        "1",
        "--final-max",
        "3",
        "--max-instances",
        "2",
        "--workers",
        "1",
        "--out",
        str(out),
    ]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    return out


def test_greedy_is_rebuilt_exactly_as_the_run_scored_it(optimize_run):
    opt = read_optimize_run(optimize_run)
    assert opt.workload == "steady-low"
    for label, dep in (("chosen", opt.chosen), ("greedy", opt.greedy)):
        ev = evaluate(opt.scenario, dep, opt.workload, 10.0, 1, 1)
        for c, v in zip(CRITERIA, ev.criteria(), strict=True):
            assert v == pytest.approx(opt.predicted[label][c], rel=1e-9, abs=1e-12), (label, c)


def test_one_run_each_compares_signs():
    def one(x: float) -> Difference:
        return Difference(x, float("nan"), 1)

    assert verdict(one(-1.0), one(-3.0)) is True and verdict(one(1.0), one(2.0)) is True
    assert verdict(one(2.0), one(-1.0)) is False
    assert verdict(one(0.0), one(0.0)) is None  # nothing differs: nothing to rank


def test_paired_difference_interval_is_students_t():
    chosen = np.array([5.0, 7.0, 6.0, 8.0])
    greedy = np.array([4.0, 4.0, 4.0, 4.0])
    d = paired_difference(chosen, greedy)
    # differences 1, 3, 2, 4: mean 2.5, sd 1.291, t(0.975, 3) = 3.182
    assert d.n == 4 and d.mean == pytest.approx(2.5)
    assert d.half_width == pytest.approx(3.182446 * 1.290994 / 2, rel=1e-5)
    assert d.order == 1
    assert paired_difference(np.array([1.0, 3.0]), np.array([2.0, 2.0])).order == 0
    one = paired_difference(np.array([1.0]), np.array([2.0]))
    assert one.n == 1 and np.isnan(one.half_width) and one.order == -1
    # the margin is a share of greedy's mean: a difference of 2.5 is within 100 % of 4
    assert paired_difference(chosen, greedy, tie_within=1.0).order == 0
    assert paired_difference(chosen / 2, greedy / 2, tie_within=0.5).margin == pytest.approx(1.0)


def test_verdict_counts_a_testbed_tie_only_when_the_twin_ties_too():
    up, down, tie = Difference(1.0, 0.5, 4), Difference(-1.0, 0.5, 4), Difference(0.2, 0.5, 4)
    assert verdict(up, up) is True and verdict(down, up) is False
    assert verdict(tie, up) is False  # the testbed tells them apart, the twin does not
    assert verdict(tie, tie) is True and verdict(up, tie) is None
    zero = Difference(0.0, 0.0, 4)
    assert verdict(zero, zero) is None  # nothing differs: nothing to rank
    # one run each: no interval, so the testbed's sign counts unless within the margin
    assert verdict(Difference(0.1, 0.01, 3), Difference(2.0, float("nan"), 1)) is True
    assert verdict(Difference(0.1, 0.01, 3), Difference(2.0, float("nan"), 1, 3.0)) is None
    # a difference smaller than the margin is a tie however narrow its interval
    small = Difference(0.04, 0.005, 12, margin=0.7)
    assert small.order == 0 and verdict(small, Difference(0.05, 0.6, 4, 0.7)) is True


def test_run_order_alternates_who_goes_first():
    assert run_order(3) == [
        (0, "chosen"),
        (0, "greedy"),
        (1, "greedy"),
        (1, "chosen"),
        (2, "chosen"),
        (2, "greedy"),
    ]


def _pairs_table(left_out: list[tuple[float, float]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Criteria of pairs whose chosen run is 1 ms slower; (chosen, greedy) left-out % each."""
    rows, reps = [], []
    for k, (lc, lg) in enumerate(left_out):
        for label, left, extra in (("chosen", lc, 0.001), ("greedy", lg, 0.0)):
            values = {
                "time_mean_s": 0.014 + extra + 1e-4 * k * k,
                "time_var_s2": 4e-6,
                "overruns": 0.0,
                "cost": 0.0025 if label == "chosen" else 0.00125,
            }
            for c, v in values.items():
                rows.append(
                    {
                        "pair": k,
                        "deployment": label,
                        "criterion": c,
                        "twin": v,
                        "testbed": v,
                        "testbed_undisturbed": v,
                        "left_out_pct": left,
                        "host_steal_pct": 1.0,
                    }
                )
            reps.append(pd.DataFrame([values]).assign(deployment=label, pair=k, replication=0))
    return pd.DataFrame(rows), pd.concat(reps, ignore_index=True)


def test_undisturbed_ranking_leaves_out_pairs_with_a_disturbed_run(tmp_path):
    cfg = DeployBackConfig(tmp_path, repeat=3)
    tab, reps = _pairs_table([(10.0, 20.0), (70.0, 5.0), (0.0, 30.0)])
    text = "\n".join(undisturbed_ranking_lines(cfg, tab, reps))
    assert "Pair(s) 1 left out" in text and "over 2 pair(s)" in text
    assert "| time_mean_s | 0.0152 | 0.0142 |" in text  # means over pairs 0 and 2 only
    assert "holds on 2 of 2 criteria" in text
    tab, reps = _pairs_table([(60.0, 20.0), (10.0, 90.0)])
    text = "\n".join(undisturbed_ranking_lines(cfg, tab, reps))
    assert "Not judged: host disturbed" in text and "same order" not in text


def test_not_an_optimize_run(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"chosen\.yaml"):
        read_optimize_run(tmp_path)


@pytest.mark.slow
def test_deploy_back_against_a_stand_in_testbed(optimize_run, tmp_path):
    testbed = FakeTestbed()
    cfg = DeployBackConfig(optimize_run, duration_s=3, replications=1, drain_s=2)
    tab = run_deploy_back(cfg, testbed, tmp_path / "back")
    assert testbed.calls == ["up", "down", "up", "down"]
    assert set(tab["deployment"]) == {"chosen", "greedy"} and set(tab["criterion"]) == set(CRITERIA)
    # cost is the rental of the machines used: identical for twin and testbed
    cost = tab[tab["criterion"] == "cost"]
    assert (cost["twin"] == cost["testbed"]).all()
    # the fake answers every request in a few ms: finite, positive mean times
    t = tab[tab["criterion"] == "time_mean_s"]
    assert (t["testbed"] > 0).all() and (t["testbed"] < 1).all()
    report = (tmp_path / "back" / "report.md").read_text()
    assert "same order?" in report and "ranking holds on" in report
    assert len(pd.read_csv(tmp_path / "back" / "criteria.csv")) == 8
    # the host was recorded during both runs; the undisturbed ranking is there too
    tab = pd.read_csv(tmp_path / "back" / "criteria.csv")
    assert tab["left_out_pct"].between(0, 100).all() and (tab["host_steal_pct"] >= 0).all()
    cost = tab[tab["criterion"] == "cost"]
    assert (cost["testbed_undisturbed"] == cost["testbed"]).all()  # cost is not measured
    assert "## Undisturbed seconds" in report
    # the host's steal during these few seconds decides which of the two the report says
    if tab["left_out_pct"].max() > MAX_LEFT_OUT_PCT:
        assert "Not judged: host disturbed" in report and "On undisturbed seconds" not in report
    else:
        assert "On undisturbed seconds" in report and "Not judged" not in report


@pytest.mark.slow
def test_deploy_back_repeats_pair_seeds_and_report_intervals(optimize_run, tmp_path):
    testbed = FakeTestbed()
    cfg = DeployBackConfig(optimize_run, duration_s=3, replications=2, drain_s=2, repeat=2)
    tab = run_deploy_back(cfg, testbed, tmp_path / "back")
    assert testbed.calls == ["up", "down"] * 4
    runs = tab.drop_duplicates(["pair", "deployment"])
    assert list(zip(runs["pair"], runs["deployment"], runs["seed"], strict=True)) == [
        (0, "chosen", 1),
        (0, "greedy", 1),
        (1, "greedy", 2),
        (1, "chosen", 2),
    ]
    for name in ("chosen-0", "greedy-0", "greedy-1", "chosen-1"):
        assert (tmp_path / "back" / "load" / name / "requests.parquet").is_file()
    reps = pd.read_csv(tmp_path / "back" / "twin_replications.csv")
    assert len(reps) == 2 * 2 * 2  # pairs × deployments × replications
    # the twin of each pair is the twin at that pair's seed
    t = tab[(tab["criterion"] == "time_mean_s") & (tab["deployment"] == "greedy")]
    assert t["twin"].nunique() == 2
    report = (tmp_path / "back" / "report.md").read_text()
    assert "twin: chosen − greedy" in report and "95 % interval" in report
    assert "2 runs of each deployment alternating" in report
    png = (tmp_path / "back" / "ranking.png").read_bytes()
    assert png.startswith(b"\x89PNG") and "](ranking.png)" in report
    # ranked again from its tables with a margin no difference reaches: all ties
    cfg.tie_within = 1e9
    again = report_again(cfg, tmp_path / "back")
    assert again == (tmp_path / "back" / "report.md").read_text()
    assert "| cost |" in again and "**no**" not in again and "| yes |" not in again


@pytest.mark.parametrize(("option", "value"), [("--repeat", "0"), ("--tie-within", "-0.1")])
def test_cli_refuses_a_ranking_it_cannot_make(option, value, tmp_path):
    from typer.testing import CliRunner

    from lab.deploy_back import app

    res = CliRunner().invoke(app, [str(tmp_path), option, value])
    assert res.exit_code == 2 and option in res.output
