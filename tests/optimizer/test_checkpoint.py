"""Checkpoints: a signed round trip loads; a foreign, edited or plain pickle never runs."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from optimizer import checkpoint


@pytest.fixture(autouse=True)
def own_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLOPS_TWIN_STATE", str(tmp_path / "state"))


class Boom:
    def __reduce__(self) -> tuple:
        return (Path.touch, (Path(self.target),))  # type: ignore[attr-defined]


def test_round_trip(tmp_path: Path) -> None:
    checkpoint.dump({"a": [1, 2]}, tmp_path / "ck")
    assert checkpoint.load(tmp_path / "ck") == {"a": [1, 2]}
    assert (tmp_path / "state" / checkpoint.KEY_FILE).stat().st_mode & 0o777 == 0o600


def test_a_plain_pickle_is_refused_without_running_it(tmp_path: Path) -> None:
    boom = Boom()
    boom.target = str(tmp_path / "ran")  # type: ignore[attr-defined]
    (tmp_path / "ck").write_bytes(pickle.dumps(boom))
    with pytest.raises(checkpoint.CheckpointError, match="not a signed"):
        checkpoint.load(tmp_path / "ck")
    assert not (tmp_path / "ran").exists()


def test_an_edited_or_foreign_checkpoint_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint.dump([1], tmp_path / "ck")
    data = (tmp_path / "ck").read_bytes()
    (tmp_path / "edited").write_bytes(data[:-1] + b"\x00")
    with pytest.raises(checkpoint.CheckpointError, match="signature"):
        checkpoint.load(tmp_path / "edited")
    monkeypatch.setenv("MLOPS_TWIN_STATE", str(tmp_path / "other-user"))
    with pytest.raises(checkpoint.CheckpointError, match="signature"):
        checkpoint.load(tmp_path / "ck")


class Crash(Exception):
    pass


def test_a_search_that_crashes_mid_run_resumes_to_the_same_numbers(tmp_path: Path) -> None:
    import numpy as np

    from optimizer.evaluation import Evaluator
    from optimizer.ga import Search, SearchConfig
    from optimizer.genome import Genome
    from tests.optimizer.conftest import CHEAP, SMALL
    from twin.load import load_scenario

    genome = Genome(load_scenario(SMALL))
    config = SearchConfig(pop_size=8, n_gen=4, seed=5)
    whole = Search.start(config, Evaluator(genome, CHEAP)).run()

    def crash_after_two(row: object) -> None:
        if row.gen == 2:  # type: ignore[attr-defined]
            raise Crash  # as if killed: the checkpoint of generation 2 is on disk

    ck = tmp_path / "run" / "checkpoint.pkl"
    with pytest.raises(Crash):
        Search.start(config, Evaluator(genome, CHEAP), checkpoint=ck).run(crash_after_two)
    resumed = Search.resume(ck).run()
    assert len(resumed.history) == 4
    a, b = whole.front(), resumed.front()
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert [h.hv for h in whole.history] == [h.hv for h in resumed.history]
