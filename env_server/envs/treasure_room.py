"""# Treasure room (`treasure_room_v0`)

| | |
| --- | --- |
| Import | `from env_server.envs.treasure_room import parallel_env` |
| Actions | `Discrete(5)`: stay, up, down, left, right |
| Parallel API | yes (`ParallelEnv`; there is no AEC version) |
| Agents | `possible_agents = ["agent_0", ..., "agent_{N-1}"]`, all active every episode |
| Observation space | `Box(0, 1, (2,), float32)`: the agent's own `(row, col) / (size - 1)` |
| Reward | 1 the step an agent steps onto the treasure cell, else 0 (sparse, extrinsic) |
| Episode | an agent terminates on the treasure; the episode is truncated after `max_steps` steps |

A small grid for AMIGo's teacher (ALGORITHMS.md section 3; Campero et al., arXiv 2006.12122):
the goals the teacher proposes are cells, so the environment reports, every step, which cell each
agent stands on (`infos[agent]["cell"]`, an int64 index `row * size + col`, numbered as in
`protocols/goal_spaces/cell_space.py`). It knows nothing of goals: the agents compute their goal rewards
themselves, as on goal_lines.

## Room

A `size x size` open room (9 by default), cells `(row, col)`, row 0 at the top. Every agent starts
on a uniformly drawn cell of the top-left `start_region x start_region` corner (agents may share a
cell; they never block each other); the treasure lies in the opposite corner, `(size - 1, size -
1)`. A move into a wall leaves the agent where it is. The agents share the room but do not
interact: each one's task is to find the treasure, which pays every agent that reaches it.

This is not the paper's setting (MiniGrid's KeyCorridor and ObstructedMaze: partial views, keys,
doors, boxes): it is the smallest grid where a sparse extrinsic reward lies beyond what random
exploration finds within an episode (the treasure is `2 (size - start_region)` moves away, more
than an epsilon-greedy random walk covers in `max_steps`), so a curriculum of cells has
something to do.

## Arguments

```python
parallel_env(num_agents=2, size=9, max_steps=40, start_region=3, render_mode=None)
```

`reset(seed)` seeds the draw of the start cells; a reset without a seed continues the same
generator, so one seed fixes every later episode.

## Version history

- v0: first version.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium.spaces import Box, Discrete
from pettingzoo import ParallelEnv

from env_server.envs.arguments import SpacesPerAgent, check_seed, checked_moves, require_int
from protocols.goal_spaces.cell_space import cell_index

MOVES = np.array([(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)], dtype=np.int64)  # stay, up, down, left, right


class TreasureRoomEnv(SpacesPerAgent, ParallelEnv):
    """Agents in an open room, a treasure in the far corner; see the module documentation."""

    metadata = {"name": "treasure_room_v0", "render_modes": [], "is_parallelizable": True}

    def __init__(self, num_agents: int = 2, size: int = 9, max_steps: int = 40, start_region: int = 3, render_mode: str | None = None) -> None:
        self.size = require_int("size", size, minimum=3)
        self.max_steps = require_int("max_steps", max_steps, minimum=1)
        self.start_region = require_int("start_region", start_region, minimum=1)
        if self.start_region >= self.size:
            raise ValueError(f"start_region ({start_region}) must be smaller than size ({size}): the treasure lies outside it")
        count = require_int("num_agents", num_agents, minimum=1)
        if render_mode is not None:
            raise ValueError(f"render_mode must be None (treasure_room_v0 renders nothing), got {render_mode!r}")
        self.render_mode = None
        self.treasure = np.array([self.size - 1, self.size - 1], dtype=np.int64)
        self.possible_agents = [f"agent_{index}" for index in range(count)]
        self.agents: list[str] = []
        self.observation_spaces = {agent: Box(0.0, 1.0, shape=(2,), dtype=np.float32) for agent in self.possible_agents}
        self.action_spaces = {agent: Discrete(len(MOVES)) for agent in self.possible_agents}
        self._rng = np.random.default_rng()
        self._positions: dict[str, np.ndarray] = {}
        self._steps_taken = 0

    def reset(self, seed: int | None = None, options: dict | None = None):
        check_seed(seed)
        if seed is not None:
            self._rng = np.random.default_rng(int(seed))
        self.agents = list(self.possible_agents)
        self._steps_taken = 0
        starts = self._rng.integers(0, self.start_region, size=(len(self.agents), 2))
        self._positions = {agent: starts[k].copy() for k, agent in enumerate(self.agents)}
        return {agent: self._observe(agent) for agent in self.agents}, {agent: self._info(agent) for agent in self.agents}

    def step(self, actions: dict[str, Any]):
        for agent, move in checked_moves(self.agents, actions, len(MOVES)).items():
            target = self._positions[agent] + MOVES[move]
            if 0 <= target[0] < self.size and 0 <= target[1] < self.size:
                self._positions[agent] = target
        self._steps_taken += 1
        live = list(self.agents)
        on_treasure = {agent: bool(np.array_equal(self._positions[agent], self.treasure)) for agent in live}
        rewards = {agent: 1.0 if on_treasure[agent] else 0.0 for agent in live}
        terminations = dict(on_treasure)
        out_of_time = self._steps_taken >= self.max_steps
        truncations = {agent: out_of_time and not terminations[agent] for agent in live}
        observations = {agent: self._observe(agent) for agent in live}
        infos = {agent: self._info(agent) for agent in live}
        self.agents = [agent for agent in live if not (terminations[agent] or truncations[agent])]
        return observations, rewards, terminations, truncations, infos

    def close(self) -> None:
        pass

    def _info(self, agent: str) -> dict[str, np.int64]:
        row, col = self._positions[agent]
        return {"cell": np.int64(cell_index(int(row), int(col), self.size))}

    def _observe(self, agent: str) -> np.ndarray:
        return (self._positions[agent] / float(self.size - 1)).astype(np.float32)


def parallel_env(num_agents: int = 2, size: int = 9, max_steps: int = 40, start_region: int = 3, render_mode: str | None = None) -> TreasureRoomEnv:
    """A fresh treasure room; see the module documentation for the arguments."""
    return TreasureRoomEnv(num_agents, size, max_steps, start_region, render_mode)
