"""The node's side of a plugin peer protocol: one capability per entry of `agents.protocols`.

`ProtocolCapability` drives a user's engine (agent_node/peer_protocols/__init__.py) from the node
loop exactly as `protocols/sim/netsim.py` drives it in a simulation: the engine's message types
arrive from the neighbours only (`PEERS`), its deadline joins the loop's timers, membership's
up/down notices are passed on, and whatever it returns is sent over the peer mesh. Around that,
the learner hook: after each training observation, while the engine is idle, `request(view)`
may start a run; when a run is done, `give(learner, result)` and the engine's `metrics()` are
written to the agent's metrics. The engine never holds an observation: the agent keeps acting
and learning while its protocol talks. When peer messages take env steps (`protocols.talk:
env_steps`; only for an engine that says `talks_in_env_steps`), its time is the step: its
messages come at the step starts they are due (`on_env_step`), its deadline is checked there,
and what it gives the learner no longer depends on timing.

This module is the node side of one of the built-in capabilities (described in
agent_node/peer_protocols/description.py, agent_node/registry.py), so a plugin protocol is
loaded on the same path as Parley's own.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from agent_node.capability import PEERS, Capability
from agent_node.peer_protocols import PROTOCOLS, LearnerView, ProtocolSpec
from protocols.seeds import derive_seed

if TYPE_CHECKING:
    from agent_node.capability import NodeServices
    from agent_node.roles import Transition
    from protocols.codec import messages as m

log = logging.getLogger("agent_node.peer_protocols")


class EpisodeReturns:
    """This agent's undiscounted episode returns, summed per env copy from its transitions."""

    def __init__(self) -> None:
        self.running: dict[int, float] = {}
        self.finished: list[float] = []

    def add(self, transition: Transition) -> None:
        ended = np.asarray(transition.terminated, dtype=bool) | np.asarray(transition.truncated, dtype=bool)
        for copy, reward, end in zip(transition.copy_index.tolist(), np.asarray(transition.reward).tolist(), ended.tolist()):
            self.running[copy] = self.running.get(copy, 0.0) + float(reward)
            if end:
                self.finished.append(self.running.pop(copy))

    def take(self) -> tuple[float, ...]:
        finished, self.finished = tuple(self.finished), []
        return finished


class ProtocolCapability(Capability):
    """One plugin protocol engine, driven by the agent node (see the module docstring)."""

    def __init__(self, node: NodeServices, kind: str, engine: Any, in_steps: bool = False) -> None:
        self.node = node
        self.talks_in_env_steps = in_steps
        self._step_now = 0  # in steps: the step of the latest observation (the engine's time)
        self.name = f"protocol {kind}"
        self.kind = kind
        self.engine = engine
        self.handles = {message_type: (PEERS,) for message_type in engine.message_types}
        self.has_hook = callable(getattr(engine, "request", None))
        self.returns = EpisodeReturns()
        self.running = False  # a run begun by `start` that has not been handed on yet

    # -- the engine, driven like the simulator drives it
    def next_deadline(self) -> float | None:
        return None if self.talks_in_env_steps else self.engine.next_deadline()  # (in steps: at the step starts)

    def on_timer(self, now: float) -> None:
        if not self.talks_in_env_steps:  # (in steps the node's wall-clock ticks are not the engine's time)
            self._deadline_due(now)

    def on_env_step(self, message: m.EnvObservation, delivered: list[tuple[str, Any]]) -> None:
        """Talking in env steps: the messages due at this step, then the deadline if it is due."""
        self._step_now = int(message.step)
        for sender, item in delivered:
            self.on_message(sender, item, self._step_now)
        self._deadline_due(self._step_now)

    def _deadline_due(self, now: float) -> None:
        deadline = self.engine.next_deadline()
        if deadline is not None and now >= deadline:
            self._send(self.engine.on_timer(now))

    def on_message(self, sender: str, message: Any, now: float) -> None:
        self._send(self.engine.on_message(sender, message, now))

    def on_neighbour_down(self, peer: str, now: float) -> None:
        self._send(self.engine.on_neighbour_down(peer, self._now(now)))

    def on_neighbour_up(self, peer: str, now: float) -> None:
        self._send(self.engine.on_neighbour_up(peer, self._now(now)))

    def _now(self, seconds: float) -> float:
        return self._step_now if self.talks_in_env_steps else seconds

    def _send(self, outgoing: list) -> None:
        if outgoing:
            self.node.send_peers(outgoing)
        self._hand_on_if_done()

    # -- the learner hook
    def on_transition(self, message: m.EnvObservation, transition: Transition) -> None:
        self.returns.add(transition)

    def after_observation(self, message: m.EnvObservation, now: float) -> None:
        if self.talks_in_env_steps and not message.evaluation:
            now = self._step_now = int(message.step)
        if not self.has_hook or self.running or self.node.learner is None:
            return
        request = self.engine.request(LearnerView(step=message.step, episode_returns=self.returns.take(), learner=self.node.learner))
        if request is not None:
            self.running = True
            self._send(self.engine.start(request, now))

    def _hand_on_if_done(self) -> None:
        if not self.running or not self.engine.done:
            return
        self.running = False
        if self.has_hook and self.node.learner is not None:
            self.engine.give(self.node.learner, self.engine.result)
            if not self.talks_in_env_steps:
                # What the neighbours said, and when it arrived, decides what the learner gets.
                self.node.reproducibility_broken("peer_protocol", f"peer protocol {self.kind!r} gave its learner a result")
        metrics = self.engine.metrics()
        if metrics:
            self.node.write_metrics(metrics)

    # -- checkpoints
    def state_dict(self) -> dict[str, Any] | None:
        state_dict = getattr(self.engine, "state_dict", None)
        return state_dict() if callable(state_dict) else None

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        load_state_dict = getattr(self.engine, "load_state_dict", None)
        if callable(load_state_dict):
            load_state_dict(state)


def build(run: Any, node: NodeServices) -> list[ProtocolCapability]:
    """One capability per entry of `agents.protocols` (none for a run without them)."""
    topology = node.topology
    index = topology.index_of(node.identity.node_id)
    neighbours = tuple(topology.nodes[j] for j in topology.neighbours(index))
    in_steps = run.protocols.talk == "env_steps"
    capabilities = []
    for config in run.agents.protocols:
        spec = ProtocolSpec(node_id=node.identity.node_id, neighbours=neighbours, num_agents=run.agents.count,
                            seed=derive_seed(run.run.seed, index, f"protocol/{config.kind}"),
                            clock="env_steps" if in_steps else "seconds")
        engine = PROTOCOLS.build(config, spec)
        log.info("peer protocol %s with neighbours %s", config.kind, ", ".join(neighbours) or "none")
        capabilities.append(ProtocolCapability(node, config.kind, engine, in_steps=in_steps))
    return capabilities
