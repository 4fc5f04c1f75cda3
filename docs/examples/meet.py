"""Two agents on a line of `size` cells; both are paid 1 at every step they stand on the same cell."""

import functools

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv


class Meet(ParallelEnv):
    metadata = {"name": "meet_v0"}

    def __init__(self, size: int = 5, max_steps: int = 20):
        self.size, self.max_steps = size, max_steps
        self.possible_agents = ["agent_0", "agent_1"]
        self.agents = []

    @functools.lru_cache(maxsize=None)
    def observation_space(self, agent):
        return spaces.Box(0.0, 1.0, shape=(2,), dtype=np.float32)  # both positions, scaled to [0, 1]

    @functools.lru_cache(maxsize=None)
    def action_space(self, agent):
        return spaces.Discrete(3)  # left, stay, right

    def _observations(self):
        seen = (self.position / (self.size - 1)).astype(np.float32)
        return {agent: seen.copy() for agent in self.agents}

    def reset(self, seed=None, options=None):
        self.rng = np.random.default_rng(seed)
        self.agents = list(self.possible_agents)
        self.position = self.rng.integers(0, self.size, size=2)
        self.t = 0
        return self._observations(), {agent: {} for agent in self.agents}

    def step(self, actions):
        for i, agent in enumerate(self.possible_agents):
            self.position[i] = np.clip(self.position[i] + int(actions[agent]) - 1, 0, self.size - 1)
        self.t += 1
        reward = float(self.position[0] == self.position[1])
        observations = self._observations()
        rewards = {agent: reward for agent in self.agents}
        terminations = {agent: False for agent in self.agents}
        truncations = {agent: self.t >= self.max_steps for agent in self.agents}
        infos = {agent: {} for agent in self.agents}
        if self.t >= self.max_steps:
            self.agents = []
        return observations, rewards, terminations, truncations, infos


def parallel_env(size: int = 5, max_steps: int = 20):
    return Meet(size=size, max_steps=max_steps)
