"""One learning agent as one process: the event loop and its states.

States and the transitions allowed between them:

    booting ─▶ connecting ─▶ ready ─▶ running ─▶ draining ─▶ stopped
                   │           │        │  ▲
                   │           │        ▼  │  (negotiating, sharing, averaging: the peer
                   └───────────┴──▶ draining   protocols of later issues step in and out here)

The loop (`run`) waits on every socket at once with a deadline taken from the nearest timer,
so it never busy-waits and never blocks past a heartbeat. One observation from the env server
flows like this:

    env.observation ─▶ on_observation: record the transition, log finished episodes,
                        pick actions (Actor) ─▶ env.action
    (while the env server waits for the other agents) ─▶ a few gradient steps (Learner)

The node wires sans-IO parts, each unit-tested without sockets, and routes every message
through one table (`AgentNode.HANDLERS`: message type -> the source it must come from, handler):

- `env_client.EnvClient`            join / welcome / reset / observation / action bookkeeping
- `transitions.TransitionAssembler` observations -> Transition rows and finished episodes
- `consensus_session.ConsensusSession` the held observation while the neighbours average
- `goal_session.GoalSession`        goal agents (agents.goals): each episode's goal, negotiated
                                     before the start the env server holds, hindsight after it
- `landmarks.LandmarkSession`       the main job (agents.landmarks): who covers which landmark,
                                     flooded over the topology while the node holds the episode's
                                     first observation; partners' episode rows after it
- `peers.PeerMesh`                  links to the neighbours and their liveness (membership)
- `persistence.NodePersistence`     checkpoint + replay buffer on disk, one atomic-write helper

Learning is done in bounded slices between network events, so a long learner update can delay
heartbeats by one slice at most.

Reproducible runs (`run.reproducible`): the update-ratio contract has no slack
(`max_pending_gradient_steps` is 0), so an observation is answered only once every gradient
step it made due is taken: each step then samples the replay buffer at the same point of the
run however the slices fell between messages. The slices call the learner one gradient step at
a time, so the learner metrics are means over gradient steps, not over slices of a timing-decided
size. When the orchestrator's stop overtakes the env server's last observation, the node waits
for that observation, as every run with the seed learns from it. What timing can still change
(a step the env server took without an agent's answer, a consensus round without every share, a
restart from a checkpoint, a last observation that never came) is written once per cause as
`reproducibility/broken` (`_reproducibility_broken`); orchestrator/reproducibility.py refuses
the settings that cannot be reproducible.

Consensus (when the run enables it): at the lockstep step that reaches a tick of the consensus
subject (see `consensus_subjects.py`), the node holds the observation it just received, enters
`averaging`, prepares the tensors, and runs the consensus engine with its neighbours under the
tick as epoch. Every agent reaches the same step, so all average together while the env server
waits for their actions. When the engine is done (all rounds, their deadlines, or the
neighbours moved on to a newer tick) the node adopts the average and answers the held
observation, or, if the observation held meanwhile reached a newer tick, averages again first.
With `consensus.average_at_end` the env server's last observation (never answered) starts one
more run, after the node has taken the updates it owes, and the node drains when it is over:
every agent's final checkpoint then holds the same policy (`_on_run_finished`).
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from agent_node.algos import build_learner
from agent_node.consensus_session import ConsensusSession
from agent_node.consensus_subjects import ConsensusSubject, LocalWorldModel, OGMARLWorldModel, PolicyParameters
from agent_node.config import AgentNodeConfig, initial_checkpoint, initial_checkpoint_candidates
from agent_node.ctde_client import CentralizedDQNActor
from agent_node.training_config import learner_schedule
from agent_node.env_client import EnvClient, EnvRefused
from agent_node.global_fields import GlobalFieldTracker
from agent_node.goal_session import GoalSession, build_goal_session
from agent_node.landmarks import LandmarkSession, SpreadLayout
from agent_node.recording import TransitionRecorder
from agent_node.roles import NodeLearner
from agent_node.algos.config import NEEDS_GLOBAL_VIEW
from agent_node.metrics import MetricsWriter
from agent_node.peers import PeerMesh
from agent_node.persistence import NodePersistence
from agent_node.transitions import TransitionAssembler
from protocols import messages as m
from protocols.consensus import ConsensusDone, ConsensusShare, PushSumShare, build_consensus_engine
from protocols.control import ControlClient, ShutdownRequested, apply_network_fault
from protocols.ctde import CTDEParams
from protocols.durable_state import EXIT_DAMAGED_STATE, DamagedStateError
from protocols.flooding import FloodTable
from protocols.hindsight import HindsightReport, HindsightRows
from protocols.jsonlines import FileWriteError
from protocols.negotiation import GoalCommit, NegotiationProposal
from protocols.team_negotiation import TeamProposals
from protocols.supervision import GoalAssignment
from protocols.membership import PeerDown, PeerRestarted, PeerUp
from protocols.node_config import NodeIdentity, bind_address, node_hub
from protocols.settings import ENV_NODE_ID, LEARNER_NODE_ID, SUPERVISOR_NODE_ID, agent_node_ids
from protocols.spaces import decode_space
from protocols.topology import build_topology
from protocols.transport import Channel, incarnation_routing_id
from protocols.wire import Envelope

if TYPE_CHECKING:
    from agent_node.amigo_session import AmigoSession

log = logging.getLogger("agent_node")

# Where a message came from: the channel it arrived on (see `AgentNode.HANDLERS`).
ENV, PEERS, CONTROL, LEARNER, SUPERVISOR = "env server", "neighbour", "orchestrator", "learner node", "goal supervisor"

RUN_BUDGET_SPENT = "run budget spent"  # the stop reason of a run that ended normally


class NodeState(enum.Enum):
    BOOTING = "booting"
    CONNECTING = "connecting"
    READY = "ready"
    NEGOTIATING = "negotiating"
    RUNNING = "running"
    SHARING = "sharing"
    AVERAGING = "averaging"
    DRAINING = "draining"
    STOPPED = "stopped"


S = NodeState
ALLOWED_TRANSITIONS: dict[NodeState, set[NodeState]] = {
    S.BOOTING: {S.CONNECTING, S.STOPPED},
    S.CONNECTING: {S.READY, S.DRAINING},
    S.READY: {S.RUNNING, S.DRAINING},
    S.RUNNING: {S.NEGOTIATING, S.SHARING, S.AVERAGING, S.DRAINING},
    S.NEGOTIATING: {S.RUNNING, S.DRAINING},
    S.SHARING: {S.RUNNING, S.DRAINING},
    S.AVERAGING: {S.RUNNING, S.DRAINING},
    S.DRAINING: {S.STOPPED},
    S.STOPPED: set(),
}


class IllegalTransition(RuntimeError):
    pass


def check_transition(old: NodeState, new: NodeState) -> None:
    if new not in ALLOWED_TRANSITIONS[old]:
        allowed = ", ".join(sorted(state.value for state in ALLOWED_TRANSITIONS[old])) or "none"
        raise IllegalTransition(f"{old.value} -> {new.value} is not an allowed transition (from {old.value}: {allowed})")


class NodeFailure(RuntimeError):
    """The node cannot go on (a deadline passed, the env server refused us, …)."""


class AgentNode:
    # How long the final average's last shares may take to leave when the node exits.
    PEER_LINGER_S = 1.0

    def __init__(self, identity: NodeIdentity, run: AgentNodeConfig, control_endpoint: str) -> None:
        self.context = identity
        self.config = config = run.agents
        # training.mode centralized: a learner node trains this agent's Q-network (ctde_client.py).
        self.training = run.training
        self.centralized = run.training.mode == "centralized"
        self.learner_channel: Channel | None = None
        self.supervisor_channel: Channel | None = None  # the external goal supervisor (agents.goals.supervisor.external)
        self.state = NodeState.BOOTING
        self.heartbeat_every_s = run.protocols.membership.heartbeat_every_s
        self.peer_timeout_s = run.protocols.membership.timeout_s
        self.startup_timeout_s = run.protocols.control.startup_timeout_s
        self.status_every_s = run.protocols.control.status_every_s
        self.consensus_config = run.protocols.consensus
        self.max_pending_share_bytes = run.protocols.limits.max_pending_share_bytes
        self.topology = build_topology(run.topology, agent_node_ids(config.count))
        # What this node averages and the engine it averages with, built with the learner;
        # None when the run shares nothing.
        self.consensus: ConsensusSession | None = None
        # Goal agents only (agents.goals): the goal session beside the goal-conditioned learner.
        self.goals: GoalSession | AmigoSession | None = None
        # The main job's landmarks (agents.landmarks), and the observation held while the team
        # agrees who covers which.
        self.landmarks: LandmarkSession | None = None
        self.held_for_landmarks: m.EnvObservation | None = None
        # An observation answered once the learner owes at most max_pending_gradient_steps.
        self.waiting_for_updates: m.EnvObservation | None = None
        self.evaluating = False  # the env server is running evaluation episodes
        self.reproducible = run.run.reproducible  # run.reproducible (module docstring)
        self._broken_causes: set[str] = set()  # why this run stopped being a function of its seed
        # Reproducible runs: the orchestrator said the budget is spent before the env server's
        # last observation (run_finished) was handled here; the node waits for it (on_shutdown).
        self.awaiting_final_observation = False

        self.hub = node_hub(run, identity)
        self.control = ControlClient(self.hub, control_endpoint, node_id=identity.node_id)
        # Neighbours' DEALERs connect here.
        self.peer_inbox = self.hub.bind_router(
            bind_address(run, identity.node_id, "peer"), name="peers", advertise_host=run.network.advertised_host()
        )
        self.peer_endpoint = self.peer_inbox.endpoint
        self.env: Channel | None = None
        self.mesh: PeerMesh | None = None  # links to the neighbours and their liveness, once known
        self.metrics = MetricsWriter(identity.node_dir / "metrics.jsonl", identity.run_dir / "tb" / identity.node_id)

        self.learner: NodeLearner | None = None  # built once the welcome names the spaces
        # Global state and joint action in the transitions (issue 12, agent_node/global_fields.py).
        self.global_fields = GlobalFieldTracker(config.global_view or config.learner.kind in NEEDS_GLOBAL_VIEW or self.centralized)
        self.recorder: TransitionRecorder | None = None  # agents.record_dataset (agent_node/recording.py)
        self.env_agent: str = ""
        self.num_copies = 1
        self.step = 0  # lockstep step of the last observation
        self._flushed_step = -1  # of the last periodic metrics flush
        self.env_down_since: float | None = None  # while the env server restarts
        # The observation a consensus session held when the env server died: never answered.
        self._dead_server_observation: m.EnvObservation | None = None
        self.episodes: TransitionAssembler | None = None  # built once the welcome says K
        # Agent i drives the env's i-th agent; its name arrives with the welcome.
        self.env_client = EnvClient(
            identity.node_id, agent_indices=[identity.index], global_view=self.global_fields.enabled, packed=True
        )
        self.messages_handled = 0
        self.started_at = time.monotonic()
        self.stop_reason = ""
        self.exit_code = 0
        self._write_errors_logged: set[str] = set()  # a refusing file says the same thing each time
        self.persistence = NodePersistence(
            identity.node_dir,
            checkpoint_every_steps=config.checkpoint_every_steps,
            replay_save_every_steps=config.replay_save_every_steps,
            # learning: false observes nothing; offline learners have no buffer; a centralized agent's is the learner node's
            keep_replay=config.learning and not self.centralized,
            keep_generations=config.keep_generations,
        )
        self.state_damaged: str | None = None  # what `_restore` skipped, for the ready message

    # ------------------------------------------------------------------ states

    def transition(self, new: NodeState) -> None:
        check_transition(self.state, new)
        log.info("state %s -> %s", self.state.value, new.value)
        self.state = new
        if self.mesh is not None:
            self.mesh.set_state(new.value)

    def begin_draining(self, reason: str) -> None:
        """Stop stepping; the loop ends and `_drain` persists and closes. Idempotent."""
        if self.state in (NodeState.DRAINING, NodeState.STOPPED):
            return
        self.stop_reason = reason
        self.transition(NodeState.DRAINING)

    # ------------------------------------------------------------------ start-up

    def connect(self) -> None:
        """Register, learn the neighbours and the env server, join the env, report ready."""
        self.transition(NodeState.CONNECTING)
        self.control.register("agent", {"peer": self.peer_endpoint})
        directory: m.Directory = self.control.wait_for(m.Directory, self.startup_timeout_s)
        now = time.monotonic()
        # A run that averages at the end sends its last shares just before the node exits: they
        # may linger a moment on close instead of being dropped (a neighbour would wait out its round).
        peer_linger_s = self.PEER_LINGER_S if self.consensus_config.average_at_end else 0.0
        links = {
            neighbour: self.hub.connect_dealer(
                endpoint, name=f"peer:{neighbour}", identity=self.context.node_id, peer=neighbour, close_linger_s=peer_linger_s
            )
            for neighbour, endpoint in sorted(directory.neighbours.items())
        }
        self.mesh = PeerMesh(
            self.context.node_id, links, heartbeat_every_s=self.heartbeat_every_s, timeout_s=self.peer_timeout_s
        )
        self.mesh.set_state(self.state.value)
        self.mesh.start(now)
        self.env = self.hub.connect_dealer(directory.env_endpoint, name="env", identity=self.context.node_id, peer=ENV_NODE_ID)
        # Which source each channel is (peers only ever write to our inbox, never reply on the
        # DEALERs we connected to them; anything arriving there is treated as from that peer).
        self._sources = {"env": ENV, "peers": PEERS, "control": CONTROL}
        self._sources.update({channel.name: PEERS for channel in links.values()})
        if self.centralized:
            if directory.learner_endpoint is None:
                raise NodeFailure("training.mode is centralized but the orchestrator's directory names no learner node")
            # A routing id of this incarnation: the learner node reads behind, and a restarted agent
            # must be heard at once (transport.incarnation_routing_id). Linger: the last
            # transitions still go out at the end.
            self.learner_channel = self.hub.connect_dealer(
                directory.learner_endpoint, name="learner", identity=incarnation_routing_id(self.context.node_id),
                peer=LEARNER_NODE_ID, close_linger_s=1.0
            )
            self._sources["learner"] = LEARNER
        if directory.supervisor_endpoint is not None:
            self.supervisor_channel = self.hub.connect_dealer(
                directory.supervisor_endpoint, name="supervisor", identity=self.context.node_id, peer=SUPERVISOR_NODE_ID
            )
            self._sources["supervisor"] = SUPERVISOR
        self.env.send(self.env_client.join())
        welcome = self._wait_env(m.EnvWelcome, self.env_client.on_welcome)
        self._pack_env_bodies()
        self._build_learner(welcome)
        self.control.ready(state_damaged=self.state_damaged)
        self.transition(NodeState.READY)
        self.control.wait_for(m.Start, self.startup_timeout_s)
        self.transition(NodeState.RUNNING)
        self.env.send(self.env_client.reset(seed=None))
        self.env_client.heard(time.monotonic())

    def _pack_env_bodies(self) -> None:
        """The welcome granted packed lockstep bodies (protocols/packed.py): the env channel
        reads and writes them from the reset on."""
        if self.env_client.packed_layout is not None:
            self.env.use_packed(self.env_client.packed_layout)

    def _build_learner(self, welcome: m.EnvWelcome) -> None:
        (self.env_agent,) = welcome.agents
        self.num_copies = welcome.num_copies
        observation_space = self.env_client.observation_spaces[self.env_agent]
        action_space = self.env_client.action_spaces[self.env_agent]
        if self.config.landmarks is not None:
            observation_space = self._build_landmarks(welcome, observation_space)
        self.learner = (
            self._build_goal_learner(welcome) if self.config.goals is not None
            else self._make_learner(welcome, observation_space, action_space)
        )
        if not isinstance(self.learner, NodeLearner):
            raise NodeFailure(
                f"learner kind {self.config.learner.kind!r} built a {type(self.learner).__name__}, which is not a "
                "NodeLearner (agent_node/roles.py: act, observe, gradient_steps_due, update, counters, state_dict)"
            )
        subject = self._consensus_subject(observation_space, action_space)
        if self.config.record_dataset:
            self.recorder = TransitionRecorder.for_node(
                self.context.run_dir, welcome, self.env_agent, self.context.index,
                {"run_seed": self.context.run_seed, "learner_seed": self.context.seed("learner")},
                {"kind": self.config.learner.kind, "config": self.config.learner.model_dump(mode="json")},
            )
        if subject is not None:
            engine = None
            if self.consensus_config.enabled:
                engine = build_consensus_engine(
                    self.consensus_config, self.topology, self.context.node_id, self.max_pending_share_bytes
                )
            self.consensus = ConsensusSession(
                engine, subject, num_agents=len(self.topology.nodes), average_at_end=self.consensus_config.average_at_end
            )
        self.episodes = TransitionAssembler(self.env_agent, self.num_copies)
        self._restore()
        log.info(
            "driving %s over %d copies: obs %s, actions %s, learner %s",
            self.env_agent, self.num_copies, observation_space, action_space, self.config.learner.kind,
        )

    def _build_landmarks(self, welcome: m.EnvWelcome, observation_space):
        """The landmark session; returns the learner's observation space (the landmark's one-hot appended)."""
        import gymnasium as gym

        layout = SpreadLayout.for_obs(int(observation_space.shape[0]), len(welcome.possible_agents))
        self.landmarks = LandmarkSession(
            self.config.landmarks, node_id=self.context.node_id, topology=self.topology, layout=layout,
            num_copies=welcome.num_copies,
        )
        return gym.spaces.Box(-np.inf, np.inf, (layout.obs_dim + layout.num_landmarks,), np.float32)

    def _build_goal_learner(self, welcome: m.EnvWelcome) -> NodeLearner:
        """A goal agent (agents.goals): the goal session and the learner conditioned on its goals."""
        observation_space = self.env_client.observation_spaces[self.env_agent]
        self.goals, learner = build_goal_session(
            self.config.goals, self.config.learner, node_id=self.context.node_id, node_index=self.context.index,
            run_seed=self.context.run_seed, env_agent=self.env_agent, possible_agents=welcome.possible_agents,
            obs_dim=int(observation_space.shape[0]), num_actions=int(self.env_client.action_spaces[self.env_agent].n),
            topology=self.topology,
        )
        return learner

    def _make_learner(self, welcome: m.EnvWelcome, observation_space, action_space):
        state_space = decode_space(welcome.global_view["state_space"]) if welcome.global_view else None
        if self.centralized:
            # Acts here, trains in the learner node; it announces itself there now.
            actor = CentralizedDQNActor(
                self.config.learner, observation_space, action_space, state_space, self.context.seed("learner"),
                agent_index=self.context.index, send=self.learner_channel.send,
                schedule=learner_schedule(self.config.learner), params_every=self.training.params_every,
            )
            actor.hello()
            return actor
        return build_learner(
            self.config.learner,
            observation_space,
            action_space,
            self.context.seed("learner"),
            world_model_config=self.config.world_model,
            task_spec=None if welcome.task is None else welcome.task.as_spec(),
            state_space=state_space,
            num_agents=len(welcome.possible_agents),
            agent_index=self.context.index,
        )

    def _consensus_subject(self, observation_space, action_space) -> ConsensusSubject | None:
        """What this node averages: the OG-MARL learner's world model, a world model trained
        beside the learner, or the policy; None when nothing is shared."""
        if self.config.learner.kind == "og_marl":
            return OGMARLWorldModel(self.learner, self.num_copies)  # it refreshes its model even without sharing
        if not self.consensus_config.enabled:
            return None
        what = self.consensus_config.what
        if what == "policy_parameters":
            return PolicyParameters(self.learner, self.consensus_config.period_steps)
        return LocalWorldModel(
            self.learner,
            self.config.world_model,
            observation_space,
            action_space,
            period_steps=self.consensus_config.period_steps,
            fit_transitions=self.config.world_model_fit_transitions,
            average=what,
            seed=self.context.seed("world_model"),
            sampler_seed=self.context.seed("world_model_sampler"),
            num_copies=self.num_copies,
        )

    # ------------------------------------------------------------------ main loop

    def run(self) -> int:
        """Run until the budget is spent or the orchestrator says stop; return the exit code."""
        try:
            self.connect()
            while self.state not in (NodeState.DRAINING, NodeState.STOPPED):
                self._iterate()
        except ShutdownRequested as request:
            self.stop_reason = request.reason
        except FileWriteError as error:  # its own files refused (disk full): one line, not a traceback
            self._stop_for_write_error(error)
            if self.state is not NodeState.DRAINING:
                self.state = NodeState.DRAINING
        except DamagedStateError as error:
            # No good generation of its saved state: stop, say which file, write nothing (the
            # persistence never restored, so it saves nothing), and ask not to be restarted.
            log.error("stopping: %s", error)
            self.stop_reason = f"failure: {error}"
            self.exit_code = EXIT_DAMAGED_STATE
            if self.state is not NodeState.DRAINING:
                self.state = NodeState.DRAINING
        except Exception as error:  # noqa: BLE001 - reported, then the node drains and exits non-zero
            log.exception("agent failed: %s", error)
            self.stop_reason = f"failure: {error}"
            self.exit_code = 1
            if self.state is not NodeState.DRAINING:
                self.state = NodeState.DRAINING
        finally:
            self._drain()
        return self.exit_code

    def _iterate(self) -> None:
        now = time.monotonic()
        # Learn only while running: while averaging, the loop must block on the network (a
        # zero timeout here with nothing to do would spin).
        # Evaluation episodes pause learning too: they measure the policy, and the gradient
        # steps owed meanwhile are taken once training resumes.
        learning_due = (
            self.state is NodeState.RUNNING
            and not self.evaluating
            and self.config.learning
            and self.learner.gradient_steps_due() > 0
        )
        timeout = 0.0 if learning_due else max(0.0, self._next_deadline() - now)
        for channel in self.hub.wait(timeout):
            if channel.closed:
                continue  # the env server's old connection, dropped by a handler just now (restart)
            source = self._sources[channel.name]
            for envelope in channel.recv_all():
                self._dispatch(source, envelope)
        self._on_timers(time.monotonic())
        if learning_due and self.state is NodeState.RUNNING:
            self._learn_one_slice()
            if self.waiting_for_updates is not None:
                self.env_client.heard(time.monotonic())  # the env server is waiting for us, not silent
                if self.learner.gradient_steps_due() <= self.config.max_pending_gradient_steps:
                    message, self.waiting_for_updates = self.waiting_for_updates, None
                    self._act(message)

    def _learn_one_slice(self) -> None:
        """Up to `gradient_steps_per_slice` of the gradient steps owed. A reproducible run takes
        them one `update` call each, so the metric means it accumulates are per gradient step
        whatever the slicing (the steps themselves are the same either way)."""
        if not self.reproducible:
            self.metrics.accumulate(self.learner.update(max_gradient_steps=self.config.gradient_steps_per_slice))
            return
        for _ in range(self.config.gradient_steps_per_slice):
            if self.learner.gradient_steps_due() <= 0:
                return
            self.metrics.accumulate(self.learner.update(max_gradient_steps=1))

    def _next_deadline(self) -> float:
        deadlines = [
            self.mesh.next_deadline(),
            self.control.next_status_at(self.status_every_s),
            self.env_client.silence_deadline(self.config.env_silence_timeout_s),
        ]
        if (due := self.hub.next_due()) is not None:
            deadlines.append(due)
        if self.consensus is not None and (due := self.consensus.next_deadline()) is not None:
            deadlines.append(due)
        if self.goals is not None and (due := self.goals.next_deadline()) is not None:
            deadlines.append(due)
        if self.landmarks is not None and (due := self.landmarks.next_deadline()) is not None:
            deadlines.append(due)
        return min(deadlines)

    def _on_timers(self, now: float) -> None:
        self.hub.flush_due(now)
        self._on_membership_events(self.mesh.on_timer(now))
        if self.control.status_due(now, self.status_every_s):
            self._send_status(now)
        if self.goals is not None:
            self._goal_output(self.goals.on_timer(now))
        if self.landmarks is not None:
            self.landmarks.on_timer(now)
            self._landmarks_output()
        if self.state is NodeState.AVERAGING:
            self._send_peers(self.consensus.on_timer(now))
            self._finish_consensus_if_done(now)
            self.env_client.heard(now)  # the env server is waiting for us, not silent
        silent_for = self.env_client.silent_for(now)
        if self.awaiting_final_observation and silent_for > self.config.env_silence_timeout_s:
            self._reproducibility_broken("run_end", "the env server's last observation never arrived")
            self.begin_draining(RUN_BUDGET_SPENT)
            return
        # Cut off from the env server by an emulated partition (faults.schedule), its silence is
        # expected: wait for the heal (FaultEvent in orchestrator/config.py).
        if silent_for > self.config.env_silence_timeout_s and not self.hub.links.partitions.blocks(self.context.node_id, ENV_NODE_ID):
            raise NodeFailure(f"no message from the env server for {silent_for:.1f} s")

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self, source: str, envelope: Envelope) -> None:
        """Route one message through `HANDLERS`: it must come from the source its type belongs
        to (a neighbour cannot pose as the env server or the orchestrator)."""
        self.messages_handled += 1
        now = time.monotonic()
        message = envelope.message
        if source == ENV:
            self.env_client.heard(now)
        elif source == PEERS:
            accepted, events = self.mesh.accept(envelope.sender, message, now)
            self._on_membership_events(events)
            if accepted is None:
                return  # not a neighbour; the mesh logged and counted it
        expected_sources, handler = self.HANDLERS.get(type(message), ((), None))
        if handler is None or source not in expected_sources:
            if source != CONTROL:  # the orchestrator's other messages are answers the loop does not wait for
                log.warning("dropped %s from %s %r: no handler for it from there", envelope.msg_type, source, envelope.sender)
            return
        handler(self, envelope.sender, message, now)

    # ------------------------------------------------------------------ handlers

    def on_observation(self, message: m.EnvObservation) -> None:
        if message.evaluation and not self.evaluating:
            # An evaluation begins: record how much of the owed learning was done by now.
            self.metrics.write(self.step, self.learner.counters())
        self.evaluating = message.evaluation
        if message.evaluation:
            self.on_evaluation_observation(message)
            return
        self.step = message.step
        if self._still_holding_an_observation():
            self._on_stepped_without_answer(message)
            return
        self._record_transition(message)
        if message.run_finished:
            self._on_run_finished(message)
            return
        if self.consensus is not None and (tick := self.consensus.due(self.step)) is not None:
            self._start_consensus(message, tick)
            return
        self._act(message)

    def _on_run_finished(self, last: m.EnvObservation) -> None:
        """The env server's last observation (never answered): drain, after one more consensus
        run if the run averages at the end (`consensus.average_at_end`). That run averages what
        the agents will checkpoint, so the updates owed for the data seen are taken first."""
        tick = self.consensus.due_at_end(last.step) if self.consensus is not None else None
        if tick is None or self.state is not NodeState.RUNNING:
            self.begin_draining(RUN_BUDGET_SPENT)
            return
        if self.config.learning and not self.centralized:
            self._take_owed_updates()
        log.info("the run's budget is spent at step %d: averaging once more before the final checkpoint", last.step)
        self._start_consensus(last, tick)

    def _still_holding_an_observation(self) -> bool:
        return (self.waiting_for_updates is not None or self.held_for_landmarks is not None
                or (self.consensus is not None and self.consensus.averaging))

    def _on_stepped_without_answer(self, message: m.EnvObservation) -> None:
        """A new observation while the last one is still held (averaging, or learning owed
        updates) for longer than `env.step_deadline_s`: the server played our default action
        and moved on. Keep the rewards and episode ends, learn nothing from that step, and
        answer the newest observation when the hold ends."""
        log.warning(
            "the env server stepped on to step %d while this agent held its observation (%s); "
            "raise env.step_deadline_s if this repeats",
            message.step, "averaging" if self.waiting_for_updates is None else "learning owed updates",
        )
        self.metrics.accumulate({"env/stepped_without_answer": 1.0})
        self._reproducibility_broken("step_deadline", "the env server played a default action for this agent")
        self.episodes.stepped_without_answer()
        if self.held_for_landmarks is not None:
            # The team's flooding outlasted the step deadline: decide with what was heard, and
            # answer the newest observation with it.
            self.held_for_landmarks = None
            self.landmarks.close_now(time.monotonic())
            self._landmarks_output()
            self._record_transition(message)
            if message.run_finished:
                self._on_run_finished(message)
            else:
                self._act(message)
            return
        self._record_transition(message)
        if self.waiting_for_updates is None:
            # Averaging: the session answers the newest observation when it ends (the last one,
            # run_finished, goes to `_on_run_finished` then).
            self.consensus.replace_held(message)
        elif message.run_finished:
            self.waiting_for_updates = None
            self._on_run_finished(message)
        else:
            self._ask_learner_node_to_acknowledge()
            self.waiting_for_updates = message

    def _act(self, message: m.EnvObservation) -> None:
        if self.env_client.restarting or message is self._dead_server_observation:
            # Held (averaging) across an env-server restart: the server that waited on it is gone.
            log.info("not answering step %d: the env server restarted since it sent it", message.step)
            return
        if self._hold_for_landmarks(message):
            return
        if self.learner.gradient_steps_due() > self.config.max_pending_gradient_steps or self._learner_node_behind():
            # The update-ratio contract: learn first (the loop takes slices while this waits).
            self._ask_learner_node_to_acknowledge()
            self.waiting_for_updates = message
            return
        agent = self.env_agent
        observations = message.observations[agent]
        actions = self.learner.act(self._learner_input(observations, evaluation=False), explore=self.config.learning)
        self.env.send(self.env_client.answer(message, {agent: actions}))
        self.episodes.acted(observations, actions, message.active[agent])
        self.global_fields.remember(message)
        self.persistence.maybe_save(self.step, self.learner, self.episodes.episodes)

    def on_evaluation_observation(self, message: m.EnvObservation) -> None:
        """Act greedily on the evaluation copies; nothing is learned and the training state
        (the assembler's last observation and action) stays as it was, ready for when training resumes."""
        if message.run_finished:
            self.begin_draining(RUN_BUDGET_SPENT)
            return
        if message.missing:
            self._reproducibility_broken("step_deadline", f"an evaluation step went on without {sorted(message.missing)}")
        held = self.held_for_landmarks
        if held is not None and held is not message:
            # The server stepped the evaluation on while the team still agreed (its step deadline):
            # decide with what was heard; the held observation was answered by default actions.
            self.held_for_landmarks = None
            self.landmarks.close_now(time.monotonic())
            self._landmarks_output()
        if self._hold_for_landmarks(message):
            return
        observations = message.observations[self.env_agent]
        actions = self.learner.act(self._learner_input(observations, evaluation=True), explore=False)
        self.env.send(self.env_client.answer(message, {self.env_agent: actions}))

    def _record_transition(self, message: m.EnvObservation) -> None:
        assembled = self.episodes.observe(message)
        if assembled.transition is not None:
            transition = assembled.transition
            if self.global_fields.enabled:
                transition = replace(transition, **self.global_fields.fields(message, transition.copy_index))
            if self.config.learning and self.centralized:  # streamed to the learner node, keyed by step
                self.learner.observe_at(message.step, transition)
            elif self.config.learning and self.landmarks is not None:
                # Relabelled for every landmark, and the partners' rows: only this agent's own
                # env rows count toward the update ratio.
                for index, row in enumerate(self.landmarks.training_rows(transition, message.step)):
                    self.learner.observe(row, env_rows=len(transition.obs) if index == 0 else 0)
                self._landmarks_output()
            elif self.config.learning:  # learning: false evaluates (agents.learning)
                self.learner.observe(transition)
            if self.recorder is not None:
                self.recorder.record(message.step, transition)
        for episode in assembled.finished:
            self.metrics.write(
                message.step,
                {"env/episode_return": episode.episode_return, "env/episode_length": episode.length, "env/episode": episode.episode},
            )
        if message.missing:
            self.metrics.accumulate({"env/missing_agents": len(message.missing)})
            self._reproducibility_broken("step_deadline", f"the env server stepped without {sorted(message.missing)}")
        # (> the last flushed step: a resumed env server's first observation may repeat the step
        # of the last one the old server sent.)
        if message.step % self.config.metrics_every_steps == 0 and message.step > self._flushed_step:
            self._flushed_step = message.step
            self.metrics.flush_means(message.step)
            self.metrics.write(message.step, self.hub.link_metrics())  # per-link counters (network:)
            self.metrics.write(message.step, self._peer_traffic())
        if self.goals is not None:  # after the learner saw the transition: goal rewards, episode ends
            self._goal_output(self.goals.on_observation(message, time.monotonic()))

    def on_env_observation(self, sender: str, message: m.EnvObservation, now: float) -> None:
        self.on_observation(self.env_client.on_message(message, now))

    def on_env_server_restarting(self, sender: str, message: m.EnvServerRestarting, now: float) -> None:
        """The orchestrator is restarting the env server: wait for `control.env_back` instead
        of failing on its silence (env_client.py). The episodes in flight end here, cut
        (transitions.py), and the connection to the dead server is dropped so that nothing
        queued for it (an action, a goal.ready) reaches the new one. Learning and the peer
        protocols go on meanwhile."""
        log.warning("the env server is restarting (restart %d); waiting for it at step %d", message.restarts + 1, self.step)
        self._reproducibility_broken("env_server_restart", "the env server restarted (its episodes were cut)")
        self.env_client.server_restarting()
        if self.env is not None:
            self.hub.close_channel(self.env)
            self.env = None
        self.waiting_for_updates = None
        self._dead_server_observation = self.consensus.held if self.consensus is not None else None
        self.evaluating = False
        self.env_down_since = now
        for episode in self.episodes.cut():
            self.metrics.write(self.step, {"env/cut_episode_return": episode.episode_return,
                                           "env/cut_episode_length": episode.length})

    def on_env_server_back(self, sender: str, message: m.EnvServerBack, now: float) -> None:
        """The restarted env server is ready: join it again on a fresh connection."""
        if not self.env_client.restarting:
            log.warning("control.env_back, but this agent was not waiting for the env server; ignored")
            return
        self.env = self.hub.connect_dealer(message.env_endpoint, name="env", identity=self.context.node_id, peer=ENV_NODE_ID)
        self.env.send(self.env_client.rejoin(now))

    def on_env_welcome(self, sender: str, welcome: m.EnvWelcome, now: float) -> None:
        """The restarted server's answer to our join: the run resumes with a reset (a new episode)."""
        if not self.env_client.restarting:
            log.warning("env.welcome at step %d, but this agent did not rejoin; ignored", welcome.step)
            return
        try:
            self.env_client.on_welcome(welcome)
        except EnvRefused as refusal:
            raise NodeFailure(f"the restarted env server refused to let us join: {refusal}") from refusal
        self._pack_env_bodies()
        self.env.send(self.env_client.reset(seed=None))
        downtime_s = now - self.env_down_since if self.env_down_since is not None else 0.0
        log.info("rejoined the restarted env server at step %d after %.2f s", welcome.step, downtime_s)
        self.metrics.write(welcome.step, {"env/server_downtime_s": downtime_s})
        self.env_down_since = None

    def on_env_error(self, sender: str, refusal: m.ErrorReply, now: float) -> None:
        raise NodeFailure(f"env server refused a request: {refusal.code}: {refusal.message}")

    def on_episode_start(self, sender: str, announcement: m.EnvEpisodeStart, now: float) -> None:
        if self.goals is None:
            log.warning("env.episode_start at step %d, but this agent has no goals section", announcement.step)
            return
        self._goal_output(self.goals.on_episode_start(announcement, now))

    # ------------------------------------------------------------------ landmarks (the main job)

    def _hold_for_landmarks(self, message: m.EnvObservation) -> bool:
        """An episode starts in some copy: hold the observation while the team agrees who covers
        which landmark (acted on in `_landmarks_output` once decided). False: act now."""
        if self.landmarks is None or not self.landmarks.needs_decision(message, self.step):
            return False
        self.held_for_landmarks = message
        self.landmarks.begin(message, message.observations[self.env_agent], time.monotonic(), self.step)
        self._landmarks_output()
        return True

    def _peer_traffic(self) -> dict[str, float]:
        """Messages and bytes sent to each neighbour so far (every kind: heartbeats, agreement,
        hindsight, consensus), for the report's traffic per edge."""
        traffic: dict[str, float] = {}
        if self.mesh is None:
            return traffic
        for neighbour, link in self.mesh.links.items():
            stats = getattr(link, "stats", None)
            if stats is not None:
                traffic[f"peer/{neighbour}/sent"] = float(stats.sent)
                traffic[f"peer/{neighbour}/bytes_sent"] = float(stats.bytes_sent)
        return traffic

    def _learner_input(self, observations, *, evaluation: bool):
        return observations if self.landmarks is None else self.landmarks.condition(observations, evaluation)

    def on_landmark_message(self, sender: str, message: Any, now: float) -> None:
        if self.landmarks is None:
            log.warning("%s from %s, but this agent has no landmarks section", type(message).__name__, sender)
            return
        self.landmarks.on_message(sender, message, now)
        self._landmarks_output()

    def _landmarks_output(self) -> None:
        """Send the landmark session's messages, write its records, and answer the held
        observation once the team has decided."""
        self._send_peers(self.landmarks.take_outgoing())
        for record in self.landmarks.take_records():
            self.metrics.write(self.step, record)
        held = self.held_for_landmarks
        if held is not None and not self.landmarks.deciding:
            self.held_for_landmarks = None
            if held.evaluation:
                self.on_evaluation_observation(held)
            else:
                self._act(held)

    def on_goal_message(self, sender: str, message: Any, now: float) -> None:
        if self.goals is None:
            log.warning("%s from %s, but this agent has no goals section", type(message).__name__, sender)
            return
        self._goal_output(self.goals.on_message(sender, message, now))

    def _goal_output(self, outgoing: list) -> None:
        """Send the goal session's messages (to neighbours, or to the external supervisor) and
        goal.ready; write its metrics records."""
        for destination, message in outgoing:
            if destination == SUPERVISOR_NODE_ID:
                if self.supervisor_channel is None:
                    raise NodeFailure("the goal session asks the supervisor node, but the directory named none")
                self.supervisor_channel.send(message)
        self._send_peers([(destination, message) for destination, message in outgoing if destination != SUPERVISOR_NODE_ID])
        for step in self.goals.take_ready():
            if self.env is not None:  # (none while the env server restarts: its episode is gone)
                self.env.send(m.GoalReady(step=step, agents=[self.env_agent]))
        for record in self.goals.take_records():
            self.metrics.write(self.step, record)

    def on_ctde_params(self, sender: str, params: CTDEParams, now: float) -> None:
        self.learner.on_params(params)  # the learner node's newest Q-network for this agent
        if self.waiting_for_updates is not None and not self._learner_node_behind():
            message, self.waiting_for_updates = self.waiting_for_updates, None
            self._act(message)

    def _ask_learner_node_to_acknowledge(self) -> None:
        """Held for the learner node: join it again, so it acknowledges what it took in (rows a
        restarted learner lost are acknowledged too; see protocols/ctde.py, flow control)."""
        if self._learner_node_behind():
            self.learner.hello()

    def _learner_node_behind(self) -> bool:
        """The update-ratio contract of centralized training (CentralizedDQNActor.lagging)."""
        return self.centralized and self.config.learning and self.learner.lagging(self.config.max_pending_gradient_steps)

    def on_shutdown(self, sender: str, shutdown: m.Shutdown, now: float) -> None:
        averages_at_end = self.consensus is not None and self.consensus.average_at_end
        if shutdown.reason == RUN_BUDGET_SPENT and (
            (self.reproducible and self.state is NodeState.RUNNING)
            or (averages_at_end and self.state in (NodeState.RUNNING, NodeState.AVERAGING))
        ):
            # The env server sent its last observation before it told the orchestrator, but on
            # another connection: it can be handled after this. Every run with this seed learns
            # from it, and it starts the final average, so wait for it (its run_finished drains
            # the node, after the final average if there is one; `_on_timers` bounds the wait,
            # the config bounds the average below launch.shutdown_timeout_s).
            self.awaiting_final_observation = True
            return
        self.begin_draining(shutdown.reason)

    def on_network_fault(self, sender: str, fault: m.Partition | m.Heal | m.SetLink, now: float) -> None:
        """A run-time partition, heal or link change from the fault schedule: applied to this
        node's outgoing links (protocols/control.py), with the link counters at that moment."""
        log.warning("%s", apply_network_fault(self.hub.links, fault))
        self.control.channel.send(m.FaultApplied(position=fault.position))  # a held step waits for it
        self.env_client.heard(now)  # the env server's silence is counted from the change
        self.metrics.write(self.step, self.hub.link_metrics())

    def on_heartbeat(self, sender: str, heartbeat: m.Heartbeat, now: float) -> None:
        pass  # membership has already taken it as a sign of life and read its incarnation

    def on_consensus_share(self, sender: str, share: Any, now: float) -> None:
        if self.consensus is None:
            log.warning("consensus share from %s, but consensus is off in this run", sender)
            return
        # The engine buffers a share for a round it has not started (a neighbour that began
        # averaging a moment before us) and drops stale ones.
        self._send_peers(self.consensus.on_message(sender, share, now))
        self._finish_consensus_if_done(now)

    # The one dispatch table: message type -> (the sources it may come from, its handler).
    HANDLERS: dict[type, tuple[tuple[str, ...], Callable]] = {
        m.EnvObservation: ((ENV,), on_env_observation),
        m.EnvWelcome: ((ENV,), on_env_welcome),
        m.ErrorReply: ((ENV,), on_env_error),
        m.EnvServerRestarting: ((CONTROL,), on_env_server_restarting),
        m.EnvServerBack: ((CONTROL,), on_env_server_back),
        m.Shutdown: ((CONTROL,), on_shutdown),
        m.Partition: ((CONTROL,), on_network_fault),
        m.Heal: ((CONTROL,), on_network_fault),
        m.SetLink: ((CONTROL,), on_network_fault),
        m.Heartbeat: ((PEERS,), on_heartbeat),
        ConsensusShare: ((PEERS,), on_consensus_share),
        ConsensusDone: ((PEERS,), on_consensus_share),
        PushSumShare: ((PEERS,), on_consensus_share),
        m.EnvEpisodeStart: ((ENV,), on_episode_start),
        NegotiationProposal: ((PEERS,), on_goal_message),
        TeamProposals: ((PEERS,), on_goal_message),
        GoalCommit: ((PEERS,), on_goal_message),
        HindsightReport: ((PEERS,), on_goal_message),
        GoalAssignment: ((PEERS, SUPERVISOR), on_goal_message),  # a teammate, or the external supervisor node
        FloodTable: ((PEERS,), on_landmark_message),
        HindsightRows: ((PEERS,), on_landmark_message),
        CTDEParams: ((LEARNER,), on_ctde_params),
    }

    # ------------------------------------------------------------------ consensus

    def _start_consensus(self, held: m.EnvObservation, tick: int) -> None:
        self.transition(NodeState.AVERAGING)
        now = time.monotonic()
        self._send_peers(self.consensus.begin(held, tick, now))
        self._finish_consensus_if_done(now)

    def _finish_consensus_if_done(self, now: float) -> None:
        finished = self.consensus.finish_if_done(now)
        if finished is None:
            return
        for record in finished.records:
            self.metrics.write(self.step, record)
        if any(record.get("consensus/missing_neighbours", 0.0) > 0 for record in finished.records):
            self._reproducibility_broken(
                "consensus_incomplete",
                "a consensus round ended without every neighbour's share (a deadline, or a neighbour that finished or moved on)",
            )
        self.transition(NodeState.RUNNING)
        if finished.held.run_finished:
            self._on_run_finished(finished.held)  # the final average next, or (after it) drain
        elif (tick := self.consensus.due(finished.held.step)) is not None:
            # The env server stepped on past a newer tick while this run went on (a long run, or
            # one this agent began late): catch up with the neighbours before acting.
            self._start_consensus(finished.held, tick)
        else:
            self._act(finished.held)

    def _reproducibility_broken(self, cause: str, what: str) -> None:
        """Timing decided something in a reproducible run: say so once per cause, in the metrics
        (`reproducibility/broken` and `reproducibility/<cause>`) and the log."""
        if not self.reproducible or cause in self._broken_causes:
            return
        self._broken_causes.add(cause)
        log.warning("run.reproducible: this run is no longer a function of its seed from step %d: %s", self.step, what)
        self.metrics.write(self.step, {"reproducibility/broken": 1.0, f"reproducibility/{cause}": 1.0})

    def _send_peers(self, outgoing: list) -> None:
        self.mesh.send(outgoing)

    def _on_membership_events(self, events: list) -> None:
        for event in events:
            if isinstance(event, PeerDown):
                log.warning("neighbour %s is down (silent for %.1f s)", event.peer, event.silent_for_s)
                self.metrics.write(self.step, {"membership/peers_alive": len(self.mesh.alive_peers())})
                if self.consensus is not None:
                    self._send_peers(self.consensus.on_neighbour_down(event.peer, time.monotonic()))
                if self.goals is not None:
                    self._goal_output(self.goals.on_neighbour_down(event.peer, time.monotonic()))
                if self.landmarks is not None:
                    self.landmarks.on_neighbour_down(event.peer, time.monotonic())
                    self._landmarks_output()
            elif isinstance(event, PeerUp):
                log.info("neighbour %s is up", event.peer)
                self.metrics.write(self.step, {"membership/peers_alive": len(self.mesh.alive_peers())})
                if self.consensus is not None:
                    self._send_peers(self.consensus.on_neighbour_up(event.peer, time.monotonic()))
                if self.landmarks is not None:
                    self.landmarks.on_neighbour_up(event.peer, time.monotonic())
            elif isinstance(event, PeerRestarted):
                log.info("neighbour %s restarted (incarnation %d)", event.peer, event.incarnation)

    # ------------------------------------------------------------------ status, persistence, exit

    def _send_status(self, now: float) -> None:
        elapsed = max(1e-9, now - self.started_at)
        self.control.send_status(
            now,
            state=self.state.value,
            step=self.step,
            episode=self.episodes.episodes if self.episodes else 0,
            last_return=self.episodes.last_return if self.episodes else None,
            msgs_per_s=self.messages_handled / elapsed,
            extra={"membership/peers_alive": float(len(self.mesh.alive_peers()))} if self.mesh else {},
        )

    def _restore(self) -> None:
        restored = self.persistence.restore(self.learner)
        if restored is not None:
            self.episodes.episodes = restored.episodes
            if restored.damaged:
                self.state_damaged = restored.describe_damage()
                log.error("%s", self.state_damaged)
                self.metrics.write(restored.step, {
                    "persistence/restored_from_step": float(restored.step),
                    "persistence/steps_lost": float(restored.steps_lost),
                    "persistence/damaged_files": float(len(restored.damaged)),
                })
            # The replay buffer is saved less often than the weights, and the steps since the
            # checkpoint are not replayed: the seed no longer decides what this agent learns.
            self._reproducibility_broken("restart", "this agent resumed from its last checkpoint")
        elif self.config.load_checkpoints is not None:
            initial = initial_checkpoint(self.config.load_checkpoints, self.env_agent, self.context.node_id)
            if initial is None or not self.persistence.load_initial_checkpoint(self.learner, initial):
                looked = " or ".join(map(str, initial_checkpoint_candidates(
                    self.config.load_checkpoints, self.env_agent, self.context.node_id)))
                raise NodeFailure(f"agents.load_checkpoints: no checkpoint for {self.env_agent!r} at {looked}")
            log.info("loaded the initial checkpoint %s", initial)
        elif self.config.load_shared_checkpoint is not None:
            shared = Path(self.config.load_shared_checkpoint)  # one parameter-shared policy for every agent
            if not self.persistence.load_initial_checkpoint(self.learner, shared):
                raise NodeFailure(f"agents.load_shared_checkpoint: no checkpoint at {shared}")
            log.info("loaded the initial checkpoint %s (shared by every agent)", shared)

    def _drain(self) -> None:
        """Persist what we learned, say goodbye, close every socket.

        Each save is tried on its own: a metrics file the disk refuses does not stop the
        checkpoint from being tried. A refused write is logged in one line and becomes the
        reason the goodbye carries, so the orchestrator's terminal says which node stopped and
        why even when the run's disk (and so events.jsonl) is full."""
        if self.state is not NodeState.DRAINING:
            self.state = NodeState.DRAINING
        try:
            if self.learner is not None:
                if self.config.learning:
                    self._while_draining("the owed updates", self._finish_owed_updates)
                self._while_draining(
                    "the checkpoint and replay buffer",
                    lambda: self.persistence.save_all(self.step, self.learner, self.episodes.episodes),
                )
            self._while_draining("the last metrics", self._write_last_metrics)
            if self.recorder is not None:
                self._while_draining("the transition recording", self.recorder.close)
            if self.consensus_config.average_at_end:
                self._while_draining("the last consensus shares", self._send_delayed_messages)
            self.control.goodbye(self.stop_reason or "stopped")
        except Exception:  # noqa: BLE001 - closing must continue whatever happened above
            log.exception("error while draining")
            self.exit_code = 1
        finally:
            self.metrics.close()
            self.hub.close()
            self.state = NodeState.STOPPED

    def _write_last_metrics(self) -> None:
        self.metrics.flush_means(self.step)
        self.metrics.write(self.step, self.hub.link_metrics())

    def _while_draining(self, what: str, action: Callable[[], None]) -> None:
        try:
            action()
        except FileWriteError as error:
            self._stop_for_write_error(error)
        except Exception:  # noqa: BLE001 - the other saves and the goodbye still follow
            log.exception("error while draining (%s)", what)
            self.exit_code = 1

    def _stop_for_write_error(self, error: FileWriteError) -> None:
        """A file of this node's was refused: log it once, fail, and say so in the goodbye."""
        self.exit_code = 1
        if not self.stop_reason.startswith("failure: "):
            self.stop_reason = f"failure: {error.strerror}"
        if error.strerror not in self._write_errors_logged:
            self._write_errors_logged.add(error.strerror)
            log.error("stopping: %s", error.strerror)

    def _finish_owed_updates(self) -> None:
        """Take the gradient steps still owed for the data seen (at most the contract's bound
        plus one step's worth), then log the final counters: a finished run did all its work."""
        if self.stop_reason == RUN_BUDGET_SPENT and self.exit_code == 0:
            self._take_owed_updates()
        self.metrics.write(self.step, self.learner.counters())

    def _send_delayed_messages(self) -> None:
        """Let out the messages an emulated link delay still holds (the final average's last
        shares), waiting at most PEER_LINGER_S for them to come due."""
        deadline = time.monotonic() + self.PEER_LINGER_S
        while (due := self.hub.next_due()) is not None and due <= deadline:
            time.sleep(max(0.0, due - time.monotonic()))
            self.hub.flush_due()

    def _take_owed_updates(self) -> None:
        while self.learner.gradient_steps_due() > 0:
            self.learner.update(max_gradient_steps=self.config.gradient_steps_per_slice)

    # ------------------------------------------------------------------ helpers

    def _wait_env(self, message_type: type, take: Callable[[Any], Any]) -> Any:
        message = self.env.wait_for(message_type, m.ErrorReply, timeout_s=self.startup_timeout_s)
        if message is None:
            raise NodeFailure(f"no {message_type.MSG_TYPE} from the env server within {self.startup_timeout_s} s")
        try:
            return take(message)
        except EnvRefused as refusal:
            raise NodeFailure(f"env server refused to let us join: {refusal}") from refusal
