"""# Goal lines (`goal_lines_v0`)

| | |
| --- | --- |
| Import | `from env_server.envs.goal_lines import parallel_env` |
| Actions | `Discrete(5)`: stay, up, down, left, right |
| Parallel API | yes (`ParallelEnv`; there is no AEC version) |
| Agents | `possible_agents = ["agent_0", ..., "agent_{P-1}"]` (the population); `agents` holds the ones drawn for this episode |
| Observation space | `Box(-1, 1, (2 + 2L + 2(A-1),), float32)`: own position, offset to each landmark, offset to each partner |
| Reward | 0, unless the episode's goals were given to `reset` or `assign_goals` (then the Dec-IMSAP reward, see below) |
| Episode | `max_steps = 40` steps, then truncation; with goals given, an agent terminates once rewarded |

The grid version of the Dec-IMSAP room (ALGORITHMS.md section 2; Nisioti et al., arXiv 2211.06082,
public code `Reytuag/imgc-marl`). The reference is continuous 2D physics; this grid keeps its goal
and reward logic and is cheap to step on a CPU.

## Room and landmarks

A `size x size` room (9 by default); cells are `(row, col)`, row 0 at the top. Landmarks are strips
of three cells along the walls (`LANDMARK_CELLS`); an agent *touches* a landmark while it stands on
one of the strip's cells. Strips never overlap, so an agent touches at most one landmark.

- `L = 3`: top wall centre, left wall lower third, right wall lower third.
- `L = 6`: two strips on the top wall, two on the bottom wall, one on each side wall.

Agents move one cell per step (or stay); a move into a wall leaves the agent where it is. Agents do
not block each other (several may share a cell). At reset the active agents start on distinct,
uniformly drawn cells that touch no landmark.

## Goals, and what the environment reports

Goal indices (`goal_table(L)` lists them): `0 .. L-1` are the *individual* goals (landmark i);
`L ..` are the *cooperative* goals, the pairs `(i, j)`, `i < j`, in lexicographic order. `L = 3`:
3 + 3 goals; `L = 6`: 6 + 15.

- Individual goal i is achieved at a step when any active agent touches landmark i.
- Cooperative goal (i, j) is achieved at a step when two different active agents touch i and j at
  that same step (with two agents: exactly that pair).

The environment is goal-agnostic: every step, `infos[agent]["achieved_goals"]` (an int64 array,
sorted) lists the goals achieved after the step that the agent observes, and
`infos[agent]["landmark"]` the landmark the agent touches (-1 for none). Agents choose goals and
compute their goal rewards themselves with `goal_reward(goal, achieved_goals, L, beta)`, the one
source of truth for the reward. What an agent observes (`view`):

- `"joint"` (the default): every goal the joint state achieves, the same list for every active
  agent.
- `"local"`: only the achievements the agent takes part in: the individual goal of the landmark it
  touches, and each cooperative goal pairing that landmark with one another agent touches at the
  same step. A landmark another agent touches while this one touches none (or touches the same
  one), and a pair two other agents achieve, are outside its view: it learns of them only if its
  partners tell it (`protocols/engines/hindsight.py`), so a partner's hindsight report carries news. An
  agent takes part in every cooperative goal it can be rewarded for, so a cooperative goal pays
  the same under both views (the view changes what HER can relabel with, not what the agent is
  paid); an individual goal pays under `"local"` only when the agent touches the landmark itself.
  The reference's agents are paid by the environment and observe no achieved goals at all;
  `"local"` is about the least an agent must observe to compute its own cooperative reward.
- `"own"`: only the individual goal of the landmark the agent touches, nothing else. The agent
  cannot tell from it whether any cooperative goal was achieved, so it cannot compute its own
  reward: the env pays it (`assign_goals`, below), as the reference's env pays its agents. What
  the joint state achieved, the cooperative goals included, an agent learns only from its
  partners' reports (`protocols/goal_spaces/goal_space.py` `complete_events` rebuilds the pairs from the
  landmarks every partner reports touching at the same step). This is the setting in which
  hindsight sharing is what turns a cooperative goal achieved by accident into training signal
  (ALGORITHMS.md section 2, "Hindsight").

For runs without goal-aware agents (and the in-process benchmark), the episode's goals can be
given to `reset(options={"goals": {agent: goal}})`: the environment then pays `goal_reward` and
applies the reference's episode rule: an agent terminates the step it is first rewarded, and is
then frozen in place (it keeps touching its landmark); the episode ends when every active agent
has terminated or at `max_steps`.

`assign_goals({agent: goal})`, called after `reset` and before the episode's first step (the env
server calls it when a goal agent's `goal.ready` names its goal, `agents.goals.paid_by: env`),
makes the env pay those agents `goal_reward` on the joint achievements at every step, and
changes nothing else: no agent terminates early, every episode lasts `max_steps`, and the agents
themselves stay put once rewarded (`agent_node/goals/session.py`), so the lockstep's membership
never changes within an episode. An agent not named is paid nothing.

## Reward (`goal_reward`)

1 when the agent's goal is a cooperative goal achieved at this step; `1 / beta` (`beta = 2`) when
its goal is an individual goal achieved at this step; 0 otherwise.

## Population

`population` agents exist (`possible_agents`); each reset draws `active_per_episode` of them
uniformly without replacement (2 in the paper's population-4 runs), or all of them when
`active_per_episode` is None. The others are absent from `agents` for the episode, the PettingZoo
way of saying an agent does not take part (the env server marks them inactive).
`reset(options={"active": [names]})` forces the draw.

## Observation

All offsets are divided by `size - 1`, so every entry lies in [-1, 1]:
`[own row, own col] / (size - 1)`, then for each landmark the offset from the agent to the
landmark's middle cell (row, col), then for each partner (the other active agents, in
`possible_agents` order) the offset to it. The reference observes distance and angle; the offset is
the same information on a grid. The goal is not part of the observation: a goal-conditioned
learner appends it (the environment is goal-agnostic).

## Arguments

```python
parallel_env(num_landmarks=6, size=9, max_steps=40, population=2, active_per_episode=2,
             beta=2.0, render_mode=None, view="joint")
```

`reset(seed)` seeds the draw of the active agents and of the start cells; a reset without a seed
continues the same generator, so one seed fixes every later episode.

## Version history

- v0: first version; `view` added later, its default (`"joint"`) the first version's behaviour.
"""

