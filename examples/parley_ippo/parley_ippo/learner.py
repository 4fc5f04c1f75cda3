"""Independent PPO for one agent with a Box observation and Discrete actions, as a Parley plugin.

References, to check this file against:
- Schulman et al. 2017, "Proximal Policy Optimization Algorithms": the clipped surrogate
  L = E[min(r A, clip(r, 1 - eps, 1 + eps) A)], r = pi(a|s) / pi_old(a|s), eq. 7.
- Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage
  Estimation": A_t = sum_l (gamma lambda)^l delta_{t+l}, delta_t = r_t + gamma V(s_{t+1}) - V(s_t).
- de Witt et al. 2020, "Is Independent Learning All You Need in the StarCraft Multi-Agent
  Challenge?": IPPO, every agent a PPO learner on its own observation, no shared critic.

How it plugs into an agent node (Parley's `NodeLearner`, agent_node/roles.py):
- `act(obs, explore)` samples from the policy for the K env copies (greedy when not exploring,
  as in the env server's evaluation episodes) and remembers, per copy, the log-probability and
  the value estimate of what it sent: the behaviour policy's numbers, which the ratio needs.
- `observe(transition)` appends the K rows (the node pairs each observation it answered with its
  outcome) to the rollout, each tagged with its env copy (`transition.copy_index`). When the
  rollout holds `rollout_rows` rows it is frozen: advantages and returns are computed per copy,
  in time order, and `epochs * minibatches` gradient steps become due.
- `update(max_gradient_steps)` takes at most that many of the due steps, so the node returns to
  its sockets between slices (a heartbeat is never late by more than a few minibatches); the
  rows that arrive meanwhile go to the next rollout, with the log-probabilities they were acted
  with, so the ratio stays exact for them.
- `replay` is the rollout in flight, which the node saves beside the checkpoint
  (`agents.replay_save_every_steps`) and restores after a restart. A frozen rollout whose
  gradient steps were not all taken is not saved: a restart loses at most that one update.
- `get_params` / `set_params` expose the actor and critic for consensus (`what: policy_parameters`).

GAE over the node's rows. A row carries its own `next_obs` (the final observation where an
episode ended), so delta_t bootstraps from V(next_obs_t) unless the episode *terminated*; a row cut
by a time limit (`truncated`) bootstraps too, as the state had a future. The recursion
A_t = delta_t + gamma lambda A_{t+1} runs along each env copy's rows, and stops where the episode
ended or where the copy's next row does not start at this row's `next_obs` (a step this agent sat
out, or the rollout's end).
"""

from __future__ import annotations

import io
import os
from typing import Any, ClassVar, Mapping

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn

from agent_node.plugins import LearnerSpec
from agent_node.roles import Transition
from parley_ippo.config import IPPOConfig
from protocols.storage.files import atomic_write, read_sealed

ROLLOUT_FILE_FORMAT_VERSION = 1
_ROLLOUT_FIELDS = ("obs", "action", "log_prob", "value", "reward", "next_obs", "terminated", "truncated", "copy")


def _mlp(in_dim: int, out_dim: int, hidden_sizes: tuple[int, ...], out_gain: float) -> nn.Sequential:
    """Tanh MLP with orthogonal weights (gain sqrt 2) and zero biases; the last layer's gain is
    `out_gain` (0.01 for the policy, so its first actions are near uniform; 1 for the value)."""
    layers: list[nn.Module] = []
    sizes = (in_dim, *hidden_sizes)
    for a, b in zip(sizes[:-1], sizes[1:]):
        linear = nn.Linear(a, b)
        nn.init.orthogonal_(linear.weight, gain=np.sqrt(2))
        nn.init.zeros_(linear.bias)
        layers += [linear, nn.Tanh()]
    last = nn.Linear(sizes[-1], out_dim)
    nn.init.orthogonal_(last.weight, gain=out_gain)
    nn.init.zeros_(last.bias)
    layers.append(last)
    return nn.Sequential(*layers)


