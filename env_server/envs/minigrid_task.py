"""# MiniGrid tasks, one copy per agent (`minigrid_v0`)

| | |
| --- | --- |
| Import | `from env_server.envs.minigrid_task import parallel_env` |
| Needs | the `minigrid` package (`pip install --no-deps minigrid==3.0.0`; see below) |
| Actions | `Discrete(7)`: MiniGrid's turn left, turn right, forward, pick up, drop, toggle, done |
| Parallel API | yes (`ParallelEnv`; there is no AEC version) |
| Agents | `possible_agents = ["agent_0", ..., "agent_{N-1}"]`, all active every episode |
| Observation space | `Box(0, 1, (8 + 3 S^2,), float32)`: the whole grid, fully observed (below) |
| Reward | MiniGrid's: `1 - 0.9 t / max_steps` on the step the task is done, else 0 |
| Episode | an agent terminates when its task is done; all are truncated after `max_steps` steps |

A single-agent task of the MiniGrid package (Chevalier-Boisvert et al.) served to several agents,
for AMIGo (ALGORITHMS.md section 3; Campero et al., arXiv 2006.12122, trains on KeyCorridorS3R3
and ObstructedMaze-1Dl among others). MiniGrid has one agent per grid, so **each agent gets its own
copy of the task** (its own layout, drawn from its own seed): the agents do not meet; they are
independent students learning the same kind of task side by side, as on treasure_room. AMIGo's
protocol needs nothing more, since each agent's teacher is its own (agent_node/amigo/session.py).

## Observation

Fully observed, as the paper's agents see it (not MiniGrid's default 7x7 partial view). The grid
(`width x height`) is padded with empty codes to `S x S`, `S = max(width, height)`, and every
agent observes (the layout of `protocols/goal_spaces/cell_space.py`, which the teacher reads back):

- its cell `(row, col) / (S - 1)` (row = MiniGrid's y, col = its x);
- its direction, one-hot over MiniGrid's 4 (right, down, left, up);
- what it carries: object and colour codes scaled to [0, 1] (0, 0 for nothing);
- every cell's MiniGrid code (object, colour, state), scaled to [0, 1], row-major, with the agent's
  own cell coded as the agent (as MiniGrid's `FullyObsWrapper` does).

`infos[agent]["cell"]` is the agent's cell `row * S + col` every step (the cells AMIGo's teacher
proposes, numbered as in `protocols/goal_spaces/cell_space.py`).

## Arguments

```python
parallel_env(env_id="MiniGrid-KeyCorridorS3R1-v0", num_agents=2, max_steps=None, render_mode=None)
```

`env_id`: any registered MiniGrid id (`MiniGrid-...`). `max_steps`: the episode limit (None:
the task's own, e.g. 270 for KeyCorridorS3R1 and S3R3). `reset(seed)` seeds each agent's copy
with its own seed derived from `seed`; a reset without a seed continues every copy's generator,
so one seed fixes every later layout.

## Installing

`minigrid` 3.0.0 depends on `pygame`, which would overwrite the `pygame-ce` that mpe2 (a Parley
dependency) installs under the same module name; MiniGrid only needs pygame to draw, which this
env never does. Install it without its dependencies: `pip install --no-deps minigrid==3.0.0`
(`make setup` does).

## Version history

- v0: first version.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium.spaces import Box, Discrete
from pettingzoo import ParallelEnv

from env_server.envs.arguments import SpacesPerAgent, check_seed, require_int
from protocols.goal_spaces.cell_space import GRID_CODE_SCALE, cell_index, grid_observation_size
from protocols.seeds import derive_seed

AGENT_CODE = 10  # MiniGrid's OBJECT_TO_IDX["agent"]
RED = 0  # MiniGrid's COLOR_TO_IDX["red"]: the colour FullyObsWrapper gives the agent's cell


def _make_task(env_id: str, max_steps: int | None):
    try:
        import gymnasium
        import minigrid  # noqa: F401  (registers the MiniGrid-* ids with gymnasium)
    except ImportError as error:
        raise ImportError(
            "minigrid_v0 needs the minigrid package: pip install --no-deps minigrid==3.0.0 (its pygame dependency "
            "would replace mpe2's pygame-ce; this env draws nothing)"
        ) from error
    if not isinstance(env_id, str) or not env_id.startswith("MiniGrid-"):
        raise ValueError(f"env_id must be a MiniGrid task id such as 'MiniGrid-KeyCorridorS3R1-v0', got {env_id!r}")
    if env_id not in gymnasium.registry:
        known = sorted(name for name in gymnasium.registry if name.startswith("MiniGrid-"))
        raise ValueError(f"env_id {env_id!r} is not a registered MiniGrid task; known: {', '.join(known)}")
    kwargs = {} if max_steps is None else {"max_steps": max_steps}
    return gymnasium.make(env_id, **kwargs).unwrapped  # no wrappers: the grid is read directly


class MiniGridTaskEnv(SpacesPerAgent, ParallelEnv):
    """One MiniGrid task per agent, fully observed; see the module documentation."""

    metadata = {"name": "minigrid_v0", "render_modes": [], "is_parallelizable": True}

    def __init__(self, env_id: str = "MiniGrid-KeyCorridorS3R1-v0", num_agents: int = 2, max_steps: int | None = None,
                 render_mode: str | None = None) -> None:
        count = require_int("num_agents", num_agents, minimum=1)
        if max_steps is not None:
            max_steps = require_int("max_steps", max_steps, minimum=1)
        if render_mode is not None:
            raise ValueError(f"render_mode must be None (minigrid_v0 renders nothing), got {render_mode!r}")
        self.render_mode = None
        self.env_id = env_id
        self.possible_agents = [f"agent_{index}" for index in range(count)]
        self._tasks = {agent: _make_task(env_id, max_steps) for agent in self.possible_agents}
        first = self._tasks[self.possible_agents[0]]
        self.width, self.height = first.width, first.height
        self.size = max(self.width, self.height)  # the side of the padded square grid
        self.max_steps = first.max_steps
        self.agents: list[str] = []
        dim = grid_observation_size(self.size)
        self.observation_spaces = {agent: Box(0.0, 1.0, shape=(dim,), dtype=np.float32) for agent in self.possible_agents}
        self.action_spaces = {agent: Discrete(int(first.action_space.n)) for agent in self.possible_agents}
        self._scale = np.asarray(GRID_CODE_SCALE, dtype=np.float32)

    def reset(self, seed: int | None = None, options: dict | None = None):
        check_seed(seed)
        self.agents = list(self.possible_agents)
        for index, agent in enumerate(self.agents):
            # Each copy its own layout stream; seed None continues it.
            self._tasks[agent].reset(seed=None if seed is None else derive_seed(int(seed), index, "minigrid_v0"))
        return {agent: self._observe(agent) for agent in self.agents}, {agent: self._info(agent) for agent in self.agents}

    def step(self, actions: dict[str, Any]):
        missing = set(self.agents) - set(actions)
        if missing:
            raise ValueError(f"step needs an action for every live agent; missing {sorted(missing)}")
        live = list(self.agents)
        rewards, terminations, truncations = {}, {}, {}
        for agent in live:
            action = int(np.asarray(actions[agent]))
            if not 0 <= action < self.action_spaces[agent].n:
                raise ValueError(f"action of {agent} must be in [0, {self.action_spaces[agent].n}), got {actions[agent]!r}")
            _, reward, terminated, truncated, _ = self._tasks[agent].step(action)
            rewards[agent], terminations[agent] = float(reward), bool(terminated)
            truncations[agent] = bool(truncated) and not terminations[agent]
        observations = {agent: self._observe(agent) for agent in live}
        infos = {agent: self._info(agent) for agent in live}
        self.agents = [agent for agent in live if not (terminations[agent] or truncations[agent])]
        return observations, rewards, terminations, truncations, infos

    def close(self) -> None:
        for task in self._tasks.values():
            task.close()

    def _info(self, agent: str) -> dict[str, np.int64]:
        col, row = self._tasks[agent].agent_pos
        return {"cell": np.int64(cell_index(int(row), int(col), self.size))}

    def _observe(self, agent: str) -> np.ndarray:
        task = self._tasks[agent]
        col, row = (int(v) for v in task.agent_pos)
        codes = task.grid.encode()  # (width, height, 3), indexed [x, y]
        codes[col, row] = (AGENT_CODE, RED, task.agent_dir)
        grid = np.zeros((self.size, self.size, 3), dtype=np.float32)
        grid[: self.height, : self.width] = codes.transpose(1, 0, 2) / self._scale
        direction = np.zeros(4, dtype=np.float32)
        direction[task.agent_dir] = 1.0
        carried = np.zeros(2, dtype=np.float32)
        if task.carrying is not None:
            carried[:] = np.asarray(task.carrying.encode()[:2], dtype=np.float32) / self._scale[:2]
        position = np.array([row, col], dtype=np.float32) / (self.size - 1)
        return np.concatenate([position, direction, carried, grid.ravel()])


def parallel_env(env_id: str = "MiniGrid-KeyCorridorS3R1-v0", num_agents: int = 2, max_steps: int | None = None,
                 render_mode: str | None = None) -> MiniGridTaskEnv:
    """Fresh copies of a MiniGrid task, one per agent; see the module documentation for the arguments."""
    return MiniGridTaskEnv(env_id, num_agents, max_steps, render_mode)
