"""The consensus conformance sheet at small sizes (protocols/sim/conformance.py; the full sheet is
bench/conformance.py): contraction against lambda_2, the one-peer schedule, push-sum's weight."""

from __future__ import annotations

import pytest

from protocols.sim.conformance import contraction, one_peer_schedule, push_sum_weight_drift
from protocols.engines.topology import exponential, grid, random_regular, ring, small_world

SMALL = {
    "ring": lambda: ring(16),
    "torus": lambda: grid(4, 4, torus=True),
    "random_regular": lambda: random_regular(16, 4, seed=0),
    "exponential": lambda: exponential(16),
    "small_world": lambda: small_world(16, 4, 0.2, seed=0),
}


@pytest.mark.parametrize("name", list(SMALL))
def test_sync_rounds_contract_by_lambda_2_of_the_metropolis_matrix(name):
    measured = contraction(SMALL[name](), rounds=60)
    assert measured.ratio == pytest.approx(1.0, abs=0.10), measured


def test_a_matrix_with_another_spectrum_would_be_caught():
    # The ring of 16 and the ring of 8 contract at clearly different rates: the check has teeth.
    assert abs(contraction(ring(8), rounds=60).measured / contraction(ring(16), rounds=60).lambda_2 - 1.0) > 0.10


@pytest.mark.parametrize("n", [2, 8, 16, 32])
def test_one_peer_hypercube_is_exact_in_log2_n_rounds_and_not_before(n):
    run = one_peer_schedule(n)
    assert run.rounds == n.bit_length() - 1
    assert run.exact_after == run.rounds
    assert run.disagreement[-1] <= 1e-12
    assert all(value > 1e-3 for value in run.disagreement[:-1])


def test_push_sum_weight_is_conserved_to_1e_12_under_30_percent_loss():
    assert push_sum_weight_drift(exponential(16), "exponential", loss=0.3, periods=40) <= 1e-12
