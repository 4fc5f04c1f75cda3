"""The peer mesh with recording links (no sockets): heartbeats, liveness events, routing, strangers."""

from __future__ import annotations

import pytest

from agent_node.peers import PeerMesh
from protocols.engines.membership import PeerDown, PeerRestarted, PeerUp
from protocols.codec.messages import Heartbeat
from tests.conftest import RecordingLink


def mesh(heartbeat_every_s=1.0, timeout_s=3.0):
    links = {"b": RecordingLink(), "c": RecordingLink()}
    return PeerMesh("a", links, heartbeat_every_s=heartbeat_every_s, timeout_s=timeout_s), links


def test_start_sends_the_first_heartbeats_and_carries_the_state():
    peers, links = mesh()
    peers.set_state("running")
    peers.start(now=0.0)
    for link in links.values():
        (heartbeat,) = link.sent
        assert isinstance(heartbeat, Heartbeat) and heartbeat.node_id == "a" and heartbeat.state == "running"
    assert peers.next_deadline() is not None and peers.next_deadline() <= 1.0


def test_hearing_from_a_neighbour_marks_it_up_and_silence_marks_it_down():
    peers, links = mesh()
    peers.start(now=0.0)
    accepted, events = peers.accept("b", Heartbeat(node_id="b", incarnation=0, state="running"), now=0.5)
    assert accepted.sender == "b" and isinstance(accepted.message, Heartbeat)
    assert [type(e) for e in events] == [PeerUp] and peers.alive_peers() == ["b"]
    events = peers.on_timer(now=1.0)
    assert events == [] and len(links["b"].sent) == 2  # the periodic heartbeat went out
    events = peers.on_timer(now=4.0)
    assert [(type(e), e.peer) for e in events] == [(PeerDown, "b")]
    assert peers.alive_peers() == []
    _, events = peers.accept("b", Heartbeat(node_id="b", incarnation=1, state="running"), now=4.5)
    assert {type(e) for e in events} >= {PeerUp, PeerRestarted}


def test_strangers_are_dropped_and_engine_output_goes_to_the_right_link():
    peers, links = mesh()
    peers.start(now=0.0)
    accepted, events = peers.accept("z", Heartbeat(node_id="z", incarnation=0, state="running"), now=0.1)
    assert accepted is None and events == [] and peers.dropped_from_strangers == 1
    peers.send([("c", "share-1"), ("b", "share-2")])
    assert links["c"].sent[-1] == "share-1" and links["b"].sent[-1] == "share-2"
    with pytest.raises(ValueError, match=r"addressed str to 'z', which is not a neighbour \(neighbours: \['b', 'c'\]\)"):
        peers.send([("z", "share")])


def test_a_moved_neighbour_gets_a_new_link_and_keeps_its_liveness():
    peers, links = mesh()
    peers.start(now=0.0)
    peers.accept("b", Heartbeat(node_id="b", incarnation=0, state="running"), now=0.5)
    new_link = RecordingLink()
    assert peers.replace_link("b", new_link) is links["b"]
    peers.send([("b", "share")])
    assert new_link.sent == ["share"] and links["b"].sent[-1] != "share"
    assert peers.alive_peers() == ["b"]
    with pytest.raises(ValueError, match=r"'z' is not a neighbour \(neighbours: \['b', 'c'\]\)"):
        peers.replace_link("z", RecordingLink())
