"""The simulator against queueing theory (Erlang C, Pollaczek–Khinchine) and ciw.

Each check runs several seeds; the tolerance is the issue's 3%, and the
spread over seeds must itself be narrow enough (95% CI half-width < 3%, so
3% is at least three standard errors) for the check to have power — a wrong
simulator cannot pass by noise, and a right one fails by chance < 0.3%. The
heavy-traffic end (ρ = 0.9) needs millions of customers per point and lives
in benchmarks/twin_theory.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from twin.analytic import horizon_for, mg1_wait_s, mmc_wait_s, queue_scenario
from twin.criteria import confidence_interval
from twin.sim import simulate_replication
from twin.spec import Deployment, Scenario

SEEDS = range(6)
TOLERANCE = 0.03


def mean_wait(arrival_rate: float, servers: int, kind: str, customers: int) -> tuple[float, float]:
    """Mean queue wait over seeds and its 95% CI half-width (s)."""
    sc, dep = queue_scenario(arrival_rate, 1.0, servers, kind)
    return seeds_mean_wait(sc, dep, arrival_rate, customers)


def seeds_mean_wait(
    sc: Scenario, dep: Deployment, arrival_rate: float, customers: int
) -> tuple[float, float]:
    """Mean queue wait of ``customers`` arrivals over the seeds, 95% CI half-width (s)."""
    horizon = horizon_for(customers, arrival_rate)
    waits = []
    for seed in SEEDS:
        v = simulate_replication(sc, dep, None, horizon, seed).visits
        waits.append(float((v["t_start"] - v["t_arrive"]).mean()))
    return confidence_interval(waits, level=0.95)


def assert_close(measured: float, half_width: float, theory: float) -> None:
    assert half_width < TOLERANCE * theory, (
        f"seed spread too wide to test: ±{half_width:.4f} vs theory {theory:.4f}"
    )
    assert abs(measured - theory) <= TOLERANCE * theory, (
        f"measured {measured:.4f} vs theory {theory:.4f} "
        f"({100 * (measured / theory - 1):+.2f}%, CI ±{half_width:.4f})"
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("rho", "servers", "customers"),
    [(0.5, 1, 40_000), (0.7, 1, 80_000), (0.5, 3, 70_000), (0.7, 3, 80_000)],
)
def test_mmc_wait_matches_erlang_c(rho: float, servers: int, customers: int) -> None:
    rate = rho * servers
    measured, half = mean_wait(rate, servers, "exponential", customers)
    assert_close(measured, half, mmc_wait_s(rate, 1.0, servers))


@pytest.mark.slow
@pytest.mark.parametrize(("rho", "customers"), [(0.5, 20_000), (0.8, 110_000)])
def test_md1_wait_matches_pollaczek_khinchine(rho: float, customers: int) -> None:
    measured, half = mean_wait(rho, 1, "constant", customers)
    assert_close(measured, half, mg1_wait_s(rho, 1.0, 0.0))


def test_erlang_c_reference_value() -> None:
    # M/M/4 at ρ = 0.8 with μ = 1: Wq = 0.7455 (standard table value).
    assert mmc_wait_s(3.2, 1.0, 4) == pytest.approx(0.74554, abs=1e-4)
    assert mg1_wait_s(0.5, 1.0, 1.0) == pytest.approx(mmc_wait_s(0.5, 1.0, 1))


def _ciw_sojourn(rate: float, stations: int, servers: int, customers: int, seed: int) -> float:
    import ciw

    network = ciw.create_network(
        arrival_distributions=[ciw.dists.Exponential(rate)] + [None] * (stations - 1),
        service_distributions=[ciw.dists.Exponential(1.0)] * stations,
        number_of_servers=[servers] * stations,
        routing=[[1.0 if j == i + 1 else 0.0 for j in range(stations)] for i in range(stations)],
    )
    ciw.seed(seed)
    sim = ciw.Simulation(network)
    sim.simulate_until_max_time(horizon_for(customers, rate))
    recs = sim.get_all_records()
    per_customer: dict[int, float] = {}
    first: dict[int, float] = {}
    count: dict[int, int] = {}
    for r in recs:
        first[r.id_number] = min(first.get(r.id_number, np.inf), r.arrival_date)
        per_customer[r.id_number] = max(per_customer.get(r.id_number, 0.0), r.exit_date)
        count[r.id_number] = count.get(r.id_number, 0) + 1
    done = [per_customer[i] - first[i] for i in per_customer if count[i] == stations]
    return float(np.mean(done))


def _twin_sojourn(rate: float, stations: int, servers: int, customers: int, seed: int) -> float:
    sc, dep = queue_scenario(rate, 1.0, servers, "exponential", stations)
    r = simulate_replication(sc, dep, None, horizon_for(customers, rate), seed, visits=False)
    done = r.requests.dropna(subset=["t_end"])
    return float((done["t_end"] - done["t_arrive"]).mean())


@pytest.mark.slow
@pytest.mark.parametrize(("stations", "servers", "rate"), [(2, 1, 0.6), (3, 2, 1.2)])
def test_tandem_network_matches_ciw(stations: int, servers: int, rate: float) -> None:
    customers = 25_000
    twin = [_twin_sojourn(rate, stations, servers, customers, s) for s in SEEDS]
    peer = [_ciw_sojourn(rate, stations, servers, customers, 100 + s) for s in SEEDS]
    t_mean, t_half = confidence_interval(twin, 0.95)
    c_mean, c_half = confidence_interval(peer, 0.95)
    # Both are estimates: the allowed gap is the 3%, and each side's
    # own spread must be well inside it for the comparison to mean anything.
    assert t_half < TOLERANCE * c_mean and c_half < TOLERANCE * c_mean
    assert abs(t_mean - c_mean) <= TOLERANCE * c_mean, (
        f"twin {t_mean:.4f} ± {t_half:.4f} vs ciw {c_mean:.4f} ± {c_half:.4f}"
    )
    # Jackson's theorem gives the exact value too: stations × W of M/M/c.
    exact = stations * (mmc_wait_s(rate, 1.0, servers) + 1.0)
    assert abs(t_mean - exact) <= TOLERANCE * exact
