"""Centralized training (training.mode: centralized) as a capability of the node
(agent_node/capability.py).

The agent acts here with the newest Q-network the learner node sent it (client.py) and streams
its transitions there, keyed by lockstep step; the learner node trains every agent's network
and keeps the replay buffer. The update-ratio contract then reads the learner node's progress:
an observation waits while the learner node is more than `max_pending_gradient_steps` behind
(`behind`), and the agent joins it again so that it acknowledges what it took in (`catch_up`).
"""

from __future__ import annotations

from typing import Any

from agent_node.capability import Capability, NodeServices
from agent_node.ctde.client import CentralizedDQNActor
from agent_node.ctde.config import learner_schedule
from agent_node.ctde.description import SERVICE
from protocols.codec import messages as m
from protocols.codec.ctde import CTDEParams
from protocols.run.settings import LEARNER_NODE_ID
from protocols.codec.spaces import decode_space
from protocols.net.transport import incarnation_routing_id

LEARNER = "learner node"  # the source of what arrives on the learner node's channel


class CentralizedTraining(Capability):
    name = "ctde"
    handles = {CTDEParams: (LEARNER,)}
    needs_global_view = True  # the learner node's mixer reads the global state and joint action
    keeps_replay_here = False  # the learner node keeps it

    def __init__(self, run: Any, node: NodeServices) -> None:
        self.run = run
        self.node = node
        self.channel = None

    def connect(self, directory: m.Directory) -> None:
        endpoint = directory.services.get(SERVICE)
        if endpoint is None:
            self.node.fail("training.mode is centralized but the orchestrator's directory names no learner node")
        # A routing id of this incarnation: the learner node reads behind, and a restarted agent
        # must be heard at once (transport.incarnation_routing_id). Linger: the last
        # transitions still go out at the end.
        node_id = self.node.identity.node_id
        self.channel = self.node.open_channel(
            endpoint, name="learner", source=LEARNER, identity=incarnation_routing_id(node_id),
            peer=LEARNER_NODE_ID, close_linger_s=1.0,
        )

    def build_learner(self, welcome: m.EnvWelcome, observation_space: Any, action_space: Any) -> CentralizedDQNActor:
        """Acts here, trains in the learner node; it announces itself there now."""
        agents, identity = self.run.agents, self.node.identity
        state_space = decode_space(welcome.global_view["state_space"]) if welcome.global_view else None
        actor = CentralizedDQNActor(
            agents.learner, observation_space, action_space, state_space, identity.seed("learner"),
            agent_index=identity.index, send=self.channel.send,
            schedule=learner_schedule(agents.learner), params_every=self.run.training.params_every,
        )
        actor.hello()
        return actor

    def feed_learner(self, message: m.EnvObservation, transition: Any) -> bool:
        self.node.learner.observe_at(message.step, transition)  # streamed to the learner node, keyed by step
        return True

    def behind(self) -> bool:
        """The update-ratio contract of centralized training (CentralizedDQNActor.lagging)."""
        agents = self.run.agents
        return agents.learning and self.node.learner.lagging(agents.max_pending_gradient_steps)

    def catch_up(self) -> None:
        """Join the learner node again, so it acknowledges what it took in (rows a restarted
        learner lost are acknowledged too; see protocols/codec/ctde.py, flow control)."""
        if self.behind():
            self.node.learner.hello()

    def on_message(self, sender: str, params: CTDEParams, now: float) -> None:
        self.node.learner.on_params(params)  # the learner node's newest Q-network for this agent
        self.node.retry_waiting()


def build(run: Any, node: NodeServices) -> CentralizedTraining | None:
    return CentralizedTraining(run, node) if run.training.mode == "centralized" else None
