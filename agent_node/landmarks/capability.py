"""The main job's landmarks as a capability of the node (agent_node/capability.py).

When an episode starts in some env copy, the team floods its distance tables over the topology
and each agent takes its part of one assignment (session.py); the learner acts on the
observation with its landmark's one-hot appended (`condition`). When talk is free in env time
(`protocols.talk: free`) the node holds that observation (training or evaluation) until the team
has decided; when talking takes env steps it holds nothing: the agent acts on its own nearest
landmark and the tables travel as the steps go by (`on_env_step`), until the assignment lands.
Its transitions are relabelled for every landmark, and the partners' rows shared after an episode
are added (`feed_learner`): only this agent's own env rows count toward the update ratio.
Learning goes on while the team agrees (no `hold_state`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agent_node.capability import PEERS, Capability, NodeServices
from agent_node.landmarks.session import LandmarkSession, SpreadLayout
from protocols.codec import messages as m
from protocols.engines.flooding import FloodTable
from protocols.engines.hindsight import HindsightRows


class LandmarksCapability(Capability):
    name = "landmarks"
    handles = {FloodTable: (PEERS,), HindsightRows: (PEERS,)}
    talks_in_env_steps = True

    def __init__(self, config: Any, node: NodeServices, in_steps: bool = False) -> None:
        self.config = config
        self.node = node
        self.in_steps = in_steps  # protocols.talk: env_steps
        self.session: LandmarkSession | None = None  # built from the welcome
        self.held: m.EnvObservation | None = None
        self._steps_now = {False: 0.0, True: 0.0}  # in steps: the last step of each clock

    def observation_space(self, welcome: m.EnvWelcome, space: Any) -> Any:
        """The session; the learner's observation space is the env's with the landmark's one-hot appended."""
        import gymnasium as gym

        layout = SpreadLayout.for_obs(int(space.shape[0]), len(welcome.possible_agents))
        self.session = LandmarkSession(
            self.config, node_id=self.node.identity.node_id, topology=self.node.topology, layout=layout,
            num_copies=welcome.num_copies, in_steps=self.in_steps,
            graph_changes=self.node.run_config.topology.kind == "proximity",
        )
        return gym.spaces.Box(-np.inf, np.inf, (layout.obs_dim + layout.num_landmarks,), np.float32)

    def condition(self, obs: np.ndarray, evaluation: bool) -> np.ndarray:
        return self.session.condition(obs, evaluation)

    def feed_learner(self, message: m.EnvObservation, transition: Any) -> bool:
        if self.session.rows_arrive_by_wall_clock and self.session.partner_rows_received:
            self.node.reproducibility_broken(
                "hindsight_by_wall_clock", "partners' hindsight rows were learned when they arrived "
                "(agents.landmarks.assignment: nearest while talking free in env time: no agreement orders them)")
        for index, row in enumerate(self.session.training_rows(transition, message.step)):
            self.node.learner.observe(row, env_rows=len(transition.obs) if index == 0 else 0)
        self._output()
        return True

    # -- holding the episode's first observation while the team agrees

    def wants_to_hold(self, message: m.EnvObservation) -> bool:
        if self.in_steps:
            return False
        return not message.run_finished and self.session.needs_decision(message, self.node.step)

    def on_env_step(self, message: m.EnvObservation, delivered: list[tuple[str, Any]]) -> None:
        """Talking in env steps: the tables and rows due now, the rounds' deadlines at this
        step, then an episode that starts here begins its agreement (acting meanwhile). The
        transition this observation closes is recorded by now, with the landmark it was acted on."""
        step = float(message.step)
        self._steps_now = {False: float(self.node.step), True: step} if message.evaluation else {False: step, True: 0.0}
        for sender, item in delivered:
            self.session.on_message(sender, item, step)
        self.session.on_timer(step, evaluation=bool(message.evaluation))
        if not message.run_finished and self.session.needs_decision(message, self.node.step):
            self.session.begin(message, message.observations[self.node.env_agent], step, self.node.step)
        self._output()

    def begin_hold(self, message: m.EnvObservation, now: float) -> None:
        self.held = message
        self.session.begin(message, message.observations[self.node.env_agent], now, self.node.step)
        self._output()

    def on_newer_observation(self, message: m.EnvObservation, now: float) -> bool:
        # The team's flooding outlasted the step deadline: decide with what was heard, and
        # answer the newest observation with it (the held one was answered by a default action).
        self.held = None
        self.session.close_now(now)
        self._output()
        return False

    def _output(self) -> None:
        """Send the session's messages, write its records, and release the held observation
        once the team has decided."""
        self.node.send_peers(self.session.take_outgoing())
        for record in self.session.take_records():
            self.node.write_metrics(record)
        held = self.held
        if held is not None and not self.session.deciding:
            self.held = None
            self.node.release(self, held)

    # -- the loop

    def on_message(self, sender: str, message: Any, now: float) -> None:
        self.session.on_message(sender, message, now)
        self._output()

    def next_deadline(self) -> float | None:
        return None if self.in_steps else self.session.next_deadline()  # (in steps: at the step starts)

    def on_timer(self, now: float) -> None:
        if not self.in_steps:
            self.session.on_timer(now)
            self._output()

    def on_neighbour_down(self, peer: str, now: float) -> None:
        # In steps, each flooding goes on in its own clock, at the step it last saw.
        self.session.on_neighbour_down(peer, self._steps_now if self.in_steps else now)
        self._output()

    def on_neighbour_up(self, peer: str, now: float) -> None:
        self.session.on_neighbour_up(peer, now)


def build(run: Any, node: NodeServices) -> LandmarksCapability | None:
    """In the run when `agents.landmarks` is set (the main job)."""
    if run.agents.landmarks is None:
        return None
    return LandmarksCapability(run.agents.landmarks, node, in_steps=run.protocols.talk == "env_steps")
