"""Messages between agent nodes and a centralized learner node (issue 12, CTDE).

Centralized training, decentralized execution: each agent node keeps acting with its own local Q
network in its own process, streams what it saw and did to one `learner` node, and loads the
Q-network parameters the learner sends back. The learner joins the agents' pieces of one env
step (same `env_step`, same env copy) into a joint row with the global state and trains a VDN or
QMIX mixer over all agents' Q networks (agent_node/algos/mixers.py).

    agent  --ctde.join--------->  learner      once: its index and spaces (the learner builds
                                               its networks from the first, checks the others)
    agent  <--ctde.params------   learner      at once (the learner's current networks), then
    agent  --ctde.transitions-->  learner      one per env step the agent learned from
    agent  <--ctde.params------   learner      every `params_every` gradient steps

Only numpy arrays and plain values travel (no torch here, by the layer rules). Registered next to
themselves, like protocols/consensus.py, so the wire codec knows them once this module is
imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from protocols.messages import register_message


@register_message("ctde.join")
@dataclass(frozen=True)
class CTDEJoin:
    """An agent announces itself to the learner node: which agent it is (its index in the env's
    `possible_agents`, which is its row in every joint transition) and its spaces, encoded with
    protocols.spaces: its observation and action spaces and the env's global state space."""

    agent_index: int
    observation_space: dict[str, Any]
    action_space: dict[str, Any]
    state_space: dict[str, Any]


@register_message("ctde.transitions")
@dataclass(frozen=True)
class CTDETransitions:
    """One agent's rows of one env step (one row per env copy it took part in).

    `copy_index[i]` names the env copy of row i, so the learner can join agents on (env_step,
    copy). `global_state` / `next_global_state` are the env server's global view before and after
    the step (the agent must have joined with `global_view=True`). Shapes: obs/next_obs (K, O),
    action (K,) int, reward (K,), terminated (K,) bool, copy_index (K,) int,
    global_state/next_global_state (K, S).
    """

    agent_index: int
    env_step: int
    copy_index: np.ndarray
    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    next_obs: np.ndarray
    terminated: np.ndarray
    global_state: np.ndarray
    next_global_state: np.ndarray


@register_message("ctde.params")
@dataclass(frozen=True)
class CTDEParams:
    """An agent's Q-network parameters after `gradient_step` steps of the learner, named like
    `DQNAgent.get_params` (`q_network.layers.<k>.<weight|bias>`) so `set_params` loads them."""

    gradient_step: int
    params: dict[str, np.ndarray]
