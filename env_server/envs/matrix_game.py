"""Cooperative matrix games for two agents, as PettingZoo `ParallelEnv`s: the machinery.

The games themselves, each with its payoffs and its paper, are `two_step.py` (`two_step_v0`),
`nonmonotonic.py` (`nonmonotonic_matrix_v0`) and `climbing.py` (`climbing_v0`). This module
holds what they share: a small tree of matrix stages. Each stage has a payoff matrix (row: agent 0's
action, column: agent 1's) and, per joint action, the stage that follows or the end of the episode.
A one-step game is one stage that always ends; the QMIX two-step game is a first stage that pays
nothing and branches on agent 0's action.

What the agents see, and why:

- **Observation** (every agent the same): a one-hot of the current stage, `Box(0, 1, (S,))`
  with S the number of stages; all zeros once the episode has ended (the `next_obs` of the last
  transition, which a learner never bootstraps from because the row is `terminated`). Seeing the
  stage is what lets agent 1 tell 2A from 2B in the two-step game; in a one-step game the
  observation is the constant `[1.0]`.
- **Global state** (`state()`, for the learner node's mixer): the same one-hot.
- **Reward**: the payoff of the joint action, **split equally** between the agents (each gets
  payoff / 2). The learner node's team reward is the sum of the agents' rewards
  (agent_node/ctde/learner.py, `JointRowAssembler`), so Q_tot is learned on the paper's scale; an
  independent learner's return is half the team's, which changes none of its greedy choices.
- **Episode**: ends by termination (never truncation) when a stage's payoff has been paid and
  no stage follows.

The one-step games with a 3 x 3 matrix (`nonmonotonic_matrix_v0`, `climbing_v0`) all look alike
from the agents' side:

| | |
| --- | --- |
| Agents | `agent_0`, `agent_1` |
| Actions | `Discrete(3)` each |
| Observation | `Box(0, 1, (1,))`: `[1.0]` during the step, `[0.0]` after it |
| Global state | the same (`state()`) |
| Reward | the team payoff split equally: each agent gets payoff / 2 |
| Episode | 1 step, then termination |

`reset(seed)` has nothing random to seed (every episode starts in the first stage); it is accepted
for the API and checked for type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from gymnasium.spaces import Box, Discrete
from pettingzoo import ParallelEnv

from env_server.envs.arguments import check_seed

NUM_AGENTS = 2
AGENTS = [f"agent_{index}" for index in range(NUM_AGENTS)]


@dataclass(frozen=True)
class Stage:
    """One matrix stage: `payoff[a0][a1]` to the team, and `next_stage[a0][a1]` (a stage name,
    or None where the episode ends). `next_stage` None for the whole stage: it always ends."""

    name: str
    payoff: tuple[tuple[float, ...], ...]
    next_stage: tuple[tuple[str | None, ...], ...] | None = None


class MatrixGameEnv(ParallelEnv):
    """A tree of matrix stages for two agents; see the module documentation."""

    def __init__(self, env_name: str, stages: list[Stage], render_mode: str | None = None) -> None:
        if render_mode is not None:
            raise ValueError(f"render_mode must be None ({env_name} renders nothing), got {render_mode!r}")
        self.render_mode = None
        self.metadata = {"name": env_name, "render_modes": [], "is_parallelizable": True}
        self.stages = {stage.name: stage for stage in stages}
        self.stage_names = [stage.name for stage in stages]
        self.first_stage = stages[0].name
        shape = np.shape(stages[0].payoff)
        for stage in stages:
            if np.shape(stage.payoff) != shape or len(shape) != 2 or shape[0] != shape[1]:
                raise ValueError(f"{env_name}: stage {stage.name!r} has a payoff of shape {np.shape(stage.payoff)}, "
                                 f"expected square and the same as the first stage's {shape}")
            if stage.next_stage is not None:
                if np.shape(stage.next_stage) != shape:
                    raise ValueError(f"{env_name}: stage {stage.name!r}'s next_stage has shape {np.shape(stage.next_stage)}, expected {shape}")
                unknown = {name for row in stage.next_stage for name in row if name is not None and name not in self.stages}
                if unknown:
                    raise ValueError(f"{env_name}: stage {stage.name!r} leads to unknown stages {sorted(unknown)}")
        self.num_actions = int(shape[0])
        self.possible_agents = list(AGENTS)
        self.agents: list[str] = []
        self._stage: str | None = None
        # One space object per agent, built once: PettingZoo's API test needs the same object back.
        self.observation_spaces = {agent: Box(0.0, 1.0, shape=(len(stages),), dtype=np.float32) for agent in AGENTS}
        self.action_spaces = {agent: Discrete(self.num_actions) for agent in AGENTS}
        self.state_space = Box(0.0, 1.0, shape=(len(stages),), dtype=np.float32)

    def observation_space(self, agent: str) -> Box:
        return self.observation_spaces[self._known_agent(agent)]

    def action_space(self, agent: str) -> Discrete:
        return self.action_spaces[self._known_agent(agent)]

    def payoff(self, stage: str, joint_action: tuple[int, int]) -> float:
        """The team's payoff for `joint_action` in `stage` (before the split between agents)."""
        return float(self.stages[stage].payoff[joint_action[0]][joint_action[1]])

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
        check_seed(seed)
        if options is not None and not isinstance(options, Mapping):
            raise TypeError(f"options must be a mapping or None, got {type(options).__name__}")
        self.agents = list(AGENTS)
        self._stage = self.first_stage
        return self._observations(), {agent: {"stage": self._stage} for agent in self.agents}

    def step(self, actions: Mapping[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        if not self.agents:
            raise RuntimeError(f"step() called with no live agents: call reset() first ({self.metadata['name']} episodes end by termination)")
        joint = self._joint_action(actions)
        stage = self.stages[self._stage]
        payoff = self.payoff(stage.name, joint)
        following = None if stage.next_stage is None else stage.next_stage[joint[0]][joint[1]]
        self._stage = following
        observations = self._observations()
        rewards = {agent: payoff / NUM_AGENTS for agent in self.agents}
        terminations = {agent: following is None for agent in self.agents}
        truncations = {agent: False for agent in self.agents}
        infos = {agent: {"stage": stage.name, "team_payoff": payoff} for agent in self.agents}
        if following is None:
            self.agents = []
        return observations, rewards, terminations, truncations, infos

    def state(self) -> np.ndarray:
        """The one-hot of the current stage (all zeros after the episode's end), float32."""
        one_hot = np.zeros(len(self.stage_names), dtype=np.float32)
        if self._stage is not None:
            one_hot[self.stage_names.index(self._stage)] = 1.0
        return one_hot

    def stage_observation(self, stage: str) -> np.ndarray:
        """What every agent observes (and the global state) in `stage`: for inspecting learned values."""
        one_hot = np.zeros(len(self.stage_names), dtype=np.float32)
        one_hot[self.stage_names.index(stage)] = 1.0
        return one_hot

    def _observations(self) -> dict[str, np.ndarray]:
        # Every possible agent gets the final (all-zero) observation on the last step too: the
        # env server takes it as the transition's next_obs.
        return {agent: self.state() for agent in AGENTS}

    def _known_agent(self, agent: str) -> str:
        if agent not in self.observation_spaces:
            raise ValueError(f"unknown agent {agent!r}; expected one of {AGENTS}")
        return agent

    def _joint_action(self, actions: Mapping[str, Any]) -> tuple[int, int]:
        if not isinstance(actions, Mapping):
            raise TypeError(f"actions must be a dict from agent name to action, got {type(actions).__name__}")
        missing = [agent for agent in self.agents if agent not in actions]
        unexpected = [agent for agent in actions if agent not in self.agents]
        if missing or unexpected:
            raise ValueError(f"actions must hold exactly one action per live agent {self.agents}; missing {missing}, unexpected {unexpected}")
        joint = []
        for agent in AGENTS:
            action = np.asarray(actions[agent])
            if action.shape != () or not np.issubdtype(action.dtype, np.integer) or not 0 <= int(action) < self.num_actions:
                raise ValueError(f"action of {agent} must be an int in [0, {self.num_actions - 1}], got {actions[agent]!r}")
            joint.append(int(action))
        return joint[0], joint[1]
