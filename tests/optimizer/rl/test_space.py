"""Options, encoding and the exact masks: no allowed choice is ever infeasible."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optimizer.rl.space import ConfigSpace, Option
from twin.deployment import check


def _walk(space: ConfigSpace, rng: np.random.Generator) -> list[Option]:
    chosen: list[Option] = []
    for k in range(space.n_stages):
        mask = space.stage_mask(chosen)
        assert mask.any(), f"stage {k} has no allowed option after {chosen}"
        chosen.append(space.stages[k].option(int(rng.choice(np.flatnonzero(mask)))))
    return chosen


@pytest.mark.parametrize("which", ["chain", "digits", "edge"])
def test_every_masked_walk_gives_a_feasible_deployment(which, request, edge_base):
    scenario = request.getfixturevalue(which)
    process = {"chain": "pipeline", "digits": "digits", "edge": "inference"}[which]
    base = edge_base if which == "edge" else None
    space = ConfigSpace(scenario, process, base)
    rng = np.random.default_rng(0)
    for _ in range(60):
        options = _walk(space, rng)
        dep = space.deployment(options)
        assert check(scenario, dep) == [], options
        assert space.options_from(dep) == options


def test_last_stage_mask_is_exact(chain):
    """At the last stage the mask allows exactly the options that complete a feasible config."""
    space = ConfigSpace(chain, "pipeline")
    rng = np.random.default_rng(1)
    for _ in range(10):
        first = _walk(space, rng)[:-1]
        mask = space.stage_mask(first)
        for i, o in enumerate(space.options_of(space.n_stages - 1)):
            dep_ok = space.cores([*first, o]) <= space.budget + 1e-9
            assert mask[i] == dep_ok, (first, o)
            if not mask[i]:
                with pytest.raises(ValueError):
                    space.deployment([*first, o])


def test_tight_budget_masks_out_expensive_options(chain):
    space = ConfigSpace(chain, "pipeline")
    # The largest variant with 4 replicas takes 8 of the 9 cores; the last stage needs
    # at least 0.5, so the middle stage may use at most 0.5: its smallest variant, once.
    biggest = Option(variant=2, replicas=4, batch=1)
    assert space.stage_mask([])[space.stages[0].index(biggest)]
    mask = space.stage_mask([biggest])
    allowed = [space.stages[1].option(int(i)) for i in np.flatnonzero(mask)]
    assert allowed and all(space.stages[1].cores(o) <= 0.5 for o in allowed)
    assert {o.batch for o in allowed} == set(space.stages[1].batches)


@given(st.data())
@settings(max_examples=50, deadline=None)
def test_option_numbers_round_trip(chain, data):
    space = ConfigSpace(chain, "pipeline")
    k = data.draw(st.integers(0, space.n_stages - 1))
    i = data.draw(st.integers(0, space.stages[k].size - 1))
    s = space.stages[k]
    assert s.index(s.option(i)) == i


def test_out_of_range_option_is_an_error(chain):
    space = ConfigSpace(chain, "pipeline")
    with pytest.raises(IndexError):
        space.stages[0].option(space.stages[0].size)


def test_batch_process_is_rejected(edge):
    with pytest.raises(ValueError, match="not a request pipeline"):
        ConfigSpace(edge, "retraining")