from __future__ import annotations

import itertools
import numbers
from typing import Any

import numpy as np
from gymnasium.spaces import Box, Discrete
from pettingzoo import ParallelEnv

from env_server.envs.arguments import SpacesPerAgent, check_seed, checked_moves, require_int
# The goal indices and the reward live in protocols/goal_spaces/goal_space.py (the agents compute their goal
# rewards with the same function, and agent_node never imports env_server); re-exported here.
from protocols.goal_spaces.goal_space import BETA, cooperative_goals, goal_reward, goal_table, individual_goals, num_goals  # noqa: F401

VIEWS = ("joint", "local", "own")  # what `infos[agent]["achieved_goals"]` holds; see the module documentation

MOVES = np.array([(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)], dtype=np.int64)  # stay, up, down, left, right


def landmark_cells(num_landmarks: int, size: int) -> list[list[tuple[int, int]]]:
    """The cells of each landmark strip, for `L` = 3 or 6 in a `size x size` room."""
    if num_landmarks not in (3, 6):
        raise ValueError(f"num_landmarks must be 3 or 6 (the reference's rooms), got {num_landmarks}")
    if size < 7:
        raise ValueError(f"size must be >= 7 so that the strips do not overlap, got {size}")
    last = size - 1
    middle = size // 2
    lower = last - 3  # first row of the side strips' lower third
    if num_landmarks == 3:
        strips = [
            [(0, middle - 1), (0, middle), (0, middle + 1)],  # top centre
            [(lower + r, 0) for r in range(3)],  # left wall, lower third
            [(lower + r, last) for r in range(3)],  # right wall, lower third
        ]
    else:
        strips = [
            [(0, c) for c in range(1, 4)],  # top, left half
            [(0, c) for c in range(last - 3, last)],  # top, right half
            [(last, c) for c in range(1, 4)],  # bottom, left half
            [(last, c) for c in range(last - 3, last)],  # bottom, right half
            [(middle - 1 + r, 0) for r in range(3)],  # left wall centre
            [(middle - 1 + r, last) for r in range(3)],  # right wall centre
        ]
    cells = [cell for strip in strips for cell in strip]
    if len(set(cells)) != len(cells):
        raise AssertionError(f"landmark strips overlap in a room of size {size}")
    return strips


