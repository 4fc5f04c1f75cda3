"""The shared-memory lockstep path (protocols/net/shm_lockstep.py): the segment and its wake-up pipes,
its slots, the ordering counters, and a channel pair that passes env.observation / env.action
through it."""

from __future__ import annotations

import os
import select
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
from gymnasium import spaces

from protocols.codec import messages as m
from protocols.codec.packed import PackedLayout
from protocols.net.shm_lockstep import SHM_DIR, ShmLink, ShmUnavailable, host_key, reap_stale_segments
from protocols.codec.wire import PACKED_CODE

pytestmark = pytest.mark.skipif(not SHM_DIR.is_dir(), reason="no /dev/shm on this machine")

CAPACITIES = (256, 64)


@pytest.fixture
def pair():
    """A server's link and the client's, mapped from it (the client unlinks the names)."""
    server = ShmLink.create("unit test", 1, capacities=CAPACITIES, peer_sender="agent_0")
    client = ShmLink.attach(server.name, capacities=CAPACITIES, peer_sender="env")
    yield server, client
    client.close()
    server.close()


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def test_the_segment_and_its_pipes_are_private_and_go_once_the_client_mapped_them():
    server = ShmLink.create("unit test", 1, capacities=CAPACITIES, peer_sender="agent_0")
    names = [server.name, server.name + ".down", server.name + ".up"]
    try:
        for name in names:
            assert stat.S_IMODE((SHM_DIR / name).stat().st_mode) == 0o600
        assert stat.S_ISFIFO((SHM_DIR / names[1]).stat().st_mode) and stat.S_ISFIFO((SHM_DIR / names[2]).stat().st_mode)
        assert server.name.startswith("parley-unit_test-")
        client = ShmLink.attach(server.name, capacities=CAPACITIES, peer_sender="env")
        assert not any((SHM_DIR / name).exists() for name in names), "mapped: nothing is left in /dev/shm"
        client.close()
    finally:
        server.close()
    assert not any((SHM_DIR / name).exists() for name in names)


def test_a_body_crosses_in_both_directions_and_wakes_the_reader(pair):
    server, client = pair
    assert not readable(client.wake_fd) and client.take() is None
    assert server.write(PACKED_CODE["env.observation"], b"head" + np.arange(3, dtype=np.float32).tobytes())
    assert readable(client.wake_fd) and not readable(server.wake_fd)
    client.drain_wake()
    assert not readable(client.wake_fd)
    code, sent_at, body = client.take()
    assert code == PACKED_CODE["env.observation"] and 0 < sent_at <= time.time()
    assert body == b"head" + np.arange(3, dtype=np.float32).tobytes()
    assert client.take() is None, "read once"
    assert client.write(PACKED_CODE["env.action"], b"\x01\x02")
    assert readable(server.wake_fd)
    assert server.take()[2] == b"\x01\x02"


def test_an_unread_slot_is_never_overwritten(pair):
    server, client = pair
    assert server.write(0, b"first")
    assert not server.write(0, b"second"), "the client has not read the first: the second goes by zmq"
    server.sent_zmq()
    assert server.sent_by_shm == 1 and server.sent_by_zmq == 1
    assert client.take()[2] == b"first"
    assert not server.write(0, b"third"), "read, but the zmq message is not seen yet: by zmq, nothing written"
    server.sent_zmq()
    client.saw_zmq()  # "second"
    assert not server.write(0, b"fourth"), "one zmq message ('third') still unseen"
    server.sent_zmq()
    client.saw_zmq()  # "third"
    client.saw_zmq()  # "fourth"
    assert server.write(0, b"fifth"), "every zmq message seen: shared memory again"
    assert client.take()[2] == b"fifth"
    assert not server.write(0, b"y" * (CAPACITIES[0] + 1)), "too large for the slot: zmq"


