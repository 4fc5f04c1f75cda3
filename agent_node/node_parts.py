"""The agent node's parts that are not its loop: the env server's side of the dispatch (joining,
a restart of the env server, refusals), restoring the saved state at start-up, and draining.

Each works on the `AgentNode` (agent_node/node.py) it is given (`EnvLink` is inherited by it);
none names a capability, and none imports node.py (which imports this).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from agent_node.algos import build_learner
from agent_node.config import initial_checkpoint, initial_checkpoint_candidates
from agent_node.env_client import EnvProtocolError, EnvRefused, use_lockstep_transport
from agent_node.roles import NodeLearner
from agent_node.transitions import TransitionAssembler
from protocols import messages as m
from protocols.control import apply_network_fault
from protocols.jsonlines import FileWriteError
from protocols.links import LinkConfig
from protocols.membership import PeerDown, PeerRestarted, PeerUp
from protocols.settings import ENV_NODE_ID
from protocols.spaces import decode_space
from protocols.transport import Channel

log = logging.getLogger("agent_node")

RUN_BUDGET_SPENT = "run budget spent"  # the stop reason of a run that ended normally


class NodeFailure(RuntimeError):
    """The node cannot go on (a deadline passed, the env server refused us, …)."""


class EnvLink:
    """The handlers of the env server's side: AgentNode inherits them into its dispatch table."""

    env_down_since: float | None = None  # while the env server restarts
    # The observation a capability held when the env server died: never answered.
    _dead_server_observation: m.EnvObservation | None = None

    def _wait_env(self, message_type: type, take: Callable[[Any], Any]) -> Any:
        message = self.env.wait_for(message_type, m.ErrorReply, timeout_s=self.startup_timeout_s)
        if message is None:
            raise NodeFailure(f"no {message_type.MSG_TYPE} from the env server within {self.startup_timeout_s} s")
        try:
            return take(message)
        except EnvRefused as refusal:
            raise NodeFailure(f"env server refused to let us join: {refusal}") from refusal

    def _pack_env_bodies(self) -> None:
        """The welcome granted packed lockstep bodies (protocols/packed.py), perhaps through
        shared memory (protocols/shm_lockstep.py): the env channel reads and writes them so from
        the reset on."""
        try:
            transport = use_lockstep_transport(self.env, self.env_client, ENV_NODE_ID)
        except EnvProtocolError as error:
            raise NodeFailure(str(error)) from error
        log.info("lockstep bodies: %s", transport)

    def on_env_server_restarting(self, sender: str, message: m.EnvServerRestarting, now: float) -> None:
        """The orchestrator is restarting the env server: wait for `control.env_back` instead
        of failing on its silence (env_client.py). The episodes in flight end here, cut
        (transitions.py), and the connection to the dead server is dropped so that nothing
        queued for it (an action, a goal.ready) reaches the new one. Learning and the peer
        protocols go on meanwhile."""
        log.warning("the env server is restarting (restart %d); waiting for it at step %d", message.restarts + 1, self.step)
        self.reproducibility_broken("env_server_restart", "the env server restarted (its episodes were cut)")
        self.env_client.server_restarting()
        if self.env is not None:
            self.hub.close_channel(self.env)
            self.env = None
        self.waiting_for_updates = None
        self._dead_server_observation = next((c.held for c in self.capabilities if c.held is not None), None)
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
        self.env = self.hub.connect_dealer(message.env_endpoint, name="env", identity=self.identity.node_id, peer=ENV_NODE_ID)
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


