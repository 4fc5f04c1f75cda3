"""How an agent node (agent_node/node.py) starts and stops: `connect_node` registers, learns its
neighbours and the env server, joins the env and reports ready; `build_node_learner` and
`restore_node` make the learner once the welcome names the spaces and put back the saved state;
`drain_node` persists what the node learned, says goodbye and closes every socket.

Each is a function of the node it is given; none names a capability, and none imports node.py
(which imports this).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

from agent_node.algos import build_learner
from agent_node.capability import PEERS
from agent_node.config import initial_checkpoint, initial_checkpoint_candidates
from agent_node.env_client import EnvProtocolError, EnvRefused, use_lockstep_transport
from agent_node.node_states import NodeState
from agent_node.peers import PeerMesh
from agent_node.roles import NodeLearner
from agent_node.transitions import TransitionAssembler
from protocols.codec import messages as m
from protocols.storage.jsonlines import FileWriteError
from protocols.run.settings import ENV_NODE_ID
from protocols.codec.spaces import decode_space
from protocols.seeds import derive_seed

log = logging.getLogger("agent_node")

RUN_BUDGET_SPENT = "run budget spent"  # the stop reason of a run that ended normally


class NodeFailure(RuntimeError):
    """The node cannot go on (a deadline passed, the env server refused us, …)."""


def connect_node(node) -> None:
    """Register, learn the neighbours and the env server, join the env, report ready."""
    node.transition(NodeState.CONNECTING)
    node.control.register("agent", {"peer": node.peer_inbox.endpoint})
    directory: m.Directory = node.control.wait_for(m.Directory, node.startup_timeout_s)
    # Peers only ever write to our inbox, never reply on the DEALERs we connected to them: the
    # links carry no routing id (identity None), so a neighbour frozen past the zmq heartbeat
    # timeout still hears them after it wakes (`Hub.connect_dealer`). Who sent a message is
    # the signed (ipc) or authenticated (tcp) sender of its header, never the routing id.
    links = {neighbour: open_peer_link(node, neighbour, endpoint) for neighbour, endpoint in sorted(directory.neighbours.items())}
    node.mesh = PeerMesh(node.identity.node_id, links, heartbeat_every_s=node.membership.heartbeat_every_s,
                         timeout_s=node.membership.timeout_s, refusals=node.hub.refusals)
    node.mesh.set_state(node.state.value)
    node.mesh.start(time.monotonic())
    node.env = node.hub.connect_dealer(directory.env_endpoint, name="env", identity=node.identity.node_id, peer=ENV_NODE_ID)
    for capability in node.capabilities:
        capability.connect(directory)
    node.env.send(node.env_client.join())
    welcome = wait_env(node, m.EnvWelcome, node.env_client.on_welcome)
    if node.talk is not None:
        node.talk.know_env_agents(node.topology.nodes, list(welcome.possible_agents))
    pack_env_bodies(node)
    build_node_learner(node, welcome)
    node.control.ready(notice=node.state_notice)
    node.transition(NodeState.READY)
    node.control.wait_for(m.Start, node.startup_timeout_s)
    node.transition(NodeState.RUNNING)
    node.env.send(node.env_client.reset(seed=None))
    node.env_client.heard(time.monotonic())



def open_peer_link(node, neighbour: str, endpoint: str):
    """The outgoing link to `neighbour`'s inbox at `endpoint` (see `connect_node` on why it has no
    routing id); it lingers as long as a capability asks, so a last share gets out on close."""
    linger_s = max([0.0] + [c.peer_linger_s for c in node.capabilities])
    return node.open_channel(endpoint, name=f"peer:{neighbour}", source=PEERS, identity=None, peer=neighbour,
                             close_linger_s=linger_s)


def wait_env(node, message_type: type, take: Callable[[Any], Any]) -> Any:
    message = node.env.wait_for(message_type, m.ErrorReply, timeout_s=node.startup_timeout_s)
    if message is None:
        raise NodeFailure(f"no {message_type.MSG_TYPE} from the env server within {node.startup_timeout_s} s")
    try:
        return take(message)
    except EnvRefused as refusal:
        raise NodeFailure(f"env server refused to let us join: {refusal}") from refusal



def pack_env_bodies(node) -> None:
    """The welcome granted packed lockstep bodies (protocols/codec/packed.py), perhaps through
    shared memory (protocols/net/shm_lockstep.py): the env channel reads and writes them so from
    the reset on."""
    try:
        transport = use_lockstep_transport(node.env, node.env_client, ENV_NODE_ID)
    except EnvProtocolError as error:
        raise NodeFailure(str(error)) from error
    log.info("lockstep bodies: %s", transport)



def shared_initial_policy_seed(node) -> int | None:
    """The run-wide seed of every agent's initial policy with `protocols.consensus.same_initial_policy`
    (the same for every agent: derived from the run's seed alone), else None."""
    if not node.run_config.protocols.consensus.same_initial_policy:
        return None
    return derive_seed(node.identity.run_seed, -1, "same_initial_policy")  # -1: no node's index, the run's own


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
        init_seed=shared_initial_policy_seed(node),
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
        node.take_owed_updates()
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
    if error.strerror not in node.write_errors_logged:
        node.write_errors_logged.add(error.strerror)
        log.error("stopping: %s", error.strerror)