def test_a_slot_that_announces_more_than_it_holds_is_refused(pair):
    server, client = pair
    assert server.write(0, b"x" * 10)
    head = memoryview(server._memory)[:64]  # the down slot's header: written, read, zmq seen, length, ...
    head[24:32] = (CAPACITIES[0] + 1).to_bytes(8, "little")
    head.release()
    with pytest.raises(ValueError, match="bytes in a slot of"):
        client.take()


def test_attaching_checks_name_and_size():
    server = ShmLink.create("unit test", 1, capacities=CAPACITIES, peer_sender="agent_0")
    try:
        with pytest.raises(ShmUnavailable, match="not one of Parley's"):
            ShmLink.attach("../etc/passwd", capacities=CAPACITIES, peer_sender="env")
        with pytest.raises(ShmUnavailable, match="layout needs"):
            ShmLink.attach(server.name, capacities=(512, 64), peer_sender="env")
    finally:
        server.close()


def test_segments_of_a_dead_server_of_this_run_are_reaped_and_live_ones_kept():
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    stale = SHM_DIR / f"parley-reap_test-{dead_pid}-1-00ff00ff"
    stale.write_bytes(b"")
    stale_pipe = SHM_DIR / f"parley-reap_test-{dead_pid}-1-00ff00ff.up"
    os.mkfifo(stale_pipe, 0o600)
    live = ShmLink.create("reap test", 1, capacities=CAPACITIES, peer_sender="agent_0")  # this process: alive
    other_run = SHM_DIR / f"parley-another_run-{dead_pid}-1-00ff00ff"
    other_run.write_bytes(b"")
    try:
        assert sorted(reap_stale_segments("reap test")) == sorted([stale.name, stale_pipe.name])
        assert not stale.exists() and not stale_pipe.exists()
        assert (SHM_DIR / live.name).exists() and (SHM_DIR / (live.name + ".up")).exists() and other_run.exists()
    finally:
        live.close()
        other_run.unlink()
        for leftover in (stale, stale_pipe):
            if leftover.exists():
                leftover.unlink()


def test_host_key_names_this_machines_shared_memory():
    assert host_key() == host_key() != ""
    assert str(os.stat(SHM_DIR).st_ino) in host_key()


# ---------------------------------------------------------------------- through a channel pair

def layout() -> PackedLayout:
    obs = {"a0": spaces.Box(-1, 1, (3,), np.float32)}
    act = {"a0": spaces.Discrete(5)}
    return PackedLayout(["a0"], obs, act, ["a0", "a1"])


def observation(step: int) -> m.EnvObservation:
    one = lambda v: {"a0": np.array(v)}  # noqa: E731
    return m.EnvObservation(step=step, observations={"a0": np.full((2, 3), step, np.float32)}, rewards=one([1.0, 2.0]),
                            terminated=one([False, True]), truncated=one([False, False]), active=one([True, True]),
                            final_observations={}, episode_start=np.array([False, True]), missing=["a1"])


@pytest.fixture
def channels(hubs, tmp_path):
    """An env-server ROUTER and an agent DEALER on ipc, packed and linked through one segment."""
    server_hub, client_hub = hubs("env"), hubs("agent_0")
    router = server_hub.bind_router(f"ipc://{tmp_path}/env.sock", name="env")
    dealer = client_hub.connect_dealer(router.endpoint, name="env", identity="agent_0")
    server_link = ShmLink.create("r", 1, capacities=(1024, 256), peer_sender="agent_0")
    client_link = ShmLink.attach(server_link.name, capacities=(1024, 256), peer_sender="env")
    router.use_packed(layout(), b"agent_0")
    router.use_shm(server_link, b"agent_0")
    dealer.use_packed(layout())
    dealer.use_shm(client_link)
    dealer.send(m.EnvReset())  # a ROUTER drops what it sends to a peer not connected yet: wait for it
    assert isinstance(router.wait_for(m.EnvReset, timeout_s=30), m.EnvReset)
    return router, dealer, server_link, client_link


