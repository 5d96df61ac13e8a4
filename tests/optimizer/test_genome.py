"""The genome codec: round trips, bounds, feasibility agreeing with the twin."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from optimizer.genome import Genome
from tests.optimizer.conftest import EDGE, SMALL
from twin.deployment import allocation_matrix, check
from twin.load import load_deployment, load_scenario

SMALL_SC = load_scenario(SMALL)
EDGE_SC = load_scenario(EDGE)
EDGE_BASE = load_deployment(EDGE.with_name("edge-cloud.deployment.yaml"))


def matrices(genome: Genome):
    ub = genome.cell_bounds()
    return arrays(np.int64, genome.shape, elements=st.integers(0, int(ub.max()))).map(
        lambda m: np.minimum(m, ub)
    )


@settings(max_examples=200, deadline=None)
@given(matrices(Genome(SMALL_SC)))
def test_round_trip_small(m: np.ndarray) -> None:
    g = Genome(SMALL_SC)
    x = g.encode(m)
    assert x.shape == (g.n_var,)
    assert np.array_equal(g.decode(x), m)
    assert np.array_equal(g.encode(g.decode(x)), x)
    # the deployment carries exactly this matrix
    assert np.array_equal(allocation_matrix(SMALL_SC, g.deployment(x)), m)


@settings(max_examples=100, deadline=None)
@given(matrices(Genome(EDGE_SC, EDGE_BASE)))
def test_round_trip_edge_and_feasibility_agrees_with_twin(m: np.ndarray) -> None:
    g = Genome(EDGE_SC, EDGE_BASE)
    x = g.encode(m)
    assert np.array_equal(g.decode(x.astype(float) + 0.2), m)  # real-coded values round back
    dep = g.deployment(x)
    assert g.is_feasible(x) == (check(EDGE_SC, dep) == [])


# Found by hypothesis in CI: replicas of the model server and the feature store fill
# both big machines, and the trainer (3 cores, 10 GB) has no instance left.
CROWDED = np.minimum(
    np.array([[0, 0, 1], [0, 0, 3], [0, 3, 0], [0, 0, 0]]), Genome(SMALL_SC).cell_bounds()
)


@settings(max_examples=100, deadline=None)
@given(matrices(Genome(SMALL_SC)), st.integers(0, 2**32 - 1))
@example(CROWDED, 0)
def test_repair_gives_feasible(m: np.ndarray, seed: int) -> None:
    g = Genome(SMALL_SC)
    y = g.repair(g.encode(m), np.random.default_rng(seed))
    assert g.is_feasible(y)
    assert check(SMALL_SC, g.deployment(y)) == []
    if g.is_feasible(g.encode(m)):
        assert np.array_equal(y, g.encode(m))  # feasible input is left alone


def test_repair_makes_room_by_dropping_replicas_that_have_siblings() -> None:
    g = Genome(SMALL_SC)
    y = g.decode(g.repair(g.encode(CROWDED), np.random.default_rng(0)))
    assert g.is_feasible(g.encode(y)) and y[3].sum() == 1  # the trainer is placed
    # only surplus replicas went, and as few as one machine needed
    assert (y[:3].sum(axis=1) >= 1).all() and (y[:3] <= CROWDED[:3]).all()
    assert CROWDED.sum() + 1 - y.sum() == 1


def test_bounds_are_per_cell_capacity(genome: Genome) -> None:
    xl, xu = genome.bounds()
    assert xl.shape == xu.shape == (genome.n_var,)
    assert np.all(xl == 0)
    ub = xu.reshape(genome.shape)
    # trainer (row 3) needs 6 GB + 4 GB working memory: it cannot fit on the 8 GB edge box
    assert ub[3, 0] == 0
    assert ub[3, 1] == 2  # … but max_replicas 2 caps it on the big machines
    # one instance above the bound on one machine alone is infeasible
    for k in range(genome.shape[0]):
        for j in range(genome.shape[1]):
            m = np.zeros(genome.shape, dtype=np.int64)
            m[:, j] = 0
            m[k, j] = ub[k, j] + 1
            if ub[k, j] < genome.max_replicas[k]:
                assert not genome.is_feasible(m.reshape(-1))


def test_shape_errors(genome: Genome) -> None:
    with pytest.raises(ValueError, match="K·S"):
        genome.decode(np.zeros(genome.n_var + 1))
    with pytest.raises(ValueError, match="shape"):
        genome.encode(np.zeros((2, 2)))


def test_keys_identify_matrices(genome: Genome) -> None:
    a = np.zeros(genome.n_var, dtype=np.int64)
    b = a.copy()
    b[0] = 1
    assert genome.key(a) != genome.key(b)
    assert genome.key(a) == genome.key(a.astype(float))
