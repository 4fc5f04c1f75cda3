"""A DQN agent whose network can be shared by any agent of any run up to a maximum size.

The input of the Q-network is a fixed-width vector, whatever the run:

    x = [ flatten(o) zero-padded to max_obs_dim | one_hot(agent_index) zero-padded to max_agents ]

so one parameter vector fits every agent (parameter sharing: the agents' copies can be averaged by
consensus, or all loaded from one checkpoint) and every run whose agents and observations fit the
maxima: a policy trained with 2 pursuers loads into a run with 4 (ALGORITHMS.md section 5). The
learning itself is `DQNAgent` (Double DQN, `agent_node/algos/dqn.py`) on that input; this file only
encodes observations on the way in.

Why a padded one-hot index, not a permutation-invariant encoder (deep sets / attention over
entities): the encoders need the observation as a set of entities, and the target environment's
observation is not one (pursuit gives each pursuer a 7x7x3 image of its surroundings, the same
size for any number of pursuers). The padded one-hot is what the marl-offline-coordination code
uses (`marlkit/envs/wrappers.py:298-301`: an agent-index one-hot of length `max_num_agents`
appended to the observation; the same wrapper also appends the last action, which this agent does
not, since a feed-forward DQN gains little from it on pursuit).

The index's weak spot is zero-shot transfer to more agents: indices never seen in training have
untrained weights. With `zero_init_agent_index` (the default) the first layer's weights for the
index inputs start at 0; an index that never appears in training keeps exactly 0 weights (its
input is 0 on every training row, so its gradient and Adam's update are 0), and an unseen agent is
evaluated as "an agent without an index" instead of with random offsets.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import gymnasium as gym
import numpy as np
import torch

from agent_node.algos.config import SharedDQNConfig
from agent_node.algos.dqn import DQNAgent
from agent_node.algos.learner_parts import check_algorithm, check_config, check_space, checked_obs
from agent_node.roles import Transition


class AgentIndexEncoding:
    """Observation (K, *obs_shape) -> (K, max_obs_dim + max_agents) float32, as in the module docstring."""

    def __init__(self, obs_shape: tuple[int, ...], max_obs_dim: int, max_agents: int, agent_index: int) -> None:
        self.obs_shape = tuple(obs_shape)
        self.obs_dim = int(np.prod(self.obs_shape))
        if self.obs_dim > max_obs_dim:
            raise ValueError(
                f"this agent's observation has {self.obs_dim} entries (shape {self.obs_shape}), more than "
                f"max_obs_dim {max_obs_dim}; raise max_obs_dim (checkpoints only move between runs with the same value)"
            )
        if not isinstance(agent_index, int) or not 0 <= agent_index < max_agents:
            raise ValueError(f"agent_index must be in [0, max_agents={max_agents}), got {agent_index!r}")
        self.max_obs_dim = max_obs_dim
        self.max_agents = max_agents
        self.agent_index = agent_index
        self.width = max_obs_dim + max_agents

    def encode(self, obs: np.ndarray) -> np.ndarray:
        obs = checked_obs(obs, self.obs_shape)
        encoded = np.zeros((obs.shape[0], self.width), np.float32)
        encoded[:, : self.obs_dim] = obs.reshape(obs.shape[0], -1)
        encoded[:, self.max_obs_dim + self.agent_index] = 1.0
        return encoded


class SharedDQNAgent:
    """Actor, Learner and ParamSource: `DQNAgent` on the padded, index-tagged observation."""

    def __init__(
        self,
        config: SharedDQNConfig,
        observation_space: gym.spaces.Space,
        action_space: gym.spaces.Space,
        seed: int,
        *,
        agent_index: int,
    ) -> None:
        check_config(config, SharedDQNConfig)
        check_space(observation_space, gym.spaces.Box, "shared DQN needs a Box observation space")
        self.config = config
        self.encoding = AgentIndexEncoding(observation_space.shape, config.max_obs_dim, config.max_agents, agent_index)
        encoded_space = gym.spaces.Box(-np.inf, np.inf, (self.encoding.width,), np.float32)
        self.dqn = DQNAgent(config.dqn, encoded_space, action_space, seed)
        if config.zero_init_agent_index:
            index_columns = slice(config.max_obs_dim, self.encoding.width)
            with torch.no_grad():
                for network in (self.dqn.q_network, self.dqn.target_network):
                    network.layers[0].weight[:, index_columns] = 0.0
        # The node saves and restores `learner.replay`; it holds encoded observations.
        self.replay = self.dqn.replay

    @property
    def agent_index(self) -> int:
        return self.encoding.agent_index

    # ------------------------------------------------------------------ Actor

    def act(self, obs: np.ndarray, explore: bool = True) -> np.ndarray:
        return self.dqn.act(self.encoding.encode(obs), explore=explore)

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        return self.dqn.q_values(self.encoding.encode(obs))

    # ------------------------------------------------------------------ Learner

    def observe(self, transition: Transition) -> None:
        self.dqn.observe(
            dataclasses.replace(
                transition, obs=self.encoding.encode(transition.obs), next_obs=self.encoding.encode(transition.next_obs)
            )
        )

    def gradient_steps_due(self) -> int:
        return self.dqn.gradient_steps_due()

    def forgive_gradient_steps(self, steps: int) -> None:
        self.dqn.forgive_gradient_steps(steps)

    def counters(self) -> dict[str, float]:
        """The wrapped DQN's update-ratio contract (roles.Learner.counters)."""
        return self.dqn.counters()

    def update(self, max_gradient_steps: int | None = None) -> dict[str, float]:
        return self.dqn.update(max_gradient_steps)

    def state_dict(self) -> dict[str, Any]:
        """DQN's state plus the input layout. The agent index is not saved: it belongs to the run
        that loads the checkpoint, so agent 1 of a 2-agent run can become agent 3 of a 4-agent run."""
        return {
            "algorithm": "shared_dqn",
            "max_obs_dim": self.config.max_obs_dim,
            "max_agents": self.config.max_agents,
            "dqn": self.dqn.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        check_algorithm(state, "shared_dqn", "shared DQN")
        layout = (int(state["max_obs_dim"]), int(state["max_agents"]))
        if layout != (self.config.max_obs_dim, self.config.max_agents):
            raise ValueError(
                f"checkpoint has max_obs_dim {layout[0]} and max_agents {layout[1]}, this agent has "
                f"{self.config.max_obs_dim} and {self.config.max_agents}; a shared policy moves only between "
                "runs with the same maxima"
            )
        self.dqn.load_state_dict(state["dqn"])

    # ------------------------------------------------------------------ ParamSource

    def get_params(self) -> dict[str, np.ndarray]:
        return self.dqn.get_params()

    def set_params(self, params: Mapping[str, np.ndarray]) -> None:
        self.dqn.set_params(params)
