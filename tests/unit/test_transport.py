"""Tests of the transport's send and receive paths (`protocols/net/transport.py`) over real ipc sockets.

What they pin down: a lockstep message crosses the socket as the envelope's three frames (plus
the routing id on a ROUTER), `send_batch` delivers every message of a broadcast to the peer it
names and reports unknown peers the way `send` does, a peer still speaking version 1 of the
envelope is dropped and counted, never handed to the loop, a burst of messages comes out whole
and in order through the C-level receive path, and message ids stay unique across a fork.
"""

from __future__ import annotations

import logging
import time

import msgpack
import numpy as np
import pytest
import zmq

from protocols.codec import messages as m
from protocols.codec import wire
from protocols.net.transport import Hub

pytestmark = pytest.mark.timeout(60)


def receive(hub: Hub, channel, count: int, timeout_s: float = 10.0) -> list[wire.Envelope]:
    got: list[wire.Envelope] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count and (left := deadline - time.monotonic()) > 0:
        if channel in hub.wait(left):
            got.extend(channel.recv_all())
    return got


def observation(step: int, agent: str) -> m.EnvObservation:
    return m.EnvObservation(
        step=step,
        observations={agent: np.full((1, 18), step, np.float32)},
        rewards={agent: np.zeros(1, np.float32)},
        terminated={agent: np.zeros(1, bool)},
        truncated={agent: np.zeros(1, bool)},
        active={agent: np.ones(1, bool)},
        final_observations={},
        episode_start=np.zeros(1, bool),
    )


def connect_clients(hubs, tmp_path, names: list[str], key: bytes = b""):
    server_hub = hubs("env", key=key)
    inbox = server_hub.bind_router(f"ipc://{tmp_path}/env.sock", name="env")
    clients = {}
    for name in names:
        hub = hubs(name, key=key)
        channel = hub.connect_dealer(inbox.endpoint, name="env", identity=name)
        channel.send(m.EnvReset())  # makes the ROUTER know the client's routing id
        clients[name] = (hub, channel)
    joined = receive(server_hub, inbox, len(names))
    assert sorted(e.sender for e in joined) == sorted(names)
    return server_hub, inbox, clients


@pytest.mark.parametrize("key", [b"", b"run-key-0123456789abcdef"])
def test_send_batch_delivers_each_message_to_its_peer(hubs, tmp_path, key):
    server_hub, inbox, clients = connect_clients(hubs, tmp_path, ["agent_0", "agent_1", "agent_2"], key)
    outgoing = [(name.encode(), observation(7, name)) for name in clients] + [(b"nobody", observation(7, "x"))]
    assert inbox.send_batch(outgoing) == [True, True, True, False]
    assert inbox.stats.unroutable == 1 and inbox.stats.sent == 3
    for name, (hub, channel) in clients.items():
        (envelope,) = receive(hub, channel, 1)
        assert envelope.sender == "env" and envelope.message.step == 7
        assert list(envelope.message.observations) == [name]
        assert envelope.message.observations[name].tolist() == [[7.0] * 18]


def test_a_lockstep_message_is_three_frames_on_the_wire(hubs, raw_dealer, tmp_path):
    server_hub = hubs("env")
    inbox = server_hub.bind_router(f"ipc://{tmp_path}/env.sock", name="env")
    raw = raw_dealer(inbox.endpoint, b"agent_0")
    raw.send_multipart(wire.encode(m.EnvReset(), sender="agent_0", run_id="r", seq=1))
    assert [e.sender for e in receive(server_hub, inbox, 1)] == ["agent_0"]
    inbox.send(observation(1, "agent_0"), to=b"agent_0")
    assert raw.poll(10_000), "no observation arrived"
    frames = raw.recv_multipart()
    # head (magic, signature length, [header, parent]), body, one frame of packed small arrays
    assert len(frames) == 3 and frames[0].startswith(b"PARLEY/2\x00")
    assert msgpack.unpackb(frames[0][9:])[0]["msg_type"] == "env.observation"


