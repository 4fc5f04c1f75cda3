"""Goals (agents.goals) as a capability of the node (agent_node/capability.py).

The goal session (session.py, or agent_node/amigo/session.py for AMIGo) owns the goal-conditioned
learner and each episode's goal: negotiated with the neighbours (or assigned by the external
goal supervisor) before the start the env server holds, told to the env server with
`goal.ready`, and shared in hindsight after the episode. This module only connects it to the
node: its messages, its timers, the supervisor's channel, and what it says after each
observation (goal rewards, episode ends). When talking takes env steps (`protocols.talk:
env_steps`) nothing is held: the session's time is the step, its messages come at the step
starts they are due (`on_env_step`) and its deadlines are checked there.
"""

from __future__ import annotations

from typing import Any

from agent_node.capability import ENV, PEERS, Capability, NodeServices
from agent_node.amigo.session import build_amigo_session
from agent_node.goals.description import SERVICE
from agent_node.goals.session import build_goal_session
from protocols.codec import messages as m
from protocols.engines.hindsight import HindsightReport
from protocols.engines.negotiation import GoalCommit, NegotiationProposal
from protocols.run.settings import SUPERVISOR_NODE_ID
from protocols.engines.supervision import GoalAssignment
from protocols.engines.team_negotiation import TeamProposals

SUPERVISOR = "goal supervisor"  # the source of what arrives from the external supervisor node


class GoalsCapability(Capability):
    name = "goals"
    handles = {
        m.EnvEpisodeStart: (ENV,),
        NegotiationProposal: (PEERS,),
        GoalCommit: (PEERS,),
        TeamProposals: (PEERS,),  # agents.goals.negotiation.protocol: team_flood
        HindsightReport: (PEERS,),
        GoalAssignment: (PEERS, SUPERVISOR),  # a teammate, or the external supervisor node
    }

    def __init__(self, run: Any, node: NodeServices) -> None:
        self.run = run
        self.node = node
        self.talks_in_env_steps = run.protocols.talk == "env_steps"
        self._step_now = 0  # in steps: the step of the latest observation (the session's time)
        self.session = None  # a GoalSession or AmigoSession, built with the learner
        self.supervisor = None  # the external goal supervisor's channel (agents.goals.supervisor.external)

    def connect(self, directory: m.Directory) -> None:
        endpoint = directory.services.get(SERVICE)
        if endpoint is not None:
            self.supervisor = self.node.open_channel(
                endpoint, name="supervisor", source=SUPERVISOR,
                identity=self.node.identity.node_id, peer=SUPERVISOR_NODE_ID,
            )

    def build_learner(self, welcome: m.EnvWelcome, observation_space: Any, action_space: Any):
        node, agents = self.node, self.run.agents
        if agents.goals.selection == "amigo":  # cell goals, each agent its own teacher: a session of its own
            self.session, learner = build_amigo_session(
                agents.goals.amigo, agents.learner, node_index=node.identity.index, run_seed=node.identity.run_seed,
                env_agent=node.env_agent, obs_dim=int(observation_space.shape[0]), num_actions=int(action_space.n),
            )
            return learner
        self.session, learner = build_goal_session(
            agents.goals, agents.learner, node_id=node.identity.node_id, node_index=node.identity.index,
            run_seed=node.identity.run_seed, env_agent=node.env_agent, possible_agents=welcome.possible_agents,
            obs_dim=int(observation_space.shape[0]), num_actions=int(action_space.n), topology=node.topology,
            in_steps=self.talks_in_env_steps,
        )
        return learner

    def on_message(self, sender: str, message: Any, now: float) -> None:
        if isinstance(message, m.EnvEpisodeStart):
            self._output(self.session.on_episode_start(message, now))
        else:
            self._output(self.session.on_message(sender, message, now))

    def after_observation(self, message: m.EnvObservation, now: float) -> None:
        # After the learner saw the transition: goal rewards, episode ends (and starts).
        if self.talks_in_env_steps:
            now = self._step_now = int(message.step)
        self._output(self.session.on_observation(message, now))

    def on_env_step(self, message: m.EnvObservation, delivered: list[tuple[str, Any]]) -> None:
        """Talking in env steps: the messages due at this step, then the deadlines due by it."""
        step = self._step_now = int(message.step)
        for sender, item in delivered:
            self._output(self.session.on_message(sender, item, step))
        self._output(self.session.on_timer(step))

    def next_deadline(self) -> float | None:
        return None if self.talks_in_env_steps else self.session.next_deadline()  # (in steps: at the step starts)

    def on_timer(self, now: float) -> None:
        if not self.talks_in_env_steps:
            self._output(self.session.on_timer(now))

    def on_neighbour_down(self, peer: str, now: float) -> None:
        self._output(self.session.on_neighbour_down(peer, self._step_now if self.talks_in_env_steps else now))

    def _output(self, outgoing: list) -> None:
        """Send the session's messages (to neighbours, or to the external supervisor) and
        goal.ready; write its metrics records."""
        for destination, message in outgoing:
            if destination == SUPERVISOR_NODE_ID:
                if self.supervisor is None:
                    self.node.fail("the goal session asks the supervisor node, but the directory named none")
                self.supervisor.send(message)
        self.node.send_peers([(destination, message) for destination, message in outgoing if destination != SUPERVISOR_NODE_ID])
        for step, paid_goal in self.session.take_ready():
            goals = [] if paid_goal is None else [paid_goal]
            self.node.send_env(m.GoalReady(step=step, agents=[self.node.env_agent], goals=goals))
        for record in self.session.take_records():
            self.node.write_metrics(record)


def build(run: Any, node: NodeServices) -> GoalsCapability | None:
    """In the run when `agents.goals` is set."""
    return None if run.agents.goals is None else GoalsCapability(run, node)
