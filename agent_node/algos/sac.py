"""Soft actor-critic for one agent with Box observations and Box (bounded) actions.

References, to check this file against:
- Haarnoja, Zhou, Abbeel, Levine 2018, "Soft Actor-Critic: Off-Policy Maximum Entropy Deep
  Reinforcement Learning with a Stochastic Actor": the soft Bellman target, the tanh-squashed
  Gaussian policy and its log-density correction (appendix C).
- Haarnoja et al. 2018, "Soft Actor-Critic Algorithms and Applications": twin critics with the
  minimum in the target, Polyak-averaged target critics, and the temperature alpha tuned so the
  policy's entropy tracks a target (-|A| by default).

The update, per gradient step, on a batch (s, a, r, s', terminated):
  critic:  y = r + gamma * (1 - terminated) * (min_i Q'_i(s', a') - alpha * log pi(a'|s')), a' ~ pi(.|s')
           L_Q = 1/2 E[(Q_1(s,a) - y)^2] + 1/2 E[(Q_2(s,a) - y)^2]
  actor:   L_pi = E[alpha * log pi(a~|s) - min_i Q_i(s, a~)],  a~ ~ pi(.|s) reparameterized
  alpha:   L_alpha = -E[log_alpha * (log pi(a~|s) + target_entropy)]   (log alpha is the variable)
  targets: Q'_i <- tau * Q_i + (1 - tau) * Q'_i
A `truncated` row (time-limit cut) bootstraps like any other non-terminal row, unless
`bootstrap_on_truncation` is false: then the target uses `done = terminated or truncated` in place
of `terminated`, as the OG-MARL reference code does with its time limit.

Action scaling: the actor outputs u ~ N(mean, std), squashes it to tanh(u) in (-1, 1), and the
environment receives `center + half_range * tanh(u)`, so any finite Box (also non-symmetric) is
covered. The log-density includes the Jacobian of both the tanh and the affine map. The critics see
the action normalized back to [-1, 1], so their input scale does not depend on the bounds.

How it plugs into an agent node (see `agent_node/roles.py`):
- `act(obs)` samples actions (uniformly random for the first `random_steps` rows when exploring);
  `act(obs, explore=False)` returns the deterministic `center + half_range * tanh(mean)`.
- `observe(transition)` stores K rows in `self.replay`, counting K environment steps. With
  `reward: own_contribution` (and the task's reward model, given at construction) each row
  carries the agent's own term of the team reward instead of the team's sum.
- `update()` runs `updates_per_step` gradient steps per row observed after `learning_starts` (and
  once the buffer holds one batch). Steps not yet run stay due, so the total depends only on the
  rows observed, not on how often `update` is called; `update(max_gradient_steps=n)` caps one call.
- `counters()` reports the update-ratio contract as cumulative numbers since the start:
  `sac/gradient_steps` (taken), `sac/steps_pending` (owed, not yet taken), `sac/steps_owed` (their
  sum: what `updates_per_step` promises for the rows seen) and `sac/rows_observed`. They are
  counters, to be written as they are (e.g. at every evaluation); `update()` returns only
  per-step statistics (losses, alpha), which are meant to be averaged.
- `set_model_buffer(buffer, real_ratio)` adds a second sample source for model-based variants
  (OG-MARL): each batch then holds `round(real_ratio * batch_size)` rows from `self.replay` and the
  rest from `buffer` (imagined transitions). While the model buffer is empty, batches are all real.
- `get_params` / `set_params` expose the actor (the policy) for consensus averaging.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from agent_node.algos.config import SACConfig
from agent_node.algos.lean_steps import adam_step
from agent_node.algos.learner_parts import (OwesGradientSteps, StateLayout, check_config, check_seed, check_space,
                                            check_tanh_bounds, checked_obs, run_gradient_steps, steps_to_take,
                                            trainable_rows, update_counters)
from agent_node.algos.params import ModuleLearner
from agent_node.replay import ReplayBuffer
from agent_node.reward_models import SiteCollectionReward
from agent_node.roles import Transition

# Bounds on the actor's log standard deviation: below -5 the density is needle-like and its
# log-probability explodes; above 2 the tanh saturates and the action is a coin flip of the bounds.
LOG_STD_MIN = -5.0
LOG_STD_MAX = 2.0
# The most batches `update` gathers in one go (10 per env step at OG-MARL's ratio).
_BATCHES_AT_ONCE = 64


# ---------------------------------------------------------------------------------- networks


def hidden_layers(in_features: int, hidden_sizes: tuple[int, ...]) -> nn.Sequential:
    """Linear + ReLU for each hidden width; the output layer is added by the caller."""
    layers: list[nn.Module] = []
    for width in hidden_sizes:
        layers += [nn.Linear(in_features, width), nn.ReLU()]
        in_features = width
    return nn.Sequential(*layers)


def linear_params(layers: nn.Sequential) -> list[tuple[nn.Parameter, nn.Parameter]]:
    """(weight, bias) of each Linear of a `hidden_layers` stack, in order. The Parameter objects
    live as long as the module (loading a state dict copies into them), so a list built once
    stays valid."""
    return [(layer.weight, layer.bias) for layer in layers if isinstance(layer, nn.Linear)]


def hidden_features(params: list[tuple[torch.Tensor, torch.Tensor]], inputs: torch.Tensor) -> torch.Tensor:
    """A `hidden_layers` stack (its `linear_params`) on `inputs`, computed with `linear` and relu
    directly: the same operations on the same tensors as the modules' forward, without a module
    call, a type test and a module attribute lookup per layer, which the SAC update makes ~40
    times per gradient step. The relu runs in place on the product it follows: nothing else
    holds that product (a linear layer's backward keeps its input and weight, not its output),
    and it saves allocating a 256 x 256 result per layer."""
    features = inputs
    for weight, bias in params:
        features = linear(features, weight, bias).relu_()
    return features


# ------------------------------------------------------------ wide products through oneDNN
#
# torch's CPU wheel sends a float32 matrix product to MKL's sgemm. On the AMD EPYC processors some
# of this project's machines have, MKL took half the speed of torch's other matrix library, oneDNN
# (`torch.ops.mkldnn._linear_pointwise`): one thread, a 256 x 256 by 256 x 256 product cost 0.31 ms
# through F.linear and 0.15 ms through oneDNN, and some narrow shapes 4-5x their transposed twins
# (measured; bench/sac_update_cost.py times the whole update both ways). On an Intel Xeon the two
# libraries take the same 0.20 ms for that product, and the autograd functions below, whose
# backward runs in Python, make a whole SAC gradient step slower: 7.4 against 6.1 ms (measured on
# 2026-11-30). So the products go around MKL only on an AMD processor, the one kind where that was
# measured to pay (`_USE_ONEDNN`); everywhere else they are torch's own.
#
# Around MKL, a hidden layer at least `_WIDE_PRODUCT` wide on both sides computes its products,
# forward and backward, through oneDNN (a SAC gradient step at OG-MARL's width makes 16 of them).
# It is the same float32 product: only the order of the additions inside each dot product differs
# (a relative difference of ~5e-7 per product, measured). Narrow layers (the observation's first
# layer, the heads) stay off oneDNN: there it is slower (measured: 17 against 10 us for the first
# layer's forward); the first layer's backward is transposed instead (`NarrowInputLinear`).

_WIDE_PRODUCT = 64


def _onednn_linear_available() -> bool:
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        and torch.backends.mkldnn.enabled
    )


def _cpu_vendor(cpuinfo_path: str = "/proc/cpuinfo") -> str:
    """The processor's vendor as Linux names it ("AuthenticAMD", "GenuineIntel"), or "" if unknown."""
    try:
        with open(cpuinfo_path) as cpuinfo:
            for line in cpuinfo:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _onednn_product(inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """inputs @ weight.T + bias through oneDNN (strided operands are fine: it reads them as they are)."""
    return torch.ops.mkldnn._linear_pointwise(inputs, weight, bias, "none", [], "")


class OneDNNLinear(torch.autograd.Function):
    """F.linear on 2-D float32 tensors with its three products (forward, input and weight
    gradients) through oneDNN; the bias gradient is the column sum, as F.linear's."""

    @staticmethod
    def forward(ctx, inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(inputs, weight)
        return _onednn_product(inputs, weight, bias)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        inputs, weight = ctx.saved_tensors
        needs_inputs, needs_weight, needs_bias = ctx.needs_input_grad
        # d/d inputs = grad_output @ weight; d/d weight = grad_output.T @ inputs (as x @ w.T).
        grad_inputs = _onednn_product(grad_output, weight.t(), None) if needs_inputs else None
        grad_weight = _onednn_product(grad_output.t(), inputs.t(), None) if needs_weight else None
        grad_bias = grad_output.sum(0) if needs_bias else None
        return grad_inputs, grad_weight, grad_bias


class NarrowInputLinear(torch.autograd.Function):
    """F.linear for a layer with a narrow input and a wide output (the first layer: a few
    observation and action features to 256), with its backward products transposed.

    Both gradients reduce over a short side: d/d inputs = grad_output @ weight (256 wide to 4),
    d/d weight = grad_output.T @ inputs (over the batch, to 256 x 4). On an AMD processor MKL
    computes those shapes 4-5x slower than the same products written the other way round: 50-54 us
    against 12 for a batch of 256 and 4 inputs, one thread (measured). So the backward computes
    (weight.T @ grad_output.T).T and (inputs.T @ grad_output).T: the same sums, added in another
    order. The forward is F.linear's own addmm."""

    @staticmethod
    def forward(ctx, inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(inputs, weight)
        return torch.addmm(bias, inputs, weight.t())

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        inputs, weight = ctx.saved_tensors
        needs_inputs, needs_weight, needs_bias = ctx.needs_input_grad
        grad_inputs = torch.mm(weight.t(), grad_output.t()).t() if needs_inputs else None
        grad_weight = torch.mm(inputs.t(), grad_output).t().contiguous() if needs_weight else None
        grad_bias = grad_output.sum(0) if needs_bias else None
        return grad_inputs, grad_weight, grad_bias


def linear(inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """F.linear, with a float32 hidden layer's products computed the fastest way this machine has
    (see above): on an AMD processor, wide layers through oneDNN and a narrow first layer's
    backward transposed; elsewhere torch's own."""
    if _USE_ONEDNN and inputs.dim() == 2 and inputs.dtype == weight.dtype == torch.float32:
        wide_output = weight.shape[0] >= _WIDE_PRODUCT
        if wide_output and weight.shape[1] >= _WIDE_PRODUCT:
            return OneDNNLinear.apply(inputs, weight, bias)
        if wide_output:
            return NarrowInputLinear.apply(inputs, weight, bias)
    return F.linear(inputs, weight, bias)


def _products_around_mkl(cpu_vendor: str) -> bool:
    """Whether a processor of this vendor computes SAC's products around MKL (see above): on AMD's."""
    return cpu_vendor == "AuthenticAMD" and _onednn_linear_available()


# Read at import; tests and bench/sac_update_cost.py set it to compare the two ways.
_USE_ONEDNN = _products_around_mkl(_cpu_vendor())


class SoftQNetwork(nn.Module):
    """Q(s, a) from a flattened observation and an action normalized to [-1, 1]."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_sizes: tuple[int, ...]) -> None:
        super().__init__()
        self.hidden = hidden_layers(obs_dim + action_dim, hidden_sizes)
        self.q_head = nn.Linear(hidden_sizes[-1], 1)
        self._params = (linear_params(self.hidden), self.q_head.weight, self.q_head.bias)

    def forward(self, obs: torch.Tensor, unit_action: torch.Tensor) -> torch.Tensor:
        return self.on_inputs(critic_inputs(obs, unit_action))

    def on_inputs(self, inputs: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        """Q of `critic_inputs(obs, unit_action)`: twin critics share one concatenation.

        `frozen`: the parameters enter as detached views, so a backward pass through this Q
        computes the gradient to `inputs` only (the actor's pass). The values are the same."""
        hidden, head_weight, head_bias = self._params
        if frozen:
            hidden = [(weight.detach(), bias.detach()) for weight, bias in hidden]
            head_weight, head_bias = head_weight.detach(), head_bias.detach()
        return F.linear(hidden_features(hidden, inputs), head_weight, head_bias).squeeze(1)


def critic_inputs(obs: torch.Tensor, unit_action: torch.Tensor) -> torch.Tensor:
    """A critic's input rows: the flattened observation, then the action in [-1, 1]."""
    return torch.cat([obs.flatten(start_dim=1), unit_action], dim=1)


class TanhGaussianActor(nn.Module):
    """pi(a|s): a Gaussian over u with state-dependent mean and std, squashed by tanh to (-1, 1)."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_sizes: tuple[int, ...]) -> None:
        super().__init__()
        self.hidden = hidden_layers(obs_dim, hidden_sizes)
        self.mean_head = nn.Linear(hidden_sizes[-1], action_dim)
        self.log_std_head = nn.Linear(hidden_sizes[-1], action_dim)
        self._params = (linear_params(self.hidden), self.mean_head.weight, self.mean_head.bias,
                        self.log_std_head.weight, self.log_std_head.bias)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, mean_weight, mean_bias, log_std_weight, log_std_bias = self._params
        features = hidden_features(hidden, obs.flatten(start_dim=1))
        log_std = F.linear(features, log_std_weight, log_std_bias).clamp(LOG_STD_MIN, LOG_STD_MAX)
        return F.linear(features, mean_weight, mean_bias), log_std

    def sample(
        self, obs: torch.Tensor, generator: torch.Generator, log_half_range_sum: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterized action in (-1, 1) and log pi of the *environment-scale* action.

        `log_half_range_sum` is sum(log(half_range)), the log-Jacobian of the map from (-1, 1)
        to the action bounds; it shifts every log-density by the same constant.
        """
        mean, log_std = self(obs)
        noise = torch.randn(mean.shape, generator=generator)
        pre_tanh = mean + log_std.exp() * noise
        unit_action = torch.tanh(pre_tanh)
        # log N(pre_tanh; mean, std), written with the noise: (pre_tanh - mean) / std == noise.
        gaussian_log_prob = (-0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(dim=1)
        # log(1 - tanh(x)^2) = 2 * (log 2 - x - softplus(-2x)): the same value, stable for large |x|.
        log_tanh_jacobian = (2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))).sum(dim=1)
        return unit_action, gaussian_log_prob - log_tanh_jacobian - log_half_range_sum


# ---------------------------------------------------------------------------------- agent


class SACAgent(ModuleLearner, OwesGradientSteps):
    """Actor, Learner and ParamSource for soft actor-critic (see the module docstring)."""

    # What a checkpoint holds (agent_node/algos/learner_parts.py), and the network whose
    # parameters consensus averages (get_params / set_params, agent_node/algos/params.py).
    # log_alpha, the temperature, is saved beside these (state_dict below).
    STATE = StateLayout(
        "sac", "SAC",
        modules=("actor", "q1", "q2", "q1_target", "q2_target"),
        optimizers=("actor_optimizer", "critic_optimizer", "alpha_optimizer"),
        counters=("rows_observed", "gradient_steps"),
        generators=("noise_generator", "explore_rng"),
    )
    PARAMS = "actor"

    def __init__(
        self,
        config: SACConfig,
        observation_space: gym.spaces.Space,
        action_space: gym.spaces.Space,
        seed: int,
        *,
        reward_model: SiteCollectionReward | None = None,
    ) -> None:
        check_config(config, SACConfig)
        check_space(observation_space, gym.spaces.Box, "SAC needs a Box observation space")
        if not isinstance(action_space, gym.spaces.Box) or len(action_space.shape) != 1:
            raise TypeError(f"SAC needs a 1-D Box action space, got {action_space!r}")
        check_tanh_bounds(action_space, "SAC")
        check_seed(seed)
        # `reward: own_contribution` rescores every real row with this model (see `observe`); it
        # comes with that setting and only with it, so neither can be given without the other.
        if config.reward == "own_contribution":
            if reward_model is None:
                raise ValueError(
                    "learner.reward 'own_contribution' scores each real row with the agent's own term of the "
                    "task's reward function, and no reward model was given (the env sent no task_spec)"
                )
            reward_model.check_shapes(observation_space.shape, action_space.shape, "learner.reward 'own_contribution'")
        elif reward_model is not None:
            raise ValueError(
                f"a reward model was given with learner.reward {config.reward!r}, which does not use it; "
                "set reward: own_contribution to score real rows with it"
            )
        self.reward_model = reward_model
        self.config = config
        self.observation_space = observation_space
        self.action_space = action_space
        self.obs_shape = tuple(observation_space.shape)
        self.action_dim = int(action_space.shape[0])
        obs_dim = int(np.prod(self.obs_shape))

        # The affine map between the tanh range (-1, 1) and the environment's bounds.
        low = action_space.low.astype(np.float64)
        high = action_space.high.astype(np.float64)
        self.action_center = (high + low) / 2.0
        self.action_half_range = (high - low) / 2.0
        self.log_half_range_sum = float(np.log(self.action_half_range).sum())

        # Independent random streams from one seed: init, policy noise, random actions, replay.
        init_seed, noise_seed, explore_seed, replay_seed = np.random.SeedSequence(int(seed)).spawn(4)
        with torch.random.fork_rng(devices=[]):  # seed the init without touching global torch RNG
            torch.manual_seed(int(init_seed.generate_state(1)[0]))
            self.actor = TanhGaussianActor(obs_dim, self.action_dim, config.hidden_sizes)
            self.q1 = SoftQNetwork(obs_dim, self.action_dim, config.hidden_sizes)
            self.q2 = SoftQNetwork(obs_dim, self.action_dim, config.hidden_sizes)
            self.q1_target = SoftQNetwork(obs_dim, self.action_dim, config.hidden_sizes)
            self.q2_target = SoftQNetwork(obs_dim, self.action_dim, config.hidden_sizes)
        self.q1_target.load_state_dict(self.q1.state_dict())
        self.q2_target.load_state_dict(self.q2.state_dict())
        self.q1_target.requires_grad_(False)
        self.q2_target.requires_grad_(False)
        # Flat lists, built once, for the per-step work on every tensor of the critics (freezing
        # them for the actor's pass, Polyak averaging): walking the modules each step cost about
        # 0.3 ms of a ~6.5 ms gradient step.
        self._critic_params = [*self.q1.parameters(), *self.q2.parameters()]
        self._target_params = [*self.q1_target.parameters(), *self.q2_target.parameters()]
        self._actor_params = list(self.actor.parameters())
        self.noise_generator = torch.Generator().manual_seed(int(noise_seed.generate_state(1)[0]))
        self.explore_rng = np.random.default_rng(explore_seed)

        # fused=True: one kernel per optimizer step instead of one per tensor, about 2x faster on
        # CPU for these small networks, where per-op overhead dominates.
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr, fused=True)
        self.critic_optimizer = torch.optim.Adam(
            list(self.q1.parameters()) + list(self.q2.parameters()), lr=config.critic_lr, fused=True
        )
        # The temperature is learned as log(alpha) so it stays positive.
        self.target_entropy = float(-self.action_dim if config.target_entropy is None else config.target_entropy)
        self.log_alpha = torch.tensor(math.log(config.initial_alpha), requires_grad=config.autotune_alpha)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=config.alpha_lr)

        self.replay = ReplayBuffer(
            capacity=config.buffer_size,
            obs_shape=self.obs_shape,
            obs_dtype=observation_space.dtype,
            action_shape=(self.action_dim,),
            action_dtype=np.float32,  # environment-scale actions, as sent to the env server
            seed=int(replay_seed.generate_state(1)[0]),
        )
        self.model_buffer: ReplayBuffer | None = None
        self.real_ratio = 1.0
        self.rows_observed = 0  # environment steps seen, one per transition row
        self.gradient_steps = 0  # gradient steps taken since the start

    @property
    def alpha(self) -> float:
        return float(self.log_alpha.detach().exp())

    # ------------------------------------------------------------------ Actor

    def act(self, obs: np.ndarray, explore: bool = True) -> np.ndarray:
        """Actions (K, action_dim) within the Box bounds for observations (K, *obs_shape)."""
        obs = self._checked_obs(obs, "obs")
        if explore and self.rows_observed < self.config.random_steps:
            unit_action = self.explore_rng.uniform(-1.0, 1.0, size=(obs.shape[0], self.action_dim))
        else:
            obs_tensor = torch.as_tensor(obs, dtype=torch.float32)
            with torch.inference_mode():
                if explore:
                    unit_tensor, _ = self.actor.sample(obs_tensor, self.noise_generator, self.log_half_range_sum)
                else:
                    mean, _ = self.actor(obs_tensor)
                    unit_tensor = torch.tanh(mean)
            unit_action = unit_tensor.numpy().astype(np.float64)
        return self._to_env_action(unit_action)

    def _to_env_action(self, unit_action: np.ndarray) -> np.ndarray:
        action = self.action_center + self.action_half_range * unit_action
        # Rounding in the affine map can step a hair outside the bounds at tanh = +-1.
        return np.clip(action, self.action_space.low, self.action_space.high).astype(self.action_space.dtype)

    def _to_unit_action(self, env_action: np.ndarray) -> np.ndarray:
        unit_action = (env_action.astype(np.float64) - self.action_center) / self.action_half_range
        return np.clip(unit_action, -1.0, 1.0).astype(np.float32)

    # ------------------------------------------------------------------ Learner

    def observe(self, transition: Transition) -> None:
        """Store K transition rows; each counts as one environment step.

        With `reward: own_contribution` each row's reward is replaced by this agent's own term of
        the team reward, `reward_model.contribution(next_obs, action)`: the observation after the
        move is the agent's position, the row's action the move it sent (the node makes no row of
        a step the server played without it, `agent_node/transitions.py`). The env computes the
        same term from its float64 positions; the float32 observation can disagree only within
        rounding distance of a site's edge.
        """
        if self.reward_model is not None:
            count = int(np.asarray(transition.reward).shape[0])
            own = self.reward_model.contribution(
                np.asarray(transition.next_obs).reshape(count, -1), np.asarray(transition.action).reshape(count, -1)
            )
            transition = dataclasses.replace(transition, reward=own.astype(np.float32))
        self.replay.add(transition)
        self.rows_observed += int(np.asarray(transition.reward).shape[0])

    def set_model_buffer(self, buffer: ReplayBuffer | None, real_ratio: float) -> None:
        """Mix imagined transitions from `buffer` into every batch; `real_ratio` of each batch is real.

        Pass `buffer=None` (with `real_ratio=1.0`) to go back to real data only.
        """
        if not 0.0 <= real_ratio <= 1.0:
            raise ValueError(f"real_ratio must be in [0, 1], got {real_ratio!r}")
        if buffer is None:
            if real_ratio != 1.0:
                raise ValueError(f"without a model buffer every row is real; real_ratio must be 1.0, got {real_ratio!r}")
        else:
            if not isinstance(buffer, ReplayBuffer):
                raise TypeError(f"model buffer must be a ReplayBuffer, got {type(buffer).__name__}")
            if buffer.obs_shape != self.replay.obs_shape or buffer.action_shape != self.replay.action_shape:
                raise ValueError(
                    f"model buffer holds obs {buffer.obs_shape} / actions {buffer.action_shape}, "
                    f"this agent needs obs {self.replay.obs_shape} / actions {self.replay.action_shape}"
                )
        self.model_buffer = buffer
        self.real_ratio = float(real_ratio)

    def sample_batch(self) -> tuple[dict[str, np.ndarray], int]:
        """One training batch and how many of its rows are real (the rest come from the model buffer)."""
        batch_size = self.config.batch_size
        if self.model_buffer is None or len(self.model_buffer) == 0:
            return self.replay.sample(batch_size), batch_size
        num_real = round(self.real_ratio * batch_size)
        parts = []
        if num_real > 0:
            parts.append(self.replay.sample(num_real))
        if num_real < batch_size:
            parts.append(self.model_buffer.sample(batch_size - num_real))
        batch = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
        return batch, num_real

    def sample_batches(self, count: int) -> tuple[dict[str, torch.Tensor], int]:
        """`count` training batches as tensors stacked on a leading axis (count, batch_size, ...),
        and how many rows of each are real (the first ones; the rest come from the model buffer).

        The same rows as `count` calls of `sample_batch`: each buffer draws from its own generator,
        in the same calls in the same order, and neither buffer changes between gradient steps
        of one `update`. What is saved is the per-batch work: one gather and one conversion to
        tensors for all of them instead of one per batch and field.
        """
        batch_size = self.config.batch_size
        if self.model_buffer is None or len(self.model_buffer) == 0:
            sources = [(self.replay, batch_size)]
        else:
            num_real = round(self.real_ratio * batch_size)
            sources = [(buffer, rows) for buffer, rows in ((self.replay, num_real), (self.model_buffer, batch_size - num_real)) if rows > 0]
        # Per buffer, its `count` draws in order, then rows laid out batch by batch.
        indices = [np.stack([buffer.draw_indices(rows) for _ in range(count)]) for buffer, rows in sources]
        columns = {}
        for name in ("obs", "action", "reward", "next_obs", "terminated", "truncated"):
            parts = [getattr(buffer, name)[index] for (buffer, _), index in zip(sources, indices)]
            columns[name] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
        ends = columns["terminated"] if self.config.bootstrap_on_truncation else columns["terminated"] | columns["truncated"]
        unit_action = self._to_unit_action(columns["action"].reshape(count * batch_size, -1)).reshape(count, batch_size, -1)
        tensors = {
            "obs": torch.as_tensor(columns["obs"], dtype=torch.float32),
            "unit_action": torch.as_tensor(unit_action),
            "reward": torch.as_tensor(columns["reward"], dtype=torch.float32),
            "next_obs": torch.as_tensor(columns["next_obs"], dtype=torch.float32),
            "done": torch.as_tensor(ends, dtype=torch.float32),
        }
        return tensors, sources[0][1] if sources[0][0] is self.replay else 0

    def gradient_steps_due(self) -> int:
        """Gradient steps owed for the rows observed so far and not yet taken."""
        cfg = self.config
        return trainable_rows(self.rows_observed, cfg.learning_starts, cfg.batch_size) * cfg.updates_per_step - self.gradient_steps

    def update(self, max_gradient_steps: int | None = None) -> dict[str, float]:
        """Take the gradient steps due (at most `max_gradient_steps`); metrics averaged over them.

        Always returns `sac/alpha`; the losses, `sac/q_mean`, `sac/entropy` and
        `sac/real_fraction` only when at least one gradient step ran. How many steps were taken
        and are still owed is in `counters()`, cumulative.
        """
        steps = steps_to_take(self.gradient_steps_due(), max_gradient_steps)
        if steps == 0:
            return {"sac/alpha": self.alpha}
        # Batches are gathered up to _BATCHES_AT_ONCE at a time: a call that owes many steps (a
        # learner catching up) would otherwise hold all its batches in memory at once.
        pending: list[tuple[dict[str, torch.Tensor], int]] = []
        left = steps

        def next_step() -> dict[str, float]:
            nonlocal left
            if not pending:
                count = min(left, _BATCHES_AT_ONCE)
                batches, num_real = self.sample_batches(count)
                left -= count
                pending.extend(({name: column[index] for name, column in batches.items()}, num_real) for index in range(count))
            batch, num_real = pending.pop(0)
            return self._train_on(batch, num_real)

        metrics = run_gradient_steps(next_step, steps)
        metrics["sac/alpha"] = self.alpha
        return metrics

    def counters(self) -> dict[str, float]:
        """The update-ratio contract, cumulative since the start (not per call): gradient steps
        taken, still pending, owed in all (taken + pending), and rows observed."""
        return update_counters("sac", self.gradient_steps, self.gradient_steps_due(), self.rows_observed)

    def _gradient_step(self) -> dict[str, float]:
        """One gradient step on a freshly sampled batch (`update` samples its steps' batches at once)."""
        batches, num_real = self.sample_batches(1)
        return self._train_on({name: column[0] for name, column in batches.items()}, num_real)

    def _train_on(self, batch: Mapping[str, torch.Tensor], num_real: int) -> dict[str, float]:
        """One gradient step of critics, actor and temperature on one batch of tensors."""
        cfg = self.config
        obs, unit_action, next_obs = batch["obs"], batch["unit_action"], batch["next_obs"]
        alpha = self.log_alpha.detach().exp()

        # Critic: regress both Q's on the soft Bellman target built from the target critics.
        with torch.no_grad():
            next_unit_action, next_log_prob = self.actor.sample(next_obs, self.noise_generator, self.log_half_range_sum)
            next_inputs = critic_inputs(next_obs, next_unit_action)
            next_q = torch.min(self.q1_target.on_inputs(next_inputs), self.q2_target.on_inputs(next_inputs))
            # Bootstrap unless the episode truly ended (or, with bootstrap_on_truncation off, was
            # cut by the time limit); by default a truncated row bootstraps from next_obs.
            td_target = batch["reward"] + cfg.gamma * (1.0 - batch["done"]) * (next_q - alpha * next_log_prob)
        inputs = critic_inputs(obs, unit_action)
        q1_value = self.q1.on_inputs(inputs)
        q2_value = self.q2.on_inputs(inputs)
        critic_loss = 0.5 * (F.mse_loss(q1_value, td_target) + F.mse_loss(q2_value, td_target))
        # Gradients handed straight to Adam (`adam_step`): the same values `backward()` would
        # accumulate into `.grad`, without zeroing and reading those attributes.
        adam_step(self.critic_optimizer, torch.autograd.grad(critic_loss, self._critic_params))

        # Actor: maximize the soft value, i.e. min-Q of a reparameterized action minus alpha * log pi.
        # The gradient flows through the critics to the action only. Autograd skips the critics'
        # weight gradients of its own layers when asked for the actor's gradients alone, but not
        # those of an autograd function (`OneDNNLinear` sees only that the weight requires a
        # gradient): the critics enter with detached parameters, the same values, no copy.
        new_unit_action, log_prob = self.actor.sample(obs, self.noise_generator, self.log_half_range_sum)
        new_inputs = critic_inputs(obs, new_unit_action)
        new_q = torch.min(self.q1.on_inputs(new_inputs, frozen=True), self.q2.on_inputs(new_inputs, frozen=True))
        actor_loss = (alpha * log_prob - new_q).mean()
        reported = [critic_loss, actor_loss, q1_value.mean(), -log_prob.mean()]
        if cfg.autotune_alpha:
            # Temperature: raise alpha when the entropy is below target, lower it when above. Its
            # loss sees log pi detached and the actor's sees alpha detached, so one backward pass
            # over both gives each its own gradient, the same as two passes.
            alpha_loss = -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()
            *actor_grads, alpha_grad = torch.autograd.grad([actor_loss, alpha_loss], [*self._actor_params, self.log_alpha])
            adam_step(self.actor_optimizer, actor_grads)
            adam_step(self.alpha_optimizer, [alpha_grad])
            reported.append(alpha_loss)
        else:
            adam_step(self.actor_optimizer, torch.autograd.grad(actor_loss, self._actor_params))

        # Target critics trail the critics by Polyak averaging: target += tau * (online - target),
        # one fused call over all their tensors.
        with torch.no_grad():
            torch._foreach_lerp_(self._target_params, self._critic_params, cfg.tau)

        # One conversion to Python numbers for all the metrics (each `.item()` is a call of its own).
        values = torch.stack([value.detach() for value in reported]).tolist()
        metrics = {
            "sac/critic_loss": values[0],
            "sac/actor_loss": values[1],
            "sac/q_mean": values[2],
            "sac/entropy": values[3],
            "sac/real_fraction": num_real / cfg.batch_size,
        }
        if cfg.autotune_alpha:
            metrics["sac/alpha_loss"] = values[4]
        self.gradient_steps += 1
        return metrics

    def critic_values(self, obs: np.ndarray, action: np.ndarray) -> np.ndarray:
        """min(Q1, Q2) for observations (K, *obs_shape) and environment-scale actions (K, action_dim)."""
        obs = self._checked_obs(obs, "obs")
        action = np.asarray(action)
        if action.shape != (obs.shape[0], self.action_dim):
            raise ValueError(f"action must have shape ({obs.shape[0]}, {self.action_dim}), got {action.shape}")
        obs_tensor = torch.as_tensor(obs, dtype=torch.float32)
        unit_tensor = torch.as_tensor(self._to_unit_action(action))
        with torch.inference_mode():
            return torch.min(self.q1(obs_tensor, unit_tensor), self.q2(obs_tensor, unit_tensor)).numpy()

    def state_dict(self) -> dict[str, Any]:
        """Networks, optimizers, temperature, counters and RNG states; the replay buffer is saved
        separately (`self.replay.save`). Loadable with `torch.load(..., weights_only=True)`."""
        return {**super().state_dict(), "log_alpha": self.log_alpha.detach().clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])

    def learning_rates(self) -> dict[str, float]:
        return {
            "actor_optimizer": self.config.actor_lr,
            "critic_optimizer": self.config.critic_lr,
            "alpha_optimizer": self.config.alpha_lr,
        }

    # ------------------------------------------------------------------ helpers

    def _checked_obs(self, obs: np.ndarray, name: str) -> np.ndarray:
        return checked_obs(obs, self.obs_shape, name)
