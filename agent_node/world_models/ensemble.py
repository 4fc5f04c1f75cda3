"""Probabilistic neural-network ensemble dynamics model (PETS / MBPO style), shareable by consensus.

E members, each an MLP with a Gaussian head: for an input x = concat(state, action) it predicts a
mean and a log-variance of the state change `next_state - state`. The members are computed
together: every layer holds a weight of shape (E, in, out) and applies it with one batched matmul,
so an ensemble costs about one forward pass of a network E times as wide, on one thread.

Why each piece is there:

- Deltas as targets: the next state is close to the state, so the change is the part worth
  learning; `predict` adds the state back.
- Input normalization: positions of size 10 and actions of size 1 would otherwise train at very
  different speeds. Mean and variance are running statistics over all inputs seen by `fit`
  (merged batch by batch), kept as module buffers so they travel with the weights.
- Soft log-variance bounds: the variance head is squashed smoothly between learned bounds
  `min_logvar` and `max_logvar`, with a small penalty that pulls them together; this stops the
  predicted variance from exploding or collapsing far from the data.
- Gaussian negative log-likelihood: fits mean and aleatoric variance together.
- Holdout and elites: a fraction of each fit's data is held out; each member keeps the weights of
  its best holdout epoch, training stops early when no member improves, and the `num_elites`
  members with the lowest holdout MSE are used for prediction. The members differ by their
  initial draws and their own minibatch order (no bootstrap resampling).
- Variance: `predict` returns the total variance over the elites by the law of total variance,
  mean of the members' aleatoric variances plus the variance of their means (the epistemic part,
  which is what grows off-distribution). `predict_decomposed` returns both parts.

Consensus: `get_params` / `export_statistics` return every parameter and normalizer buffer as a
named numpy array, and `set_params` / `import_statistics` load averaged ones. All agents start from
the same weights (`EnsembleConfig.init_seed`), which is what makes averaging their weights
meaningful. Elite indices are a local choice, not parameters: they are not exported.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from agent_node.world_models.batches import as_matrix
from agent_node.world_models.config import EnsembleConfig, check_model_arguments

_MIN_INPUT_STD = 1e-8  # inputs with a smaller spread are not rescaled (e.g. a constant feature)


class EnsembleLinear(nn.Module):
    """E independent affine maps applied in one batched matmul: (E, B, in) -> (E, B, out)."""

    def __init__(self, ensemble_size: int, in_features: int, out_features: int, generator: torch.Generator):
        super().__init__()
        # Same scale as torch.nn.Linear's default: uniform in +-1/sqrt(fan_in).
        bound = 1.0 / math.sqrt(in_features)
        weight = (torch.rand(ensemble_size, in_features, out_features, generator=generator) * 2 - 1) * bound
        bias = (torch.rand(ensemble_size, 1, out_features, generator=generator) * 2 - 1) * bound
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, inputs, self.weight)


class GaussianEnsemble(nn.Module):
    """The E networks: normalized inputs (E, B, in) -> mean and bounded log-variance (E, B, out)."""

    def __init__(self, config: EnsembleConfig, input_dim: int, output_dim: int):
        super().__init__()
        generator = torch.Generator().manual_seed(config.init_seed)
        size = config.ensemble_size
        widths = [input_dim] + [config.hidden_size] * config.num_hidden_layers
        self.hidden_layers = nn.ModuleList(
            EnsembleLinear(size, widths[i], widths[i + 1], generator) for i in range(config.num_hidden_layers)
        )
        self.output_layer = EnsembleLinear(size, config.hidden_size, 2 * output_dim, generator)
        self.activation = nn.SiLU() if config.activation == "silu" else nn.ReLU()
        self.max_logvar = nn.Parameter(torch.full((size, 1, output_dim), config.max_logvar_init))
        self.min_logvar = nn.Parameter(torch.full((size, 1, output_dim), config.min_logvar_init))
        self.register_buffer("input_mean", torch.zeros(input_dim))
        self.register_buffer("input_var", torch.ones(input_dim))
        # Shape (1,) rather than a 0-d scalar: 0-d arrays turn into numpy scalars under arithmetic.
        self.register_buffer("input_count", torch.zeros(1, dtype=torch.float64))
        self.output_dim = output_dim

    def normalize(self, inputs: torch.Tensor) -> torch.Tensor:
        std = self.input_var.sqrt()
        std = torch.where(std < _MIN_INPUT_STD, torch.ones_like(std), std)
        return (inputs - self.input_mean) / std

    def update_normalizer(self, inputs: torch.Tensor) -> None:
        """Merge a batch into the running mean and variance (parallel-variance formula)."""
        batch_count = inputs.shape[0]
        batch_mean = inputs.mean(dim=0)
        batch_var = inputs.var(dim=0, unbiased=False)
        old_count = float(self.input_count)
        total = old_count + batch_count
        delta = batch_mean - self.input_mean
        merged_mean = self.input_mean + delta * (batch_count / total)
        merged_sq = self.input_var * old_count + batch_var * batch_count + delta**2 * (old_count * batch_count / total)
        self.input_mean.copy_(merged_mean)
        self.input_var.copy_(merged_sq / total)
        self.input_count.fill_(total)

    def forward(self, normalized_inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = normalized_inputs
        for layer in self.hidden_layers:
            hidden = self.activation(layer(hidden))
        output = self.output_layer(hidden)
        mean, raw_logvar = output[..., : self.output_dim], output[..., self.output_dim :]
        # Smooth clamp into [min_logvar, max_logvar]: softplus never has a zero gradient.
        logvar = self.max_logvar - nn.functional.softplus(self.max_logvar - raw_logvar)
        logvar = self.min_logvar + nn.functional.softplus(logvar - self.min_logvar)
        return mean, logvar


class EnsembleWorldModel:
    """Ensemble dynamics model; implements `roles.WorldModel` and `roles.ParamSource`.

    `fit` trains on exactly the transitions it is given (pass the replay buffer, or a sample of
    it); the normalizer keeps running statistics over every fit. `seed` drives this node's local
    randomness (holdout split, minibatch order); the initial weights come from the config.
    """

    def __init__(self, config: EnsembleConfig, state_dim: int, action_dim: int, seed: int = 0):
        check_model_arguments(config, EnsembleConfig, state_dim, action_dim)
        self.config = config
        self.state_dim = state_dim
        self.action_dim = action_dim
        self.network = GaussianEnsemble(config, state_dim + action_dim, state_dim)
        self.generator = torch.Generator().manual_seed(seed)

        layers = [*self.network.hidden_layers, self.network.output_layer]
        self.optimizer = torch.optim.Adam(
            [
                {"params": [layer.weight for layer in layers], "weight_decay": config.weight_decay},
                {"params": [layer.bias for layer in layers], "weight_decay": 0.0},
                {"params": [self.network.max_logvar, self.network.min_logvar], "weight_decay": 0.0},
            ],
            lr=config.lr,
        )
        self.elite_indices = np.arange(config.num_elites)  # until the first fit says otherwise
        self.holdout_mse = np.full(config.ensemble_size, np.nan)  # per member, from the last fit

    # ----------------------------------------------------------------------------- WorldModel

    def fit(self, states: np.ndarray, actions: np.ndarray, next_states: np.ndarray) -> dict[str, float]:
        """Train on these transitions with NLL, holdout early stopping and elite selection."""
        config = self.config
        inputs, targets = self._transitions_to_tensors(states, actions, next_states)
        self.network.update_normalizer(inputs)

        num_transitions = inputs.shape[0]
        permutation = torch.randperm(num_transitions, generator=self.generator)
        num_holdout = int(num_transitions * config.holdout_fraction)
        if config.holdout_fraction > 0 and num_transitions >= 2:
            num_holdout = min(max(num_holdout, 1), num_transitions - 1)
        holdout_idx, train_idx = permutation[:num_holdout], permutation[num_holdout:]
        # Without a holdout split, elites are chosen on the training data (better than nothing).
        evaluation_idx = holdout_idx if num_holdout > 0 else train_idx
        with torch.no_grad():
            normalized = self.network.normalize(inputs)
        train_x, train_y = normalized[train_idx], targets[train_idx]
        eval_x, eval_y = normalized[evaluation_idx], targets[evaluation_idx]

        parameters = dict(self.network.named_parameters())
        best_mse = self._member_mse(eval_x, eval_y)
        best_parameters = {name: p.detach().clone() for name, p in parameters.items()}
        epochs_without_improvement = 0
        steps = 0
        epochs = 0
        last_epoch_nll = float("nan")
        size = config.ensemble_size
        num_train = train_x.shape[0]

        while epochs < config.epochs_per_fit and steps < config.max_steps_per_fit:
            # Each member walks through the training split in its own random order.
            order = torch.argsort(torch.rand(size, num_train, generator=self.generator), dim=1)
            epoch_nll = []
            for start in range(0, num_train, config.batch_size):
                batch_idx = order[:, start : start + config.batch_size]  # (E, b)
                mean, logvar = self.network(train_x[batch_idx])
                nll_per_member = ((mean - train_y[batch_idx]) ** 2 * torch.exp(-logvar) + logvar).mean(dim=(1, 2))
                bound_gap = self.network.max_logvar.sum() - self.network.min_logvar.sum()
                bound_penalty = config.logvar_bound_penalty * bound_gap
                loss = nll_per_member.sum() + bound_penalty
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
                epoch_nll.append(float(nll_per_member.detach().mean()))
                steps += 1
                if steps >= config.max_steps_per_fit:
                    break
            epochs += 1
            last_epoch_nll = float(np.mean(epoch_nll))

            mse = self._member_mse(eval_x, eval_y)
            improved = mse < best_mse * (1 - config.early_stop_min_improvement)
            if bool(improved.any()):
                epochs_without_improvement = 0
                with torch.no_grad():
                    for name, parameter in parameters.items():
                        best_parameters[name][improved] = parameter.detach()[improved]
                best_mse = torch.where(improved, mse, best_mse)
            else:
                epochs_without_improvement += 1
                if epochs_without_improvement >= config.early_stop_patience:
                    break

        with torch.no_grad():
            for name, parameter in parameters.items():
                parameter.copy_(best_parameters[name])
        self.holdout_mse = self._member_mse(eval_x, eval_y).numpy().astype(np.float64)
        self.elite_indices = np.sort(np.argsort(self.holdout_mse, kind="stable")[: config.num_elites])
        return {
            "ensemble/train_nll": last_epoch_nll,
            "ensemble/holdout_mse": float(self.holdout_mse[self.elite_indices].mean()),
            "ensemble/epochs": float(epochs),
            "ensemble/steps": float(steps),
            "ensemble/num_holdout": float(num_holdout),
        }

    def predict(self, states: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean next state over the elites and total variance (aleatoric + epistemic), shaped like `states`."""
        mean_next, aleatoric, epistemic = self.predict_decomposed(states, actions)
        return mean_next, aleatoric + epistemic

    def predict_decomposed(self, states: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mean next state, aleatoric variance and epistemic variance over the elites.

        Aleatoric: the mean of the elites' predicted variances. Epistemic: the variance of the
        elites' means. Each shaped like `states`.
        """
        member_means, member_variances = self.member_predictions(states, actions)
        elite_means = member_means[self.elite_indices]
        elite_variances = member_variances[self.elite_indices]
        mean_next = elite_means.mean(axis=0)
        aleatoric = elite_variances.mean(axis=0)
        epistemic = elite_means.var(axis=0)
        return mean_next, aleatoric, epistemic

    def member_predictions(self, states: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every member's mean next state and aleatoric variance, each (E, B, state_dim)."""
        states_t = as_matrix("states", states, self.state_dim, np.float32)
        actions_t = as_matrix("actions", actions, self.action_dim, np.float32)
        if states_t.shape[0] != actions_t.shape[0]:
            raise ValueError(
                "states and actions must have the same batch size; "
                f"got {states_t.shape[0]} and {actions_t.shape[0]}"
            )
        inputs = torch.cat([states_t, actions_t], dim=1)
        with torch.no_grad():
            normalized = self.network.normalize(inputs)
            mean_delta, logvar = self.network(normalized.expand(self.config.ensemble_size, -1, -1))
        out_dtype = states.dtype if np.issubdtype(states.dtype, np.floating) else np.float32
        means = (mean_delta + states_t).numpy().astype(out_dtype, copy=False)
        variances = logvar.exp().numpy().astype(out_dtype, copy=False)
        return means, variances

    def export_statistics(self) -> dict[str, np.ndarray]:
        """All parameters and normalizer buffers, by name (what consensus averages)."""
        return self.get_params()

    def import_statistics(self, stats: Mapping[str, np.ndarray], num_agents: int) -> None:
        """Load averaged parameters. `num_agents` is not needed: an average of weights is used as is."""
        if isinstance(num_agents, bool) or not isinstance(num_agents, (int, np.integer)) or num_agents < 1:
            raise ValueError(f"num_agents: expected a positive int, got {num_agents!r}")
        self.set_params(stats)

    # ----------------------------------------------------------------------------- ParamSource

    def get_params(self) -> dict[str, np.ndarray]:
        """Named copies of every parameter and buffer (float32; `input_count` float64)."""
        return {name: tensor.detach().cpu().numpy().copy() for name, tensor in self.network.state_dict().items()}

    def set_params(self, params: Mapping[str, np.ndarray]) -> None:
        """Overwrite every parameter and buffer by name. All are validated before any is written.

        Names and shapes must match `get_params` exactly. Any floating dtype is accepted and cast
        (an average computed in float64 is fine); non-floating or non-finite arrays are refused.
        """
        if not isinstance(params, Mapping):
            raise TypeError(f"params: expected a mapping of name -> numpy array, got {type(params).__name__}")
        current = self.network.state_dict()
        missing = sorted(set(current) - set(params))
        unexpected = sorted(set(params) - set(current))
        if missing or unexpected:
            raise ValueError(f"params: names do not match the model; missing {missing}, unexpected {unexpected}")
        for name, tensor in current.items():
            array = params[name]
            if not isinstance(array, (np.ndarray, np.generic)):
                raise TypeError(f"params[{name!r}]: expected a numpy array, got {type(array).__name__}")
            array = np.asarray(array)
            if array.shape != tuple(tensor.shape):
                raise ValueError(f"params[{name!r}]: expected shape {tuple(tensor.shape)}, got {array.shape}")
            if not np.issubdtype(array.dtype, np.floating):
                raise TypeError(f"params[{name!r}]: expected a floating dtype, got {array.dtype}")
            if not np.all(np.isfinite(array)):
                raise ValueError(f"params[{name!r}]: contains NaN or infinite values")
        with torch.no_grad():
            for name, tensor in current.items():
                tensor.copy_(torch.from_numpy(np.array(params[name])).to(tensor.dtype))

    # ----------------------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {
            "network": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "elite_indices": torch.as_tensor(self.elite_indices),
            "holdout_mse": torch.as_tensor(self.holdout_mse),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        expected = {"network", "optimizer", "elite_indices", "holdout_mse", "generator"}
        if set(state) != expected:
            raise ValueError(f"state: expected keys {sorted(expected)}, got {sorted(state)}")
        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.elite_indices = np.asarray(state["elite_indices"]).copy()
        self.holdout_mse = np.asarray(state["holdout_mse"]).copy()
        self.generator.set_state(state["generator"])

    # ----------------------------------------------------------------------------- helpers

    def _member_mse(self, normalized_inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean squared error of each member's mean on the given data, shape (E,)."""
        with torch.no_grad():
            mean, _ = self.network(normalized_inputs.expand(self.config.ensemble_size, -1, -1))
            return ((mean - targets) ** 2).mean(dim=(1, 2))

    def _transitions_to_tensors(
        self, states: np.ndarray, actions: np.ndarray, next_states: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        states_t = as_matrix("states", states, self.state_dim, np.float32)
        actions_t = as_matrix("actions", actions, self.action_dim, np.float32)
        next_states_t = as_matrix("next_states", next_states, self.state_dim, np.float32)
        sizes = (states_t.shape[0], actions_t.shape[0], next_states_t.shape[0])
        if len(set(sizes)) != 1:
            raise ValueError(
                "states, actions and next_states must have the same batch size; "
                f"got {sizes[0]}, {sizes[1]} and {sizes[2]}"
            )
        if sizes[0] == 0:
            raise ValueError("fit needs at least one transition, got an empty batch")
        return torch.cat([states_t, actions_t], dim=1), next_states_t - states_t


__all__ = ["EnsembleLinear", "EnsembleWorldModel", "GaussianEnsemble"]
