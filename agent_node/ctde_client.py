"""The agent side of centralized training (CTDE, issue 12): what an agent node sends to a learner
node and how it takes the parameters that come back.

An agent node that trains centrally keeps acting with its own local DQN (epsilon-greedy, in its
own process); instead of training it, it turns each recorded `Transition` into a
`ctde.transitions` message (`transitions_message`) and loads every `ctde.params` it receives
(`ParamsReceiver`). Kept out of agent_node/node.py so the node needs only a small hook: not wired
into node.py yet (see the learner-node branch's report).
"""

from __future__ import annotations

import numpy as np

from agent_node.roles import Transition
from protocols.ctde import CTDEParams, CTDETransitions


def transitions_message(agent_index: int, env_step: int, transition: Transition) -> CTDETransitions:
    """The message for one agent's rows of one env step; the transition must carry the global view."""
    missing = [name for name in ("global_state", "next_global_state", "copy_index") if getattr(transition, name) is None]
    if missing:
        raise ValueError(
            f"centralized training needs {', '.join(missing)} on every transition: the agent must join the env "
            "server with global_view=True (agent_node/global_fields.py fills them)"
        )
    return CTDETransitions(
        agent_index=int(agent_index),
        env_step=int(env_step),
        copy_index=np.asarray(transition.copy_index, np.int64),
        obs=np.asarray(transition.obs, np.float32).reshape(len(transition.obs), -1),
        action=np.asarray(transition.action, np.int64).reshape(-1),
        reward=np.asarray(transition.reward, np.float32),
        next_obs=np.asarray(transition.next_obs, np.float32).reshape(len(transition.next_obs), -1),
        terminated=np.asarray(transition.terminated, bool),
        global_state=np.asarray(transition.global_state, np.float32).reshape(len(transition.global_state), -1),
        next_global_state=np.asarray(transition.next_global_state, np.float32).reshape(len(transition.next_global_state), -1),
    )


class ParamsReceiver:
    """Loads `ctde.params` into the agent's acting network; ignores any older than what it has."""

    def __init__(self, agent) -> None:
        # Anything with DQNAgent's `set_params` (parameter names `q_network.layers.<k>.<weight|bias>`).
        self.agent = agent
        self.updates_applied = 0
        self.updates_stale = 0
        self.last_gradient_step = -1

    def on_params(self, message: CTDEParams) -> bool:
        """Apply `message` if it is newer than the last one applied; True when applied."""
        if message.gradient_step <= self.last_gradient_step:
            self.updates_stale += 1
            return False
        self.agent.set_params({name: np.array(value) for name, value in message.params.items()})
        self.last_gradient_step = int(message.gradient_step)
        self.updates_applied += 1
        return True

    def metrics(self) -> dict[str, float]:
        return {
            "ctde/params_updates": float(self.updates_applied),
            "ctde/params_stale": float(self.updates_stale),
            "ctde/params_gradient_step": float(self.last_gradient_step),
        }
