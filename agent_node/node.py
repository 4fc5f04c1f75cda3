"""One learning agent as one process: the event loop, its states (agent_node/node_states.py) and
its dispatch.

The loop (`run`) waits on every socket at once with a deadline taken from the nearest timer,
so it never busy-waits and never blocks past a heartbeat. An `env.observation` closes a
transition (learner, capabilities, episode metrics), may be held by a capability, and is
answered with the Actor's `env.action`; while the env server waits for the other agents the
node takes a few gradient steps (Learner). When talking takes env steps (`protocols.talk:
env_steps`, agent_node/step_talk.py) nothing holds it: an observation waits only for the marks of
its neighbours' previous step, and the peer messages due at its step reach the capabilities then.

The node is built from sans-IO parts, each unit-tested without sockets (`env_client.EnvClient`,
`transitions.TransitionAssembler`, `peers.PeerMesh`, `persistence.NodePersistence`), and from
capabilities, each plugged in through the one interface of agent_node/capability.py (the node
names none of them). Every message goes through one table: the node's own handlers
(`AgentNode.HANDLERS`) and the types each capability handles, with the sources each may come from.

Learning is done in bounded slices between network events, so a long learner update can delay
heartbeats by one slice at most. The update-ratio contract: an observation is answered once the
learner owes at most `agents.max_pending_gradient_steps` (`waiting_for_updates`); a reproducible
run (`run.reproducible`) has no slack there, and takes one gradient step per `update` call so its
learner metrics are means over gradient steps. When the orchestrator's stop overtakes the env
server's last observation, such a run waits for it. What timing can still change is written
once per cause as `reproducibility/broken` (`reproducibility_broken`); orchestrator/
reproducibility.py refuses the settings that cannot be reproducible.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any, Callable, Iterable, Mapping

from agent_node.algos.config import NEEDS_GLOBAL_VIEW
from agent_node.capability import CONTROL, ENV, PEERS, Capability, dispatch_table, load_capabilities
from agent_node.config import AgentNodeConfig
from agent_node.env_client import EnvClient
from agent_node.global_fields import GlobalFieldTracker
from agent_node import node_handlers as handlers
from agent_node.node_handlers import on_membership_events
from agent_node.node_lifecycle import RUN_BUDGET_SPENT, NodeFailure, connect_node, drain_node, stop_for_write_error
from agent_node.node_reporting import flush_metrics, send_status
from agent_node.node_states import NodeState, check_transition
from agent_node.peers import PeerMesh
from agent_node.persistence import NodePersistence
from agent_node.roles import NodeLearner
from agent_node.step_talk import EnvStepTalk
from agent_node.transitions import TransitionAssembler
from protocols.codec import messages as m
from protocols.run.control import ControlClient, ShutdownRequested
from protocols.storage.durable_state import EXIT_DAMAGED_STATE, DamagedStateError, StateNotice
from protocols.storage.jsonlines import FileWriteError
from protocols.storage.metrics import MetricsWriter
from protocols.run.node_config import NodeIdentity, bind_address, node_hub
from protocols.run.settings import ENV_NODE_ID, agent_node_ids
from protocols.engines.topology import build_topology
from protocols.net.transport import Channel
from protocols.codec.wire import Envelope

log = logging.getLogger("agent_node")


class AgentNode:
    """The loop, its states, its dispatch and the observation's path; what capabilities may call
    (`capability.NodeServices`). Its start and drain are agent_node/node_lifecycle.py, its own
    handlers agent_node/node_handlers.py, its reports agent_node/node_reporting.py."""

    def __init__(self, identity: NodeIdentity, run: AgentNodeConfig, control_endpoint: str) -> None:
        self.identity = identity
        self.run_config = run
        self.config = config = run.agents
        self.state = NodeState.BOOTING
        self.membership, control = run.protocols.membership, run.protocols.control
        self.startup_timeout_s, self.status_every_s = control.startup_timeout_s, control.status_every_s
        self.topology = build_topology(run.topology, agent_node_ids(config.count))
        self.waiting_for_updates: m.EnvObservation | None = None  # (the update-ratio contract)
        self.evaluating = False  # the env server is running evaluation episodes
        self.reproducible = run.run.reproducible  # run.reproducible (module docstring)
        self.act_delay_s = config.act_delay_s.get(identity.node_id, 0.0)
        self.broken_causes: set[str] = set()  # why this run stopped being a function of its seed
        self.awaiting_final_observation = False  # the stop came before the last observation (on_shutdown)
        self.hub = node_hub(run, identity)
        self.control = ControlClient(self.hub, control_endpoint, node_id=identity.node_id)
        self.peer_inbox = self.hub.bind_router(  # neighbours' DEALERs connect here
            bind_address(run, identity.node_id, "peer"), name="peers", advertise_host=run.network.advertised_host(),
            zero_copy=True,  # consensus and model shares: arrays of megabytes, read where they arrived
        )
        self.env: Channel | None = None
        self.env_down_since: float | None = None  # while the env server restarts
        # The observation a capability held when the env server died: never answered.
        self.dead_server_observation: m.EnvObservation | None = None
        self.mesh: PeerMesh | None = None  # links to the neighbours and their liveness, once known
        self.metrics = MetricsWriter(identity.node_dir / "metrics.jsonl", identity.run_dir / "tb" / identity.node_id)
        self.learner: NodeLearner | None = None  # built once the welcome names the spaces
        self.env_agent: str = ""
        self.step = 0  # lockstep step of the last observation
        self.flushed_step = -1  # of the last periodic metrics flush
        self.episodes: TransitionAssembler | None = None  # built once the welcome says K
        self._sources: dict[str, str] = {"env": ENV, "peers": PEERS, "control": CONTROL}  # channel name -> source
        self.capabilities: list[Capability] = load_capabilities(run, self)
        self.dispatch = dispatch_table(self.capabilities, self.HANDLERS)
        # protocols.talk: env_steps: peer messages take env steps (agent_node/step_talk.py).
        self.talk = EnvStepTalk.for_node(self) if run.protocols.talk == "env_steps" else None
        # Global state and joint action in the transitions (agent_node/global_fields.py).
        self.global_fields = GlobalFieldTracker(
            config.global_view or config.learner.kind in NEEDS_GLOBAL_VIEW or any(c.needs_global_view for c in self.capabilities)
        )
        # Agent i drives the env's i-th agent; its name arrives with the welcome.
        self.env_client = EnvClient(identity.node_id, agent_indices=[identity.index], global_view=self.global_fields.enabled,
                                    packed=True, shm=self.hub.links.model_for(ENV_NODE_ID).config.is_ideal)  # (no delays on shm)
        self.messages_handled, self.started_at = 0, time.monotonic()
        self.stop_reason, self.exit_code = "", 0
        self.write_errors_logged: set[str] = set()  # a refusing file says the same thing each time
        self.persistence = NodePersistence(
            identity.node_dir, checkpoint_every_steps=config.checkpoint_every_steps,
            replay_save_every_steps=config.replay_save_every_steps, keep_generations=config.keep_generations,
            # learning: false observes nothing; offline learners have no buffer; a capability may keep it elsewhere
            keep_replay=config.learning and all(c.keeps_replay_here for c in self.capabilities),
            start_fresh=run.run.on_corrupt_state == "start_fresh")
        self.persistence.capability_states = self._capability_states
        self.state_notice: StateNotice | None = None  # what `restore_node` skipped, for the ready message

    # ------------------------------------------------------------------ states

    def transition(self, new: NodeState) -> None:
        check_transition(self.state, new)
        log.info("state %s -> %s", self.state.value, new.value)
        self.state = new
        if self.mesh is not None:
            self.mesh.set_state(new.value)

    def begin_draining(self, reason: str) -> None:
        """Stop stepping; the loop ends and `drain_node` persists and closes. Idempotent."""
        if self.state in (NodeState.DRAINING, NodeState.STOPPED):
            return
        self.stop_reason = reason
        self.transition(NodeState.DRAINING)

    # ------------------------------------------------------------------ main loop

    def run(self) -> int:
        """Run until the budget is spent or the orchestrator says stop; return the exit code."""
        try:
            connect_node(self)
            while self.state not in (NodeState.DRAINING, NodeState.STOPPED):
                self._iterate()
        except ShutdownRequested as request:
            self.stop_reason = request.reason
        except FileWriteError as error:  # its own files refused (disk full): one line, not a traceback
            stop_for_write_error(self, error)
        except DamagedStateError as error:  # no good generation of its saved state: say which file,
            log.error("stopping: %s", error)  # write nothing (nothing was restored), ask not to be restarted
            self.stop_reason, self.exit_code = f"failure: {error}", EXIT_DAMAGED_STATE
        except Exception as error:  # noqa: BLE001 - reported, then the node drains and exits non-zero
            log.exception("agent failed: %s", error)
            self.stop_reason, self.exit_code = f"failure: {error}", 1
        finally:
            if self.state is not NodeState.DRAINING:
                self.state = NodeState.DRAINING
            drain_node(self, finished=self.stop_reason == RUN_BUDGET_SPENT)
            self.state = NodeState.STOPPED
        return self.exit_code

    def _iterate(self) -> None:
        now = time.monotonic()
        # Learn only while running (a hold_state blocks on the network: a zero timeout with
        # nothing to do would spin). Evaluation episodes pause learning too: they measure the
        # policy, and the gradient steps owed meanwhile are taken once training resumes.
        learning_due = (self.state is NodeState.RUNNING and not self.evaluating and self.config.learning
                        and self.learner.gradient_steps_due() > 0)
        timeout = 0.0 if learning_due else max(0.0, self._next_deadline() - now)
        for channel in self.hub.wait(timeout):
            if channel.closed:
                continue  # the env server's old connection, dropped by a handler just now (restart)
            source = self._sources[channel.name]
            envelopes = list(channel.recv_all())
            if source == ENV:
                self.env_client.note_newest(envelope.message for envelope in envelopes)
            for envelope in envelopes:
                self._dispatch(source, envelope)
        self._on_timers(time.monotonic())
        if learning_due and self.state is NodeState.RUNNING:
            self._learn_one_slice()
            if self.waiting_for_updates is not None:
                self.env_client.heard(time.monotonic())  # the env server is waiting for us, not silent
                self.retry_waiting()

    def _next_deadline(self) -> float:
        deadlines = [self.mesh.next_deadline(), self.control.next_status_at(self.status_every_s),
                     self.env_client.silence_deadline(self.config.env_silence_timeout_s), self.hub.next_due()]
        if self.talk is not None:
            deadlines.append(self.talk.next_deadline())
        deadlines += [capability.next_deadline() for capability in self.capabilities]
        return min(deadline for deadline in deadlines if deadline is not None)

    def _on_timers(self, now: float) -> None:
        self.hub.flush_due(now)
        on_membership_events(self, self.mesh.on_timer(now))
        if self.control.status_due(now, self.status_every_s):
            send_status(self, now)
        holding = self.state.value in {c.hold_state for c in self.capabilities}
        for capability in self.capabilities:
            capability.on_timer(now)
        if holding:
            self.env_client.heard(now)  # the env server is waiting for us, not silent
        if self.talk is not None and self.talk.waited_out(now):
            self._handle_parked_observation(waited_out=True)
        silent_for = self.env_client.silent_for(now)
        if self.awaiting_final_observation and silent_for > self.config.env_silence_timeout_s:
            self.reproducibility_broken("run_end", "the env server's last observation never arrived")
            self.begin_draining(RUN_BUDGET_SPENT)
            return
        # Cut off from the env server by an emulated partition (faults.schedule), its silence is
        # expected: wait for the heal (FaultEvent in orchestrator/config.py).
        if silent_for > self.config.env_silence_timeout_s and not self.hub.links.partitions.blocks(self.identity.node_id, ENV_NODE_ID):
            raise NodeFailure(f"no message from the env server for {silent_for:.1f} s")

    def _dispatch(self, source: str, envelope: Envelope) -> None:
        """Route one message: it must come from a source its type belongs to (a neighbour
        cannot pose as the env server or the orchestrator)."""
        self.messages_handled += 1
        now = time.monotonic()
        message = envelope.message
        if source == ENV:
            self.env_client.heard(now)
        elif source == PEERS:
            accepted, events = self.mesh.accept(envelope.sender, message, now)
            on_membership_events(self, events)
            if accepted is None:
                return  # not a neighbour; the mesh counted it in the hub's refusals
            if self.talk is not None and self.talk.holds(envelope.sender, message, self.dispatch):
                self._handle_parked_observation(waited_out=False)  # (a mark may complete a step's)
                return
        expected_sources, handler = self.HANDLERS.get(type(message)) or self.dispatch.get(type(message)) or ((), None)
        if handler is None or source not in expected_sources:
            if source != CONTROL:  # the orchestrator's other messages are answers the loop does not wait for
                # Counted, and logged once per source per 5 s: a peer's flood cannot fill the log.
                self.hub.refusals.record(envelope.sender, f"{envelope.msg_type} from {source}: no handler for it from there")
            return
        if isinstance(handler, Capability):
            handler.on_message(envelope.sender, message, now)
        else:
            handler(self, envelope.sender, message, now)

    # ------------------------------------------------------------------ what capabilities may call

    def send_peers(self, outgoing: Iterable) -> None:
        if self.talk is not None:  # talking in env steps: it leaves when this node answers its step
            self.talk.queue(outgoing)
        else:
            self.mesh.send(list(outgoing))

    def send_env(self, message: Any) -> None:
        if self.env is not None:  # (none while the env server restarts: its episode is gone)
            self.env.send(message)

    def write_metrics(self, record: Mapping[str, float]) -> None:
        self.metrics.write(self.step, record)

    def accumulate_metrics(self, record: Mapping[str, float]) -> None:
        self.metrics.accumulate(record)

    def reproducibility_broken(self, cause: str, what: str) -> None:
        """Timing decided something in a reproducible run: say so once per cause, in the metrics
        (`reproducibility/broken` and `reproducibility/<cause>`), the log, and at once to the
        orchestrator (a status whose extras name every cause so far: its `reproducibility_broken`
        event)."""
        if not self.reproducible or cause in self.broken_causes:
            return
        self.broken_causes.add(cause)
        log.warning("run.reproducible: this run is no longer a function of its seed from step %d: %s", self.step, what)
        self.metrics.write(self.step, {"reproducibility/broken": 1.0, f"reproducibility/{cause}": 1.0})
        send_status(self, time.monotonic())

    def open_channel(self, endpoint: str, *, name: str, source: str, identity: str | None, peer: str,
                     close_linger_s: float = 0.0) -> Channel:
        channel = self.hub.connect_dealer(endpoint, name=name, identity=identity, peer=peer, close_linger_s=close_linger_s)
        self._sources[name] = source
        return channel

    def fail(self, why: str) -> None:
        raise NodeFailure(why)

    def range_graph(self):
        proximity = None if self.talk is None else self.talk.proximity
        return None if proximity is None else proximity.adjacency()

    def _capability_states(self) -> dict[str, Any]:
        return {c.name: state for c in self.capabilities if (state := c.state_dict()) is not None}

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

    def take_owed_updates(self) -> None:
        while self.learner.gradient_steps_due() > 0:
            self.learner.update(max_gradient_steps=self.config.gradient_steps_per_slice)

    # ------------------------------------------------------------------ observations

    def on_env_observation(self, sender: str, message: m.EnvObservation, now: float) -> None:
        message = self.env_client.on_message(message, now)
        if self.talk is None:
            self._handle_observation(message)
            return
        if self.talk.parked is not None:  # the server stepped on: the older one goes without its marks
            self._handle_parked_observation(waited_out=True)
        self.talk.park(message, now)
        self._handle_parked_observation(waited_out=False)

    def _handle_parked_observation(self, *, waited_out: bool) -> None:
        """Handle the observation waiting for its step's marks once they came (or `waited_out`)."""
        ready = self.talk.take_parked(self.step, self.mesh.membership.is_declared_down, waited_out)
        if ready is None:
            return
        message, missing = ready
        if missing:
            self.reproducibility_broken("step_marks", f"a neighbour's messages of a step did not come ({missing})")
        self._handle_observation(message)

    def _handle_observation(self, message: m.EnvObservation) -> None:
        if message.evaluation and not self.evaluating:
            # An evaluation begins: record how much of the owed learning was done by now.
            self.metrics.write(self.step, self.learner.counters())
        self.evaluating = message.evaluation
        if message.evaluation:
            self.on_evaluation_observation(message)
            return
        self.step = message.step
        holders = [capability for capability in self.capabilities if capability.held is not None]
        if holders or self.waiting_for_updates is not None:
            self._on_stepped_without_answer(message, holders)
            return
        self._record_transition(message)
        self._hand_on(message, 0)

    def _hand_on(self, message: m.EnvObservation, start: int) -> None:
        """Offer the observation to the capabilities from `start` on (all of them for the env
        server's last one: the final average comes first); answer it if none holds it."""
        start = 0 if message.run_finished else start
        if not message.run_finished and (self.env_client.restarting or message is self.dead_server_observation):
            # Held across an env-server restart: the server that waited on it is gone.
            log.info("not answering step %d: the env server restarted since it sent it", message.step)
            return
        for capability in self.capabilities[start:]:
            if not capability.wants_to_hold(message):
                continue
            if message.run_finished and self.state is not NodeState.RUNNING:
                break
            if message.run_finished and self.config.learning:
                self.take_owed_updates()  # what the final hold (the average) sees is the finished learner's
            if capability.hold_state is not None:
                self.transition(NodeState(capability.hold_state))
            capability.begin_hold(message, time.monotonic())
            return
        if message.run_finished:
            self.begin_draining(RUN_BUDGET_SPENT)
        elif self.env_client.stepped_past(message):
            self._pass_superseded(message)
        elif message.evaluation:
            self._answer(message, explore=False)
        elif self.learner.gradient_steps_due() > self.config.max_pending_gradient_steps or self._behind():
            # The update-ratio contract: learn first (the loop takes slices while this waits).
            for capability in self.capabilities:
                capability.catch_up()
            self.waiting_for_updates = message
        else:
            self._answer(message, explore=self.config.learning)

    def release(self, capability: Capability, message: m.EnvObservation) -> None:
        if capability.hold_state is not None and self.state.value == capability.hold_state:
            self.transition(NodeState.RUNNING)
        self._hand_on(message, self.capabilities.index(capability))

    def _behind(self) -> bool:
        return any(capability.behind() for capability in self.capabilities)

    def retry_waiting(self) -> None:
        if self.waiting_for_updates is not None and not self._behind() and (
                self.learner.gradient_steps_due() <= self.config.max_pending_gradient_steps):
            message, self.waiting_for_updates = self.waiting_for_updates, None
            self._hand_on(message, len(self.capabilities))

    def _on_stepped_without_answer(self, message: m.EnvObservation, holders: list[Capability]) -> None:
        """A new observation while the last one is still held (by a capability, or learning owed
        updates) for longer than `env.step_deadline_s`: the server played our default action
        and moved on. Keep the rewards and episode ends, learn nothing from that step, and
        answer the newest observation when the hold ends."""
        log.warning(
            "the env server stepped on to step %d while this agent held its observation (%s); "
            "raise env.step_deadline_s if this repeats",
            message.step, ", ".join(c.hold_state or c.name for c in holders) or "learning owed updates",
        )
        self.metrics.accumulate({"env/stepped_without_answer": 1.0})
        self.reproducibility_broken("step_deadline", "the env server played a default action for this agent")
        self.episodes.stepped_without_answer()
        now = time.monotonic()
        kept = [capability.on_newer_observation(message, now) for capability in holders]  # (each: keep holding?)
        self._record_transition(message)
        if any(kept):
            return  # the holder answers the newest observation when its hold ends
        if holders:
            self._hand_on(message, self.capabilities.index(holders[0]))
        elif message.run_finished:
            self.waiting_for_updates = None
            self._hand_on(message, 0)
        else:
            for capability in self.capabilities:
                capability.catch_up()
            self.waiting_for_updates = message

    def on_evaluation_observation(self, message: m.EnvObservation) -> None:
        """Act greedily on the evaluation copies; nothing is learned and the training state
        (the assembler's last observation and action) stays as it was, ready for when training resumes."""
        if message.run_finished:
            self.begin_draining(RUN_BUDGET_SPENT)
            return
        if message.missing:
            self.reproducibility_broken("step_deadline", f"an evaluation step went on without {sorted(message.missing)}")
        now = time.monotonic()
        for capability in self.capabilities:
            if capability.held is not None and capability.held is not message:
                capability.on_newer_observation(message, now)  # the server stepped on meanwhile (answered anyway)
        if self.talk is not None:  # the peer messages due at this step, once the transition it closes is recorded
            self.talk.hand_out(message, self.capabilities, self.dispatch)
        self._hand_on(message, 0)

    def _answer(self, message: m.EnvObservation, *, explore: bool) -> None:
        observations = message.observations[self.env_agent]
        conditioned = observations
        for capability in self.capabilities:
            conditioned = capability.condition(conditioned, message.evaluation)
        actions = self.learner.act(conditioned, explore=explore)
        self._close_talk_step(message)
        if self.act_delay_s:
            time.sleep(self.act_delay_s)  # a straggler on purpose (agents.act_delay_s): a slower machine's answer
        self.env.send(self.env_client.answer(message, {self.env_agent: actions}))
        if not message.evaluation:
            self.episodes.acted(observations, actions, message.active[self.env_agent])
            self.global_fields.remember(message)
            self.persistence.maybe_save(self.step, self.learner, self.episodes.episodes)

    def _close_talk_step(self, message: m.EnvObservation) -> None:
        if self.talk is not None:  # what the protocols sent during this step leaves now, with the step's marks
            self.mesh.send(self.talk.close_step(self.talk.clock_of(message, self.step), message.step))

    def _pass_superseded(self, message: m.EnvObservation) -> None:
        """A newer observation came while this one waited (behind a realtime clock, or past a step
        deadline): the env server has stepped on, so an answer now would be played late, for a
        world that has moved. The agent acts on the newest one only; in training this step's
        transition is recorded and the row it would close is not learned (the server played
        another action)."""
        self._close_talk_step(message)
        if not message.evaluation:
            self.episodes.stepped_without_answer()
        self.metrics.accumulate({"env/superseded_observations": 1.0})

    def _record_transition(self, message: m.EnvObservation) -> None:
        assembled = self.episodes.observe(message)
        if (transition := assembled.transition) is not None:
            if self.global_fields.enabled:
                transition = replace(transition, **self.global_fields.fields(message, transition.copy_index))
            # learning: false evaluates (agents.learning); a capability may feed the learner itself
            if self.config.learning and not any(c.feed_learner(message, transition) for c in self.capabilities):
                self.learner.observe(transition)
            for capability in self.capabilities:
                capability.on_transition(message, transition)
        for episode in assembled.finished:
            self.metrics.write(message.step, {"env/episode_return": episode.episode_return,
                                              "env/episode_length": episode.length, "env/episode": episode.episode})
        if message.missing:
            self.metrics.accumulate({"env/missing_agents": len(message.missing)})
            self.reproducibility_broken("step_deadline", f"the env server stepped without {sorted(message.missing)}")
        # (> the last flushed step: a resumed env server's first observation may repeat the step
        # of the last one the old server sent.)
        if message.step % self.config.metrics_every_steps == 0 and message.step > self.flushed_step:
            flush_metrics(self, message.step)
        now = time.monotonic()
        for capability in self.capabilities:
            capability.after_observation(message, now)
        if self.talk is not None:  # the peer messages due at this step, once the transition it closes is recorded
            self.metrics.accumulate(self.talk.graph_record())  # (links that follow positions: the step's graph)
            self.talk.hand_out(message, self.capabilities, self.dispatch)

    # The node's own dispatch: message type -> (the sources it may come from, its handler).
    # Capabilities add theirs (`Capability.handles`, see `dispatch_table`).
    HANDLERS: dict[type, tuple[tuple[str, ...], Callable]] = {
        m.EnvObservation: ((ENV,), on_env_observation),
        m.EnvWelcome: ((ENV,), handlers.on_env_welcome),
        m.ErrorReply: ((ENV,), handlers.on_env_error),
        m.EnvServerRestarting: ((CONTROL,), handlers.on_env_server_restarting),
        m.EnvServerBack: ((CONTROL,), handlers.on_env_server_back),
        m.NeighbourMoved: ((CONTROL,), handlers.on_neighbour_moved),
        m.Shutdown: ((CONTROL,), handlers.on_shutdown),
        m.Partition: ((CONTROL,), handlers.on_network_fault),
        m.Heal: ((CONTROL,), handlers.on_network_fault),
        m.SetLink: ((CONTROL,), handlers.on_network_fault),
        m.Heartbeat: ((PEERS,), handlers.on_heartbeat),
    }
