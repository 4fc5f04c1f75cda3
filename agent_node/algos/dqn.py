"""Deep Q-Network with Double-DQN targets, for one agent with a Box observation and Discrete actions.

References, to check this file against:
- Mnih et al. 2015, "Human-level control through deep reinforcement learning": experience replay,
  a target network, epsilon-greedy exploration, and the TD error clipped to [-1, 1] (the Huber loss).
- van Hasselt, Guez, Silver 2016, "Deep Reinforcement Learning with Double Q-learning": the online
  network picks the next action and the target network evaluates it, which curbs the max-operator's
  overestimation.

How it plugs into an agent node (see `agent_node/roles.py`):
- `act(obs)` picks epsilon-greedy actions for K observations (numpy in, numpy out).
- `observe(transition)` stores K rows in `self.replay` and counts them as K environment steps.
- `update()` runs the gradient steps that are due: one per `train_every` rows observed after
  `learning_starts` (and once the buffer holds one batch). Steps not yet run stay due, so the total
  number of gradient steps depends only on the rows observed, never on how often `update` is called.
  `update(max_gradient_steps=n)` caps one call, for a node that must return to its event loop; the
  remainder runs at the next calls.
- `get_params` / `set_params` expose the online Q-network (the policy) for consensus averaging;
  the target network keeps following it on its own schedule.

Terminal handling: the TD target bootstraps from `next_obs` unless the row is `terminated`.
A `truncated` row (a time-limit cut) still bootstraps, because the state had a future.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from agent_node.algos.config import DQNConfig
from agent_node.algos.encoders import ConvEncoder, choose_encoder
from agent_node.algos.learner_parts import (OwesGradientSteps, StateLayout, check_config, check_seed, check_space,
                                            checked_obs, linear_schedule, run_gradient_steps, scheduled_learning_rate,
                                            set_learning_rate, steps_to_take, trainable_rows, update_counters)
from agent_node.algos.lean_steps import MLPPasses, adam_step
from agent_node.algos.numpy_steps import NumpyDQNUpdate
from agent_node.algos.params import ModuleLearner
from agent_node.replay import ReplayBuffer
from agent_node.roles import Transition


# ---------------------------------------------------------------------------------- network


def clip_grad_norm(grads: list[torch.Tensor], max_norm: float) -> None:
    """Scale `grads` (CPU tensors of one dtype) in place so that their joint 2-norm is at most
    `max_norm`: the arithmetic of `torch.nn.utils.clip_grad_norm_`, op for op (so the same bits),
    without its grouping of the tensors by device and dtype, which cost a small network's gradient
    step more than the clipping itself."""
    total_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0)
    torch._foreach_mul_(grads, torch.clamp(max_norm / (total_norm + 1e-6), max=1.0))


MEAN_REDUCTION = 1  # ATen's enum for reduction="mean" (torch.nn._reduction.get_enum("mean"))


def td_loss(q_taken: torch.Tensor, td_target: torch.Tensor, kind: str) -> torch.Tensor:
    """The mean TD loss: Huber (the TD error clipped to [-1, 1] in the gradient) or squared."""
    return F.smooth_l1_loss(q_taken, td_target) if kind == "huber" else F.mse_loss(q_taken, td_target)


class QNetwork(nn.Module):
    """An MLP from a (flattened) observation to one Q-value per action; with `encoder`, from the
    encoder's features of the observation (agent_node/algos/encoders.py: a CNN for images)."""

    def __init__(self, obs_dim: int, num_actions: int, hidden_sizes: tuple[int, ...],
                 encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        layers: list[nn.Module] = []
        in_features = obs_dim if encoder is None else encoder.out_features
        for width in hidden_sizes:
            layers += [nn.Linear(in_features, width), nn.ReLU()]
            in_features = width
        layers.append(nn.Linear(in_features, num_actions))
        self.layers = nn.Sequential(*layers)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        features = obs.flatten(start_dim=1) if self.encoder is None else self.encoder(obs)
        return self.layers(features)


# ---------------------------------------------------------------------------------- agent


class DQNAgent(ModuleLearner, OwesGradientSteps):
    """Actor, Learner and ParamSource for Double DQN (see the module docstring)."""

    # What a checkpoint holds (agent_node/algos/learner_parts.py), and the network whose
    # parameters consensus averages (get_params / set_params, agent_node/algos/params.py).
    STATE = StateLayout("dqn", "DQN", modules=("q_network", "target_network"), optimizers=("optimizer",),
                        counters=("rows_observed", "gradient_steps"), generators=("explore_rng",))
    PARAMS = "q_network"

    def __init__(
        self,
        config: DQNConfig,
        observation_space: gym.spaces.Space,
        action_space: gym.spaces.Space,
        seed: int,
        init_seed: int | None = None,
    ) -> None:
        """`seed` draws the networks' initial weights, exploration and replay sampling, each from a
        stream of its own; `init_seed`, when given, draws the initial weights instead (agents
        that start from one policy share it and keep their own exploration and sampling)."""
        check_config(config, DQNConfig)
        check_space(observation_space, gym.spaces.Box, "DQN needs a Box observation space")
        check_space(action_space, gym.spaces.Discrete, "DQN needs a Discrete action space")
        check_seed(seed)
        self.config = config
        self.observation_space = observation_space
        self.action_space = action_space
        self.obs_shape = tuple(observation_space.shape)
        self.num_actions = int(action_space.n)
        # gymnasium's Discrete(n, start=s) has actions s..s+n-1; the network indexes 0..n-1.
        self.action_start = int(action_space.start)

        # Independent random streams from one seed: network init, exploration, replay sampling.
        own_init_seed, explore_seed, replay_seed = np.random.SeedSequence(int(seed)).spawn(3)
        if init_seed is not None:
            check_seed(init_seed)
        weights_seed = own_init_seed if init_seed is None else np.random.SeedSequence(int(init_seed))
        with torch.random.fork_rng(devices=[]):  # seed the init without touching global torch RNG
            torch.manual_seed(int(weights_seed.generate_state(1)[0]))
            obs_dim = int(np.prod(self.obs_shape))
            self.encoder = choose_encoder(config.encoder, observation_space)

            def network() -> QNetwork:
                encoder = ConvEncoder(self.obs_shape) if self.encoder == "cnn" else None
                return QNetwork(obs_dim, self.num_actions, config.hidden_sizes, encoder)

            self.q_network = network()
            self.target_network = network()
        self.target_network.load_state_dict(self.q_network.state_dict())
        self.target_network.requires_grad_(False)
        # The two networks' parameter lists, taken once: walking the modules for them at every
        # gradient step (clipping, the soft target update) cost about a tenth of the step. Loading
        # a checkpoint or an average copies into these tensors, so the lists stay valid.
        self._online_params = list(self.q_network.parameters())
        self._target_params = list(self.target_network.parameters())
        # A plain MLP (no encoder) takes its passes by hand: the same operations as autograd, so
        # the same bits, for about a third less CPU per gradient step at the main job's size
        # (agent_node/algos/lean_steps.py). An encoder keeps autograd.
        plain_mlp = self.q_network.encoder is None and MLPPasses.fits(self.q_network.layers)
        # fused=True: one kernel per step instead of one per tensor, about 2x faster on CPU here.
        self.optimizer = torch.optim.Adam(self.q_network.parameters(), lr=config.learning_rate, fused=True)
        # With numpy_updates the gradient steps run compiled, on buffers the modules' parameters
        # and the optimizer's state become views of (agent_node/algos/numpy_steps.py); before the
        # passes below take their aliases of the parameters.
        self._numpy_update = None
        if config.numpy_updates:
            if not plain_mlp:
                raise ValueError(f"numpy_updates: numpy updates take a plain MLP; this observation space "
                                 f"{observation_space!r} is read through a CNN (set encoder: mlp, or numpy_updates: false)")
            self._numpy_update = NumpyDQNUpdate(self.q_network.layers, self.target_network.layers, self.optimizer)
        self._online_passes = MLPPasses(self.q_network.layers) if plain_mlp else None
        self._target_passes = MLPPasses(self.target_network.layers) if plain_mlp else None
        self.explore_rng = np.random.default_rng(explore_seed)

        self.replay = ReplayBuffer(
            capacity=config.buffer_size,
            obs_shape=self.obs_shape,
            obs_dtype=observation_space.dtype,
            action_shape=(),
            action_dtype=np.int64,  # stored as the network's index 0..n-1
            seed=int(replay_seed.generate_state(1)[0]),
        )
        self.rows_observed = 0  # environment steps seen, one per transition row
        self.gradient_steps = 0  # gradient steps taken since the start
        # Set by the node where a world model steers exploration (agents.world_model_bonus): a
        # bonus added to each sampled row's reward, from its (obs, action index) as the replay holds them.
        self.reward_bonus: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None

    # ------------------------------------------------------------------ Actor

    @property
    def epsilon(self) -> float:
        """The exploration rate at the current number of observed rows."""
        cfg = self.config
        return linear_schedule(cfg.epsilon_start, cfg.epsilon_end, cfg.epsilon_decay_steps, self.rows_observed)

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        """Q-values of the online network, shape (K, num_actions), for inspection and tests."""
        obs_tensor = torch.as_tensor(self._checked_obs(obs, "obs"), dtype=torch.float32)
        with torch.inference_mode():
            return self._online_q(obs_tensor).numpy()

    def act(self, obs: np.ndarray, explore: bool = True) -> np.ndarray:
        """Epsilon-greedy actions (K,) for observations (K, *obs_shape); greedy if not exploring."""
        action_index = self.q_values(obs).argmax(axis=1)
        if explore:
            take_random = self.explore_rng.random(action_index.shape[0]) < self.epsilon
            action_index[take_random] = self.explore_rng.integers(0, self.num_actions, size=int(take_random.sum()))
        return (action_index + self.action_start).astype(self.action_space.dtype)

    # ------------------------------------------------------------------ Learner

    def observe(self, transition: Transition, env_rows: int | None = None) -> None:
        """Store K transition rows; each counts as one environment step, unless `env_rows` says
        how many of them do (relabelled copies of a row, or a partner's rows, count as none: the
        update ratio is per row this agent lived through)."""
        action = np.asarray(transition.action)
        if not np.issubdtype(action.dtype, np.integer):
            raise TypeError(f"DQN actions must be integers, got dtype {action.dtype}")
        low, high = self.action_start, self.action_start + self.num_actions - 1
        if action.size and (action.min() < low or action.max() > high):
            raise ValueError(f"DQN actions must lie in [{low}, {high}], got values in [{action.min()}, {action.max()}]")
        self.replay.add(dataclasses.replace(transition, action=action.astype(np.int64) - self.action_start))
        self.rows_observed += action.shape[0] if env_rows is None else env_rows

    def gradient_steps_due(self) -> int:
        """Gradient steps owed for the rows observed so far and not yet taken."""
        cfg = self.config
        return trainable_rows(self.rows_observed, cfg.learning_starts, cfg.batch_size) // cfg.train_every - self.gradient_steps

    def update(self, max_gradient_steps: int | None = None) -> dict[str, float]:
        """Take the gradient steps due (at most `max_gradient_steps`); metrics averaged over them.

        Always returns `dqn/epsilon`; `dqn/loss`, `dqn/q_mean` and `dqn/target_mean` only when
        at least one gradient step ran. How many steps were taken and are still owed is in
        `counters()`, cumulative.
        """
        steps = steps_to_take(self.gradient_steps_due(), max_gradient_steps)
        return {"dqn/epsilon": self.epsilon, **run_gradient_steps(self._gradient_step, steps)}

    def counters(self) -> dict[str, float]:
        """The update-ratio contract, cumulative since the start (not per call): gradient steps
        taken, still pending, owed in all (taken + pending), and rows observed."""
        return update_counters("dqn", self.gradient_steps, self.gradient_steps_due(), self.rows_observed)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        if self._numpy_update is not None:
            # The optimizer's state came back as new tensors: into the flat buffers again.
            self._numpy_update.bind_optimizer_state()

    def _gradient_step(self) -> dict[str, float]:
        cfg = self.config
        if self._numpy_update is not None:
            return self._numpy_gradient_step()
        batch = self.replay.sample(cfg.batch_size)
        obs = torch.as_tensor(batch["obs"], dtype=torch.float32)
        action = torch.as_tensor(batch["action"], dtype=torch.int64)
        reward = torch.as_tensor(batch["reward"], dtype=torch.float32)
        bonus_metrics = {}
        if self.reward_bonus is not None:
            bonus = torch.as_tensor(self.reward_bonus(batch["obs"], batch["action"]), dtype=torch.float32)
            reward = reward + bonus
            bonus_metrics["dqn/reward_bonus_mean"] = bonus.mean().item()
        next_obs = torch.as_tensor(batch["next_obs"], dtype=torch.float32)
        terminated = torch.as_tensor(batch["terminated"], dtype=torch.float32)

        with torch.no_grad():
            next_q_target = self._target_q(next_obs)
            if cfg.double_dqn:
                # Double DQN: the online network chooses, the target network evaluates.
                next_action = self._online_q(next_obs).argmax(dim=1, keepdim=True)
                next_value = next_q_target.gather(1, next_action).squeeze(1)
            else:
                next_value = next_q_target.max(dim=1).values
            # Bootstrap unless the episode truly ended; a truncated row bootstraps from next_obs.
            td_target = reward + cfg.gamma * (1.0 - terminated) * next_value

        if self._online_passes is not None:
            q_taken, loss, grads = self._gradients_by_hand(obs, action, td_target)
        else:
            q_taken = self.q_network(obs).gather(1, action.unsqueeze(1)).squeeze(1)
            loss = td_loss(q_taken, td_target, cfg.loss)
            grads = list(torch.autograd.grad(loss, self._online_params))
        if cfg.max_grad_norm is not None:
            clip_grad_norm(grads, cfg.max_grad_norm)
        set_learning_rate(self.optimizer, scheduled_learning_rate(
            cfg.learning_rate, cfg.learning_rate_end, cfg.learning_rate_decay_steps, self.gradient_steps))
        adam_step(self.optimizer, grads)
        self.gradient_steps += 1

        if self.gradient_steps % cfg.target_update_period == 0:
            with torch.no_grad():
                torch._foreach_lerp_(self._target_params, self._online_params, cfg.target_tau)  # target += tau * (online - target)

        return {
            "dqn/loss": loss.item(),
            "dqn/q_mean": q_taken.mean().item(),
            "dqn/target_mean": td_target.mean().item(),
            **bonus_metrics,
        }

    def _numpy_gradient_step(self) -> dict[str, float]:
        """`_gradient_step` compiled (`numpy_updates`): the same batch, update and metrics."""
        cfg = self.config
        set_learning_rate(self.optimizer, scheduled_learning_rate(
            cfg.learning_rate, cfg.learning_rate_end, cfg.learning_rate_decay_steps, self.gradient_steps))
        soft_update_due = (self.gradient_steps + 1) % cfg.target_update_period == 0
        settings = dict(gamma=cfg.gamma, double_dqn=cfg.double_dqn, loss=cfg.loss, max_grad_norm=cfg.max_grad_norm,
                        tau=cfg.target_tau if soft_update_due else None)
        if self.reward_bonus is None:
            loss, q_mean, target_mean, bonus_mean = self._numpy_update.step_on_replay(self.replay, cfg.batch_size, **settings)
        else:  # the bonus is computed in Python, on the sampled batch
            loss, q_mean, target_mean, bonus_mean = self._numpy_update.step(
                self.replay.sample(cfg.batch_size), reward_bonus=self.reward_bonus, **settings)
        self.gradient_steps += 1
        metrics = {"dqn/loss": loss, "dqn/q_mean": q_mean, "dqn/target_mean": target_mean}
        if bonus_mean is not None:
            metrics["dqn/reward_bonus_mean"] = bonus_mean
        return metrics

    def _gradients_by_hand(self, obs: torch.Tensor, action: torch.Tensor,
                           td_target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """The Q-values of the actions taken, the TD loss and the online network's gradients of
        it, through `MLPPasses`: each line is the operation autograd runs for the matching line of
        `_gradient_step`'s autograd branch."""
        q_all, tape = self._online_passes.forward_with_tape(obs)
        index = action.unsqueeze(1)
        q_taken = q_all.gather(1, index).squeeze(1)
        loss = td_loss(q_taken, td_target, self.config.loss)
        one = torch.ones_like(loss)  # d loss / d loss, as loss.backward() starts
        if self.config.loss == "huber":
            grad_q_taken = torch.ops.aten.smooth_l1_loss_backward(one, q_taken, td_target, MEAN_REDUCTION, 1.0)
        else:
            grad_q_taken = torch.ops.aten.mse_loss_backward(one, q_taken, td_target, MEAN_REDUCTION)
        grad_q_all = torch.zeros_like(q_all).scatter_add_(1, index, grad_q_taken.unsqueeze(1))  # gather's backward
        return q_taken, loss, self._online_passes.backward(tape, grad_q_all)

    def _online_q(self, obs: torch.Tensor) -> torch.Tensor:
        return self.q_network(obs) if self._online_passes is None else self._online_passes.forward(obs.flatten(start_dim=1))

    def _target_q(self, obs: torch.Tensor) -> torch.Tensor:
        return self.target_network(obs) if self._target_passes is None else self._target_passes.forward(obs.flatten(start_dim=1))

    # ------------------------------------------------------------------ helpers

    def _checked_obs(self, obs: np.ndarray, name: str) -> np.ndarray:
        return checked_obs(obs, self.obs_shape, name)