class Rollout:
    """The rows of the rollout in flight, in arrival order, each with its env copy.

    It is what persistence calls the learner's `replay`: `save(path)` / `restore(path)` write and
    read one sealed .npz (protocols.storage.files), `len()` counts its rows."""

    def __init__(self, obs_shape: tuple[int, ...]) -> None:
        self.obs_shape = obs_shape
        self.clear()

    def clear(self) -> None:
        self.rows: dict[str, list[np.ndarray]] = {name: [] for name in _ROLLOUT_FIELDS}
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, **columns: np.ndarray) -> None:
        for name in _ROLLOUT_FIELDS:
            self.rows[name].append(np.asarray(columns[name]))
        self.size += len(columns["reward"])

    def arrays(self) -> dict[str, np.ndarray]:
        if self.size == 0:
            return {}
        return {name: np.concatenate(parts) for name, parts in self.rows.items()}

    def save(self, path: str | os.PathLike[str]) -> None:
        contents = {"format_version": np.array(ROLLOUT_FILE_FORMAT_VERSION), "size": np.array(self.size)}
        contents.update(self.arrays())
        atomic_write(path, lambda file: np.savez(file, **contents), sealed=True)

    def restore(self, path: str | os.PathLike[str]) -> None:
        with np.load(io.BytesIO(read_sealed(path)), allow_pickle=False) as saved:
            if int(saved["format_version"]) != ROLLOUT_FILE_FORMAT_VERSION:
                raise ValueError(f"{path}: rollout format {int(saved['format_version'])}, expected {ROLLOUT_FILE_FORMAT_VERSION}")
            size = int(saved["size"])
            self.clear()
            if size == 0:
                return
            columns = {name: saved[name] for name in _ROLLOUT_FIELDS}
        if columns["obs"].shape[1:] != self.obs_shape:
            raise ValueError(f"{path}: saved observations of shape {columns['obs'].shape[1:]}, this learner's are {self.obs_shape}")
        self.add(**columns)


