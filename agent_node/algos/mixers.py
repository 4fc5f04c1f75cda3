"""Centralized training of per-agent Q-networks through a mixing network: VDN and QMIX.

References, to check this file against:
- Sunehag et al. 2018, "Value-Decomposition Networks For Cooperative Multi-Agent Learning" (VDN):
  Q_tot(s, u) = sum_i Q_i(o_i, u_i).
- Rashid et al. 2018, "QMIX: Monotonic Value Function Factorisation for Deep Multi-Agent
  Reinforcement Learning": Q_tot = f_s(Q_1, ..., Q_N) with dQ_tot/dQ_i >= 0, enforced by mixing
  weights that hypernetworks produce from the global state s and that pass through abs(); the
  first layer's bias is a linear function of s, the output's bias a two-layer network V(s); ELU
  between the two mixing layers. Layout as in pymarl (`oxwhirl/pymarl`,
  src/modules/mixers/qmix.py: `hyper_w_1`, `hyper_w_final`, `hyper_b_1`, `V`, abs on both weights).

Why monotonic mixing matters: if Q_tot grows with every Q_i, then the joint action that maximizes
Q_tot is the one in which every agent maximizes its own Q_i, so agents act greedily and
independently in their own processes while training is centralized.

## The update (one gradient step on a batch of joint transitions)

    q_i      = Q_i(o_i)[u_i]                                   each agent's value of what it did
    u'_i     = argmax_a Q_i(o'_i)[a]          (double Q: online networks pick)
    q'_i     = Q-_i(o'_i)[u'_i]               (target networks evaluate; plain max without double Q)
    y        = r + gamma * (1 - terminated) * Q-_tot(q'_1..q'_N, s')    target mixer on s'
    L        = mean over the batch of (Q_tot(q_1..q_N, s) - y)^2  (or its Huber form, `loss: huber`)
    every `target_update_period` steps: all target networks <- online networks (hard copy)

One loss updates every agent's network and the mixer (their gradients flow through Q_tot).
Agents absent from a row (variable agent counts; `active` false) contribute q_i = 0, so the
mixer input keeps its fixed width `num_agents`.

## Where it runs

In a `learner` node (agent_node/ctde/learner_node.py, `training.mode: centralized`): agents act in their own processes, send transitions, and
receive their Q-network's parameters back. `agent_params(i)` names them exactly as
`DQNAgent.get_params` does (`q_network.layers.<k>.<weight|bias>`), so an agent node running DQN
for acting can take them with `set_params`. Everything here takes numpy batches and is tested
offline.
"""

from __future__ import annotations

from typing import Any, Mapping

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from agent_node.algos.config import MixerConfig
from agent_node.algos.dqn import QNetwork
from agent_node.algos.learner_parts import check_config, check_space, scheduled_learning_rate, set_learning_rate
from agent_node.algos.params import module_params

# ---------------------------------------------------------------------------------- mixers


