"""The goal-conditioned agent that a goal session drives, shared by the goal-lines session
(agent_node/goals/session.py) and AMIGo's (agent_node/amigo/session.py).

`build_goal_agent` makes the agent (`agents.learner`, kind goal_dqn) through the learner registry
like every learner; `SessionLearner` is the `NodeLearner` (agent_node/roles.py) the node drives:
acting is conditioned on the session's current goal, and the rows reach the agent through the
session, which decides their goals and rewards. Each session's learner adds what its checkpoints
hold besides the agent's network.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol

import numpy as np

from agent_node.plugins import GoalSpace, LearnerSpec
from agent_node.roles import Transition


class GoalSession(Protocol):
    """What `SessionLearner` needs of a session: its agent, and acting and observing through it."""

    agent: Any

    def act(self, obs: np.ndarray, explore: bool) -> np.ndarray: ...

    def observe(self, transition: Transition) -> None: ...


def build_goal_agent(learner_config, obs_dim: int, num_actions: int, seed: int, goals: GoalSpace):
    """The goal-conditioned agent (`agents.learner`, kind goal_dqn), built through the learner
    registry like every learner; the session wraps it into the learner the node drives."""
    import gymnasium as gym

    from agent_node.algos import LEARNERS

    spec = LearnerSpec(observation_space=gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32),
                       action_space=gym.spaces.Discrete(num_actions), seed=seed, goals=goals)
    return LEARNERS.build(learner_config, spec)


class SessionLearner:
    """The node acts and observes through this as with any learner; see the module docstring."""

    def __init__(self, session: GoalSession) -> None:
        self.session = session
        self.agent = session.agent

    @property
    def replay(self):
        return self.agent.replay

    def act(self, obs: np.ndarray, explore: bool = True) -> np.ndarray:
        return self.session.act(obs, explore)

    def observe(self, transition: Transition) -> None:
        self.session.observe(transition)

    def gradient_steps_due(self) -> int:
        return self.agent.gradient_steps_due()

    def forgive_gradient_steps(self, steps: int) -> None:
        """The replay buffer was lost with the process (agent_node/persistence.py): the steps
        owed for its rows cannot be taken."""
        self.agent.forgive_gradient_steps(steps)

    def update(self, max_gradient_steps: int | None = None) -> dict[str, float]:
        return self.agent.update(max_gradient_steps)

    def counters(self) -> dict[str, float]:
        return self.agent.counters()

    def state_dict(self) -> dict[str, Any]:
        return {"goal_dqn": self.agent.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.agent.load_state_dict(state["goal_dqn"])
