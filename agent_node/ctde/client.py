"""The agent side of centralized training (CTDE): what an agent node sends to a learner
node and how it takes the parameters that come back.

An agent node of a run with `training.mode: centralized` keeps acting in its own process with its
own Q-network (epsilon-greedy, the epsilon schedule of `agents.learner`), but never trains it:
`CentralizedDQNActor` is the node's learner object (an `Actor` and a `Learner`, agent_node/roles.py)
whose `observe_at` streams each recorded `Transition` to the learner node as `ctde.transitions`
(`transitions_message`) and whose Q-network takes every `ctde.params` that comes back
(`ParamsReceiver`). It owes no gradient steps: the learner node takes them (agent_node/ctde/learner_node.py).
The CTDE capability (agent_node/ctde/capability.py) builds it, opens its channel to the learner
node and hands it each `ctde.params`; the node itself names none of this.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Mapping

import gymnasium as gym
import numpy as np

from agent_node.algos.config import DQNConfig
from agent_node.algos import LEARNERS
from agent_node.algos.dqn import DQNAgent
from agent_node.algos.learner_parts import linear_schedule
from agent_node.plugins import LearnerSpec
from agent_node.roles import Transition
from protocols.codec.ctde import CTDEJoin, CTDEParams, CTDETransitions
from protocols.codec.spaces import encode_space


def transitions_message(agent_index: int, env_step: int, transition: Transition, rows_sent_before: int = 0) -> CTDETransitions:
    """The message for one agent's rows of one env step, after `rows_sent_before` rows streamed;
    the transition must carry the global view."""
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
        rows_sent=int(rows_sent_before) + len(transition.obs),
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
        """Apply `message` if it is newer than the last one applied; True when applied. A bare
        acknowledgement (no params) is neither applied nor counted."""
        if not message.params:
            return False
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


class CentralizedDQNActor:
    """The learner object of an agent node that trains centrally: acts with its Q-network, streams
    its transitions to the learner node, loads the parameters that come back.

    `send` delivers one message to the learner node (the node's channel to it). `act` is
    epsilon-greedy with `config`'s schedule over the rows this agent has streamed, exactly as a
    `DQNAgent` counts its observed rows; the network's own optimizer is never stepped.

    **The update-ratio contract, across processes.** The learner node owes gradient steps for
    the rows the agents streamed (`schedule["gradient_steps_per_row"]`, from
    training_config.learner_schedule). An agent that streamed on however slow its learner would let
    it fall behind unnoticed and do its training after the run. The learner acknowledges, in every
    `ctde.params`, how many of this agent's rows it has taken in (protocols/codec/ctde.py, flow
    control); `lagging(bound)` says when the rows not yet taken in owe more than `bound` gradient
    steps (plus the `params_every` between two acknowledgements), and the node then holds its
    observation until the learner catches up, as a decentralized agent learns first when its
    learner owes more than `agents.max_pending_gradient_steps`.

    Counting rows *not yet taken in*, rather than rows owed minus the gradient step of the
    newest parameters, is what lets a run survive restarts: rows the learner took in but will
    never train on (the other agents' pieces of steps a dead agent missed, or what a restarted
    learner received after its last checkpoint) would otherwise stay owed forever and hold every
    agent back for the rest of the run. While the learner node is down (restarting), the agents
    act on with their last parameters and their rows wait in their sockets until this bound is
    reached; then they hold their observations (the env server plays their default actions) until
    the restarted learner has taken the waiting rows in.
    """

    def __init__(
        self,
        config: DQNConfig,
        observation_space: gym.spaces.Space,
        action_space: gym.spaces.Space,
        state_space: gym.spaces.Space,
        seed: int,
        *,
        agent_index: int,
        send: Callable[[Any], object],
        schedule: Mapping[str, float],
        params_every: int,
    ) -> None:
        if not isinstance(config, DQNConfig):
            raise TypeError(f"centralized training acts with a DQN Q-network; config must be a DQNConfig, got {type(config).__name__}")
        self.config = config
        self.agent_index = int(agent_index)
        # The agent's `agents.learner` (kind dqn), built through the learner registry like every learner.
        self.dqn: DQNAgent = LEARNERS.build(config, LearnerSpec(observation_space, action_space, seed))
        self.receiver = ParamsReceiver(self.dqn)
        self.send = send
        self.explore_rng = np.random.default_rng(np.random.SeedSequence(int(seed)).spawn(4)[3])
        self.rows_sent = 0
        self.rows_taken = 0  # the newest count of our rows the learner node says it has taken in
        self.gradient_steps_per_row = float(schedule["gradient_steps_per_row"])
        self.params_every = int(params_every)
        self.join = CTDEJoin(
            agent_index=self.agent_index,
            observation_space=encode_space(observation_space, "observation_space"),
            action_space=encode_space(action_space, "action_space"),
            state_space=encode_space(state_space, "state_space"),
        )

    def hello(self) -> None:
        """Announce this agent to the learner node (it answers with its current parameters and
        acknowledges the rows sent before). The node calls it again while it holds for the learner
        (protocols/codec/ctde.py, flow control)."""
        self.send(replace(self.join, rows_sent=self.rows_sent))

    # ------------------------------------------------------------------ Actor

    @property
    def epsilon(self) -> float:
        cfg = self.config
        return linear_schedule(cfg.epsilon_start, cfg.epsilon_end, cfg.epsilon_decay_steps, self.rows_sent)

    def act(self, obs: np.ndarray, explore: bool = True) -> np.ndarray:
        action_index = self.dqn.q_values(obs).argmax(axis=1)
        if explore:
            take_random = self.explore_rng.random(action_index.shape[0]) < self.epsilon
            action_index[take_random] = self.explore_rng.integers(0, self.dqn.num_actions, size=int(take_random.sum()))
        return (action_index + self.dqn.action_start).astype(self.dqn.action_space.dtype)

    # ------------------------------------------------------------------ Learner (the learner node learns)

    def observe_at(self, env_step: int, transition: Transition) -> None:
        """Stream this agent's rows of lockstep step `env_step` to the learner node."""
        message = transitions_message(self.agent_index, env_step, transition, self.rows_sent)
        message = _with_network_actions(message, self.dqn.action_start)
        self.send(message)
        self.rows_sent += len(message.reward)

    def observe(self, transition: Transition) -> None:
        raise TypeError("a centralized agent streams transitions with observe_at(env_step, transition): the learner node joins agents by step")

    def on_params(self, message: CTDEParams) -> bool:
        if message.rows_taken >= 0:
            self.rows_taken = int(message.rows_taken)
        return self.receiver.on_params(message)

    def gradient_steps_due(self) -> int:
        return 0  # this node takes none: the learner node does (see `lagging`)

    def rows_in_flight(self) -> int:
        """Rows streamed that the learner node has not said it took in (on their way, or waiting in its socket)."""
        return max(0, self.rows_sent - self.rows_taken)

    def learner_steps_owed(self) -> int:
        """Gradient steps the learner node will owe for the rows in flight."""
        return int(self.rows_in_flight() * self.gradient_steps_per_row)

    def lagging(self, bound: int) -> bool:
        """Do the rows in flight owe more than `bound` (+ params_every) gradient steps?"""
        return self.learner_steps_owed() > bound + self.params_every

    def update(self, max_gradient_steps: int | None = None) -> dict[str, float]:
        return {}

    def counters(self) -> dict[str, float]:
        return {"ctde/rows_sent": float(self.rows_sent), "ctde/rows_in_flight": float(self.rows_in_flight()),
                "ctde/learner_steps_owed": float(self.learner_steps_owed()), **self.receiver.metrics()}

    def state_dict(self) -> dict[str, Any]:
        """The acting network as a DQN checkpoint (loadable by a `kind: dqn` agent) plus the stream's counters."""
        return {
            "algorithm": "ctde_actor",
            "dqn": self.dqn.state_dict(),
            "rows_sent": self.rows_sent,
            "params_gradient_step": self.receiver.last_gradient_step,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("algorithm") != "ctde_actor":
            raise ValueError(f"expected a centralized agent's checkpoint (algorithm 'ctde_actor'), got {state.get('algorithm')!r}")
        self.dqn.load_state_dict(state["dqn"])
        self.rows_sent = int(state["rows_sent"])
        self.rows_taken = self.rows_sent  # nothing of this incarnation is in flight yet
        self.receiver.last_gradient_step = int(state["params_gradient_step"])


def _with_network_actions(message: CTDETransitions, action_start: int) -> CTDETransitions:
    """Actions as the network's indices 0..n-1 (gymnasium's Discrete(n, start=s) acts s..s+n-1)."""
    if action_start == 0:
        return message
    return replace(message, action=message.action - action_start)
