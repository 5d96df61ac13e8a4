"""Multi-fidelity search: the screening test, the DES cap, and a front that is all DES."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from optimizer.evaluation import Fidelity, evaluate_matrix
from optimizer.ga import Search, SearchConfig, default_config, hypervolume, non_dominated
from optimizer.genome import Genome
from optimizer.multifidelity import (
    MultiFidelity,
    MultiFidelityEvaluator,
    confirm_front,
    contributions,
    could_enter,
    end_game,
    hv_shortlist,
    neighbours,
    polish,
    screen_matrix,
    search_budget,
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


def test_neighbours_are_every_feasible_single_move(small: Genome) -> None:
    rng = np.random.default_rng(6)
    x = small.repair(np.ones(small.n_var, dtype=np.int64), rng)
    got = neighbours(small, x)
    assert got and len({small.key(v) for v in got}) == len(got)
    m0 = small.decode(x)
    for v in got:
        assert small.is_feasible(v) and small.key(v) != small.key(x)
        d = small.decode(v) - m0
        # One instance added or removed (|d| = 1), or moved (one +1 and one −1 in a row).
        assert np.abs(d).sum() in (1, 2) and (np.abs(d).sum() == 1 or d.sum() == 0)
        assert np.count_nonzero(d.any(axis=1)) == 1
    # Complete: a brute force over all ±1 cells and moves finds no other feasible neighbour.
    K, S = small.shape
    brute = set()
    for k in range(K):
        for j in range(S):
            for dj in (-1, 1):
                m = m0.copy()
                m[k, j] += dj
                if small.is_feasible(m.reshape(-1)):
                    brute.add(m.tobytes())
            for t in range(S):
                m = m0.copy()
                m[k, j] -= 1
                m[k, t] += 1
                if t != j and m0[k, j] > 0 and small.is_feasible(m.reshape(-1)):
                    brute.add(m.tobytes())
    assert brute == {small.key(v) for v in got}


def test_contributions_rank_extremes_above_dominated_neighbours() -> None:
    F = np.array([[0.0, 1.0], [0.5, 0.5], [0.51, 0.51], [1.0, 0.0]])
    c = contributions(F)
    assert c[0] > 0 and c[3] > 0 and c[2] == pytest.approx(0.0)
    assert c[1] > c[2]


def test_extreme_polish_screens_whole_neighbourhoods_then_confirms(small: Genome) -> None:
    ev = MultiFidelityEvaluator(small, FID, MultiFidelity(0.0, 0.25, extreme_screens=40))
    search = Search.start(SearchConfig(pop_size=8, n_gen=3, seed=3), ev)
    search.run()
    screened = ev.screened
    # The member the end game starts from: the front's largest hypervolume contributor.
    F = np.array([ev.cache[k].mean for k in ev.order])
    front = [ev.order[i] for i in non_dominated(F)]
    top = front[int(np.argmax(contributions(F[non_dominated(F)])))]
    hood = {small.key(v) for v in neighbours(small, np.frombuffer(top, dtype=np.int64))}
    assert 0 < len(hood - set(ev.cache)) <= 40
    got = end_game(search)
    assert 0 < got["polished"] <= 40 and ev.screened == screened + got["polished"]
    assert hood <= set(ev.cache)  # searched whole, not sampled
    assert set(search.front_keys) <= ev.des_keys


def test_hv_shortlist_adds_the_largest_hypervolume_gain_at_each_step() -> None:
    rng = np.random.default_rng(8)
    P = rng.random((400, 3))
    F = P[non_dominated(P)]  # a 3-criterion front of a few dozen points
    fixed = np.zeros(len(F), dtype=bool)
    fixed[rng.choice(len(F), size=5, replace=False)] = True
    got = hv_shortlist(F, fixed, 6)
    assert len(got) == 6 and not fixed[got].any() and len(set(got.tolist())) == 6
    lo, hi = F.min(axis=0), F.max(axis=0)
    kept = list(np.flatnonzero(fixed))
    for i in got:  # the lazy greedy's pick is the exhaustive argmax of the gain
        base = hypervolume(F[kept], lo, hi)
        gains = {j: hypervolume(F[[*kept, j]], lo, hi) - base for j in range(len(F))}
        best = max((j for j in gains if j not in kept), key=lambda j: gains[j])
        assert gains[i] == pytest.approx(gains[best], abs=1e-12)
        kept.append(i)
    # A row that adds nothing (a copy of a kept one) is never picked.
    dup = np.vstack([F, F[fixed][:1]])
    assert len(F) not in hv_shortlist(dup, np.append(fixed, False), len(dup)).tolist()


def test_confirm_front_under_a_budget_reports_the_des_scored_front(small: Genome) -> None:
    ev = MultiFidelityEvaluator(small, FID, MultiFidelity(0.0, 0.1, polish_screens=60))
    search = Search.start(SearchConfig(pop_size=16, n_gen=4, seed=5), ev)
    search.run()
    polish(search, 60)
    F = np.array([ev.cache[k].mean for k in ev.order])
    pending = [ev.order[i] for i in non_dominated(F) if ev.order[i] not in ev.des_keys]
    assert len(pending) > 3  # the cap binds
    confirmed = confirm_front(search, budget=3)
    assert confirmed == 3
    assert set(search.front_keys) <= ev.des_keys
    des = [k for k in ev.order if k in ev.des_keys]
    Fd = np.array([ev.cache[k].mean for k in des])
    assert {des[i] for i in non_dominated(Fd)} == set(search.front_keys)
    assert confirm_front(search, budget=0) == 0


@pytest.mark.parametrize("budget", [12, 20, 40])
def test_the_default_never_spends_more_des_runs_than_its_budget(small: Genome, budget: int) -> None:
    # As `mlops-twin optimize --max-evals B` runs it: search to 0.7 B, then the end game.
    # On this small instance the final front holds far more screening-only members than
    # the budget leaves, so confirming all of them would overrun B (checked below).
    from dataclasses import replace

    fid = Fidelity(None, 120.0, 1, 2)
    for seed in (1, 2, 3):
        spent = {}
        for cap in (True, False):
            settings = MultiFidelity.for_budget(budget)
            settings = settings if cap else replace(settings, des_budget=None)
            ev = MultiFidelityEvaluator(small, fid, settings)
            search = Search.start(default_config(search_budget(budget), seed=seed), ev)
            search.run()
            end_game(search)
            assert set(search.front_keys) <= ev.des_keys
            spent[cap] = ev.des_runs
        assert spent[True] <= budget < spent[False]
