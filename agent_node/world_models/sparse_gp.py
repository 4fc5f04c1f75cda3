"""Sparse GP dynamics model in weight space, fused across agents by averaging natural parameters.

The model (ALGORITHMS.md section 1, OG-MARL). Every agent models its own
`(state, action) -> state change` with

    f(x) = k(x, Z) w,    w ~ N(0, K_ZZ^-1),    y = f(x) + noise,  noise ~ N(0, sigma^2),

where the M inducing points Z are the same on every agent. This is the subset-of-regressors
sparse GP: its prior covariance is the Nystrom kernel k(x, Z) K_ZZ^-1 k(Z, x'). The likelihood of
agent i's data contributes *additive* natural parameters to the Gaussian posterior of w:

    J_i = K_{Z X_i} K_{X_i Z} / sigma^2      (M, M)   precision contribution
    h_i = K_{Z X_i} Y_i     / sigma^2        (M, D)   one column per output dimension

so the posterior given everyone's data needs only the sums: precision K_ZZ + sum_i J_i, and
mean S sum_i h_i. Consensus averaging gives each agent the *means* Jbar, hbar; multiplying by the
number of agents N turns them back into sums:

    S = (K_ZZ + N Jbar)^-1,    m = S N hbar.

At exact consensus this is the centralized posterior on the pooled data. The outputs (the D
components of the state change) are independent GPs with one kernel, so they share J and S and
differ only in h and m.

Prediction at x: mean k(x, Z) m. `predict` returns the *epistemic* variance
k(x, Z) S k(Z, x): the uncertainty about f, without the observation noise sigma^2. That is what
an optimism bonus c * sqrt(var) is meant to reward (noise never shrinks with more data, so adding
it would only shift the bonus by a constant).

`reference_variance` returns what the reference code computes instead,
k(x, x) - k(x, Z) S k(Z, x) (`ManuelWendl/OG-MARL`, `odmar.py` line 260, `predict_with_variance`
of `DistributedGP`; line 365 for its centralized GP). It is not a posterior variance of this model:
with no data S = K_ZZ^-1 and it is the Nystrom residual k(x,x) - Q(x,x) (small near inducing
points), and as data arrives S shrinks, so it *grows* towards the prior k(x, x). It is much larger
than the epistemic variance (the prior k(x, x) dominates it), which is why the reference's bonus
at c = 0.01 is large enough to change behaviour. OG-MARL offers both (`optimism_variance`).

Decentralized inducing points: the reference samples Z from the union of all agents' data, which
needs a central step. Here every agent derives Z from the config alone, over the known state-action
box: by default a regular grid (see `config.inducing_grid_shape`), or a seeded uniform draw.

Numerics: everything is float64; the posterior precision is factorized once by Cholesky (with the
configured jitter on K_ZZ, escalated only if the factorization fails) and every solve reuses the
factor. No matrix is ever inverted explicitly.

`centralized_posterior` computes the same posterior from pooled data in function space (an exact
GP with the Nystrom covariance), a different formula, so the tests compare two independent
computations rather than one computation with itself.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import gpytorch
import numpy as np
import torch

from agent_node.world_models.batches import as_matrix
from agent_node.world_models.config import SparseGPConfig, check_model_arguments, inducing_grid_shape

logger = logging.getLogger(__name__)

DTYPE = torch.float64
_FIT_CHUNK_ROWS = 4096  # bounds the (M, rows) kernel block built at once during fit
_MAX_JITTER_ESCALATIONS = 6


class StateActionKernel:
    """The GP kernel on `concat(state, action)` inputs, as a gpytorch `covar_module`.

    k(x, z) = outputscale * exp(-|x - z|^2 / (2 lengthscale^2)) + linear_variance * <x~, z~> + linear_constant

    With `input_scaling="box"` the kernel sees x~ = (x - box centre) / box half-width, and the RBF
    gets per-dimension lengthscales lengthscale / half-width, so its value in raw units is exactly
    the configured isotropic RBF; only the linear part is rescaled. Hyperparameters are fixed (no
    gradients): the reference does not learn them, and learning them locally would make the
    agents' kernels, hence their natural parameters, incompatible.
    """

    def __init__(self, config: SparseGPConfig, input_low: torch.Tensor, input_high: torch.Tensor):
        input_dim = input_low.shape[0]
        if config.input_scaling == "box":
            self.input_centre = (input_high + input_low) / 2
            self.input_half_width = (input_high - input_low) / 2
        else:
            self.input_centre = torch.zeros(input_dim, dtype=DTYPE)
            self.input_half_width = torch.ones(input_dim, dtype=DTYPE)

        rbf = gpytorch.kernels.RBFKernel(ard_num_dims=input_dim)
        rbf_scaled = gpytorch.kernels.ScaleKernel(rbf)
        kernels: list[gpytorch.kernels.Kernel] = [rbf_scaled]
        linear = constant = None
        if config.linear_variance > 0:
            linear = gpytorch.kernels.LinearKernel()
            kernels.append(linear)
        if config.linear_constant > 0:
            constant = gpytorch.kernels.ConstantKernel()
            kernels.append(constant)
        covar_module = gpytorch.kernels.AdditiveKernel(*kernels).to(DTYPE)
        rbf.lengthscale = (config.lengthscale / self.input_half_width).reshape(1, input_dim)
        rbf_scaled.outputscale = torch.tensor(config.rbf_outputscale, dtype=DTYPE)
        if linear is not None:
            linear.variance = torch.tensor(config.linear_variance, dtype=DTYPE)
        if constant is not None:
            constant.constant = torch.tensor(config.linear_constant, dtype=DTYPE)
        covar_module.requires_grad_(False)
        covar_module.eval()
        self.covar_module = covar_module

    def __call__(self, inputs_a: torch.Tensor, inputs_b: torch.Tensor) -> torch.Tensor:
        """Dense kernel matrix (n_a, n_b) between raw inputs."""
        scaled_a = (inputs_a - self.input_centre) / self.input_half_width
        scaled_b = (inputs_b - self.input_centre) / self.input_half_width
        with torch.no_grad():
            return self.covar_module(scaled_a, scaled_b).to_dense()

    def diagonal(self, inputs: torch.Tensor) -> torch.Tensor:
        """k(x, x) for each row of raw `inputs` (n,), without building the (n, n) matrix."""
        scaled = (inputs - self.input_centre) / self.input_half_width
        with torch.no_grad():
            return self.covar_module(scaled, scaled, diag=True)


def make_inducing_points(config: SparseGPConfig, input_dim: int) -> torch.Tensor:
    """The inducing points Z, (M, input_dim) float64, a pure function of the config.

    Every agent calls this with the same config and gets bitwise the same Z: the grid is
    computed with linspace, the uniform draw with a private torch generator seeded from the config.
    """
    if config.input_low is None or config.input_high is None:
        raise ValueError(
            "SparseGPConfig.input_low / input_high are unset: the inducing points are derived from the "
            "known state-action box, so the box must be in the config (fill it from the environment's "
            "spaces when resolving the config)"
        )
    if len(config.input_low) != input_dim:
        raise ValueError(
            f"the config's state-action box has {len(config.input_low)} dimensions, but the model's "
            f"input concat(state, action) has {input_dim}"
        )
    low = torch.tensor(config.input_low, dtype=DTYPE)
    high = torch.tensor(config.input_high, dtype=DTYPE)
    if config.inducing == "grid":
        shape = inducing_grid_shape(config.input_low, config.input_high, config.num_inducing)
        axes = [torch.linspace(float(low[d]), float(high[d]), shape[d], dtype=DTYPE) for d in range(input_dim)]
        return torch.cartesian_prod(*axes).reshape(-1, input_dim)
    generator = torch.Generator().manual_seed(config.inducing_seed)
    unit = torch.rand(config.num_inducing, input_dim, generator=generator, dtype=DTYPE)
    return low + unit * (high - low)


def cholesky_with_jitter(matrix: torch.Tensor, context: str) -> tuple[torch.Tensor, float]:
    """Lower Cholesky factor of a symmetric positive definite matrix, and the extra jitter it took.

    The configured jitter is already part of `matrix`. If the factorization still fails (loss of
    definiteness by rounding), add a growing multiple of the mean diagonal and log a warning: a
    slightly over-regularized posterior is better than a crashed agent.
    """
    factor, info = torch.linalg.cholesky_ex(matrix)
    if int(info) == 0:
        return factor, 0.0
    scale = float(matrix.diagonal().abs().mean())
    identity = torch.eye(matrix.shape[0], dtype=matrix.dtype)
    for exponent in range(_MAX_JITTER_ESCALATIONS):
        extra = scale * 10.0 ** (-10 + exponent)
        factor, info = torch.linalg.cholesky_ex(matrix + extra * identity)
        if int(info) == 0:
            logger.warning("%s: Cholesky needed extra jitter %.3g (mean diagonal %.3g)", context, extra, scale)
            return factor, extra
    raise np.linalg.LinAlgError(f"{context}: matrix is not positive definite even with jitter {extra:.3g}")


def centralized_posterior(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    test_inputs: torch.Tensor,
    inducing_points: torch.Tensor,
    kernel: StateActionKernel,
    noise_variance: float,
    jitter: float,
) -> gpytorch.distributions.MultivariateNormal:
    """The sparse-GP posterior of f at `test_inputs` given pooled data, computed in function space.

    The subset-of-regressors model is an exact GP with covariance Q(a, b) = K_aZ P^-1 K_Zb, where
    P = K_ZZ + jitter I is the same prior precision the fused model uses. With the pooled data
    (X, Y), the textbook GP regression formulas give

        mean = Q_*X (Q_XX + sigma^2 I)^-1 Y,   cov = Q_** - Q_*X (Q_XX + sigma^2 I)^-1 Q_X*.

    This never forms the natural parameters, so it checks the weight-space consensus path
    independently (they agree by the matrix inversion lemma). Cost O(n^3) in the number of pooled
    points: meant for tests and diagnostics, not for agents.

    Returns a batch of D independent normals (one per output column), mean (D, T), covariance
    (D, T, T) with the same covariance in every batch entry.
    """
    if inputs.ndim != 2 or targets.ndim != 2 or inputs.shape[0] != targets.shape[0]:
        raise ValueError(
            f"inputs (n, d) and targets (n, D) must share n; got {tuple(inputs.shape)} and {tuple(targets.shape)}"
        )
    num_inducing = inducing_points.shape[0]
    prior_precision = kernel(inducing_points, inducing_points) + jitter * torch.eye(num_inducing, dtype=DTYPE)
    prior_factor, _ = cholesky_with_jitter(prior_precision, "centralized_posterior prior precision")

    # Whitened features: Q(a, b) = A_a^T A_b with A_a = L_P^-1 K_Za.
    features_data = torch.linalg.solve_triangular(prior_factor, kernel(inducing_points, inputs), upper=False)
    features_test = torch.linalg.solve_triangular(prior_factor, kernel(inducing_points, test_inputs), upper=False)
    q_data_data = features_data.T @ features_data
    q_test_data = features_test.T @ features_data
    q_test_test = features_test.T @ features_test

    noisy = q_data_data + noise_variance * torch.eye(inputs.shape[0], dtype=DTYPE)
    noisy_factor, _ = cholesky_with_jitter(noisy, "centralized_posterior data covariance")
    mean = q_test_data @ torch.cholesky_solve(targets.to(DTYPE), noisy_factor)  # (T, D)
    covariance = q_test_test - q_test_data @ torch.cholesky_solve(q_test_data.T, noisy_factor)
    covariance = (covariance + covariance.T) / 2
    num_outputs = targets.shape[1]
    return gpytorch.distributions.MultivariateNormal(
        mean.T.contiguous(), covariance.expand(num_outputs, *covariance.shape).contiguous()
    )


class SparseGPWorldModel:
    """Per-agent sparse GP dynamics model; implements `roles.WorldModel`.

    Inputs are `concat(state, action)`; targets are state changes `next_state - state` (the GP
    learns deltas, `predict` adds the state back). Life cycle on an agent:

    1. `fit(states, actions, next_states)` builds this agent's statistics J_i, h_i from the batch
       it is given and sets the local posterior (the N = 1 view, this agent's data only). With
       `fit_mode="refit"` (default, as the reference) the batch *replaces* the previous statistics:
       pass the transitions to learn from, e.g. 256 sampled from the replay buffer. With
       `fit_mode="accumulate"` batches add up.
    2. `export_statistics()` hands J_i, h_i to consensus; the consensus engine averages them with
       the neighbours' for K rounds.
    3. `import_statistics(averaged, num_agents)` sets the fused posterior. It does not touch the
       local statistics, so the next consensus starts again from this agent's own data and no
       one's data is counted twice.
    """

    # J is symmetric (bitwise: `fit` makes it so): consensus sends its upper triangle, half the
    # bytes (agent_node/consensus/subjects.py).
    symmetric_statistics: tuple[str, ...] = ("J",)

    def __init__(self, config: SparseGPConfig, state_dim: int, action_dim: int):
        check_model_arguments(config, SparseGPConfig, state_dim, action_dim)
        self.config = config
        self.state_dim = state_dim
        self.action_dim = action_dim
        self.input_dim = state_dim + action_dim

        self.inducing_points = make_inducing_points(config, self.input_dim)  # Z, (M, input_dim)
        self.num_inducing = self.inducing_points.shape[0]
        self.kernel = StateActionKernel(
            config, torch.tensor(config.input_low, dtype=DTYPE), torch.tensor(config.input_high, dtype=DTYPE)
        )
        self.covar_module = self.kernel.covar_module  # the gpytorch kernel, on box-scaled inputs
        # The prior precision of the weights w, jitter included, computed once.
        kernel_zz = self.kernel(self.inducing_points, self.inducing_points)
        self.prior_precision = kernel_zz + config.jitter * torch.eye(self.num_inducing, dtype=DTYPE)

        # This agent's own statistics (what it exports) and how many transitions they summarize.
        self.local_precision = torch.zeros(self.num_inducing, self.num_inducing, dtype=DTYPE)  # J_i
        self.local_shift = torch.zeros(self.num_inducing, state_dim, dtype=DTYPE)  # h_i
        self.num_local_transitions = 0

        # The posterior in use (local after fit, fused after import), kept as sums of J and h.
        self.posterior_num_agents = 1
        self._set_posterior(self.local_precision, self.local_shift)  # the prior until the first fit

    # ----------------------------------------------------------------------------- posterior

    def _set_posterior(self, precision_sum: torch.Tensor, shift_sum: torch.Tensor) -> None:
        """S = (K_ZZ + sum J)^-1 kept as its Cholesky factor; m = S sum h."""
        self.posterior_precision_sum = precision_sum.clone()
        self.posterior_shift_sum = shift_sum.clone()
        posterior_precision = self.prior_precision + precision_sum
        self.posterior_factor, self.last_extra_jitter = cholesky_with_jitter(
            posterior_precision, "SparseGPWorldModel posterior precision"
        )
        self.posterior_mean_weights = torch.cholesky_solve(shift_sum, self.posterior_factor)  # m, (M, D)

    def forward(self, inputs: torch.Tensor) -> gpytorch.distributions.MultivariateNormal:
        """The posterior of f (the state change) at raw `inputs` (T, input_dim), gpytorch style.

        A batch of D independent normals, one per state dimension: mean (D, T), covariance
        (D, T, T) (epistemic, no observation noise; the same matrix in every batch entry).
        """
        if inputs.ndim != 2 or inputs.shape[1] != self.input_dim:
            raise ValueError(f"inputs: expected shape (T, {self.input_dim}), got {tuple(inputs.shape)}")
        kernel_zx = self.kernel(self.inducing_points, inputs.to(DTYPE))  # (M, T)
        mean = kernel_zx.T @ self.posterior_mean_weights  # (T, D)
        whitened = torch.linalg.solve_triangular(self.posterior_factor, kernel_zx, upper=False)
        covariance = whitened.T @ whitened
        return gpytorch.distributions.MultivariateNormal(
            mean.T.contiguous(), covariance.expand(self.state_dim, *covariance.shape).contiguous()
        )

    __call__ = forward

    # ----------------------------------------------------------------------------- WorldModel

    def fit(self, states: np.ndarray, actions: np.ndarray, next_states: np.ndarray) -> dict[str, float]:
        """Set this agent's statistics from the batch (or add it, in accumulate mode) and the local posterior."""
        states_t, actions_t, next_states_t = self._validate_transitions(states, actions, next_states)
        inputs = torch.cat([states_t, actions_t], dim=1)
        targets = next_states_t - states_t

        batch_precision = torch.zeros(self.num_inducing, self.num_inducing, dtype=DTYPE)
        batch_shift = torch.zeros(self.num_inducing, self.state_dim, dtype=DTYPE)
        for start in range(0, inputs.shape[0], _FIT_CHUNK_ROWS):
            kernel_zx = self.kernel(self.inducing_points, inputs[start : start + _FIT_CHUNK_ROWS])
            batch_precision += kernel_zx @ kernel_zx.T
            batch_shift += kernel_zx @ targets[start : start + _FIT_CHUNK_ROWS]
        batch_precision /= self.config.noise_variance
        batch_shift /= self.config.noise_variance
        # K K^T is symmetric in exact arithmetic; make it so bitwise, so averages stay symmetric.
        batch_precision = (batch_precision + batch_precision.T) / 2

        if self.config.fit_mode == "refit":
            self.local_precision, self.local_shift = batch_precision, batch_shift
            self.num_local_transitions = inputs.shape[0]
        else:
            self.local_precision = self.local_precision + batch_precision
            self.local_shift = self.local_shift + batch_shift
            self.num_local_transitions += inputs.shape[0]

        self.posterior_num_agents = 1
        self._set_posterior(self.local_precision, self.local_shift)

        train_mean = self.kernel(inputs, self.inducing_points) @ self.posterior_mean_weights
        return {
            "sparse_gp/train_mse": float(((train_mean - targets) ** 2).mean()),
            "sparse_gp/num_transitions": float(self.num_local_transitions),
            "sparse_gp/extra_jitter": self.last_extra_jitter,
        }

    def predict(self, states: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean next state and epistemic variance of the state change, each shaped like `states`.

        The variance is k(x, Z) S k(Z, x), the same for every state dimension (the outputs share
        one kernel); it excludes the observation noise `noise_variance`.
        """
        states_t, inputs = self._query_inputs(states, actions)
        kernel_zx = self.kernel(self.inducing_points, inputs)
        mean_delta = kernel_zx.T @ self.posterior_mean_weights
        whitened = torch.linalg.solve_triangular(self.posterior_factor, kernel_zx, upper=False)
        variance = (whitened**2).sum(dim=0).clamp_min(0.0)
        out_dtype = states.dtype if np.issubdtype(states.dtype, np.floating) else np.float64
        mean_next = (states_t + mean_delta).numpy().astype(out_dtype, copy=False)
        variance_out = variance[:, None].expand(-1, self.state_dim).numpy().astype(out_dtype)
        return mean_next, variance_out

    def reference_variance(self, states: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """k(x, x) - k(x, Z) S k(Z, x) per row, shape (B,), float64: the variance the reference code
        feeds its optimism bonus (see the module docstring), clamped at 0 against rounding.

        It is non-negative in exact arithmetic: S <= K_ZZ^-1, so it is at least the Nystrom
        residual k(x, x) - k(x, Z) K_ZZ^-1 k(Z, x) >= 0.
        """
        _, inputs = self._query_inputs(states, actions)
        kernel_zx = self.kernel(self.inducing_points, inputs)
        whitened = torch.linalg.solve_triangular(self.posterior_factor, kernel_zx, upper=False)
        explained = (whitened**2).sum(dim=0)
        return (self.kernel.diagonal(inputs) - explained).clamp_min(0.0).numpy()

    def export_statistics(self) -> dict[str, np.ndarray]:
        """This agent's own natural parameters: J (M, M) and h (M, D), float64 copies."""
        return {"J": self.local_precision.numpy().copy(), "h": self.local_shift.numpy().copy()}

    def import_statistics(self, stats: Mapping[str, np.ndarray], num_agents: int) -> None:
        """Adopt averaged natural parameters: S = (K_ZZ + N Jbar)^-1, m = S N hbar."""
        if isinstance(num_agents, bool) or not isinstance(num_agents, (int, np.integer)) or num_agents < 1:
            raise ValueError(f"num_agents: expected a positive int, got {num_agents!r}")
        if not isinstance(stats, Mapping):
            raise TypeError(f"stats: expected a mapping with keys 'J' and 'h', got {type(stats).__name__}")
        if set(stats) != {"J", "h"}:
            raise ValueError(f"stats: expected exactly the keys ['J', 'h'], got {sorted(stats)}")
        expected_shapes = {"J": (self.num_inducing, self.num_inducing), "h": (self.num_inducing, self.state_dim)}
        tensors = {}
        for name, shape in expected_shapes.items():
            array = stats[name]
            if not isinstance(array, np.ndarray):
                raise TypeError(f"stats[{name!r}]: expected a numpy array, got {type(array).__name__}")
            if array.shape != shape:
                raise ValueError(f"stats[{name!r}]: expected shape {shape}, got {array.shape}")
            if not np.issubdtype(array.dtype, np.floating):
                raise TypeError(f"stats[{name!r}]: expected a floating dtype, got {array.dtype}")
            if not np.all(np.isfinite(array)):
                raise ValueError(f"stats[{name!r}]: contains NaN or infinite values")
            tensors[name] = torch.from_numpy(np.array(array, dtype=np.float64))
        precision_mean = tensors["J"]
        # Averaging symmetric matrices entry by entry keeps them symmetric; a visibly asymmetric J
        # means it was transposed, mixed up or corrupted on the way.
        asymmetry = float((precision_mean - precision_mean.T).abs().max())
        scale = float(precision_mean.abs().max())
        if asymmetry > 1e-8 * max(scale, 1e-300):
            raise ValueError(
                f"stats['J']: expected a symmetric matrix, max |J - J^T| = {asymmetry:.3g} (max |J| = {scale:.3g})"
            )
        precision_mean = (precision_mean + precision_mean.T) / 2
        self.posterior_num_agents = int(num_agents)
        self._set_posterior(num_agents * precision_mean, num_agents * tensors["h"])

    # ----------------------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Local statistics and the posterior in use, for checkpoints (torch tensors)."""
        return {
            "local_precision": self.local_precision.clone(),
            "local_shift": self.local_shift.clone(),
            "num_local_transitions": self.num_local_transitions,
            "posterior_precision_sum": self.posterior_precision_sum.clone(),
            "posterior_shift_sum": self.posterior_shift_sum.clone(),
            "posterior_num_agents": self.posterior_num_agents,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        expected = {
            "local_precision",
            "local_shift",
            "num_local_transitions",
            "posterior_precision_sum",
            "posterior_shift_sum",
            "posterior_num_agents",
        }
        if set(state) != expected:
            raise ValueError(f"state: expected keys {sorted(expected)}, got {sorted(state)}")
        square = (self.num_inducing, self.num_inducing)
        tall = (self.num_inducing, self.state_dim)
        shapes = {
            "local_precision": square,
            "posterior_precision_sum": square,
            "local_shift": tall,
            "posterior_shift_sum": tall,
        }
        for name, shape in shapes.items():
            if tuple(state[name].shape) != shape:
                raise ValueError(f"state[{name!r}]: expected shape {shape}, got {tuple(state[name].shape)}")
        self.local_precision = torch.as_tensor(state["local_precision"], dtype=DTYPE).clone()
        self.local_shift = torch.as_tensor(state["local_shift"], dtype=DTYPE).clone()
        self.num_local_transitions = int(state["num_local_transitions"])
        self.posterior_num_agents = int(state["posterior_num_agents"])
        self._set_posterior(
            torch.as_tensor(state["posterior_precision_sum"], dtype=DTYPE),
            torch.as_tensor(state["posterior_shift_sum"], dtype=DTYPE),
        )

    # ----------------------------------------------------------------------------- helpers

    def _query_inputs(self, states: np.ndarray, actions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The states (B, state_dim) and the GP's inputs, states and actions side by side (B, input_dim),
        float64; a ValueError when the two batches differ in size."""
        states_t = as_matrix("states", states, self.state_dim, np.float64)
        actions_t = as_matrix("actions", actions, self.action_dim, np.float64)
        if states_t.shape[0] != actions_t.shape[0]:
            raise ValueError(
                f"states and actions must have the same batch size; got {states.shape[0]} and {actions.shape[0]}"
            )
        return states_t, torch.cat([states_t, actions_t], dim=1)

    def _validate_transitions(
        self, states: np.ndarray, actions: np.ndarray, next_states: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        states_t = as_matrix("states", states, self.state_dim, np.float64)
        actions_t = as_matrix("actions", actions, self.action_dim, np.float64)
        next_states_t = as_matrix("next_states", next_states, self.state_dim, np.float64)
        sizes = {states_t.shape[0], actions_t.shape[0], next_states_t.shape[0]}
        if len(sizes) != 1:
            raise ValueError(
                "states, actions and next_states must have the same batch size; got "
                f"{states_t.shape[0]}, {actions_t.shape[0]} and {next_states_t.shape[0]}"
            )
        if states_t.shape[0] == 0:
            raise ValueError("fit needs at least one transition, got an empty batch")
        return states_t, actions_t, next_states_t


__all__ = [
    "SparseGPWorldModel",
    "StateActionKernel",
    "centralized_posterior",
    "cholesky_with_jitter",
    "make_inducing_points",
]
