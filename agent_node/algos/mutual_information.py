"""Neural estimators of the mutual information I(S; U) between a global state S and a joint action U.

PMIC (Li et al. 2022, "PMIC: Improving Multi-Agent Reinforcement Learning with Progressive Mutual
Information Collaboration", arXiv 2203.08553) shapes a critic's target with two estimates of
I(S; U): a *lower* bound on superior experience (to be raised) and an *upper* bound on inferior
experience (to be lowered). This module holds both estimators; `agent_node/algos/pmic.py` uses them.

Notation: a batch holds B pairs (s_i, u_i) drawn from the joint distribution p(s, u). Pairs
(s_i, u_j) with j != i stand in for draws from the product of marginals p(s) p(u).

## Jensen-Shannon estimator with a separable critic (the lower bound)

Critic `T(s, u) = phi(s) . psi(u)` with two encoders into R^32, so one matrix product scores all
B x B pairs at once (`SeparableCritic`). The estimate (Hjelm et al. 2019, "Deep InfoMax", eq. 4;
the f-GAN bound of Nowozin et al. 2016 for the Jensen-Shannon divergence), shifted by log 2 per
term as PMIC's code does:

    I_JSD = E_p[ log 2 - softplus(-T(s, u)) ] - E_{p(s)p(u)}[ softplus(T(s, u)) - log 2 ]

and, per pair i (what PMIC adds to the reward of transition i):

    I_JSD,i = (log 2 - softplus(-T_ii)) - 1/(B-1) * sum_{j != i} (softplus(T_ij) - log 2)

The critic is trained to maximize it. For any critic the expectation is at most its value at
T* = log p(s,u) / (p(s) p(u)), which is `2 * JSD(p(s,u) || p(s)p(u))` (JSD with natural logs, in
[0, log 2]). So the estimate is bounded by 2 JSD, not by I(S; U) itself. For the correlated
Gaussians of the unit tests 2 JSD is about half of I (0.27 vs 0.51 nats at rho = 0.8, one
dimension), so there it is a lower bound on I with room to spare; `tests/unit/
test_mutual_information.py` computes the 2 JSD optimum by Monte Carlo from the known density ratio.
It saturates at 2 log 2 = 1.386 nats however large I grows.

## CLUB with a Gaussian variational conditional (the upper bound)

Cheng et al. 2020, "CLUB: A Contrastive Log-ratio Upper Bound of Mutual Information", eq. 4 with
a learned q(u | s) in place of p(u | s) (their vCLUB, eq. 9):

    I_CLUB = E_p[ log q(u | s) ] - E_{p(s)p(u)}[ log q(u | s) ]
    I_CLUB,i = log q(u_i | s_i) - 1/B * sum_j log q(u_j | s_i)

with q(u | s) = N(u; mu(s), diag(exp(log_var(s)))) fit by maximum likelihood on the joint samples
(`GaussianCLUB.nll_loss`). With q equal to the true conditional, I_CLUB - I = E_{p(s)}
KL(p(u) || p(u | s)) >= 0 (Cheng et al., Theorem 3.1); Theorem 3.2 keeps the bound for a q that is
close enough to p(u | s). For the unit tests' Gaussians with the exact conditional,
I_CLUB = d * rho^2 / (1 - rho^2) (1.78 nats at rho = 0.8, one dimension), well above I = 0.51.

## What is taken over from the PMIC reference code (`yeshenpy/PMIC`), and what is not

Facts, read in `algorithms/mpe_new_maxminMADDPG.py`:
- The separable critic scores all pairs with one product of the two embeddings (`u = torch.mm(m,
  l.t())`, line 119); the diagonal holds the joint pairs, the rest the product pairs (mask,
  lines 122-123); negative terms are averaged over the B - 1 off-diagonal entries (line 130).
- The JSD terms with the log 2 shift: positive `log_2 - softplus(-p)` (line 78), negative
  `softplus(-q) + q - log_2` (line 48), which equals `softplus(q) - log_2`.
- The encoders map to 32 dimensions (`nn.Linear(state_size, 32)`, `nn.Linear(com_a_size, 32)`,
  lines 142-143) and the per-sample lower bound is the negated per-sample loss (line 845).
- CLUB's per-sample estimate: positive minus the mean over all j (including i) of the negative
  log-density terms, log-variance terms cancelling (lines 187-195).
Differences, chosen here:
- The reference's encoders are one linear layer followed by leaky ReLU (lines 146-147); here each
  encoder is an MLP whose 32-d output is linear, so T can take either sign freely.
- The reference bounds CLUB's log-variance with tanh to (-1, 1) (line 176), i.e. variances in
  (0.37, 2.7); a conditional sharper than that (the tests' rho = 0.8 has variance 0.36) cannot be
  fit. Here the log-variance is soft-clamped to [-10, 4] instead.
- The reference fits q with the unnormalized `-(mu - y)^2 / var - logvar` (line 199); here the
  loss is the Gaussian negative log-likelihood proper (same minimizer, half the gradient scale).
- The CLUB negative term is computed in closed form from per-batch moments of u, O(B d) memory
  instead of the reference's (B, B, d) tensor.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

LOG_2 = math.log(2.0)
# Soft bounds on CLUB's log-variance: wide enough for conditionals with standard deviations from
# 0.007 to 7 (actions are normalized to [-1, 1]), narrow enough that the density cannot collapse
# onto one sample and send the log-likelihood to infinity.
LOG_VAR_MIN = -10.0
LOG_VAR_MAX = 4.0


def mlp(in_features: int, hidden_sizes: tuple[int, ...], out_features: int,
        activation: type[nn.Module] = nn.LeakyReLU) -> nn.Sequential:
    """Linear + `activation` (leaky ReLU unless told) per hidden width, then a linear output layer."""
    layers: list[nn.Module] = []
    for width in hidden_sizes:
        layers += [nn.Linear(in_features, width), activation()]
        in_features = width
    layers.append(nn.Linear(in_features, out_features))
    return nn.Sequential(*layers)


def soft_clamp(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """x pushed smoothly inside [low, high] (to float precision); unlike clamp, it keeps a gradient
    at and a little beyond the bounds, so a variance pressed against a bound can still move back."""
    x = high - F.softplus(high - x)
    return low + F.softplus(x - low)


# ---------------------------------------------------------------------------------- JSD lower bound


class SeparableCritic(nn.Module):
    """T(s, u) = phi(s) . psi(u), evaluated for every (s_i, u_j) pair of a batch at once."""

    def __init__(self, state_dim: int, action_dim: int, hidden_sizes: tuple[int, ...], embedding_dim: int) -> None:
        super().__init__()
        self.state_encoder = mlp(state_dim, hidden_sizes, embedding_dim)  # phi
        self.action_encoder = mlp(action_dim, hidden_sizes, embedding_dim)  # psi

    def forward(self, state: torch.Tensor, joint_action: torch.Tensor) -> torch.Tensor:
        """Scores (B, B) with scores[i, j] = phi(s_i) . psi(u_j); the diagonal holds the joint pairs."""
        return self.state_encoder(state) @ self.action_encoder(joint_action).T


def jsd_pointwise(scores: torch.Tensor) -> torch.Tensor:
    """I_JSD,i for each pair i of a (B, B) score matrix (see the module docstring), shape (B,)."""
    batch = scores.shape[0]
    if scores.shape != (batch, batch) or batch < 2:
        raise ValueError(f"scores must be a square (B, B) matrix with B >= 2, got shape {tuple(scores.shape)}")
    positive = LOG_2 - F.softplus(-scores.diagonal())
    off_diagonal = ~torch.eye(batch, dtype=torch.bool, device=scores.device)
    negative_terms = (F.softplus(scores) - LOG_2) * off_diagonal
    negative = negative_terms.sum(dim=1) / (batch - 1)
    return positive - negative


class JSDMutualInformation(nn.Module):
    """The Jensen-Shannon estimator: train with `loss`, read per-pair values with `pointwise`."""

    def __init__(self, state_dim: int, action_dim: int, hidden_sizes: tuple[int, ...], embedding_dim: int = 32) -> None:
        super().__init__()
        self.critic = SeparableCritic(state_dim, action_dim, hidden_sizes, embedding_dim)

    def pointwise(self, state: torch.Tensor, joint_action: torch.Tensor) -> torch.Tensor:
        """I_JSD,i for every pair of the batch (B,), the other pairs serving as negatives."""
        return jsd_pointwise(self.critic(state, joint_action))

    def estimate(self, state: torch.Tensor, joint_action: torch.Tensor) -> torch.Tensor:
        """The batch estimate of the lower bound (a scalar tensor)."""
        return self.pointwise(state, joint_action).mean()

    def loss(self, state: torch.Tensor, joint_action: torch.Tensor) -> torch.Tensor:
        """Minimizing this maximizes the bound."""
        return -self.estimate(state, joint_action)


# ---------------------------------------------------------------------------------- CLUB upper bound


class GaussianCLUB(nn.Module):
    """CLUB with q(u | s) = N(mu(s), diag(exp(log_var(s)))): fit with `nll_loss`, read with `pointwise`."""

    def __init__(self, state_dim: int, action_dim: int, hidden_sizes: tuple[int, ...],
                 log_var_bounds: tuple[float, float] | None = None) -> None:
        """`log_var_bounds`: soft (low, high) bounds on log q's variance; None: (LOG_VAR_MIN, LOG_VAR_MAX)."""
        super().__init__()
        low, high = (LOG_VAR_MIN, LOG_VAR_MAX) if log_var_bounds is None else log_var_bounds
        if not low < high:
            raise ValueError(f"log_var_bounds must be (low, high) with low < high, got {log_var_bounds}")
        self.log_var_bounds = (float(low), float(high))
        self.mean_net = mlp(state_dim, hidden_sizes, action_dim)
        self.log_var_net = mlp(state_dim, hidden_sizes, action_dim)

    def conditional(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(u | s), each (B, action_dim)."""
        return self.mean_net(state), soft_clamp(self.log_var_net(state), *self.log_var_bounds)

    def log_likelihood(self, state: torch.Tensor, joint_action: torch.Tensor) -> torch.Tensor:
        """log q(u_i | s_i) for each pair (B,), the full normalized Gaussian density."""
        mean, log_var = self.conditional(state)
        squared = (joint_action - mean).pow(2) / log_var.exp()
        return -0.5 * (squared + log_var + math.log(2.0 * math.pi)).sum(dim=1)

    def nll_loss(self, state: torch.Tensor, joint_action: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood of the joint pairs: q's maximum-likelihood objective."""
        return -self.log_likelihood(state, joint_action).mean()

    def pointwise(self, state: torch.Tensor, joint_action: torch.Tensor) -> torch.Tensor:
        """I_CLUB,i = log q(u_i | s_i) - mean_j log q(u_j | s_i), shape (B,).

        The normalizer of q(. | s_i) is the same in both terms and cancels. The mean over j of
        (u_j - mu_i)^2 is computed from the batch moments of u:
        mean_j (u_j - mu_i)^2 = mean(u^2) - 2 mu_i mean(u) + mu_i^2, per dimension.
        """
        mean, log_var = self.conditional(state)
        inverse_var = (-log_var).exp()
        positive = -0.5 * ((joint_action - mean).pow(2) * inverse_var).sum(dim=1)
        first_moment = joint_action.mean(dim=0, keepdim=True)
        second_moment = joint_action.pow(2).mean(dim=0, keepdim=True)
        mean_squared_distance = second_moment - 2.0 * mean * first_moment + mean.pow(2)
        negative = -0.5 * (mean_squared_distance * inverse_var).sum(dim=1)
        return positive - negative

    def estimate(self, state: torch.Tensor, joint_action: torch.Tensor) -> torch.Tensor:
        """The batch estimate of the upper bound (a scalar tensor)."""
        return self.pointwise(state, joint_action).mean()
