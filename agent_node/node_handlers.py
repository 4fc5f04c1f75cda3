"""The agent node's own handlers (agent_node/node.py `AgentNode.HANDLERS`): the env server's
side (a restart of the env server, the welcome on rejoining, a refusal), the orchestrator's
(shutdown, network faults) and the neighbours' liveness (heartbeats, membership events). A
capability's messages go to the capability.

Each is a function of the node, `(node, sender, message, now)` as the dispatch calls it; none
names a capability.
"""

from __future__ import annotations

import logging
import time

from agent_node.env_client import EnvRefused
from agent_node.node_lifecycle import RUN_BUDGET_SPENT, NodeFailure, open_peer_link, pack_env_bodies
from protocols.codec import messages as m
from protocols.run.control import apply_network_fault
from protocols.net.links import LinkConfig
from protocols.engines.membership import PeerDown, PeerRestarted, PeerUp
from protocols.run.settings import ENV_NODE_ID

log = logging.getLogger("agent_node")


def on_env_server_restarting(node, sender: str, message: m.EnvServerRestarting, now: float) -> None:
    """The orchestrator is restarting the env server: wait for `control.env_back` instead
    of failing on its silence (env_client.py). The episodes in flight end here, cut
    (transitions.py), and the connection to the dead server is dropped so that nothing
    queued for it (an action, a goal.ready) reaches the new one. Learning and the peer
    protocols go on meanwhile."""
    log.warning("the env server is restarting (restart %d); waiting for it at step %d", message.restarts + 1, node.step)
    node.reproducibility_broken("env_server_restart", "the env server restarted (its episodes were cut)")
    node.env_client.server_restarting()
    if node.env is not None:
        node.hub.close_channel(node.env)
        node.env = None
    node.waiting_for_updates = None
    node.dead_server_observation = next((c.held for c in node.capabilities if c.held is not None), None)
    node.evaluating = False
    node.env_down_since = now
    for episode in node.episodes.cut():
        node.metrics.write(node.step, {"env/cut_episode_return": episode.episode_return,
                                       "env/cut_episode_length": episode.length})



def on_env_server_back(node, sender: str, message: m.EnvServerBack, now: float) -> None:
    """The restarted env server is ready: join it again on a fresh connection."""
    if not node.env_client.restarting:
        log.warning("control.env_back, but this agent was not waiting for the env server; ignored")
        return
    node.env = node.hub.connect_dealer(message.env_endpoint, name="env", identity=node.identity.node_id, peer=ENV_NODE_ID)
    node.env.send(node.env_client.rejoin(now))



def on_neighbour_moved(node, sender: str, message: m.NeighbourMoved, now: float) -> None:
    """A neighbour was restarted and listens at a new endpoint (tcp: a new port, or another host
    after its own was lost): what we send it goes there from now on, over a fresh link."""
    if node.mesh is None or message.neighbour not in node.mesh.links:
        log.warning("control.neighbour_moved for %r, which is not a neighbour of this agent; ignored", message.neighbour)
        return
    old = node.mesh.replace_link(message.neighbour, open_peer_link(node, message.neighbour, message.endpoint))
    node.hub.close_channel(old)
    log.info("neighbour %s moved: sending to %s", message.neighbour, message.endpoint)


def on_env_welcome(node, sender: str, welcome: m.EnvWelcome, now: float) -> None:
    """The restarted server's answer to our join: the run resumes with a reset (a new episode)."""
    if not node.env_client.restarting:
        log.warning("env.welcome at step %d, but this agent did not rejoin; ignored", welcome.step)
        return
    try:
        node.env_client.on_welcome(welcome)
    except EnvRefused as refusal:
        raise NodeFailure(f"the restarted env server refused to let us join: {refusal}") from refusal
    pack_env_bodies(node)
    node.env.send(node.env_client.reset(seed=None))
    downtime_s = now - node.env_down_since if node.env_down_since is not None else 0.0
    log.info("rejoined the restarted env server at step %d after %.2f s", welcome.step, downtime_s)
    node.metrics.write(welcome.step, {"env/server_downtime_s": downtime_s})
    node.env_down_since = None



def on_env_error(node, sender: str, refusal: m.ErrorReply, now: float) -> None:
    raise NodeFailure(f"env server refused a request: {refusal.code}: {refusal.message}")



def on_shutdown(node, sender: str, shutdown: m.Shutdown, now: float) -> None:
    waiting = [c for c in node.capabilities if c.waits_for_last_observation]
    if shutdown.reason == RUN_BUDGET_SPENT and (
        (node.reproducible and node.state.value == "running")
        or (waiting and node.state.value in {"running"} | {c.hold_state for c in waiting})
    ):
        # The env server sent its last observation before it told the orchestrator, but on
        # another connection: it can be handled after this. Every run with this seed learns
        # from it, and it starts the final average, so wait for it (its run_finished drains
        # the node, after the final average if there is one; `_on_timers` bounds the wait,
        # the config bounds the average below launch.shutdown_timeout_s).
        node.awaiting_final_observation = True
        return
    node.begin_draining(shutdown.reason)



def on_heartbeat(node, sender: str, heartbeat: m.Heartbeat, now: float) -> None:
    pass  # membership has already taken it as a sign of life and read its incarnation



def on_network_fault(node, sender: str, fault: m.Partition | m.Heal | m.SetLink, now: float) -> None:
    """A run-time partition, heal or link change from the fault schedule: applied to this
    node's outgoing links (protocols/run/control.py), with the link counters at that moment."""
    log.warning("%s", apply_network_fault(node.hub.links, fault))
    if node.talk is not None and isinstance(fault, m.SetLink):  # links between agents count steps
        for src, dst in fault.edges:
            if src == node.identity.node_id and dst in node.talk.neighbours:
                node.talk.outbox.set_config(dst, LinkConfig.model_validate(fault.link))
    node.control.channel.send(m.FaultApplied(position=fault.position))  # a held step waits for it
    node.env_client.heard(now)  # the env server's silence is counted from the change
    node.metrics.write(node.step, node.hub.link_metrics())



def on_membership_events(node, events: list) -> None:
    for event in events:
        if isinstance(event, (PeerDown, PeerUp)):
            alive = {"membership/peers_alive": len(node.mesh.alive_peers())}
            node.metrics.write(node.step, alive)
        if isinstance(event, (PeerDown, PeerUp)) and node.talk is not None and node.talk.out_of_range(event.peer):
            # Links that follow positions: a neighbour out of range is down to the protocols
            # already, and comes up to them when it is back in range (agent_node/step_talk.py).
            log.info("neighbour %s is %s (out of range: the protocols hear of it when it is back in range)",
                     event.peer, "down" if isinstance(event, PeerDown) else "up")
            continue
        if isinstance(event, PeerDown):
            log.warning("neighbour %s is down (silent for %.1f s)", event.peer, event.silent_for_s)
            for capability in node.capabilities:
                capability.on_neighbour_down(event.peer, time.monotonic())
        elif isinstance(event, PeerUp):
            log.info("neighbour %s is up", event.peer)
            for capability in node.capabilities:
                capability.on_neighbour_up(event.peer, time.monotonic())
        elif isinstance(event, PeerRestarted):
            log.info("neighbour %s restarted (incarnation %d)", event.peer, event.incarnation)
