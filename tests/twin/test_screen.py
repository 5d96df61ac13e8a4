"""The screening fidelity against queueing theory and against the SimPy twin.

The theory checks mirror tests/twin/test_theory.py (Erlang C, Pollaczek–
Khinchine, Jackson tandems; tolerance 3 %, with a seed spread narrow enough to
have power); the screening engine is fast enough to run them at full size
without the ``slow`` mark. The comparison with the SimPy twin runs the same
scenario, deployment and seed through both and asks for agreement within the
replications' noise.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from twin.analytic import horizon_for, mg1_wait_s, mmc_wait_s, queue_scenario
from twin.criteria import CRITERIA, confidence_interval, pipeline_metrics
from twin.evaluate import evaluate
from twin.screen import screen

SEEDS = range(6)
TOLERANCE = 0.03
LONGER = 4  # × test_theory's customers: the screening engine affords a narrower seed spread


def _waits(
    rate: float, servers: int, kind: str, customers: int, stations: int = 1
) -> tuple[list[float], list[float]]:
    """Per seed: mean queue wait of a visit, and mean sojourn of a customer (s)."""
    sc, dep = queue_scenario(rate, 1.0, servers, kind, stations)
    customers *= LONGER
    waits, sojourns = [], []
    for seed in SEEDS:
        ev = screen(sc, dep, None, horizon_for(customers, rate), 1, seed, keep_records=True)
        v, r = ev.visits, ev.requests.dropna(subset=["t_end"])
        waits.append(float((v["t_start"] - v["t_arrive"]).mean()))
        sojourns.append(float((r["t_end"] - r["t_arrive"]).mean()))
    return waits, sojourns


def assert_close(values: list[float], theory: float) -> None:
    measured, half = confidence_interval(values, level=0.95)
    assert half < TOLERANCE * theory, f"seed spread too wide: ±{half:.4f} vs {theory:.4f}"
    assert abs(measured - theory) <= TOLERANCE * theory, (
        f"measured {measured:.4f} vs theory {theory:.4f} ({100 * (measured / theory - 1):+.2f}%)"
    )


@pytest.mark.parametrize(
    ("rho", "servers", "customers"),
    [(0.5, 1, 40_000), (0.7, 1, 80_000), (0.5, 3, 70_000), (0.7, 3, 80_000)],
)
def test_screen_mmc_wait_matches_erlang_c(rho: float, servers: int, customers: int) -> None:
    rate = rho * servers
    waits, _ = _waits(rate, servers, "exponential", customers)
    assert_close(waits, mmc_wait_s(rate, 1.0, servers))


@pytest.mark.parametrize(("rho", "customers"), [(0.5, 20_000), (0.8, 110_000)])
def test_screen_md1_wait_matches_pollaczek_khinchine(rho: float, customers: int) -> None:
    waits, _ = _waits(rho, 1, "constant", customers)
    assert_close(waits, mg1_wait_s(rho, 1.0, 0.0))


@pytest.mark.parametrize(("stations", "servers", "rate"), [(2, 1, 0.6), (3, 2, 1.2)])
def test_screen_tandem_matches_jackson(stations: int, servers: int, rate: float) -> None:
    _, sojourns = _waits(rate, servers, "exponential", 25_000, stations)
    assert_close(sojourns, stations * (mmc_wait_s(rate, 1.0, servers) + 1.0))


def test_screen_is_pure_and_picklable(edge_cloud) -> None:
    sc, dep = edge_cloud
    a = screen(sc, dep, None, 600.0, 2, seed=3)
    b = pickle.loads(pickle.dumps(screen))(sc, dep, None, 600.0, 2, seed=3)
    assert a.criteria() == b.criteria()
    assert a.criteria() != screen(sc, dep, None, 600.0, 2, seed=4).criteria()


def test_screen_agrees_with_simpy_twin_on_edge_cloud(edge_cloud) -> None:
    sc, dep = edge_cloud
    fast = screen(sc, dep, None, 3600.0, 4, seed=1)
    des = evaluate(sc, dep, None, 3600.0, 4, seed=1)
    assert fast.per_replication["executions"].tolist() == des.per_replication["executions"].tolist()
    # Same arrivals and service streams (common random numbers): the batch processes,
    # which dominate the time criteria, get identical draws; mean time within 1 %.
    assert fast.criteria()[0] == pytest.approx(des.criteria()[0], rel=0.01)
    for c in CRITERIA:
        s, d = fast.summary.loc[c], des.summary.loc[c]
        assert abs(s["mean"] - d["mean"]) <= 2.5 * np.hypot(s["ci"], d["ci"]) + 1e-9 * abs(
            d["mean"]
        )


def test_screen_records_give_pipeline_metrics(digits) -> None:
    sc, dep = digits
    proc = next(p.name for p in sc.processes if p.kind == "request")
    fast = screen(sc, dep, "steady-low", 30.0, 1, keep_records=True)
    des = evaluate(sc, dep, "steady-low", 30.0, 1, keep_records=True)
    a = pipeline_metrics(fast.visits, sc, dep, proc, 5.0, 25.0, 30.0)
    b = pipeline_metrics(des.visits, sc, dep, proc, 5.0, 25.0, 30.0)
    assert a.V == b.V and a.C == b.C and a.E == b.E
    assert a.T == pytest.approx(b.T, rel=0.1)
    assert a.L == pytest.approx(b.L, rel=0.1)


@pytest.mark.parametrize("seed", [1, 2])
def test_screen_models_cold_starts_as_the_simpy_twin(seed: int) -> None:
    """On-demand components with a ``startup_s`` start cold after every idle spell; the
    screen pays that start-up as the DES does (time, overruns and the execution cost,
    which bills the start-up), and agrees with the DES with every component constant too."""
    from twin.load import load_scenario
    from twin.spec import Deployment

    sc = load_scenario("examples/small-matrices.yaml")
    alloc = {
        "feature-store": {"cloud": 1},
        "model-server": {"edge": 1},
        "prep-worker": {"cloud": 2},
        "trainer": {"cloud": 1},
    }
    got = {}
    for on in (False, True):
        dep = Deployment(
            allocation=alloc,
            parallelism={"retraining.prepare": 2},
            always_on={c: on for c in ("model-server", "prep-worker", "trainer")},
        )
        fast = screen(sc, dep, None, 480.0, 2, seed=seed).summary["mean"]
        des = evaluate(sc, dep, None, 480.0, 2, seed=seed).summary["mean"]
        for c in CRITERIA:
            assert fast[c] == pytest.approx(des[c], rel=0.01), (on, c)
        got[on] = fast
    # The cold starts are what on demand costs here: a 1.5 s start of the model server
    # misses the 0.5 s deadline of every request after an idle spell.
    assert got[False]["overruns"] > 3 * got[True]["overruns"]
    assert got[False]["time_mean_s"] > got[True]["time_mean_s"] + 4.0


def test_screen_hands_shared_queue_work_to_the_worker_idle_longest() -> None:
    """Shared-queue workers on a slow and a fast machine: work goes to the one idle longest,
    as twin.sim's FIFO of idle instances does (not the lowest-numbered), so each job runs
    where the DES runs it and the retraining times agree."""
    from twin.load import load_scenario
    from twin.spec import Deployment

    sc = load_scenario("examples/small-matrices.yaml")
    dep = Deployment(
        allocation={
            "feature-store": {"cloud": 1},
            "model-server": {"cloud": 1},
            "prep-worker": {"edge": 2, "cloud": 1},
            "trainer": {"cloud": 2},
        },
        always_on={"model-server": True, "prep-worker": False, "trainer": False},
    )
    fast = screen(sc, dep, None, 150.0, 1, seed=2, keep_records=True)
    des = evaluate(sc, dep, None, 150.0, 1, seed=2, keep_records=True)

    def where(visits):
        v = visits[visits["step"] == "prepare"].sort_values("pid")
        return list(zip(v["machine"].astype(str), v["replica"], strict=True))

    placed = where(fast.visits)
    assert placed == where(des.visits)
    assert ("cloud", 2) in placed  # the third run goes to the never-used cloud worker
    assert fast.criteria()[0] == pytest.approx(des.criteria()[0], rel=1e-6)


@pytest.fixture(scope="module")
def edge_cloud():
    from twin.load import load_deployment, load_scenario

    return (
        load_scenario("examples/edge-cloud.yaml"),
        load_deployment("examples/edge-cloud.deployment.yaml"),
    )


@pytest.fixture(scope="module")
def digits():
    from twin.load import load_deployment, load_scenario

    return (
        load_scenario("examples/digits-pipeline.yaml"),
        load_deployment("examples/digits-pipeline.deployment.yaml"),
    )
