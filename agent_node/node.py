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

Learning is done in bounded slices between network events, so a long learner update can delay
heartbeats by one slice at most.

Consensus (when the run enables it): at the lockstep steps where the consensus subject is due
(see `consensus_subjects.py`), the node holds the observation it just received, enters
`averaging`, prepares the tensors, and runs the consensus engine with its neighbours. Every
agent reaches the same step, so all average together while the env server waits for their
actions. When the engine is done (all rounds, or their deadlines) the node adopts the average
and answers the held observation.
"""

from __future__ import annotations

import enum
import logging
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from agent_node.algos import build_learner
from agent_node.consensus_subjects import ConsensusSubject, LocalWorldModel, OGMARLWorldModel, PolicyParameters
from agent_node.checkpoint import load_checkpoint, save_checkpoint
from agent_node.config import AgentNodeConfig
from agent_node.global_fields import GlobalFieldTracker
from agent_node.recording import TransitionRecorder
from agent_node.algos.config import NEEDS_GLOBAL_VIEW
from agent_node.metrics import MetricsWriter
from agent_node.roles import Transition
from protocols import messages as m
from protocols.consensus import ConsensusRequest, ConsensusShare, PushSumShare, SyncConsensus, build_consensus_engine
from protocols.control import ControlClient, ShutdownRequested
from protocols.engine import Engine
from protocols.membership import MembershipEngine, PeerDown, PeerRestarted, PeerUp
from protocols.node_config import NodeIdentity, bind_address, node_keys
from protocols.settings import ENV_NODE_ID, agent_node_ids
from protocols.topology import build_topology
from protocols.spaces import decode_space
from protocols.transport import Channel, Hub, SocketOptions
from protocols.wire import Envelope

log = logging.getLogger("agent_node")

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


@dataclass
class EpisodeTracker:
    """Per-copy running returns of this agent; finished episodes are reported once each."""

    returns: np.ndarray
    lengths: np.ndarray
    episodes: int = 0
    last_return: float | None = None

    def add(self, rewards: np.ndarray, active: np.ndarray) -> None:
        self.returns += np.where(active, rewards, 0.0)
        self.lengths += active

    def finish(self, copy: int) -> tuple[float, int]:
        result = float(self.returns[copy]), int(self.lengths[copy])
        self.returns[copy] = 0.0
        self.lengths[copy] = 0
        self.episodes += 1
        self.last_return = result[0]
        return result


class AgentNode:
    def __init__(self, identity: NodeIdentity, run: AgentNodeConfig, control_endpoint: str) -> None:
        self.context = identity
        self.config = config = run.agents
        self.state = NodeState.BOOTING
        self.heartbeat_every_s = run.protocols.membership.heartbeat_every_s
        self.peer_timeout_s = run.protocols.membership.timeout_s
        self.startup_timeout_s = run.protocols.control.startup_timeout_s
        self.status_every_s = run.protocols.control.status_every_s
        self.consensus_config = run.protocols.consensus
        self.max_pending_share_bytes = run.protocols.limits.max_pending_share_bytes
        self.topology = build_topology(run.topology, agent_node_ids(config.count))
        self.consensus: Engine | None = None  # the engine, built once the neighbours are known
        self.subject: ConsensusSubject | None = None
        self.held_observation: m.EnvObservation | None = None  # answered once consensus ends
        # An observation answered once the learner owes at most max_pending_gradient_steps.
        self.waiting_for_updates: m.EnvObservation | None = None
        self.evaluating = False  # the env server is running evaluation episodes

        self.hub = Hub(
            sender=identity.node_id,
            run_id=identity.run_id,
            options=SocketOptions(run.network.zmq_heartbeat_ivl_s, run.network.zmq_heartbeat_timeout_s),
            keys=node_keys(run, identity.node_id),
            limits=run.protocols.limits,
            links=run.network.link_table(identity.node_id, identity.run_seed),  # network: link emulation
        )
        self.control = ControlClient(self.hub, control_endpoint, node_id=identity.node_id)
        # Neighbours' DEALERs connect here.
        self.peer_inbox = self.hub.bind_router(
            bind_address(run, identity.node_id, "peer"), name="peers", advertise_host=run.network.advertised_host()
        )
        self.peer_endpoint = self.peer_inbox.endpoint
        self.env: Channel | None = None
        self.peers: dict[str, Channel] = {}  # neighbour id -> DEALER connected to its inbox
        self.membership: MembershipEngine | None = None
        self.metrics = MetricsWriter(identity.node_dir / "metrics.jsonl", identity.run_dir / "tb" / identity.node_id)

        self.learner: Any = None
        # Global state and joint action in the transitions (issue 12, agent_node/global_fields.py).
        self.global_fields = GlobalFieldTracker(config.global_view or config.learner.kind in NEEDS_GLOBAL_VIEW)
        self.recorder: TransitionRecorder | None = None  # agents.record_dataset (agent_node/recording.py)
        self.env_agent: str = ""
        self.num_copies = 1
        self.step = 0  # lockstep step of the last observation
        self.last_obs: np.ndarray | None = None
        self.last_action: np.ndarray | None = None
        self.last_active: np.ndarray | None = None
        self.episodes: EpisodeTracker | None = None
        self.last_env_message_at = time.monotonic()
        self.messages_handled = 0
        self.started_at = time.monotonic()
        self.stop_reason = ""
        self.exit_code = 0
        self.checkpoint_path = identity.node_dir / "checkpoints" / "latest.pt"
        self.replay_path = identity.node_dir / "replay" / "buffer.npz"
        self.last_checkpoint_step = 0
        self.last_replay_save_step = 0

    # ------------------------------------------------------------------ states

    def transition(self, new: NodeState) -> None:
        check_transition(self.state, new)
        log.info("state %s -> %s", self.state.value, new.value)
        self.state = new
        if self.membership is not None:
            self.membership.state = new.value

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
        for neighbour, endpoint in sorted(directory.neighbours.items()):
            self.peers[neighbour] = self.hub.connect_dealer(
                endpoint, name=f"peer:{neighbour}", identity=self.context.node_id, peer=neighbour
            )
        self.membership = MembershipEngine(
            self.context.node_id,
            sorted(self.peers),
            heartbeat_every_s=self.heartbeat_every_s,
            timeout_s=self.peer_timeout_s,
        )
        self.membership.start(None, now)
        self.env = self.hub.connect_dealer(directory.env_endpoint, name="env", identity=self.context.node_id, peer=ENV_NODE_ID)
        # Which handler reads each channel (peers only ever write to our inbox, never reply on
        # the DEALERs we connected to them; anything arriving there is handled as a peer message).
        self._dispatchers = {"env": self._dispatch_env, "peers": self._dispatch_peer, "control": self._dispatch_control}
        self._dispatchers.update({channel.name: self._dispatch_peer for channel in self.peers.values()})
        # Agent i drives the env's i-th agent; its name arrives with the welcome.
        self.env.send(m.EnvJoin(client_id=self.context.node_id, agent_indices=[self.context.index], global_view=self.global_fields.enabled))
        welcome = self._wait_env(m.EnvWelcome)
        self._build_learner(welcome)
        self.control.ready()
        self.transition(NodeState.READY)
        self.control.wait_for(m.Start, self.startup_timeout_s)
        self.transition(NodeState.RUNNING)
        self.env.send(m.EnvReset(seed=None))
        self.last_env_message_at = time.monotonic()

    def _build_learner(self, welcome: m.EnvWelcome) -> None:
        (self.env_agent,) = welcome.agents
        self.num_copies = welcome.num_copies
        observation_space = decode_space(welcome.observation_spaces[self.env_agent])
        action_space = decode_space(welcome.action_spaces[self.env_agent])
        self.learner = build_learner(
            self.config.learner,
            observation_space,
            action_space,
            self.context.seed("learner"),
            world_model_config=self.config.world_model,
            task_spec=None if welcome.task is None else welcome.task.as_spec(),
            state_space=decode_space(welcome.global_view["state_space"]) if welcome.global_view else None,
            num_agents=len(welcome.possible_agents),
            agent_index=self.context.index,
        )
        self.subject = self._consensus_subject(observation_space, action_space)
        if self.config.record_dataset:
            self.recorder = TransitionRecorder.for_node(
                self.context.run_dir, welcome, self.env_agent, self.context.index,
                {"run_seed": self.context.run_seed, "learner_seed": self.context.seed("learner")},
                {"kind": self.config.learner.kind, "config": self.config.learner.model_dump(mode="json")},
            )
        if self.consensus_config.enabled:
            self.consensus = build_consensus_engine(
                self.consensus_config, self.topology, self.context.node_id, self.max_pending_share_bytes
            )
        self.episodes = EpisodeTracker(np.zeros(self.num_copies), np.zeros(self.num_copies, dtype=np.int64))
        self._restore()
        log.info(
            "driving %s over %d copies: obs %s, actions %s, learner %s",
            self.env_agent, self.num_copies, observation_space, action_space, self.config.learner.kind,
        )

    def _consensus_subject(self, observation_space, action_space) -> ConsensusSubject | None:
        """What this node averages: the OG-MARL learner's world model, a world model trained
        beside the learner, or the policy; None when nothing is shared."""
        if self.config.learner.kind == "og_marl":
            return OGMARLWorldModel(self.learner)  # it refreshes its model even without sharing
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
            dispatch = self._dispatchers[channel.name]
            for envelope in channel.recv_all():
                dispatch(envelope)
        self._on_timers(time.monotonic())
        if learning_due and self.state is NodeState.RUNNING:
            self.metrics.accumulate(self.learner.update(max_gradient_steps=self.config.gradient_steps_per_slice))
            if self.waiting_for_updates is not None:
                self.last_env_message_at = time.monotonic()  # the env server is waiting for us, not silent
                if self.learner.gradient_steps_due() <= self.config.max_pending_gradient_steps:
                    message, self.waiting_for_updates = self.waiting_for_updates, None
                    self._act(message)

    def _next_deadline(self) -> float:
        deadlines = [
            self.membership.next_deadline(),
            self.control.next_status_at(self.status_every_s),
            self.last_env_message_at + self.config.env_silence_timeout_s,
        ]
        if (due := self.hub.next_due()) is not None:
            deadlines.append(due)
        if self.state is NodeState.AVERAGING and (due := self.consensus.next_deadline()) is not None:
            deadlines.append(due)
        return min(deadlines)

    def _on_timers(self, now: float) -> None:
        self.hub.flush_due(now)
        for peer, heartbeat in self.membership.on_timer(now):
            self.peers[peer].send(heartbeat)
        self._on_membership_events(self.membership.take_events())
        if self.control.status_due(now, self.status_every_s):
            self._send_status(now)
        if self.state is NodeState.AVERAGING:
            self._send_peers(self.consensus.on_timer(now))
            self._finish_consensus_if_done()
            self.last_env_message_at = now  # the env server is waiting for us, not silent
        silent_for = now - self.last_env_message_at
        if silent_for > self.config.env_silence_timeout_s:
            raise NodeFailure(f"no message from the env server for {silent_for:.1f} s")

    # ------------------------------------------------------------------ dispatch

    def _dispatch_env(self, envelope: Envelope) -> None:
        self.messages_handled += 1
        self.last_env_message_at = time.monotonic()
        message = envelope.message
        if isinstance(message, m.EnvObservation):
            self.on_observation(message)
        elif isinstance(message, m.ErrorReply):
            raise NodeFailure(f"env server refused a request: {message.code}: {message.message}")
        else:
            log.warning("unexpected %s from the env server", envelope.msg_type)

    def _dispatch_peer(self, envelope: Envelope) -> None:
        self.messages_handled += 1
        now = time.monotonic()
        sender = envelope.sender
        if sender not in self.peers:
            log.warning("dropped %s from %r, which is not a neighbour", envelope.msg_type, sender)
            return
        self.membership.on_message(sender, envelope.message, now)
        self._on_membership_events(self.membership.take_events())
        handler = self.PEER_HANDLERS.get(type(envelope.message))
        if handler is None:
            log.warning("no handler for %s from %s", envelope.msg_type, sender)
            return
        handler(self, sender, envelope.message, now)

    def _dispatch_control(self, envelope: Envelope) -> None:
        self.messages_handled += 1
        if isinstance(envelope.message, m.Shutdown):
            self.begin_draining(envelope.message.reason)

    # ------------------------------------------------------------------ handlers

    def on_observation(self, message: m.EnvObservation) -> None:
        if message.evaluation and not self.evaluating:
            # An evaluation begins: record how much of the owed learning was done by now.
            self.metrics.write(self.step, self.learner.counters())
        self.evaluating = message.evaluation
        if message.evaluation:
            self.on_evaluation_observation(message)
            return
        agent = self.env_agent
        observations = message.observations[agent]
        active = message.active[agent]
        self.step = message.step
        if self.last_obs is not None and message.step > 0:
            self._record_transition(message, observations, active)
        if message.run_finished:
            self.begin_draining(RUN_BUDGET_SPENT)
            return
        if self.subject is not None and self.subject.due(self.step):
            self._start_consensus(message)
            return
        self._act(message)

    def _act(self, message: m.EnvObservation) -> None:
        if self.learner.gradient_steps_due() > self.config.max_pending_gradient_steps:
            # The update-ratio contract: learn first (the loop takes slices while this waits).
            self.waiting_for_updates = message
            return
        agent = self.env_agent
        observations = message.observations[agent]
        actions = self.learner.act(observations, explore=self.config.learning)
        self.env.send(m.EnvAction(step=message.step, actions={agent: actions}))
        self.last_obs, self.last_action, self.last_active = observations, actions, message.active[agent]
        self.global_fields.remember(message)
        self._maybe_persist()

    def on_evaluation_observation(self, message: m.EnvObservation) -> None:
        """Act greedily on the evaluation copies; nothing is learned and the training state
        (`last_obs`, `last_action`) stays as it was, ready for when training resumes."""
        if message.run_finished:
            self.begin_draining(RUN_BUDGET_SPENT)
            return
        observations = message.observations[self.env_agent]
        actions = self.learner.act(observations, explore=False)
        self.env.send(m.EnvAction(step=message.step, actions={self.env_agent: actions}, evaluation=True))

    def _record_transition(self, message: m.EnvObservation, observations: np.ndarray, active: np.ndarray) -> None:
        agent = self.env_agent
        rewards = message.rewards[agent]
        terminated, truncated = message.terminated[agent], message.truncated[agent]
        next_obs = observations
        if agent in message.final_observations:
            next_obs = np.where(
                message.episode_start.reshape(-1, *([1] * (observations.ndim - 1))),
                message.final_observations[agent],
                observations,
            )
        # Rows where this agent acted in the previous step and took part in this one.
        took_part = self.last_active & active if self.last_active is not None else active
        if took_part.any():
            rows = np.flatnonzero(took_part)
            transition = Transition(
                obs=self.last_obs[rows],
                action=self.last_action[rows],
                reward=rewards[rows],
                next_obs=next_obs[rows],
                terminated=terminated[rows],
                truncated=truncated[rows],
                **self.global_fields.fields(message, rows),
            )
            if self.config.learning:  # learning: false evaluates (agents.learning)
                self.learner.observe(transition)
            if self.recorder is not None:
                self.recorder.record(message.step, transition)
        self.episodes.add(rewards, took_part)
        ended = took_part & (terminated | truncated)
        for copy in np.flatnonzero(ended):
            episode_return, length = self.episodes.finish(int(copy))
            self.metrics.write(
                message.step,
                {"env/episode_return": episode_return, "env/episode_length": length, "env/episode": self.episodes.episodes},
            )
        if message.missing:
            self.metrics.accumulate({"env/missing_agents": len(message.missing)})
        if message.step % self.config.metrics_every_steps == 0:
            self.metrics.flush_means(message.step)
            self.metrics.write(message.step, self.hub.link_metrics())  # per-link counters (network:)

    def on_heartbeat(self, sender: str, heartbeat: m.Heartbeat, now: float) -> None:
        pass  # membership has already taken it as a sign of life and read its incarnation

    def on_consensus_share(self, sender: str, share: Any, now: float) -> None:
        if self.consensus is None:
            log.warning("consensus share from %s, but consensus is off in this run", sender)
            return
        # The engine buffers a share for a round it has not started (a neighbour that began
        # averaging a moment before us) and drops stale ones.
        self._send_peers(self.consensus.on_message(sender, share, now))
        if self.state is NodeState.AVERAGING:
            self._finish_consensus_if_done()

    PEER_HANDLERS: dict[type, Callable] = {
        m.Heartbeat: on_heartbeat,
        ConsensusShare: on_consensus_share,
        PushSumShare: on_consensus_share,
    }

    # ------------------------------------------------------------------ consensus

    def _start_consensus(self, held: m.EnvObservation) -> None:
        self.held_observation = held
        self.transition(NodeState.AVERAGING)
        self.consensus_started_at = time.monotonic()
        tensors = self.subject.prepare()
        if self.consensus is None:  # sharing is off: adopt the local model at once
            self._finish_consensus(None)
            return
        # The lockstep step is the same on every agent: a shared, increasing epoch number.
        self._send_peers(self.consensus.start(ConsensusRequest(tensors, epoch=self.step), time.monotonic()))
        self._finish_consensus_if_done()

    def _finish_consensus_if_done(self) -> None:
        if self.state is NodeState.AVERAGING and self.consensus.done:
            # Synchronous rounds also keep one record per round (disagreement per round is
            # what a convergence plot needs); every engine has its summary.
            if isinstance(self.consensus, SyncConsensus):
                for round_metrics in self.consensus.round_metrics:
                    self.metrics.write(self.step, round_metrics)
            self.metrics.write(self.step, self.consensus.metrics())
            self._finish_consensus(self.consensus.result)

    def _finish_consensus(self, averaged: dict[str, np.ndarray] | None) -> None:
        metrics = self.subject.adopt(averaged, len(self.topology.nodes))
        metrics["consensus/duration_s"] = time.monotonic() - self.consensus_started_at
        self.metrics.write(self.step, metrics)
        self.transition(NodeState.RUNNING)
        held, self.held_observation = self.held_observation, None
        self._act(held)

    def _send_peers(self, outgoing: list) -> None:
        for destination, message in outgoing:
            self.peers[destination].send(message)

    def _on_membership_events(self, events: list) -> None:
        for event in events:
            if isinstance(event, PeerDown):
                log.warning("neighbour %s is down (silent for %.1f s)", event.peer, event.silent_for_s)
                self.metrics.write(self.step, {"membership/peers_alive": len(self.membership.alive_peers())})
                if self.consensus is not None:
                    self._send_peers(self.consensus.on_neighbour_down(event.peer, time.monotonic()))
            elif isinstance(event, PeerUp):
                log.info("neighbour %s is up", event.peer)
                if self.consensus is not None:
                    self._send_peers(self.consensus.on_neighbour_up(event.peer, time.monotonic()))
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
            extra={"membership/peers_alive": float(len(self.membership.alive_peers()))} if self.membership else {},
        )

    def _maybe_persist(self) -> None:
        if self.step - self.last_checkpoint_step >= self.config.checkpoint_every_steps:
            self._save_checkpoint()
        if self.step - self.last_replay_save_step >= self.config.replay_save_every_steps:
            self._save_replay()

    def _save_checkpoint(self) -> None:
        save_checkpoint(
            self.checkpoint_path,
            {"learner": self.learner.state_dict(), "step": self.step, "episodes": self.episodes.episodes},
        )
        self.last_checkpoint_step = self.step

    def _save_replay(self) -> None:
        if not self.config.learning:
            return  # nothing was observed; offline learners have no replay buffer
        self.learner.replay.save(self.replay_path)
        self.last_replay_save_step = self.step

    def _restore(self) -> None:
        checkpoint = load_checkpoint(self.checkpoint_path)
        if checkpoint is not None:
            self.learner.load_state_dict(checkpoint["learner"])
            self.episodes.episodes = int(checkpoint["episodes"])
            log.info("restored checkpoint of step %d", checkpoint["step"])
        elif self.config.load_checkpoints is not None:
            initial = Path(self.config.load_checkpoints) / self.env_agent / "latest.pt"
            loaded = load_checkpoint(initial)
            if loaded is None:
                raise NodeFailure(f"agents.load_checkpoints: no checkpoint for {self.env_agent!r} at {initial}")
            self.learner.load_state_dict(loaded["learner"])
            log.info("loaded the initial checkpoint %s", initial)
        if self.replay_path.exists() and self.config.learning:
            self.learner.replay.restore(self.replay_path)
            log.info("restored %d replay transitions", len(self.learner.replay))

    def _drain(self) -> None:
        """Persist what we learned, say goodbye, close every socket."""
        if self.state is not NodeState.DRAINING:
            self.state = NodeState.DRAINING
        try:
            if self.learner is not None:
                if self.config.learning:
                    self._finish_owed_updates()
                self._save_checkpoint()
                self._save_replay()
            self.metrics.flush_means(self.step)
            self.metrics.write(self.step, self.hub.link_metrics())
            if self.recorder is not None:
                self.recorder.close()
            self.control.goodbye(self.stop_reason or "stopped")
        except Exception:  # noqa: BLE001 - closing must continue whatever happened above
            log.exception("error while draining")
            self.exit_code = 1
        finally:
            self.metrics.close()
            self.hub.close()
            self.state = NodeState.STOPPED

    def _finish_owed_updates(self) -> None:
        """Take the gradient steps still owed for the data seen (at most the contract's bound
        plus one step's worth), then log the final counters: a finished run did all its work."""
        if self.stop_reason == RUN_BUDGET_SPENT and self.exit_code == 0:
            while self.learner.gradient_steps_due() > 0:
                self.learner.update(max_gradient_steps=self.config.gradient_steps_per_slice)
        self.metrics.write(self.step, self.learner.counters())

    # ------------------------------------------------------------------ helpers

    def _wait_env(self, message_type: type) -> Any:
        message = self.env.wait_for(message_type, m.ErrorReply, timeout_s=self.startup_timeout_s)
        if message is None:
            raise NodeFailure(f"no {message_type.MSG_TYPE} from the env server within {self.startup_timeout_s} s")
        if isinstance(message, m.ErrorReply):
            raise NodeFailure(f"env server refused to let us join: {message.code}: {message.message}")
        return message
