"""The membership engine, driven by hand: messages and time in, heartbeats and events out."""

import numpy as np
import pytest

from protocols.engines.engine import Engine
from protocols.engines.membership import MembershipEngine, PeerDown, PeerRestarted, PeerUp
from protocols.engines.consensus import ConsensusShare
from protocols.codec.messages import Heartbeat


def engine(now: float = 0.0) -> MembershipEngine:
    membership = MembershipEngine("agent_0", ["agent_1", "agent_2"], heartbeat_every_s=0.5, timeout_s=2.0)
    membership.start(None, now)
    return membership


def beat(node: str, incarnation: int = 0) -> Heartbeat:
    return Heartbeat(node_id=node, incarnation=incarnation, state="running")


def test_it_implements_the_engine_interface_and_never_finishes():
    membership = engine()
    assert isinstance(membership, Engine)
    assert membership.message_types == (Heartbeat,)
    assert not membership.done and membership.result == frozenset()


def test_nothing_is_sent_before_start_and_heartbeats_go_out_at_start():
    membership = MembershipEngine("agent_0", ["agent_1"], heartbeat_every_s=0.5, timeout_s=2.0)
    assert membership.on_timer(5.0) == [] and membership.next_deadline() is None
    outgoing = membership.start(None, 5.0)
    assert [(peer, type(message)) for peer, message in outgoing] == [("agent_1", Heartbeat)]


def test_heartbeats_go_to_every_peer_once_per_period():
    membership = MembershipEngine("agent_0", ["agent_1", "agent_2"], heartbeat_every_s=0.5, timeout_s=2.0)
    outgoing = membership.start(None, 0.0)
    assert sorted(peer for peer, _ in outgoing) == ["agent_1", "agent_2"]
    assert all(isinstance(beat, Heartbeat) and beat.node_id == "agent_0" for _, beat in outgoing)
    assert membership.on_timer(0.3) == []  # not due yet
    assert len(membership.on_timer(0.5)) == 2
    assert membership.take_events() == []


def test_a_peer_is_up_once_heard_and_down_after_the_timeout():
    membership = engine()
    assert membership.alive_peers() == []
    # Any message counts as a sign of life, not only heartbeats.
    share = ConsensusShare(epoch=1, round=0, tensors={"x": np.zeros(1)})
    assert membership.on_message("agent_1", share, 1.0) == []
    assert membership.take_events() == [PeerUp("agent_1")]
    membership.on_message("agent_1", beat("agent_1"), 1.5)
    assert membership.take_events() == []  # already up
    assert membership.is_alive("agent_1") and not membership.is_alive("agent_2")
    assert membership.next_deadline() <= 3.5
    membership.on_timer(3.4)
    assert membership.take_events() == []
    membership.on_timer(3.6)
    assert membership.take_events() == [PeerDown("agent_1", pytest.approx(2.1))]
    assert membership.alive_peers() == [] and membership.metrics()["membership/downs_seen"] == 1.0
    membership.on_message("agent_1", beat("agent_1"), 4.0)
    assert membership.take_events() == [PeerUp("agent_1")]


def test_a_higher_incarnation_means_the_peer_restarted():
    membership = engine()
    membership.on_message("agent_2", beat("agent_2", 0), 1.0)
    assert membership.take_events() == [PeerUp("agent_2")]
    membership.on_message("agent_2", beat("agent_2", 0), 1.2)
    assert membership.take_events() == []
    membership.on_message("agent_2", beat("agent_2", 1), 1.4)
    assert membership.take_events() == [PeerRestarted("agent_2", 1)]
    assert membership.metrics()["membership/restarts_seen"] == 1.0


def test_strangers_are_ignored():
    membership = engine()
    assert membership.on_message("agent_9", beat("agent_9", 3), 1.0) == []
    assert membership.take_events() == []


def test_the_timeout_must_exceed_the_heartbeat_period():
    with pytest.raises(ValueError, match="timeout_s .* must exceed heartbeat_every_s"):
        MembershipEngine("a", ["b"], heartbeat_every_s=1.0, timeout_s=1.0)


def test_a_peer_never_heard_is_declared_down_once_the_timeout_passes_while_this_node_runs():
    membership = engine()
    membership.on_message("agent_1", beat("agent_1"), 0.5)
    membership.on_timer(9.0)  # booting: a neighbour that never spoke is not timed yet
    assert [type(e) for e in membership.take_events()] == [PeerUp, PeerDown]  # agent_1 went silent
    membership.state = "running"
    membership.on_timer(10.0)  # from now agent_2's silence counts (a restarted node, its neighbour cut off)
    assert membership.take_events() == [] and membership.next_deadline() <= 12.0
    membership.on_timer(12.0)
    assert membership.take_events() == [PeerDown("agent_2", pytest.approx(2.0))]
    membership.on_timer(20.0)
    assert membership.take_events() == []  # declared once
    assert membership.metrics()["membership/downs_seen"] == 2.0
    membership.on_message("agent_2", beat("agent_2"), 21.0)
    assert membership.take_events() == [PeerUp("agent_2")] and membership.is_alive("agent_2")