class Services:
    """What the node offers its capabilities (`capability.NodeServices`), and its reports: the
    status, the link counters at a network fault, neighbours that come and go."""

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
        if not self.reproducible or cause in self._broken_causes:
            return
        self._broken_causes.add(cause)
        log.warning("run.reproducible: this run is no longer a function of its seed from step %d: %s", self.step, what)
        self.metrics.write(self.step, {"reproducibility/broken": 1.0, f"reproducibility/{cause}": 1.0})
        self._send_status(time.monotonic())

    def open_channel(self, endpoint: str, *, name: str, source: str, identity: str, peer: str,
                     close_linger_s: float = 0.0) -> Channel:
        channel = self.hub.connect_dealer(endpoint, name=name, identity=identity, peer=peer, close_linger_s=close_linger_s)
        self._sources[name] = source
        return channel

    def fail(self, why: str) -> None:
        raise NodeFailure(why)

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

    def _take_owed_updates(self) -> None:
        while self.learner.gradient_steps_due() > 0:
            self.learner.update(max_gradient_steps=self.config.gradient_steps_per_slice)

    def _flush_metrics(self, step: int) -> None:
        """The periodic metrics: the means accumulated, the link and peer counters, the
        capabilities' records."""
        self._flushed_step = step
        self.metrics.flush_means(step)
        self.metrics.write(step, self.hub.link_metrics())  # per-link counters (network:)
        self.metrics.write(step, self._peer_traffic())
        if self.talk is not None:
            self.metrics.write(step, self.talk.metrics())
        for capability in self.capabilities:
            if record := capability.metrics():
                self.metrics.write(step, record)

    def on_shutdown(self, sender: str, shutdown: m.Shutdown, now: float) -> None:
        waiting = [c for c in self.capabilities if c.waits_for_last_observation]
        if shutdown.reason == RUN_BUDGET_SPENT and (
            (self.reproducible and self.state.value == "running")
            or (waiting and self.state.value in {"running"} | {c.hold_state for c in waiting})
        ):
            # The env server sent its last observation before it told the orchestrator, but on
            # another connection: it can be handled after this. Every run with this seed learns
            # from it, and it starts the final average, so wait for it (its run_finished drains
            # the node, after the final average if there is one; `_on_timers` bounds the wait,
            # the config bounds the average below launch.shutdown_timeout_s).
            self.awaiting_final_observation = True
            return
        self.begin_draining(shutdown.reason)

    def on_heartbeat(self, sender: str, heartbeat: m.Heartbeat, now: float) -> None:
        pass  # membership has already taken it as a sign of life and read its incarnation

    def on_network_fault(self, sender: str, fault: m.Partition | m.Heal | m.SetLink, now: float) -> None:
        """A run-time partition, heal or link change from the fault schedule: applied to this
        node's outgoing links (protocols/control.py), with the link counters at that moment."""
        log.warning("%s", apply_network_fault(self.hub.links, fault))
        if self.talk is not None and isinstance(fault, m.SetLink):  # links between agents count steps
            for src, dst in fault.edges:
                if src == self.identity.node_id and dst in self.talk.neighbours:
                    self.talk.outbox.set_config(dst, LinkConfig.model_validate(fault.link))
        self.control.channel.send(m.FaultApplied(position=fault.position))  # a held step waits for it
        self.env_client.heard(now)  # the env server's silence is counted from the change
        self.metrics.write(self.step, self.hub.link_metrics())

    def _on_membership_events(self, events: list) -> None:
        for event in events:
            if isinstance(event, (PeerDown, PeerUp)):
                alive = {"membership/peers_alive": len(self.mesh.alive_peers())}
                self.metrics.write(self.step, alive)
            if isinstance(event, PeerDown):
                log.warning("neighbour %s is down (silent for %.1f s)", event.peer, event.silent_for_s)
                for capability in self.capabilities:
                    capability.on_neighbour_down(event.peer, time.monotonic())
            elif isinstance(event, PeerUp):
                log.info("neighbour %s is up", event.peer)
                for capability in self.capabilities:
                    capability.on_neighbour_up(event.peer, time.monotonic())
            elif isinstance(event, PeerRestarted):
                log.info("neighbour %s restarted (incarnation %d)", event.peer, event.incarnation)

    def _send_status(self, now: float) -> None:
        elapsed = max(1e-9, now - self.started_at)
        self.control.send_status(
            now, state=self.state.value, step=self.step, episode=self.episodes.episodes if self.episodes else 0,
            last_return=self.episodes.last_return if self.episodes else None, msgs_per_s=self.messages_handled / elapsed,
            extra={**({"membership/peers_alive": float(len(self.mesh.alive_peers()))} if self.mesh else {}),
                   **{f"reproducibility/{cause}": 1.0 for cause in sorted(self._broken_causes)}},
        )

    def _peer_traffic(self) -> dict[str, float]:
        """Messages and bytes sent to each neighbour so far (every kind: heartbeats, agreement,
        hindsight, consensus), for the report's traffic per edge."""
        traffic: dict[str, float] = {}
        for neighbour, link in (self.mesh.links.items() if self.mesh is not None else ()):
            if (stats := getattr(link, "stats", None)) is not None:
                traffic[f"peer/{neighbour}/sent"] = float(stats.sent)
                traffic[f"peer/{neighbour}/bytes_sent"] = float(stats.bytes_sent)
        return traffic