def test_a_channel_pair_passes_the_lockstep_through_shared_memory_and_falls_back_in_order(channels):
    router, dealer, server_link, client_link = channels
    router.send(observation(0), to=b"agent_0")
    router.send(observation(1), to=b"agent_0")  # the first is unread: this one goes by zmq
    assert (server_link.sent_by_shm, server_link.sent_by_zmq) == (1, 1)
    first, second = dealer.wait_for(m.EnvObservation, timeout_s=30), dealer.wait_for(m.EnvObservation, timeout_s=30)
    assert (first.step, second.step) == (0, 1), "in the order sent"
    np.testing.assert_array_equal(first.observations["a0"], np.zeros((2, 3), np.float32))
    assert first.missing == ["a1"] and list(first.terminated["a0"]) == [False, True]
    router.send(observation(2), to=b"agent_0")  # the zmq frame freed the slot: shared memory again
    assert server_link.sent_by_shm == 2
    assert dealer.wait_for(m.EnvObservation, timeout_s=30).step == 2
    dealer.send(m.EnvAction(step=2, actions={"a0": np.array([4, 1])}))
    assert client_link.sent_by_shm == 1
    received = router.wait_for(m.EnvAction, timeout_s=30)
    assert received.step == 2 and list(received.actions["a0"]) == [4, 1]


def test_the_server_writes_a_step_into_the_slot_and_takes_actions_in_order(channels):
    """The env server's hot path: `write_packed` packs a step straight into the client's slot
    (no EnvObservation); an action read from a slot comes out of `recv` as an env.action
    envelope, as one by zmq would, before a zmq message the client sent after it."""
    from env_server.vector import BatchedStep

    router, dealer, server_link, _client_link = channels
    sent = observation(3)
    step = BatchedStep(sent.observations, sent.rewards, sent.terminated, sent.truncated, sent.active, {}, sent.episode_start)

    def packed_step(number, missing):
        return lambda layout: layout.pack_step_result(step, step=number, missing=missing, run_finished=False, evaluation=False)

    assert router.write_packed(b"agent_0", m.EnvObservation.MSG_TYPE, packed_step(3, ["a1"]))
    assert not router.write_packed(b"agent_0", m.EnvObservation.MSG_TYPE, packed_step(4, [])), \
        "the slot is unread: the caller sends the message instead"
    assert not router.write_packed(b"stranger", m.EnvObservation.MSG_TYPE, packed_step(4, [])), "no segment"
    got = dealer.wait_for(m.EnvObservation, timeout_s=30)
    assert got.step == 3 and got.missing == ["a1"]
    np.testing.assert_array_equal(got.observations["a0"], sent.observations["a0"])

    received, hub = [], hub_of(router)
    dealer.send(m.EnvAction(step=3, actions={"a0": np.array([4, 1])}))  # through the segment
    dealer.send(m.EnvReset())  # by zmq, after it
    deadline = time.monotonic() + 30
    while len(received) < 2 and time.monotonic() < deadline:
        hub.wait(0.05)
        received += list(router.recv_all())
    assert [type(envelope.message).__name__ for envelope in received] == ["EnvAction", "EnvReset"], "the action, then the reset"
    action = received[0]
    assert (action.identities, action.sender, action.message.step, action.message.evaluation) == ((b"agent_0",), "agent_0", 3, False)
    assert list(action.message.actions["a0"]) == [4, 1]


def hub_of(channel):
    return channel.watch_pipe.__self__  # the hub that made the channel polls its pipes