def test_a_version_1_peer_is_dropped_and_counted(hubs, raw_dealer, tmp_path):
    server_hub = hubs("env")
    inbox = server_hub.bind_router(f"ipc://{tmp_path}/env.sock", name="env")
    raw = raw_dealer(inbox.endpoint, b"old_agent")
    header = {"msg_id": "1", "msg_type": "env.reset", "sender": "old_agent", "run_id": "r",
              "version": 1, "seq": 1, "sent_at": 1.0}
    raw.send_multipart([b"<PARLEY|MSG>", b"", msgpack.packb(header), msgpack.packb({}), msgpack.packb({})])
    # Then a valid message: once it is through, the old one has been handled (dropped).
    raw.send_multipart(wire.encode(m.EnvReset(), sender="agent_0", run_id="r", seq=2))
    assert [e.sender for e in receive(server_hub, inbox, 1)] == ["agent_0"]
    assert inbox.stats.dropped_invalid == 1 and inbox.stats.received == 1


def test_a_dealer_without_routing_id_is_heard_and_its_bad_input_logged_as_an_unnamed_connection(hubs, tmp_path, caplog):
    server_hub = hubs("agent_1")
    inbox = server_hub.bind_router(f"ipc://{tmp_path}/agent_1.peer", name="peers")
    links = [hubs(name).connect_dealer(inbox.endpoint, name="peer:agent_1", identity=None) for name in ("agent_0", "agent_2")]
    for link in links:
        link.send(m.Heartbeat(node_id=link.sender, incarnation=0, state="running"))
    # The sender is the header's, whatever routing id libzmq drew for the connection.
    assert sorted(e.sender for e in receive(server_hub, inbox, 2)) == ["agent_0", "agent_2"]
    with caplog.at_level(logging.WARNING, logger="protocols.net.transport"):
        for link in links:
            link.socket.send_multipart([b"not an envelope"])
        for link in links:  # each connection's next message: its bad frame before it was read
            link.send(m.Heartbeat(node_id=link.sender, incarnation=0, state="running"))
        assert sorted(e.sender for e in receive(server_hub, inbox, 2)) == ["agent_0", "agent_2"]
    assert inbox.stats.dropped_invalid == 2
    # Both connections' drawn routing ids are one source: one line (at most one per 5 s after it).
    lines = [r.getMessage() for r in caplog.records if "invalid message" in r.getMessage()]
    assert len(lines) == 1 and "an unnamed connection" in lines[0], lines