def build_node_learner(node, welcome: m.EnvWelcome) -> None:
    """The learner (a capability's, or `agents.learner`) once the welcome names the spaces, the
    capabilities attached to it, and the saved state restored."""
    (node.env_agent,) = welcome.agents
    observation_space = node.env_client.observation_spaces[node.env_agent]
    action_space = node.env_client.action_spaces[node.env_agent]
    for capability in node.capabilities:
        observation_space = capability.observation_space(welcome, observation_space)
    node.learner = next(
        (learner for c in node.capabilities if (learner := c.build_learner(welcome, observation_space, action_space))), None
    ) or build_learner(
        node.config.learner, observation_space, action_space, node.identity.seed("learner"),
        world_model_config=node.config.world_model, task_spec=None if welcome.task is None else welcome.task.as_spec(),
        state_space=decode_space(welcome.global_view["state_space"]) if welcome.global_view else None,
        num_agents=len(welcome.possible_agents), agent_index=node.identity.index,
    )
    if not isinstance(node.learner, NodeLearner):
        raise NodeFailure(
            f"learner kind {node.config.learner.kind!r} built a {type(node.learner).__name__}, which is not a "
            "NodeLearner (agent_node/roles.py: act, observe, gradient_steps_due, update, counters, state_dict)"
        )
    for capability in node.capabilities:
        capability.attach(node.learner, welcome, observation_space, action_space)
    node.episodes = TransitionAssembler(node.env_agent, welcome.num_copies)
    restore_node(node, joined_at_step=welcome.step)
    log.info(
        "driving %s over %d copies: obs %s, actions %s, learner %s",
        node.env_agent, welcome.num_copies, observation_space, action_space, node.config.learner.kind,
    )


