"""Generated instances are deterministic and valid; the default operators do what they claim."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.baselines import count_candidates, enumerate_feasible
from optimizer.evaluation import Evaluator
from optimizer.ga import budget_pop, default_config
from optimizer.genome import Genome
from optimizer.instances import MAX_CANDIDATES, MAX_FEASIBLE, MIN_FEASIBLE, generate
from optimizer.operators import PlacementMutation, SubsetSampling, _evacuate, packed_allocation
from optimizer.problem import PlacementProblem
from tests.optimizer.conftest import CHEAP


@pytest.mark.parametrize("seed", [1, 7])
def test_generate_is_a_pure_function_of_the_seed(seed: int) -> None:
    a, info_a = generate(seed)
    b, info_b = generate(seed)
    assert a.model_dump_json() == b.model_dump_json()
    assert info_a == info_b
    assert generate(seed + 1)[0].model_dump_json() != a.model_dump_json()


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_generated_instances_are_valid_and_exhaustively_searchable(seed: int) -> None:
    sc, info = generate(seed)
    genome = Genome(sc)
    assert 3 <= len(sc.components) <= 5 and 2 <= len(genome.machines) <= 4
    assert (info.n_components, info.n_machines) == genome.shape
    used = {s.component for p in sc.processes for s in p.steps}
    assert used == set(genome.components)  # no component is dead weight
    assert count_candidates(genome) == info.candidates <= MAX_CANDIDATES
    X = enumerate_feasible(genome)
    assert len(X) == info.feasible and MIN_FEASIBLE <= len(X) <= MAX_FEASIBLE
    assert all(genome.is_feasible(x) for x in X[:: max(1, len(X) // 50)])


def test_vectorised_enumeration_agrees_with_the_feasibility_check(genome: Genome) -> None:
    X = enumerate_feasible(genome)
    keys = {x.tobytes() for x in X}
    assert len(keys) == len(X)
    rng = np.random.default_rng(0)
    ub = genome.cell_bounds()
    for _ in range(300):  # random matrices within bounds: feasible ⇔ enumerated
        m = rng.integers(0, ub + 1).reshape(-1)
        assert genome.is_feasible(m) == (m.tobytes() in keys)


def test_subset_sampling_covers_every_machine_set(genome: Genome) -> None:
    problem = PlacementProblem(Evaluator(genome, CHEAP))
    X = SubsetSampling().do(problem, 20, random_state=np.random.default_rng(3)).get("X")
    assert all(genome.is_feasible(x) for x in X)
    used = {tuple(x.reshape(genome.shape).sum(axis=0) > 0) for x in X}
    # Every machine set that admits a feasible allocation appears in the population.
    possible = {tuple(x.reshape(genome.shape).sum(axis=0) > 0) for x in enumerate_feasible(genome)}
    assert used == possible


def test_subset_sampling_includes_single_machine_allocations(genome: Genome) -> None:
    problem = PlacementProblem(Evaluator(genome, CHEAP))
    sub = SubsetSampling().do(problem, 20, random_state=np.random.default_rng(5)).get("X")
    singles = sum((x.reshape(genome.shape).sum(axis=0) > 0).sum() == 1 for x in sub)
    assert singles >= 1


def test_evacuate_empties_a_machine_and_keeps_every_component(genome: Genome) -> None:
    rng = np.random.default_rng(1)
    m = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1]])
    assert genome.is_feasible(m.reshape(-1))
    emptied = 0
    for _ in range(30):
        y = m.copy()
        _evacuate(y, genome, rng)
        assert np.all(y.sum(axis=1) >= 1)
        if not np.array_equal(y, m):
            assert (y.sum(axis=0) > 0).sum() < (m.sum(axis=0) > 0).sum()
            emptied += 1
    assert emptied > 0


def test_mutation_weights_are_checked() -> None:
    with pytest.raises(ValueError, match="weights"):
        PlacementMutation((1.0, 0.0))
    assert PlacementMutation((1, 1, 1, 1, 1)).weights.shape == (5,)


def test_repack_finds_a_packing_the_twins_repair_misses() -> None:
    # Instance 6 is tight: one instance of everything fits only in few packings.
    sc, _ = generate(6)
    genome = Genome(sc)
    rng = np.random.default_rng(0)
    for _ in range(200):
        x = rng.integers(0, genome.cell_bounds() + 1).reshape(-1)
        assert genome.is_feasible(genome.repair(x, rng))
        assert genome.is_feasible(genome.repair_unbiased(x, rng))


def test_budget_aware_population() -> None:
    assert budget_pop(None) == 100
    assert budget_pop(40) == 6 and budget_pop(400) == 50 and budget_pop(10_000) == 100
    cfg = default_config(200)
    assert (cfg.algorithm, cfg.operators, cfg.pop_size, cfg.max_evals) == (
        "nsga2",
        "placement",
        25,
        200,
    )


def test_fit_aware_adds_stay_feasible_where_blind_adds_overload() -> None:
    # Instance 11 is tight: most cells a blind add picks overload their machine.
    sc, _ = generate(11)
    genome = Genome(sc)
    X = enumerate_feasible(genome)
    rng = np.random.default_rng(2)
    add_only = (0.0, 1.0, 0.0)
    counts = {}
    for fit in (False, True):
        mutation = PlacementMutation(add_only, fit_aware=fit)
        ok = 0
        for x in X[rng.choice(len(X), size=200, replace=False)]:
            m = x.reshape(genome.shape).copy()
            room = PlacementMutation._room(m, genome)[1] & (m < genome.cell_bounds())
            mutation._one(m, genome.cell_bounds(), rng, genome)
            ok += genome.is_feasible(m.reshape(-1))
            if fit and room.any():
                assert genome.is_feasible(m.reshape(-1))  # an add where there is room
        counts[fit] = ok
    assert counts[True] > counts[False]


def test_packed_sampling_is_feasible_and_stratifies_instance_counts() -> None:
    sc, _ = generate(11)  # tight: three instances of its heaviest component rarely fit
    genome = Genome(sc)
    problem = PlacementProblem(Evaluator(genome, CHEAP))
    rng = np.random.default_rng(2)
    X = SubsetSampling(packed=True).do(problem, 30, random_state=rng).get("X")
    assert len(X) == 30 and all(genome.is_feasible(x) for x in X)
    assert len({x.tobytes() for x in X}) == 30
    counts = X.reshape(-1, *genome.shape).sum(axis=2)
    heavy = int(np.argmax(genome.cpu))
    # Every count of the heaviest component appears; rejection sampling gives three rarely.
    assert set(counts[:, heavy]) == set(range(1, int(genome.max_replicas[heavy]) + 1))
    blind = SubsetSampling().do(problem, 30, random_state=np.random.default_rng(2)).get("X")
    top = int(genome.max_replicas[heavy])
    packed_top = (counts[:, heavy] == top).sum()
    blind_top = (blind.reshape(-1, *genome.shape).sum(axis=2)[:, heavy] == top).sum()
    assert packed_top > blind_top


def test_packed_allocation_places_only_where_there_is_room() -> None:
    sc, _ = generate(11)
    genome = Genome(sc)
    rng = np.random.default_rng(0)
    for _ in range(50):
        m = packed_allocation(genome, rng, counts=genome.max_replicas)
        if m is None:
            continue
        assert np.all(genome.cpu @ m <= genome.cap_cpu + 1e-9)
        assert np.all(genome.ram @ m <= genome.cap_ram + 1e-9)
        assert np.all(m.sum(axis=1) >= 1) and np.all(m.sum(axis=1) <= genome.max_replicas)