def test_a_burst_arrives_whole_and_in_order_then_the_channel_reads_empty(hubs, tmp_path):
    # The receive path asks zmq whether a message waits instead of catching zmq.Again: every
    # message of a burst must still come out whole (all its frames), in order, and an empty
    # channel must answer None without blocking. A large array takes the zero-copy send path.
    server_hub, inbox, clients = connect_clients(hubs, tmp_path, ["agent_0"])
    hub, channel = clients["agent_0"]
    big = np.arange(wire.SMALL_ARRAY_BYTES // 4 * 3, dtype=np.float32).reshape(3, -1)
    inbox.send_batch([(b"agent_0", observation(step, "agent_0")) for step in range(20)])
    inbox.send(m.EnvObservation(**{**observation(20, "agent_0").__dict__, "observations": {"agent_0": big}}), to=b"agent_0")
    got = receive(hub, channel, 21)
    assert [e.message.step for e in got] == list(range(21))
    assert all(e.message.observations["agent_0"].tolist() == [[float(e.message.step)] * 18] for e in got[:20])
    assert np.array_equal(got[20].message.observations["agent_0"], big)
    assert channel.recv() is None and channel.stats.received == 21


@pytest.mark.parametrize("key", [b"", b"run-key-0123456789abcdef"])
def test_a_zero_copy_router_hands_out_views_of_zmq_buffers_with_the_same_contents(hubs, tmp_path, key):
    # The peers' inbox (`zero_copy=True`): a large array decodes as a view of the received
    # frame, not a private copy; small arrays and plain messages decode as on any channel, a
    # signed run still checks signatures, and a bad message is still dropped and counted.
    from protocols.engines.consensus import ConsensusShare

    hub_a, hub_b = hubs("agent_0", key=key), hubs("agent_1", key=key)
    inbox = hub_a.bind_router(f"ipc://{tmp_path}/peer.sock", name="peers", zero_copy=True)
    dealer = hub_b.connect_dealer(inbox.endpoint, name="agent_0", identity="agent_1")
    big = np.random.default_rng(0).standard_normal(100_000).astype(np.float32)
    dealer.send(ConsensusShare(epoch=3, round=1, tensors={"big": big, "small": np.arange(4, dtype=np.float32)}))
    dealer.send(m.EnvReset())
    share, reset = receive(hub_a, inbox, 2)
    assert inbox.receives_frames and share.sender == "agent_1" and type(reset.message) is m.EnvReset
    received = share.message.tensors["big"]
    assert np.array_equal(received, big)
    # A view of the zmq.Frame the message arrived in (on a default channel: of a bytes copy).
    assert type(received.base) is memoryview and type(received.base.obj) is zmq.Frame
    assert share.message.tensors["small"].tolist() == [0.0, 1.0, 2.0, 3.0] and share.message.epoch == 3
    dealer.socket.send_multipart([b"not", b"an envelope"])
    dealer.send(m.EnvReset())
    assert len(receive(hub_a, inbox, 1)) == 1 and inbox.stats.dropped_invalid == 1


def test_message_ids_stay_unique_in_a_forked_child():
    import os

    parent_id = wire._next_msg_id()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its first id and leave without running pytest's teardown
        os.write(write, wire._next_msg_id().encode())
        os._exit(0)
    os.close(write)
    child_id = os.read(read, 200).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert child_id.rpartition("-")[0] != parent_id.rpartition("-")[0], (parent_id, child_id)
    assert wire._next_msg_id().rpartition("-")[0] == parent_id.rpartition("-")[0]


def test_a_watched_dealer_hears_the_last_words_of_a_peer_that_went_then_stops_waiting(hubs, tmp_path):
    server_hub, client_hub = hubs("env"), hubs("client")
    inbox = server_hub.bind_router(f"ipc://{tmp_path}/env.sock", name="env")
    channel = client_hub.connect_dealer(inbox.endpoint, name="env", identity="client", watch_peer=True)
    unwatched = client_hub.connect_dealer(inbox.endpoint, name="env2", identity="client2")
    channel.send(m.EnvReset())
    (request,) = receive(server_hub, inbox, 1)
    assert channel.peer_lost() is None  # up
    inbox.reply(request, m.ErrorReply(code="stopping", message="last words"))
    inbox.close_linger_s = 1.0  # (as a server that tells its clients it stopped)
    server_hub.close_channel(inbox)  # to its peers, a closed socket is a process that went

    reply = channel.wait_for(m.ErrorReply, timeout_s=10)
    assert reply is not None and reply.message == "last words"
    started = time.monotonic()
    assert channel.wait_for(m.EnvObservation, timeout_s=30) is None
    assert time.monotonic() - started < 10, "wait_for should stop at the lost connection, not its timeout"
    lost_at = channel.peer_lost()
    assert lost_at is not None and lost_at <= time.monotonic()
    assert unwatched.peer_lost() is None  # (a channel made without watch_peer knows nothing)


def test_the_hubs_wait_returns_a_watched_channel_whose_peer_went(hubs, tmp_path):
    server_hub, client_hub = hubs("env"), hubs("client")
    inbox = server_hub.bind_router(f"ipc://{tmp_path}/env.sock", name="env")
    channel = client_hub.connect_dealer(inbox.endpoint, name="env", identity="client", watch_peer=True)
    channel.send(m.EnvReset())
    receive(server_hub, inbox, 1)
    server_hub.close_channel(inbox)
    deadline = time.monotonic() + 10
    while channel.peer_watch.lost_at is None and (left := deadline - time.monotonic()) > 0:
        if channel in client_hub.wait(left):  # woken by the monitor's event, which `wait` takes in
            assert list(channel.recv_all()) == []
    assert channel.peer_watch.lost_at is not None
