"""Messages between agent nodes and a centralized learner node (CTDE).

Centralized training, decentralized execution: each agent node keeps acting with its own local Q
network in its own process, streams what it saw and did to one `learner` node, and loads the
Q-network parameters the learner sends back. The learner joins the agents' pieces of one env
step (same `env_step`, same env copy) into a joint row with the global state and trains a VDN or
QMIX mixer over all agents' Q networks (agent_node/algos/mixers.py).

    agent  --ctde.join--------->  learner      its index and spaces (the learner builds its
                                               networks from the first, checks the others); again
                                               while it holds for the learner (flow control)
    agent  <--ctde.params------   learner      at once (the learner's current networks), then
    agent  --ctde.transitions-->  learner      one per env step the agent learned from
    agent  <--ctde.params------   learner      every `params_every` gradient steps, and as a bare
                                               acknowledgement (no params) to an agent it sent
                                               nothing for the rows of `params_every` steps

**Flow control.** Each `ctde.transitions` carries the agent's running count of rows streamed
(`rows_sent`); each `ctde.params` to an agent carries the count of the newest of its messages
the learner has taken in (`rows_taken`). Their difference is what is still on its way to the
learner or waiting in its socket, which is what a slow learner lets grow: the agent holds its
next action while that exceeds its bound (agent_node/ctde/client.py, `lagging`). Rows that reach
the learner but never train (an agent that died leaves the others' pieces of its steps
unjoined; a restarted learner lost what came after its checkpoint) count as taken, so they
never hold an agent back. Acknowledgements answer messages, so an agent that holds sends no
transitions that could be answered: it sends `ctde.join` again instead, which is answered with
its rows up to that join (a learner that restarted lost the rows its predecessor had not read;
without this the agents would wait for it forever).

Only numpy arrays and plain values travel (no torch here, by the layer rules). Registered next to
themselves, like protocols/engines/consensus.py, so the wire codec knows them once this module is
imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from protocols.codec.messages import register_message


@register_message("ctde.join")
@dataclass(frozen=True)
class CTDEJoin:
    """An agent announces itself to the learner node: which agent it is (its index in the env's
    `possible_agents`, which is its row in every joint transition) and its spaces, encoded with
    protocols.codec.spaces: its observation and action spaces and the env's global state space."""

    agent_index: int
    observation_space: dict[str, Any]
    action_space: dict[str, Any]
    state_space: dict[str, Any]
    # The agent's rows streamed before this join. An agent sends the join again whenever it
    # starts to hold for the learner (and at every env step it stays held): the learner takes
    # an agent's messages in order, so its answer acknowledges everything sent before the join,
    # taken in or lost (a restarted learner never sees what its predecessor had not read).
    rows_sent: int = 0


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
    # This agent's rows streamed so far, these included (its checkpoint keeps the count across
    # a restart); the learner echoes it back as `ctde.params.rows_taken`.
    rows_sent: int


@register_message("ctde.params")
@dataclass(frozen=True)
class CTDEParams:
    """An agent's Q-network parameters after `gradient_step` steps of the learner, named like
    `DQNAgent.get_params` (`q_network.layers.<k>.<weight|bias>`) so `set_params` loads them.

    `params` is empty in a bare acknowledgement. `rows_taken`: the `rows_sent` of the newest
    `ctde.transitions` or `ctde.join` of this agent the learner has taken in; -1: no
    acknowledgement (a learner that has heard nothing from this agent since it started)."""

    gradient_step: int
    params: dict[str, np.ndarray]
    rows_taken: int = -1
