"""Multi-fidelity search: the screening test, the DES cap, and a front that is all DES."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from optimizer.evaluation import Fidelity, evaluate_matrix
from optimizer.ga import Search, SearchConfig
from optimizer.genome import Genome
from optimizer.multifidelity import (
    MultiFidelity,
    MultiFidelityEvaluator,
    confirm_front,
    could_enter,
    end_game,
    screen_matrix,
)
from twin.load import load_scenario

FID = Fidelity(None, 300.0, 1, 1)


def test_could_enter_drops_only_points_dominated_beyond_the_margin() -> None:
    known = np.array([[1.0, 1.0]])
    cands = np.array([[1.04, 1.04], [1.2, 1.2], [0.5, 2.0]])
    assert could_enter(cands, known, 0.0).tolist() == [False, False, True]
    # With 5 % slack the known point no longer beats the first candidate.
    assert could_enter(cands, known, 0.05).tolist() == [True, False, True]
    # Candidates are tested against each other too.
    both = np.vstack([cands, [[0.9, 0.9]]])
    assert could_enter(both, known, 0.05).tolist() == [False, False, True, True]


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="des_share"):
        MultiFidelity(des_share=0.0)
    with pytest.raises(ValueError, match="margin"):
        MultiFidelity(margin=-0.1)
    with pytest.raises(ValueError, match="polish_screens"):
        MultiFidelity(polish_screens=-1)


@pytest.fixture(scope="module")
def small() -> Genome:
    return Genome(load_scenario("examples/small-placement.yaml"))


def test_screen_matrix_tracks_the_des(small: Genome) -> None:
    m = small.decode(small.repair(np.zeros(small.n_var, dtype=np.int64), np.random.default_rng(0)))
    fast = screen_matrix(small.scenario, small.base, m, FID)
    des = evaluate_matrix(small.scenario, small.base, m, FID)
    assert fast.mean[3] == des.mean[3]  # cost
    assert fast.mean[0] == pytest.approx(des.mean[0], rel=0.05)


def test_search_caps_des_and_ends_with_an_all_des_front(small: Genome) -> None:
    ev = MultiFidelityEvaluator(small, FID, MultiFidelity(0.0, 0.25))
    search = Search.start(SearchConfig(pop_size=8, n_gen=4, seed=2), ev)
    search.run()
    during = ev.des_runs
    assert during <= 4 * 2  # ⌈0.25 · 8⌉ per generation
    assert ev.screened > during
    confirm_front(search)
    assert set(search.front_keys) <= ev.des_keys
    table = ev.fidelity_table()
    assert len(table) == ev.screened and int(table["des"].sum()) == ev.des_runs
    again = pickle.loads(pickle.dumps(ev))  # checkpoints pickle the evaluator
    assert again.des_keys == ev.des_keys and again.simulations == ev.des_runs


def test_end_game_screens_neighbours_of_the_front_then_confirms(small: Genome) -> None:
    ev = MultiFidelityEvaluator(small, FID, MultiFidelity(0.0, 0.25, polish_screens=30))
    search = Search.start(SearchConfig(pop_size=8, n_gen=3, seed=3), ev)
    search.run()
    screened, des = ev.screened, ev.des_runs
    got = end_game(search)
    assert 0 < got["polished"] <= 30 and ev.screened == screened + got["polished"]
    # Polish screens only; every DES run after it is a confirmation of the final front.
    assert ev.des_runs == des + got["confirmed"]
    assert set(search.front_keys) <= ev.des_keys
    new = [np.frombuffer(r["key"], dtype=np.int64).reshape(small.shape) for r in ev.log[screened:]]
    assert all(small.is_feasible(m.reshape(-1)) for m in new)
    assert end_game(search)["polished"] == 0  # the end game runs once


def test_screen_cap_ends_the_search(small: Genome) -> None:
    ev = MultiFidelityEvaluator(small, FID, MultiFidelity(0.0, 0.25, max_screens=20))
    search = Search.start(SearchConfig(pop_size=8, n_gen=50, seed=4), ev)
    search.run()
    assert 20 <= ev.screened < 20 + 8  # stops in the generation that reaches the cap
    assert len(search.history) < 50