def test_zmq_messages_and_shared_memory_keep_the_order_they_were_sent_in(channels):
    router, dealer, server_link, _client_link = channels
    router.send(observation(0), to=b"agent_0")  # through the segment
    router.send(m.ErrorReply(code="x", message="after step 0"), to=b"agent_0")  # by zmq, after it
    router.send(observation(1), to=b"agent_0")  # the error is unseen: by zmq too, behind it
    assert (server_link.sent_by_shm, server_link.sent_by_zmq) == (1, 2)
    received, hub = [], hub_of(dealer)
    deadline = time.monotonic() + 30
    while len(received) < 3 and time.monotonic() < deadline:
        hub.wait(0.05)  # on the socket and the pipe
        received += [envelope.message for envelope in dealer.recv_all()]
    assert [type(message).__name__ for message in received] == ["EnvObservation", "ErrorReply", "EnvObservation"]
    assert (received[0].step, received[2].step) == (0, 1)
    router.send(observation(2), to=b"agent_0")
    assert server_link.sent_by_shm == 2, "both zmq messages seen, the slot read: shared memory again"


def test_the_hub_wakes_on_the_pipe(channels):
    router, dealer, _server_link, _client_link = channels
    hub = hub_of(dealer)
    router.send(observation(5), to=b"agent_0")  # through the segment: no zmq message at all
    assert dealer in hub.wait(30)
    (envelope,) = list(dealer.recv_all())
    assert envelope.message.step == 5 and envelope.sender == "env"


def test_a_message_written_after_the_poll_is_taken_without_another_wake_up(channels):
    """`recv_all` ends by looking at every slot: what a peer wrote after the poll returned is
    taken then, and its wake-up byte is emptied with it, so the next poll does not wake for a
    message already taken."""
    router, dealer, server_link, _client_link = channels
    hub = hub_of(dealer)
    assert list(dealer.recv_all()) == [], "nothing yet (no poll has run)"
    router.send(observation(6), to=b"agent_0")  # through the segment, its byte in the pipe
    assert server_link.sent_by_shm == 1
    (envelope,) = list(dealer.recv_all())  # no wait: the slot is read all the same
    assert envelope.message.step == 6
    assert not readable(dealer.shm_link().wake_fd), "the byte went with the message"
    assert hub.wait(0.05) == [], "no wake-up for a message already taken"


def test_the_link_emulation_counts_shared_memory_and_a_partition_blocks_it(hubs, tmp_path):
    from protocols.net.links import LinkConfig, LinkTable

    links = LinkTable("env", 0, lambda src, dst: LinkConfig())  # ideal links, but emulated: partitions apply
    router = hubs("env", links=links).bind_router(f"ipc://{tmp_path}/env.sock", name="env")
    dealer = hubs("agent_0").connect_dealer(router.endpoint, name="env", identity="agent_0")
    server_link = ShmLink.create("r", 1, capacities=(1024, 256), peer_sender="agent_0")
    client_link = ShmLink.attach(server_link.name, capacities=(1024, 256), peer_sender="env")
    for channel, link, identity in ((router, server_link, b"agent_0"), (dealer, client_link, None)):
        channel.use_packed(layout(), identity)
        channel.use_shm(link, identity)
    dealer.send(m.EnvReset())
    assert isinstance(router.wait_for(m.EnvReset, timeout_s=30), m.EnvReset)
    router.send(observation(0), to=b"agent_0")
    counters = links.model_for("agent_0").counters
    assert server_link.sent_by_shm == 1 and (counters.sent, counters.delivered) == (1, 1), "counted as zmq's would be"
    assert dealer.wait_for(m.EnvObservation, timeout_s=30).step == 0
    links.partitions.block("env", "agent_0")
    router.send(observation(1), to=b"agent_0")
    assert server_link.sent_by_shm == 1 and counters.dropped_partition == 1, "blocked: not through the segment either"
    assert dealer.wait_for(m.EnvObservation, timeout_s=0.5) is None
    links.partitions.unblock("env", "agent_0")
    router.send(observation(2), to=b"agent_0")
    assert server_link.sent_by_shm == 2, "what the partition lost is not waited for: shared memory again once healed"
    assert dealer.wait_for(m.EnvObservation, timeout_s=30).step == 2