def achieved_goals(touched: list[int], num_landmarks: int) -> np.ndarray:
    """The goals achieved by agents touching `touched` (one landmark index per active agent, -1
    for none): every touched landmark, and every pair of landmarks touched by two different agents."""
    landmarks = sorted({landmark for landmark in touched if landmark >= 0})
    goals = list(landmarks)
    index_of_pair = {pair: num_landmarks + k for k, pair in enumerate(itertools.combinations(range(num_landmarks), 2))}
    # Landmarks never overlap, so two distinct touched landmarks come from two distinct agents.
    for pair in itertools.combinations(landmarks, 2):
        goals.append(index_of_pair[pair])
    return np.array(sorted(goals), dtype=np.int64)


def achieved_in_view(touched: list[int], own: int, num_landmarks: int) -> np.ndarray:
    """The goals achieved by agents touching `touched` that the agent at index `own` of `touched`
    takes part in (the `"local"` view): its landmark's individual goal, and every pair of its
    landmark with a different landmark another agent touches."""
    mine = touched[own]
    if mine < 0:
        return np.zeros(0, dtype=np.int64)
    others = {landmark for index, landmark in enumerate(touched) if index != own and landmark >= 0 and landmark != mine}
    index_of_pair = {pair: num_landmarks + k for k, pair in enumerate(itertools.combinations(range(num_landmarks), 2))}
    goals = [mine] + [index_of_pair[(min(mine, other), max(mine, other))] for other in others]
    return np.array(sorted(goals), dtype=np.int64)


def own_achievement(landmark: int) -> np.ndarray:
    """The `"own"` view: the individual goal of the landmark the agent touches (-1: none)."""
    return np.array([landmark] if landmark >= 0 else [], dtype=np.int64)