class VDNMixer(nn.Module):
    """Q_tot = sum_i Q_i (the state is ignored)."""

    def forward(self, agent_qs: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return agent_qs.sum(dim=1)


class QMIXMixer(nn.Module):
    """Q_tot = w2(s) . elu(W1(s)^T q + b1(s)) + V(s), with W1 = |hyper_w1(s)|, w2 = |hyper_w2(s)|."""

    def __init__(self, num_agents: int, state_dim: int, embed_dim: int, hypernet_layers: int, hypernet_hidden: int) -> None:
        super().__init__()
        self.num_agents = num_agents
        self.embed_dim = embed_dim

        def hypernet(out_features: int) -> nn.Module:
            if hypernet_layers == 1:
                return nn.Linear(state_dim, out_features)
            return nn.Sequential(nn.Linear(state_dim, hypernet_hidden), nn.ReLU(), nn.Linear(hypernet_hidden, out_features))

        self.hyper_w1 = hypernet(num_agents * embed_dim)
        self.hyper_w2 = hypernet(embed_dim)
        self.hyper_b1 = nn.Linear(state_dim, embed_dim)
        self.value = nn.Sequential(nn.Linear(state_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, 1))

    def forward(self, agent_qs: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """agent_qs (B, N), state (B, S) -> Q_tot (B,)."""
        batch = agent_qs.shape[0]
        w1 = self.hyper_w1(state).abs().view(batch, self.num_agents, self.embed_dim)
        b1 = self.hyper_b1(state)
        hidden = F.elu(torch.bmm(agent_qs.unsqueeze(1), w1).squeeze(1) + b1)  # (B, E)
        w2 = self.hyper_w2(state).abs()  # (B, E)
        return (hidden * w2).sum(dim=1) + self.value(state).squeeze(1)


# ---------------------------------------------------------------------------------- joint replay


class JointReplayBuffer:
    """A ring of joint transitions (all agents of one env step in one row), sampled uniformly.

    Row layout: state (S,), obs (N, O), action (N,) int64, reward () float32, next_state (S,),
    next_obs (N, O), terminated () bool, active (N,) bool, next_active (N,) bool.
    """

    def __init__(self, capacity: int, num_agents: int, obs_dim: int, state_dim: int, seed: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be a positive integer, got {capacity!r}")
        self.capacity = capacity
        self.shapes = {
            "state": ((state_dim,), np.float32),
            "obs": ((num_agents, obs_dim), np.float32),
            "action": ((num_agents,), np.int64),
            "reward": ((), np.float32),
            "next_state": ((state_dim,), np.float32),
            "next_obs": ((num_agents, obs_dim), np.float32),
            "terminated": ((), bool),
            "active": ((num_agents,), bool),
            "next_active": ((num_agents,), bool),
        }
        self.data = {name: np.zeros((capacity, *shape), dtype) for name, (shape, dtype) in self.shapes.items()}
        self.position = 0
        self.size = 0
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.size

    def add(self, rows: Mapping[str, np.ndarray]) -> None:
        """Append B joint rows; `active` / `next_active` default to all agents present."""
        count = len(np.asarray(rows["reward"]))
        for name, (shape, dtype) in self.shapes.items():
            if name in ("active", "next_active") and name not in rows:
                values = np.ones((count, *shape), bool)
            else:
                values = np.asarray(rows[name])
            if values.shape != (count, *shape):
                raise ValueError(f"joint rows: {name!r} must have shape {(count, *shape)}, got {values.shape}")
            slots = (self.position + np.arange(count)) % self.capacity
            self.data[name][slots] = values.astype(dtype, copy=False)
        self.position = (self.position + count) % self.capacity
        self.size = min(self.size + count, self.capacity)

    def sample(self, batch_size: int) -> dict[str, np.ndarray]:
        if self.size == 0:
            raise ValueError("cannot sample from an empty joint replay buffer")
        indices = self.rng.integers(0, self.size, size=batch_size)
        return {name: values[indices] for name, values in self.data.items()}


# ---------------------------------------------------------------------------------- learner


class CentralizedMixerLearner:
    """All agents' Q-networks and a VDN or QMIX mixer, trained together on joint transitions."""

    def __init__(
        self,
        config: MixerConfig,
        observation_space: gym.spaces.Space,
        action_space: gym.spaces.Space,
        state_space: gym.spaces.Space,
        num_agents: int,
        seed: int,
    ) -> None:
        check_config(config, MixerConfig)
        check_space(observation_space, gym.spaces.Box, "the agents' Q-networks need a Box observation space")
        check_space(action_space, gym.spaces.Discrete, "value decomposition needs a Discrete action space")
        check_space(state_space, gym.spaces.Box, "the mixer needs a Box global state space")
        if not isinstance(num_agents, int) or num_agents < 1:
            raise ValueError(f"num_agents must be a positive int, got {num_agents!r}")
        self.config = config
        self.num_agents = num_agents
        self.num_actions = int(action_space.n)
        self.obs_dim = int(np.prod(observation_space.shape))
        self.state_dim = int(np.prod(state_space.shape))

        init_seed, replay_seed = np.random.SeedSequence(int(seed)).spawn(2)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(init_seed.generate_state(1)[0]))
            self.agent_networks = nn.ModuleList(
                [QNetwork(self.obs_dim, self.num_actions, config.agent_hidden_sizes) for _ in range(num_agents)]
            )
            self.mixer = self._make_mixer()
            self.target_agent_networks = nn.ModuleList(
                [QNetwork(self.obs_dim, self.num_actions, config.agent_hidden_sizes) for _ in range(num_agents)]
            )
            self.target_mixer = self._make_mixer()
        self.target_agent_networks.load_state_dict(self.agent_networks.state_dict())
        self.target_mixer.load_state_dict(self.mixer.state_dict())
        self.target_agent_networks.requires_grad_(False)
        self.target_mixer.requires_grad_(False)
        self.parameters = list(self.agent_networks.parameters()) + list(self.mixer.parameters())
        self.optimizer = torch.optim.Adam(self.parameters, lr=config.learning_rate)
        self.replay_seed = int(replay_seed.generate_state(1)[0])
        self.gradient_steps = 0

    def _make_mixer(self) -> nn.Module:
        cfg = self.config
        if cfg.mixer == "vdn":
            return VDNMixer()
        return QMIXMixer(self.num_agents, self.state_dim, cfg.mixing_embed_dim, cfg.hypernet_layers, cfg.hypernet_hidden)

    def make_replay(self, capacity: int) -> JointReplayBuffer:
        """A joint replay buffer shaped for this learner, seeded from its seed."""
        return JointReplayBuffer(capacity, self.num_agents, self.obs_dim, self.state_dim, self.replay_seed)

    # ------------------------------------------------------------------ values

    def agent_q_values(self, obs: torch.Tensor, networks: nn.ModuleList) -> torch.Tensor:
        """(B, N, O) observations -> (B, N, num_actions) Q-values, agent i through network i."""
        return torch.stack([network(obs[:, i]) for i, network in enumerate(networks)], dim=1)

    def td_targets(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """y = r + gamma (1 - terminated) Q-_tot(q'_1..q'_N, s'), q'_i chosen per the module docstring."""
        cfg = self.config
        with torch.no_grad():
            next_q_target = self.agent_q_values(batch["next_obs"], self.target_agent_networks)
            if cfg.double_q:
                next_actions = self.agent_q_values(batch["next_obs"], self.agent_networks).argmax(dim=2, keepdim=True)
                next_q = next_q_target.gather(2, next_actions).squeeze(2)
            else:
                next_q = next_q_target.max(dim=2).values
            next_q = next_q * batch["next_active"]
            next_total = self.target_mixer(next_q, batch["next_state"])
            return batch["reward"] + cfg.gamma * (1.0 - batch["terminated"]) * next_total

    def chosen_total(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Q_tot(q_1..q_N, s) of the actions taken, with gradients to every network."""
        q_values = self.agent_q_values(batch["obs"], self.agent_networks)
        chosen = q_values.gather(2, batch["action"].unsqueeze(2)).squeeze(2) * batch["active"]
        return self.mixer(chosen, batch["state"])

    # ------------------------------------------------------------------ training

    def train_step(self, batch: Mapping[str, np.ndarray]) -> dict[str, float]:
        """One gradient step on a batch of joint rows (numpy, `JointReplayBuffer.sample` layout)."""
        tensors = self._tensors(batch)
        target = self.td_targets(tensors)
        total = self.chosen_total(tensors)
        loss = F.mse_loss(total, target) if self.config.loss == "mse" else F.smooth_l1_loss(total, target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = self.config.max_grad_norm if self.config.max_grad_norm is not None else float("inf")
        grad_norm = nn.utils.clip_grad_norm_(self.parameters, max_norm)
        set_learning_rate(self.optimizer, scheduled_learning_rate(
            self.config.learning_rate, self.config.learning_rate_end, self.config.learning_rate_decay_steps, self.gradient_steps))
        self.optimizer.step()
        self.gradient_steps += 1
        if self.gradient_steps % self.config.target_update_period == 0:
            self.target_agent_networks.load_state_dict(self.agent_networks.state_dict())
            self.target_mixer.load_state_dict(self.mixer.state_dict())
        return {
            "mixer/loss": loss.item(),
            "mixer/q_total_mean": total.mean().item(),
            "mixer/target_mean": target.mean().item(),
            "mixer/grad_norm": float(grad_norm),
            "mixer/learning_rate": float(self.optimizer.param_groups[0]["lr"]),
        }

    def greedy_actions(self, obs: np.ndarray) -> np.ndarray:
        """Each agent's argmax action for (B, N, O) observations, (B, N)."""
        with torch.inference_mode():
            q_values = self.agent_q_values(torch.as_tensor(obs, dtype=torch.float32).reshape(len(obs), self.num_agents, -1), self.agent_networks)
        return q_values.argmax(dim=2).numpy()

    def joint_q_table(self, obs: np.ndarray, state: np.ndarray) -> np.ndarray:
        """Q_tot(s, u) of every joint action u for one (N, O) observation and one (S,) state,
        shaped (num_actions,) * N: entry [u_0, u_1, ...] mixes Q_0(o_0)[u_0], Q_1(o_1)[u_1], ...
        For reading what was learned (bench/ctde_games.py prints it beside the papers' tables)."""
        obs = np.asarray(obs, dtype=np.float32).reshape(self.num_agents, self.obs_dim)
        state = np.asarray(state, dtype=np.float32).reshape(self.state_dim)
        joint = np.array(np.meshgrid(*[np.arange(self.num_actions)] * self.num_agents, indexing="ij")).reshape(self.num_agents, -1).T
        with torch.inference_mode():
            q_values = self.agent_q_values(torch.as_tensor(obs).unsqueeze(0), self.agent_networks)[0]  # (N, A)
            chosen = q_values[torch.arange(self.num_agents), torch.as_tensor(joint)]  # (A^N, N)
            totals = self.mixer(chosen, torch.as_tensor(state).expand(len(joint), -1))
        return totals.numpy().reshape((self.num_actions,) * self.num_agents)

    def _tensors(self, batch: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        count = len(np.asarray(batch["reward"]))
        expected = {
            "state": (count, self.state_dim),
            "obs": (count, self.num_agents, self.obs_dim),
            "action": (count, self.num_agents),
            "reward": (count,),
            "next_state": (count, self.state_dim),
            "next_obs": (count, self.num_agents, self.obs_dim),
            "terminated": (count,),
            "active": (count, self.num_agents),
            "next_active": (count, self.num_agents),
        }
        tensors = {}
        for name, shape in expected.items():
            if name in ("active", "next_active") and name not in batch:
                values = np.ones(shape, np.float32)
            else:
                values = np.asarray(batch[name])
            if name in ("obs", "next_obs"):
                values = values.reshape(count, self.num_agents, -1)
            if values.shape != shape:
                raise ValueError(f"mixer batch: {name!r} must have shape {shape}, got {values.shape}")
            if name == "action":
                action_values = values.astype(np.int64)
                if action_values.size and (action_values.min() < 0 or action_values.max() >= self.num_actions):
                    raise ValueError(f"mixer batch: actions must lie in [0, {self.num_actions - 1}]")
                tensors[name] = torch.as_tensor(action_values)
            else:
                tensors[name] = torch.as_tensor(values.astype(np.float32))
        return tensors

    # ------------------------------------------------------------------ parameters for the agents

    def agent_params(self, index: int) -> dict[str, np.ndarray]:
        """Agent `index`'s Q-network, named like `DQNAgent.get_params` so a DQN agent can load it."""
        return module_params(self.agent_networks[index], "q_network")

    def state_dict(self) -> dict[str, Any]:
        return {
            "algorithm": f"mixer_{self.config.mixer}",
            "agent_networks": self.agent_networks.state_dict(),
            "target_agent_networks": self.target_agent_networks.state_dict(),
            "mixer": self.mixer.state_dict(),
            "target_mixer": self.target_mixer.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "gradient_steps": self.gradient_steps,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        expected = f"mixer_{self.config.mixer}"
        if state.get("algorithm") != expected:
            raise ValueError(f"expected a {expected!r} state dict, got algorithm {state.get('algorithm')!r}")
        self.agent_networks.load_state_dict(state["agent_networks"])
        self.target_agent_networks.load_state_dict(state["target_agent_networks"])
        self.mixer.load_state_dict(state["mixer"])
        self.target_mixer.load_state_dict(state["target_mixer"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.learning_rate
        self.gradient_steps = int(state["gradient_steps"])
