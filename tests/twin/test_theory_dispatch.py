"""Replicas with a queue each, behind a dispatcher, against queueing theory.

A server of ``N`` worker processes, each with its own FIFO queue, fed by a
dispatcher (MLServer with ``parallel_workers`` N sends requests round-robin; a
random balancer picks one at random) is the twin's ``dispatch: balanced``
component with ``load_balancing`` round_robin or random. With Poisson arrivals
(rate λ) and exponential service (rate μ), each replica is exactly:

- random: M/M/1 at λ/N (a Poisson stream split at random stays Poisson);
- round-robin: E_N/M/1 (every N-th arrival: Erlang-N gaps), a GI/M/1 queue whose
  mean wait is σ / (μ (1 − σ)), σ the root in (0, 1) of σ = A*(μ − μσ) with the
  gaps' Laplace transform A*(s) = (λ / (λ + s))^N (Kleinrock, vol. 1, §6.4).

Same seeds, tolerance and power rule as test_theory.py.
"""

from __future__ import annotations

import pytest
from scipy.optimize import brentq

from tests.twin.test_theory import assert_close, seeds_mean_wait
from twin.analytic import mmc_wait_s, queue_scenario


def gi_m_1_round_robin_wait_s(arrival_rate: float, service_rate: float, replicas: int) -> float:
    """Mean queue wait (s) at one of ``replicas`` exponential servers fed round-robin."""
    lam, mu, n = arrival_rate, service_rate, replicas
    sigma = brentq(lambda s: (lam / (lam + mu - mu * s)) ** n - s, 1e-12, 1 - 1e-12)
    return sigma / (mu * (1 - sigma))


def mean_wait(
    arrival_rate: float, replicas: int, policy: str, customers: int
) -> tuple[float, float]:
    sc, dep = queue_scenario(arrival_rate, 1.0, replicas)
    comps = [c.model_copy(update={"dispatch": "balanced"}) for c in sc.components]
    sc = sc.model_copy(update={"components": comps})
    dep = dep.model_copy(update={"load_balancing": policy})
    return seeds_mean_wait(sc, dep, arrival_rate, customers)


def test_round_robin_reference_values() -> None:
    # one replica: E_1/M/1 is M/M/1 (σ = ρ)
    assert gi_m_1_round_robin_wait_s(0.6, 1.0, 1) == pytest.approx(mmc_wait_s(0.6, 1.0, 1))
    # many replicas: Erlang-N gaps of mean 2 s tend to constant ones, D/M/1 at ρ 0.5,
    # whose σ = 0.2032 (σ = e^{−2(1−σ)}; standard table): wait σ / (1 − σ) = 0.2550 s
    n = 5000
    assert gi_m_1_round_robin_wait_s(n * 0.5, 1.0, n) == pytest.approx(0.2550, abs=5e-4)
    # two replicas wait less than two fed at random (smoother arrivals)
    assert gi_m_1_round_robin_wait_s(1.4, 1.0, 2) < mmc_wait_s(0.7, 1.0, 1)


@pytest.mark.slow
@pytest.mark.parametrize(("rho", "replicas", "customers"), [(0.5, 2, 60_000), (0.7, 2, 90_000)])
def test_round_robin_replicas_match_erlang_k_m_1(rho: float, replicas: int, customers: int) -> None:
    rate = rho * replicas
    measured, half = mean_wait(rate, replicas, "round_robin", customers)
    assert_close(measured, half, gi_m_1_round_robin_wait_s(rate, 1.0, replicas))


@pytest.mark.slow
@pytest.mark.parametrize(("rho", "replicas", "customers"), [(0.5, 2, 60_000), (0.6, 2, 90_000)])
def test_random_replicas_match_m_m_1(rho: float, replicas: int, customers: int) -> None:
    rate = rho * replicas
    measured, half = mean_wait(rate, replicas, "random", customers)
    assert_close(measured, half, mmc_wait_s(rate / replicas, 1.0, 1))