class GoalLinesEnv(SpacesPerAgent, ParallelEnv):
    """The Dec-IMSAP goal-lines room on a grid; see the module documentation."""

    metadata = {"name": "goal_lines_v0", "render_modes": [], "is_parallelizable": True}

    def __init__(
        self,
        num_landmarks: int = 6,
        size: int = 9,
        max_steps: int = 40,
        population: int = 2,
        active_per_episode: int | None = 2,
        beta: float = BETA,
        render_mode: str | None = None,
        view: str = "joint",
    ) -> None:
        if view not in VIEWS:
            raise ValueError(f"view must be one of {list(VIEWS)}, got {view!r}")
        self.view = view
        self.size = require_int("size", size, minimum=7)
        self.num_landmarks = require_int("num_landmarks", num_landmarks, minimum=3)
        self.strips = landmark_cells(self.num_landmarks, self.size)
        self.max_steps = require_int("max_steps", max_steps, minimum=1)
        self.population = require_int("population", population, minimum=1)
        if active_per_episode is None:
            self.active_per_episode = self.population
        else:
            self.active_per_episode = require_int("active_per_episode", active_per_episode, minimum=1)
            if self.active_per_episode > self.population:
                raise ValueError(
                    f"active_per_episode ({active_per_episode}) must not exceed population ({population})"
                )
        if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not beta > 0:
            raise ValueError(f"beta must be a positive number, got {beta!r}")
        self.beta = float(beta)
        if render_mode is not None:
            raise ValueError(f"render_mode must be None (goal_lines_v0 renders nothing), got {render_mode!r}")
        self.render_mode = None
        self.num_goals = num_goals(self.num_landmarks)

        self._landmark_at = np.full((self.size, self.size), -1, dtype=np.int64)
        for index, strip in enumerate(self.strips):
            for row, col in strip:
                self._landmark_at[row, col] = index
        self._landmark_centres = np.array([strip[1] for strip in self.strips], dtype=np.float64)
        self._free_cells = np.argwhere(self._landmark_at < 0)

        self.possible_agents = [f"agent_{index}" for index in range(self.population)]
        self.agents: list[str] = []
        obs_dim = 2 + 2 * self.num_landmarks + 2 * (self.active_per_episode - 1)
        self.observation_spaces = {
            agent: Box(-1.0, 1.0, shape=(obs_dim,), dtype=np.float32) for agent in self.possible_agents
        }
        self.action_spaces = {agent: Discrete(len(MOVES)) for agent in self.possible_agents}
        self._rng = np.random.default_rng()
        self._positions: dict[str, np.ndarray] = {}
        self._active: list[str] = []
        self._goals: dict[str, int] | None = None
        self._paid_goals: dict[str, int] = {}  # assign_goals: paid, without the episode rule
        self._finished: set[str] = set()
        self._steps_taken = 0

    # --- episode ------------------------------------------------------------------------------

    def reset(self, seed: int | None = None, options: dict | None = None):
        check_seed(seed)
        if seed is not None:
            self._rng = np.random.default_rng(int(seed))
        # Other option keys are ignored: PettingZoo's API test passes arbitrary options.
        options = dict(options or {})
        self._active = self._draw_active(options.get("active"))
        self.agents = list(self._active)
        self._goals = self._check_goals(options.get("goals"))
        self._paid_goals = {}
        self._finished = set()
        self._steps_taken = 0
        starts = self._rng.choice(len(self._free_cells), size=len(self.agents), replace=False)
        self._positions = {agent: self._free_cells[k].copy() for agent, k in zip(self.agents, starts)}
        infos = self._infos(self.agents)
        return {agent: self._observe(agent) for agent in self.agents}, infos

    def step(self, actions: dict[str, Any]):
        for agent, move in checked_moves(self.agents, actions, len(MOVES)).items():
            if agent in self._finished:
                continue  # a rewarded agent stays where it is (the reference stops done agents)
            target = self._positions[agent] + MOVES[move]
            if 0 <= target[0] < self.size and 0 <= target[1] < self.size:
                self._positions[agent] = target
        self._steps_taken += 1

        achieved = self._achieved()  # the joint achievements: the env's reward is paid on them
        live = list(self.agents)
        rewards = {agent: 0.0 for agent in live}
        terminations = {agent: False for agent in live}
        if self._goals is not None:
            for agent in live:
                rewards[agent] = goal_reward(self._goals[agent], achieved, self.num_landmarks, self.beta)
                if rewards[agent] > 0:
                    terminations[agent] = True
                    self._finished.add(agent)
        for agent, goal in self._paid_goals.items():
            if agent in rewards:
                rewards[agent] = goal_reward(goal, achieved, self.num_landmarks, self.beta)
        out_of_time = self._steps_taken >= self.max_steps
        truncations = {agent: out_of_time and not terminations[agent] for agent in live}
        observations = {agent: self._observe(agent) for agent in live}
        infos = self._infos(live, achieved)
        self.agents = [agent for agent in live if not (terminations[agent] or truncations[agent])]
        return observations, rewards, terminations, truncations, infos

    def assign_goals(self, goals: dict[str, int]) -> None:
        """Pay these active agents `goal_reward` for their goals from the next step on, until the
        episode ends (see the module documentation). Only before the episode's first step: a
        goal given later would be paid for part of an episode."""
        if self._steps_taken:
            raise ValueError(f"assign_goals only before the episode's first step; {self._steps_taken} steps were taken")
        if self._goals is not None:
            raise ValueError("this episode's goals were given to reset already")
        unknown = sorted(set(goals) - set(self.agents))
        if unknown:
            raise ValueError(f"assign_goals: {unknown} are not active in this episode; active: {self.agents}")
        self._paid_goals.update(self._goals_in_range(goals))

    def close(self) -> None:
        pass

    # --- helpers ------------------------------------------------------------------------------

    def _draw_active(self, forced: Any) -> list[str]:
        if forced is not None:
            names = list(forced)
            unknown = [name for name in names if name not in self.possible_agents]
            if unknown or len(set(names)) != len(names) or len(names) != self.active_per_episode:
                raise ValueError(
                    f"options['active'] must name {self.active_per_episode} distinct agents of "
                    f"{self.possible_agents}, got {forced!r}"
                )
            return [agent for agent in self.possible_agents if agent in names]
        if self.active_per_episode == self.population:
            return list(self.possible_agents)
        drawn = self._rng.choice(self.population, size=self.active_per_episode, replace=False)
        return [self.possible_agents[index] for index in sorted(drawn)]

    def _check_goals(self, goals: Any) -> dict[str, int] | None:
        if goals is None:
            return None
        if not isinstance(goals, dict) or set(goals) != set(self.agents):
            raise ValueError(f"options['goals'] must map every active agent {self.agents} to a goal, got {goals!r}")
        return self._goals_in_range(goals)

    def _goals_in_range(self, goals: dict[str, Any]) -> dict[str, int]:
        """`goals` as ints, each one of this env's goals (a ValueError naming the agent whose is not):
        the check of the goals given to reset and to assign_goals."""
        checked = {}
        for agent, goal in goals.items():
            goal = int(goal)
            if not 0 <= goal < self.num_goals:
                raise ValueError(f"goal of {agent} must be in [0, {self.num_goals}), got {goal}")
            checked[agent] = goal
        return checked

    def _touching(self, agent: str) -> int:
        row, col = self._positions[agent]
        return int(self._landmark_at[row, col])

    def _achieved(self) -> np.ndarray:
        return achieved_goals([self._touching(agent) for agent in self._active], self.num_landmarks)

    def _infos(self, agents: list[str], achieved: np.ndarray | None = None) -> dict[str, dict]:
        """Each agent's achieved goals in its view (see `view`) and the landmark it touches."""
        touched = [self._touching(agent) for agent in self._active]
        if self.view == "joint":
            joint = self._achieved() if achieved is None else achieved
            return {agent: {"achieved_goals": joint.copy(), "landmark": self._touching(agent)} for agent in agents}
        if self.view == "own":
            return {agent: {"achieved_goals": own_achievement(self._touching(agent)), "landmark": self._touching(agent)}
                    for agent in agents}
        return {
            agent: {"achieved_goals": achieved_in_view(touched, self._active.index(agent), self.num_landmarks),
                    "landmark": self._touching(agent)}
            for agent in agents
        }

    def _observe(self, agent: str) -> np.ndarray:
        scale = float(self.size - 1)
        own = self._positions[agent].astype(np.float64)
        parts = [own / scale, ((self._landmark_centres - own) / scale).ravel()]
        for partner in self._active:
            if partner != agent:
                parts.append((self._positions[partner] - own) / scale)
        return np.concatenate(parts).astype(np.float32)


# The factory is the class: its signature (what env.kwargs may name, and the defaults) is stated
# once; see the module documentation for the arguments.
parallel_env = GoalLinesEnv
