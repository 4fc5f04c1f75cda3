"""The MI estimators on correlated Gaussians, where everything is known in closed form.

s ~ N(0, I_d) and u = rho * s + sqrt(1 - rho^2) * noise, so each of the d coordinate pairs has
correlation rho and I(S; U) = -d/2 * log(1 - rho^2) (0.511 nats per dimension at rho = 0.8).

Two oracles besides the truth:
- The JSD estimator can at best reach 2 * JSD(p(s,u) || p(s)p(u)), its value at the optimal critic
  T* = log p(s,u) / (p(s)p(u)); we compute it by Monte Carlo from the known density ratio.
- CLUB with the exact conditional p(u | s) is d * rho^2 / (1 - rho^2).

Tolerances: estimates are read on 4,096 held-out pairs; their standard error (the standard
deviation of the per-pair terms over sqrt(4096)) is 0.005-0.03 nats here. Every bound is checked
with 3 standard errors of slack, which a correct estimator exceeds with probability ~0.1% per
check; the seeds are fixed, so the outcome is deterministic anyway.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from agent_node.algos.mutual_information import GaussianCLUB, JSDMutualInformation, jsd_pointwise, soft_clamp

# The Gaussian pairs, their true MI and the JSD bound at the optimal critic: one definition, the estimator bench's.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from mi_estimators import gaussian_pairs, optimal_jsd, true_mi  # noqa: E402

torch.set_num_threads(1)

HELD_OUT = 4_096
TRAIN_STEPS = 600
TRAIN_BATCH = 256


def fit_and_read(rho: float, dims: int, seed: int = 0) -> dict[str, float]:
    """Train both estimators on fresh batches, then read them (mean and standard error) on held-out pairs."""
    rng = np.random.default_rng(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        jsd = JSDMutualInformation(dims, dims, hidden_sizes=(64,), embedding_dim=32)
        club = GaussianCLUB(dims, dims, hidden_sizes=(64,))
    jsd_optimizer = torch.optim.Adam(jsd.parameters(), lr=1e-3)
    club_optimizer = torch.optim.Adam(club.parameters(), lr=1e-3)
    for _ in range(TRAIN_STEPS):
        state, action = gaussian_pairs(rng, TRAIN_BATCH, dims, rho)
        jsd_optimizer.zero_grad()
        jsd.loss(state, action).backward()
        jsd_optimizer.step()
        club_optimizer.zero_grad()
        club.nll_loss(state, action).backward()
        club_optimizer.step()
    state, action = gaussian_pairs(rng, HELD_OUT, dims, rho)
    with torch.no_grad():
        jsd_terms = jsd.pointwise(state, action)
        club_terms = club.pointwise(state, action)
    return {
        "jsd": jsd_terms.mean().item(),
        "jsd_se": jsd_terms.std().item() / math.sqrt(HELD_OUT),
        "club": club_terms.mean().item(),
        "club_se": club_terms.std().item() / math.sqrt(HELD_OUT),
    }


def test_true_mi_of_the_reference_case():
    assert true_mi(0.8, 1) == pytest.approx(0.511, abs=5e-4)


@pytest.mark.timeout(60)
def test_jsd_estimate_is_below_the_true_mi_and_close_to_its_own_optimum():
    rho, dims = 0.8, 2
    read = fit_and_read(rho, dims)
    truth = true_mi(rho, dims)  # 1.022 nats
    optimum = optimal_jsd(rho, dims)  # ~0.48 nats: the best any critic can do
    slack = 3.0 * read["jsd_se"]
    assert read["jsd"] <= truth + slack, read
    assert read["jsd"] <= optimum + slack + 0.01, (read, optimum)  # 0.01: the Monte Carlo oracle's own error
    # The separable critic gets close to the optimal critic: a bound that learned nothing would be ~0.
    assert read["jsd"] >= 0.85 * optimum, (read, optimum)


@pytest.mark.timeout(60)
def test_club_estimate_is_above_the_true_mi_and_close_to_the_exact_conditional_value():
    rho, dims = 0.8, 2
    read = fit_and_read(rho, dims, seed=1)
    truth = true_mi(rho, dims)
    exact_conditional_club = dims * rho**2 / (1.0 - rho**2)  # 3.56 nats
    assert read["club"] >= truth - 3.0 * read["club_se"], read
    assert read["club"] == pytest.approx(exact_conditional_club, rel=0.1), read


@pytest.mark.timeout(60)
def test_both_estimates_grow_with_the_correlation():
    reads = [fit_and_read(rho, dims=1, seed=2) for rho in (0.2, 0.5, 0.8)]
    for lower, higher in zip(reads, reads[1:]):
        jsd_margin = 3.0 * math.hypot(lower["jsd_se"], higher["jsd_se"])
        club_margin = 3.0 * math.hypot(lower["club_se"], higher["club_se"])
        assert higher["jsd"] > lower["jsd"] + jsd_margin, reads
        assert higher["club"] > lower["club"] + club_margin, reads
    for rho, read in zip((0.2, 0.5, 0.8), reads):
        assert read["jsd"] <= true_mi(rho, 1) + 3.0 * read["jsd_se"] <= read["club"] + 3.0 * (read["jsd_se"] + read["club_se"])


def test_pointwise_terms_match_a_direct_computation():
    """The vectorized per-pair terms against loops over the definitions in the module docstring."""
    torch.manual_seed(0)
    batch, state_dim, action_dim = 7, 3, 4
    state, action = torch.randn(batch, state_dim), torch.randn(batch, action_dim)

    jsd = JSDMutualInformation(state_dim, action_dim, hidden_sizes=(8,), embedding_dim=5)
    with torch.no_grad():
        phi = jsd.critic.state_encoder(state)
        psi = jsd.critic.action_encoder(action)
        expected = []
        for i in range(batch):
            positive = math.log(2) - torch.nn.functional.softplus(-(phi[i] @ psi[i]))
            negatives = [torch.nn.functional.softplus(phi[i] @ psi[j]) - math.log(2) for j in range(batch) if j != i]
            expected.append(positive - sum(negatives) / (batch - 1))
        torch.testing.assert_close(jsd.pointwise(state, action), torch.stack(expected))

    club = GaussianCLUB(state_dim, action_dim, hidden_sizes=(8,))
    with torch.no_grad():
        mean, log_var = club.conditional(state)

        def log_q(u: torch.Tensor, i: int) -> torch.Tensor:
            normal = torch.distributions.Normal(mean[i], (0.5 * log_var[i]).exp())
            return normal.log_prob(u).sum()

        expected = [log_q(action[i], i) - sum(log_q(action[j], i) for j in range(batch)) / batch for i in range(batch)]
        torch.testing.assert_close(club.pointwise(state, action), torch.stack(expected), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            club.log_likelihood(state, action), torch.stack([log_q(action[i], i) for i in range(batch)])
        )


def test_jsd_refuses_a_score_matrix_that_is_not_square():
    with pytest.raises(ValueError, match="square"):
        jsd_pointwise(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="B >= 2"):
        jsd_pointwise(torch.zeros(1, 1))


def test_soft_clamp_stays_inside_its_bounds_and_keeps_a_gradient():
    x = torch.tensor([-100.0, -11.0, 0.0, 5.0, 100.0], requires_grad=True)
    y = soft_clamp(x, -10.0, 4.0)
    assert torch.all(y >= -10.0 - 1e-5) and torch.all(y <= 4.0 + 1e-5)
    assert y[2].item() == pytest.approx(0.0, abs=0.05)  # the middle of the range passes almost unchanged
    y.sum().backward()
    assert torch.all(x.grad[1:4] > 0.1)  # one unit beyond either bound there is still a usable gradient


def test_club_log_variance_stays_inside_the_bounds_it_is_given():
    torch.manual_seed(0)
    club = GaussianCLUB(3, 2, hidden_sizes=(8,), log_var_bounds=(-1.0, 1.0))  # the reference's tanh range
    with torch.no_grad():
        club.log_var_net[-1].bias.fill_(-50.0)  # asks for a far sharper q than allowed
        _, log_var = club.conditional(torch.randn(16, 3))
    assert log_var.min() >= -1.0 - 1e-6 and log_var.max() <= 1.0
    with pytest.raises(ValueError, match="low < high"):
        GaussianCLUB(3, 2, hidden_sizes=(8,), log_var_bounds=(1.0, -1.0))


def test_pmic_config_takes_club_bounds_or_refuses_reversed_ones():
    from agent_node.algos.config import PMICConfig

    assert PMICConfig().club_log_var_bounds is None  # the estimator's own bounds
    assert PMICConfig(club_log_var_bounds=(-1.0, 1.0)).club_log_var_bounds == (-1.0, 1.0)
    with pytest.raises(ValueError, match="low < high"):
        PMICConfig(club_log_var_bounds=(1.0, -1.0))


def test_club_without_bounds_takes_the_estimators_own():
    from agent_node.algos.mutual_information import LOG_VAR_MAX, LOG_VAR_MIN

    assert GaussianCLUB(3, 2, hidden_sizes=(8,)).log_var_bounds == (LOG_VAR_MIN, LOG_VAR_MAX)
