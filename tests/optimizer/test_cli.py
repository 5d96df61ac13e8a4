"""The optimize and decide commands, and the run folder they leave."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from optimizer.cli import decide_app, optimize_app
from tests.optimizer.conftest import SMALL
from twin.cli import app as twin_app
from twin.criteria import CRITERIA
from twin.deployment import require_feasible
from twin.load import load_deployment, load_scenario

runner = CliRunner()
FAST = [
    "--pop",
    "8",
    "--gens",
    "3",
    "--horizon",
    "120",
    "--final-horizon",
    "240",
    "--final-replications",
    "2",
    "--final-max",
    "4",
    "--seed",
    "2",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "small"
    res = runner.invoke(optimize_app, [str(SMALL), *FAST, "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["generations"] == 3 and info["simulations"] >= 8
    return out


def test_run_folder_contents(run_dir: Path) -> None:
    for name in (
        "pareto.parquet",
        "history.parquet",
        "evaluated.parquet",
        "chosen.yaml",
        "pareto.png",
        "convergence.png",
        "report.md",
        "run.json",
        "checkpoint.pkl",
        "inputs/base.yaml",
        "inputs/small-placement.yaml",
    ):
        assert (run_dir / name).is_file(), name
    assert not (run_dir.parent / ".small.checkpoint.pkl").exists()
    pareto = pd.read_parquet(run_dir / "pareto.parquet")
    for c in CRITERIA:
        assert c in pareto and f"{c}_ci" in pareto
    assert pareto["chosen"].sum() == 1 and pareto.loc[pareto["chosen"], "non_dominated"].all()
    history = pd.read_parquet(run_dir / "history.parquet")
    assert list(history["gen"]) == [1, 2, 3] and history["hv"].notna().all()
    report = (run_dir / "report.md").read_text()
    assert "Chosen vs greedy" in report and "search fidelity: 120 s" in report


def test_chosen_yaml_is_accepted_by_simulate(run_dir: Path) -> None:
    dep = load_deployment(run_dir / "chosen.yaml")
    require_feasible(load_scenario(SMALL), dep)  # what the testbed's controller checks
    res = runner.invoke(
        twin_app,
        [
            "simulate",
            str(SMALL),
            "-d",
            str(run_dir / "chosen.yaml"),
            "--horizon",
            "60",
            "--replications",
            "1",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["deployment"] == "small-chosen"


def test_decide_methods(run_dir: Path, tmp_path: Path) -> None:
    pareto = pd.read_parquet(run_dir / "pareto.parquet")
    front = pareto[pareto["non_dominated"]]
    res = runner.invoke(decide_app, [str(run_dir), "--method", "optima", "--json"])
    assert res.exit_code == 0, res.output
    picks = json.loads(res.stdout)
    assert len(picks) == 4
    for p, c in zip(picks, CRITERIA, strict=True):
        assert p[c] == pytest.approx(front[c].min())
    out = tmp_path / "cheap.yaml"
    res = runner.invoke(
        decide_app,
        [str(run_dir), "--method", "weights", "--weights", "0,0,0,1", "--out", str(out), "--json"],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)[0]["cost"] == pytest.approx(front["cost"].min())
    require_feasible(load_scenario(SMALL), load_deployment(out))
    res = runner.invoke(decide_app, [str(run_dir), "--method", "ideal", "--json"])
    chosen = pareto[pareto["chosen"]].iloc[0]
    assert json.loads(res.stdout)[0]["id"] == int(chosen["id"])


def test_errors_are_one_paragraph(run_dir: Path, tmp_path: Path) -> None:
    res = runner.invoke(decide_app, [str(tmp_path), "--method", "ideal"])
    assert res.exit_code == 2 and "no pareto.parquet" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(decide_app, [str(run_dir), "--method", "weights", "--weights", "1,2"])
    assert res.exit_code == 2 and "needs 4 numbers" in res.output
    res = runner.invoke(
        optimize_app, [str(SMALL), *FAST, "--algorithm", "moead", "--out", str(tmp_path / "x")]
    )
    assert res.exit_code == 2 and "nsga2" in res.output
    res = runner.invoke(optimize_app, [str(SMALL), "--workload", "nope", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "nope" in res.output


def test_resume_continues_a_finished_run(run_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "small"
    shutil.copytree(run_dir, copy)
    args = [a if a != "3" else "5" for a in FAST]  # --gens 5
    res = runner.invoke(optimize_app, [str(SMALL), *args, "--out", str(copy), "--resume", "--json"])
    assert res.exit_code == 0, res.output
    resumed = pd.read_parquet(copy / "history.parquet")
    first = pd.read_parquet(run_dir / "history.parquet")
    assert list(resumed["gen"]) == [1, 2, 3, 4, 5]
    assert np.allclose(resumed["hv"][:3], first["hv"])
    fresh = tmp_path / "fresh"
    res = runner.invoke(optimize_app, [str(SMALL), *args, "--out", str(fresh), "--json"])
    assert res.exit_code == 0, res.output
    a = pd.read_parquet(fresh / "pareto.parquet")
    b = pd.read_parquet(copy / "pareto.parquet")
    assert list(a["allocation"]) == list(b["allocation"])


def test_umbrella_lists_the_commands() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "mlops_twin", "--help"], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0
    assert "optimize" in res.stdout and "decide" in res.stdout


def test_reference_front_gives_igd(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "igd"
    args = [str(SMALL), *FAST, "--out", str(out), "--reference", str(run_dir / "pareto.parquet")]
    res = runner.invoke(optimize_app, args)
    assert res.exit_code == 0, res.output
    history = pd.read_parquet(out / "history.parquet")
    assert history["igd"].notna().all() and (history["igd"] >= 0).all()
    res = runner.invoke(optimize_app, [str(SMALL), "--reference", str(tmp_path / "none.csv")])
    assert res.exit_code == 2 and "not found" in res.output


def test_screening_is_the_default_with_settings_from_the_budget(
    run_dir: Path, tmp_path: Path
) -> None:
    # run_dir: no --max-evals, so the budget B is --pop × --gens = 24 DES runs
    info = json.loads((run_dir / "run.json").read_text())
    mf = info["multifidelity"]
    assert mf is not None and mf["des"] == info["simulations"]
    assert (mf["max_screens"], mf["polish_screens"], mf["row_screens"]) == (96, 24, 192)
    assert (run_dir / "fidelity.parquet").is_file()
    out = tmp_path / "des"
    res = runner.invoke(optimize_app, [str(SMALL), *FAST, "--no-screen", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "run.json").read_text())["multifidelity"] is None
    out = tmp_path / "budget"
    args = [str(SMALL), *FAST, "--max-evals", "20", "--screen-rows", "7", "--out", str(out)]
    res = runner.invoke(optimize_app, args)
    assert res.exit_code == 0, res.output
    info = json.loads((out / "run.json").read_text())
    assert info["search"]["max_evals"] == 14  # the search stops at 0.7 B; the end game confirms
    assert (info["multifidelity"]["row_screens"], info["multifidelity"]["max_screens"]) == (7, 80)
    assert info["multifidelity"]["confirm_max"] is None  # no cap of its own, but …
    assert info["multifidelity"]["des_budget"] == 20  # … the end game gets what the search left
    assert info["multifidelity"]["des"] <= 20 and info["simulations"] <= 20


def test_screen_confirm_caps_the_end_games_des_runs(tmp_path: Path) -> None:
    des = {}
    for cap in (0, 2):  # same seed, so the same search: only the end game differs
        out = tmp_path / f"confirm{cap}"
        args = [str(SMALL), *FAST, "--max-evals", "20", "--screen-confirm", str(cap)]
        res = runner.invoke(optimize_app, [*args, "--out", str(out)])
        assert res.exit_code == 0, res.output
        info = json.loads((out / "run.json").read_text())
        assert info["multifidelity"]["confirm_max"] == cap
        des[cap] = info["multifidelity"]["des"]
        table = pd.read_parquet(out / "fidelity.parquet")
        assert len(table) > des[cap]  # screening-only candidates exist
    assert des[0] < des[2] <= des[0] + 2  # the cap binds: the front had more to confirm


def test_a_scenario_with_step_waits_is_searched_with_the_des_only(tmp_path: Path) -> None:
    # the screening fidelity does not model Step.wait: optimize says so and DES-scores all
    from twin.load import dump_yaml
    from twin.screen import unscreenable
    from twin.spec import ConstantServiceTime

    sc = load_scenario(SMALL)
    procs = [
        p.model_copy(
            update={
                "steps": [
                    s.model_copy(update={"wait": ConstantServiceTime(kind="constant", ms=5.0)})
                    if s.name == "features"
                    else s
                    for s in p.steps
                ]
            }
        )
        for p in sc.processes
    ]
    waiting = type(sc).model_validate(sc.model_copy(update={"processes": procs}).model_dump())
    field = unscreenable(waiting)
    assert field is not None and field.endswith(".steps.features.wait")
    assert unscreenable(sc) is None
    parted = type(sc).model_validate(
        sc.model_copy(
            update={
                "processes": [
                    p.model_copy(
                        update={
                            "steps": [
                                s.model_copy(update={"part_cpu_work": s.cpu_work})
                                if s.name == "features"
                                else s
                                for s in p.steps
                            ]
                        }
                    )
                    for p in sc.processes
                ]
            }
        ).model_dump()
    )
    part_field = unscreenable(parted)
    assert part_field is not None and part_field.endswith(".steps.features.part_cpu_work")
    path = tmp_path / "waiting.yaml"
    path.write_text(dump_yaml(waiting))
    out = tmp_path / "run"
    res = runner.invoke(optimize_app, [str(path), *FAST, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "does not model step waits" in res.output
    assert json.loads((out / "run.json").read_text())["multifidelity"] is None