def restore_node(node, joined_at_step: int = 0) -> None:
    """The node's saved state after a restart (learner, replay buffer, capabilities), or the
    initial checkpoint the config names (`agents.load_checkpoints`, `load_shared_checkpoint`).
    `joined_at_step`: the env server's step at this agent's welcome; past 0 (a restart, or a
    resumed run) the agent says what it lost: the steps between its checkpoint and that step."""
    config, node_id = node.config, node.identity.node_id
    restored = node.persistence.restore(node.learner)
    if joined_at_step > 0:
        saved_step = 0 if restored is None else restored.step
        kept = "no checkpoint: started from scratch" if restored is None else (
            f"restored checkpoint of step {restored.step} and {restored.replay_rows} replay rows")
        log.warning("lost on restart: %s, joined the run at step %d: %d steps of learning lost", kept, joined_at_step,
                    max(0, joined_at_step - saved_step))
    node.state_notice = notice = node.persistence.notice(restored)
    if notice is not None:  # damaged files skipped, or (run.on_corrupt_state: start_fresh) set aside
        log.error("%s", notice.what)
        node.metrics.write(notice.restored_from_step, notice.metrics())
    if restored is not None:
        node.episodes.episodes = restored.episodes
        for capability in node.capabilities:
            if capability.name in restored.capabilities:
                capability.load_state_dict(restored.capabilities[capability.name])
        # The replay buffer is saved less often than the weights, and the steps since the
        # checkpoint are not replayed: the seed no longer decides what this agent learns.
        node.reproducibility_broken("restart", "this agent resumed from its last checkpoint")
    elif config.load_checkpoints is not None:
        initial = initial_checkpoint(config.load_checkpoints, node.env_agent, node_id)
        if initial is None or not node.persistence.load_initial_checkpoint(node.learner, initial):
            looked = " or ".join(map(str, initial_checkpoint_candidates(config.load_checkpoints, node.env_agent, node_id)))
            raise NodeFailure(f"agents.load_checkpoints: no checkpoint for {node.env_agent!r} at {looked}")
        log.info("loaded the initial checkpoint %s", initial)
    elif config.load_shared_checkpoint is not None:
        shared = Path(config.load_shared_checkpoint)  # one parameter-shared policy for every agent
        if not node.persistence.load_initial_checkpoint(node.learner, shared):
            raise NodeFailure(f"agents.load_shared_checkpoint: no checkpoint at {shared}")
        log.info("loaded the initial checkpoint %s (shared by every agent)", shared)


def drain_node(node, *, finished: bool) -> None:
    """Persist what the node learned, say goodbye, close every socket (`finished`: the run's
    budget was spent, so the updates still owed are taken first).

    Each save is tried on its own: a metrics file the disk refuses does not stop the
    checkpoint from being tried. A refused write is logged in one line and becomes the
    reason the goodbye carries, so the orchestrator's terminal says which node stopped and
    why even when the run's disk (and so events.jsonl) is full."""
    try:
        if node.learner is not None:
            if node.config.learning:
                _while_draining(node, "the owed updates", lambda: _finish_owed_updates(node, finished))
            _while_draining(node, "the checkpoint and replay buffer",
                            lambda: node.persistence.save_all(node.step, node.learner, node.episodes.episodes))
        _while_draining(node, "the last metrics", lambda: _write_last_metrics(node))
        for capability in node.capabilities:
            _while_draining(node, f"the {capability.name} capability", capability.drain)
        node.control.goodbye(node.stop_reason or "stopped")
    except Exception:  # noqa: BLE001 - closing must continue whatever happened above
        log.exception("error while draining")
        node.exit_code = 1
    finally:
        node.metrics.close()
        node.hub.close()


def _write_last_metrics(node) -> None:
    node.metrics.flush_means(node.step)
    node.metrics.write(node.step, node.hub.link_metrics())


def _finish_owed_updates(node, finished: bool) -> None:
    """Take the gradient steps still owed for the data seen (at most the contract's bound
    plus one step's worth), then log the final counters: a finished run did all its work."""
    if finished and node.exit_code == 0:
        node._take_owed_updates()
    node.metrics.write(node.step, node.learner.counters())


def _while_draining(node, what: str, action: Callable[[], None]) -> None:
    try:
        action()
    except FileWriteError as error:
        stop_for_write_error(node, error)
    except Exception:  # noqa: BLE001 - the other saves and the goodbye still follow
        log.exception("error while draining (%s)", what)
        node.exit_code = 1


def stop_for_write_error(node, error: FileWriteError) -> None:
    """A file of this node's was refused: log it once, fail, and say so in the goodbye."""
    node.exit_code = 1
    if not node.stop_reason.startswith("failure: "):
        node.stop_reason = f"failure: {error.strerror}"
    if error.strerror not in node._write_errors_logged:
        node._write_errors_logged.add(error.strerror)
        log.error("stopping: %s", error.strerror)