class IPPOLearner:
    """Actor, Learner and ParamSource for independent PPO (see the module docstring)."""

    # What Parley's registry reads before anything is built (agent_node/plugins.py).
    config_model: ClassVar[type[IPPOConfig]] = IPPOConfig
    action_space: ClassVar[str] = "discrete"

    def __init__(self, config: IPPOConfig, spec: LearnerSpec) -> None:
        if not isinstance(config, IPPOConfig):
            raise TypeError(f"config must be an IPPOConfig, got {type(config).__name__}")
        if not isinstance(spec.observation_space, gym.spaces.Box):
            raise TypeError(f"IPPO needs a Box observation space, got {spec.observation_space!r}")
        if not isinstance(spec.action_space, gym.spaces.Discrete):
            raise TypeError(f"IPPO needs a Discrete action space, got {spec.action_space!r}")
        self.config = config
        self.obs_shape = tuple(spec.observation_space.shape)
        self.num_actions = int(spec.action_space.n)
        self.action_start = int(spec.action_space.start)
        self.action_dtype = spec.action_space.dtype
        obs_dim = int(np.prod(self.obs_shape))

        # Independent streams from the node's learner seed: initial weights, action sampling, minibatch order.
        init_seed, act_seed, shuffle_seed = np.random.SeedSequence(int(spec.seed)).spawn(3)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(init_seed.generate_state(1)[0]))
            self.actor = _mlp(obs_dim, self.num_actions, config.hidden_sizes, out_gain=0.01)
            self.critic = _mlp(obs_dim, 1, config.hidden_sizes, out_gain=1.0)
        self.optimizer = torch.optim.Adam(
            [*self.actor.parameters(), *self.critic.parameters()], lr=config.learning_rate, eps=1e-5
        )
        self.act_generator = torch.Generator().manual_seed(int(act_seed.generate_state(1)[0]))
        self.shuffle_rng = np.random.default_rng(shuffle_seed)

        self.replay = Rollout(self.obs_shape)
        # What the last exploring `act` sent, per env copy: observation, log-probability, value.
        self._acted: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        # The frozen rollout being trained on, and the minibatch order of its epochs.
        self._batch: dict[str, torch.Tensor] | None = None
        self._order: list[np.ndarray] = []
        self.rows_observed = 0
        self.gradient_steps = 0
        self.updates = 0  # rollouts trained on
        # The entropy bonus's weight: config.entropy_coef, until a peer protocol sets another
        # (parley_ippo/gossip.py raises it while this agent trails its neighbours).
        self.entropy_coef = float(config.entropy_coef)

    # ------------------------------------------------------------------ Actor

    def _obs_tensor(self, obs: np.ndarray) -> torch.Tensor:
        obs = np.asarray(obs)
        if obs.shape[1:] != self.obs_shape:
            raise ValueError(f"obs must have shape (K, {', '.join(map(str, self.obs_shape))}), got {obs.shape}")
        return torch.as_tensor(obs.reshape(len(obs), -1), dtype=torch.float32)

    def act(self, obs: np.ndarray, explore: bool = True) -> np.ndarray:
        """Actions (K,) for observations (K, *obs_shape): sampled while exploring, else the mode."""
        obs_tensor = self._obs_tensor(obs)
        with torch.inference_mode():
            logits = self.actor(obs_tensor)
            if not explore:
                return (logits.argmax(dim=1).numpy() + self.action_start).astype(self.action_dtype)
            distribution = torch.distributions.Categorical(logits=logits)
            index = torch.multinomial(distribution.probs, 1, generator=self.act_generator).squeeze(1)
            log_prob = distribution.log_prob(index)
            value = self.critic(obs_tensor).squeeze(1)
        self._acted = (np.array(obs, copy=True), log_prob.numpy(), value.numpy())
        return (index.numpy() + self.action_start).astype(self.action_dtype)

    # ------------------------------------------------------------------ Learner

    def observe(self, transition: Transition, env_rows: int | None = None) -> None:
        """Append K rows to the rollout; freeze it for an update once it holds `rollout_rows`.
        (`env_rows` is the node's count of rows this agent lived through; every row here is one.)"""
        action = np.asarray(transition.action)
        if not np.issubdtype(action.dtype, np.integer):
            raise TypeError(f"IPPO actions must be integers, got dtype {action.dtype}")
        index = action.astype(np.int64) - self.action_start
        copies = (np.arange(len(action)) if transition.copy_index is None else np.asarray(transition.copy_index)).astype(np.int64)
        obs = np.asarray(transition.obs)
        log_prob, value = self._behaviour(obs, index, copies)
        self.replay.add(
            obs=obs, action=index, log_prob=log_prob, value=value,
            reward=np.asarray(transition.reward, dtype=np.float32), next_obs=np.asarray(transition.next_obs),
            terminated=np.asarray(transition.terminated, dtype=bool), truncated=np.asarray(transition.truncated, dtype=bool),
            copy=copies,
        )
        self.rows_observed += len(action) if env_rows is None else env_rows
        if len(self.replay) >= self.config.rollout_rows and self._batch is None:
            self._freeze()

    def _behaviour(self, obs: np.ndarray, index: np.ndarray, copies: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The log-probability and value the rows were acted with: remembered by `act` when these
        are the observations it answered (the usual case), else computed now (a restarted node's
        first rows)."""
        if self._acted is not None:
            acted_obs, acted_log_prob, acted_value = self._acted
            if copies.max(initial=-1) < len(acted_obs) and np.array_equal(acted_obs[copies], obs):
                return acted_log_prob[copies], acted_value[copies]
        with torch.inference_mode():
            obs_tensor = self._obs_tensor(obs)
            distribution = torch.distributions.Categorical(logits=self.actor(obs_tensor))
            log_prob = distribution.log_prob(torch.as_tensor(index))
            return log_prob.numpy(), self.critic(obs_tensor).squeeze(1).numpy()

    def _freeze(self) -> None:
        """Turn the rollout into a training batch: GAE advantages and returns, and the minibatch
        order of every epoch (drawn now, so the steps do not depend on how the node slices them)."""
        cfg = self.config
        rows = self.replay.arrays()
        self.replay.clear()
        with torch.inference_mode():
            next_value = self.critic(self._obs_tensor(rows["next_obs"])).squeeze(1).numpy()
        advantages = np.zeros(len(rows["reward"]), dtype=np.float32)
        for copy in np.unique(rows["copy"]):
            (positions,) = np.nonzero(rows["copy"] == copy)
            following = 0.0
            for place in range(len(positions) - 1, -1, -1):
                t = positions[place]
                bootstrap = 0.0 if rows["terminated"][t] else cfg.gamma * next_value[t]
                delta = rows["reward"][t] + bootstrap - rows["value"][t]
                continues = (
                    place + 1 < len(positions)
                    and not (rows["terminated"][t] or rows["truncated"][t])
                    and np.array_equal(rows["obs"][positions[place + 1]], rows["next_obs"][t])
                )
                following = delta + (cfg.gamma * cfg.gae_lambda * following if continues else 0.0)
                advantages[t] = following
        returns = advantages + rows["value"]
        self._batch = {
            "obs": self._obs_tensor(rows["obs"]),
            "action": torch.as_tensor(rows["action"]),
            "log_prob": torch.as_tensor(rows["log_prob"], dtype=torch.float32),
            "advantage": torch.as_tensor(advantages),
            "return": torch.as_tensor(returns, dtype=torch.float32),
        }
        size = len(advantages)
        self._order = [
            minibatch
            for _ in range(cfg.epochs)
            for minibatch in np.array_split(self.shuffle_rng.permutation(size), cfg.minibatches)
        ]

    def gradient_steps_due(self) -> int:
        """Minibatch steps left on the frozen rollout (0 while a rollout is being collected)."""
        return len(self._order)

    def update(self, max_gradient_steps: int | None = None) -> dict[str, float]:
        """Take the minibatch steps due (at most `max_gradient_steps`); metrics averaged over them."""
        due = self.gradient_steps_due()
        steps = due if max_gradient_steps is None else min(due, max_gradient_steps)
        totals: dict[str, float] = {}
        for _ in range(steps):
            for key, value in self._gradient_step(self._order.pop(0)).items():
                totals[key] = totals.get(key, 0.0) + value
        if self._batch is not None and not self._order:
            self._batch = None
            self.updates += 1
            if len(self.replay) >= self.config.rollout_rows:  # a rollout filled while this one trained
                self._freeze()
        return {key: total / steps for key, total in totals.items()} if steps else {}

    def _gradient_step(self, rows: np.ndarray) -> dict[str, float]:
        cfg = self.config
        picked = torch.as_tensor(rows)
        obs = self._batch["obs"][picked]
        advantage = self._batch["advantage"][picked]
        if cfg.normalize_advantages and len(rows) > 1:
            advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
        distribution = torch.distributions.Categorical(logits=self.actor(obs))
        log_prob = distribution.log_prob(self._batch["action"][picked])
        log_ratio = log_prob - self._batch["log_prob"][picked]
        ratio = log_ratio.exp()
        policy_loss = torch.max(-advantage * ratio, -advantage * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)).mean()
        value_loss = 0.5 * (self.critic(obs).squeeze(1) - self._batch["return"][picked]).pow(2).mean()
        entropy = distribution.entropy().mean()
        loss = policy_loss - self.entropy_coef * entropy + cfg.value_coef * value_loss

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_([*self.actor.parameters(), *self.critic.parameters()], cfg.max_grad_norm)
        self.optimizer.step()
        self.gradient_steps += 1
        with torch.no_grad():
            # The "k3" estimator of KL(old || new) (Schulman's note "Approximating KL divergence").
            approx_kl = ((ratio - 1) - log_ratio).mean()
            clipped = ((ratio - 1).abs() > cfg.clip_coef).float().mean()
        return {
            "ippo/policy_loss": policy_loss.item(),
            "ippo/value_loss": value_loss.item(),
            "ippo/entropy": entropy.item(),
            "ippo/approx_kl": approx_kl.item(),
            "ippo/clip_fraction": clipped.item(),
        }

    def counters(self) -> dict[str, float]:
        """Parley's update-ratio contract, cumulative: minibatch steps taken, pending, owed, rows."""
        pending = self.gradient_steps_due()
        return {
            "ippo/gradient_steps": float(self.gradient_steps),
            "ippo/steps_pending": float(pending),
            "ippo/steps_owed": float(self.gradient_steps + pending),
            "ippo/rows_observed": float(self.rows_observed),
            "ippo/updates": float(self.updates),
        }

    def state_dict(self) -> dict[str, Any]:
        """Networks, optimizer, counters and random streams (the rollout is `replay`, saved apart).
        Loadable with `torch.load(..., weights_only=True)`."""
        return {
            "algorithm": "ippo",
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rows_observed": self.rows_observed,
            "gradient_steps": self.gradient_steps,
            "updates": self.updates,
            "entropy_coef": self.entropy_coef,
            "act_generator": self.act_generator.get_state(),
            "shuffle_rng": self.shuffle_rng.bit_generator.state,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("algorithm") != "ippo":
            raise ValueError(f"expected an IPPO checkpoint (algorithm 'ippo'), got algorithm {state.get('algorithm')!r}")
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rows_observed = int(state["rows_observed"])
        self.gradient_steps = int(state["gradient_steps"])
        self.updates = int(state["updates"])
        self.entropy_coef = float(state.get("entropy_coef", self.config.entropy_coef))
        self.act_generator.set_state(state["act_generator"])
        self.shuffle_rng.bit_generator.state = state["shuffle_rng"]
        self._batch, self._order, self._acted = None, [], None

    # ------------------------------------------------------------------ ParamSource

    def get_params(self) -> dict[str, np.ndarray]:
        """Actor and critic parameters, named `actor.<name>` and `critic.<name>` (copies)."""
        return {
            f"{prefix}.{name}": tensor.detach().numpy().copy()
            for prefix, module in (("actor", self.actor), ("critic", self.critic))
            for name, tensor in module.state_dict().items()
        }

    def set_params(self, params: Mapping[str, np.ndarray]) -> None:
        """Overwrite actor and critic by name; names and shapes must match `get_params`."""
        expected = self.get_params()
        if set(params) != set(expected):
            raise KeyError(f"expected parameters {sorted(expected)}, got {sorted(params)}")
        for prefix, module in (("actor", self.actor), ("critic", self.critic)):
            state = {}
            for name, tensor in module.state_dict().items():
                value = np.asarray(params[f"{prefix}.{name}"])
                if value.shape != tuple(tensor.shape):
                    raise ValueError(f"{prefix}.{name}: expected shape {tuple(tensor.shape)}, got {value.shape}")
                state[name] = torch.as_tensor(value, dtype=tensor.dtype)
            module.load_state_dict(state)
