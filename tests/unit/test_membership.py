"""The membership engine, driven by hand: messages and time in, heartbeats and events out."""

import pytest

from protocols.membership import MembershipEngine, PeerDown, PeerRestarted, PeerUp
from protocols.messages import Heartbeat


def engine(now: float = 0.0) -> MembershipEngine:
    return MembershipEngine("agent_0", ["agent_1", "agent_2"], heartbeat_every_s=0.5, timeout_s=2.0, now=now)


def test_heartbeats_go_to_every_peer_once_per_period():
    membership = engine()
    outgoing, events = membership.on_timer(0.0)
    assert sorted(peer for peer, _ in outgoing) == ["agent_1", "agent_2"]
    assert all(isinstance(beat, Heartbeat) and beat.node_id == "agent_0" for _, beat in outgoing)
    assert membership.on_timer(0.3)[0] == []  # not due yet
    assert len(membership.on_timer(0.5)[0]) == 2
    assert events == []


def test_a_peer_is_up_once_heard_and_down_after_the_timeout():
    membership = engine()
    assert membership.alive_peers() == []
    assert membership.on_message("agent_1", 1.0) == [PeerUp("agent_1")]
    assert membership.on_message("agent_1", 1.5) == []  # already up
    assert membership.is_alive("agent_1") and not membership.is_alive("agent_2")
    assert membership.next_deadline() <= 3.5
    _, events = membership.on_timer(3.4)
    assert events == []
    _, events = membership.on_timer(3.6)
    assert events == [PeerDown("agent_1", pytest.approx(2.1))]
    assert membership.alive_peers() == []
    assert membership.on_message("agent_1", 4.0) == [PeerUp("agent_1")]


def test_a_higher_incarnation_means_the_peer_restarted():
    membership = engine()
    events = membership.on_heartbeat(Heartbeat(node_id="agent_2", incarnation=0, state="running"), 1.0)
    assert events == [PeerUp("agent_2")]
    assert membership.on_heartbeat(Heartbeat(node_id="agent_2", incarnation=0, state="running"), 1.2) == []
    events = membership.on_heartbeat(Heartbeat(node_id="agent_2", incarnation=1, state="booting"), 1.4)
    assert events == [PeerRestarted("agent_2", 1)]


def test_strangers_are_ignored():
    membership = engine()
    assert membership.on_message("agent_9", 1.0) == []
    assert membership.on_heartbeat(Heartbeat(node_id="agent_9", incarnation=3, state="x"), 1.0) == []


def test_the_timeout_must_exceed_the_heartbeat_period():
    with pytest.raises(ValueError, match="timeout_s .* must exceed heartbeat_every_s"):
        MembershipEngine("a", ["b"], heartbeat_every_s=1.0, timeout_s=1.0, now=0.0)
