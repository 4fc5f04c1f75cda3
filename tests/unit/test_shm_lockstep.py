"""The shared-memory lockstep path (protocols/shm_lockstep.py): the segment, its slots, the
signal frames, and a channel pair that passes env.observation / env.action through it."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
from gymnasium import spaces

from protocols import messages as m
from protocols.packed import PackedLayout
from protocols.shm_lockstep import SHM_DIR, ShmLink, ShmUnavailable, host_key, is_signal, reap_stale_segments
from protocols.wire import PACKED_CODE

pytestmark = pytest.mark.skipif(not SHM_DIR.is_dir(), reason="no /dev/shm on this machine")

CAPACITIES = (256, 64)


@pytest.fixture
def pair():
    """A server's link and the client's, mapped from it (the client unlinks the name)."""
    server = ShmLink.create("unit test", 1, capacities=CAPACITIES, peer_sender="agent_0")
    client = ShmLink.attach(server.name, server.token, capacities=CAPACITIES, peer_sender="env")
    yield server, client
    client.close()
    server.close()


def test_the_segment_is_private_and_its_name_goes_once_the_client_mapped_it():
    server = ShmLink.create("unit test", 1, capacities=CAPACITIES, peer_sender="agent_0")
    try:
        path = SHM_DIR / server.name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert server.name.startswith("parley-unit_test-")
        client = ShmLink.attach(server.name, server.token, capacities=CAPACITIES, peer_sender="env")
        assert not path.exists(), "mapped: nothing is left in /dev/shm"
        client.close()
    finally:
        server.close()
    assert not (SHM_DIR / server.name).exists()


def test_a_body_crosses_in_both_directions_and_the_signal_names_it(pair):
    server, client = pair
    signal = server.write(PACKED_CODE["env.observation"], b"head" + np.arange(3, dtype=np.float32).tobytes())
    assert is_signal(signal)
    code, sent_at, body = client.read(signal)
    assert code == PACKED_CODE["env.observation"] and sent_at > 0
    assert body == b"head" + np.arange(3, dtype=np.float32).tobytes()
    up = client.write(PACKED_CODE["env.action"], b"\x01\x02")
    assert server.read(up)[2] == b"\x01\x02"


def test_an_unread_slot_is_never_overwritten_and_a_zmq_frame_frees_it(pair):
    server, client = pair
    first = server.write(0, b"first")
    assert server.write(0, b"second") is None, "the client has not read the first: the second goes by zmq"
    assert server.sent_by_shm == 1 and server.sent_by_zmq == 1
    assert client.read(first)[2] == b"first"
    client.skip_unread()  # (the zmq frame arrived after it: nothing else was written)
    assert client.read(server.write(0, b"third"))[2] == b"third"
    # A signal that was lost with its connection: the zmq frame after it frees the slot.
    server.write(0, b"lost")
    assert server.write(0, b"by zmq") is None
    client.skip_unread()
    assert client.read(server.write(0, b"fourth"))[2] == b"fourth"


def test_a_reader_that_caught_up_before_a_queued_zmq_frame_loses_nothing(pair):
    # The race a faults run hit: the client read the slot, then the server (seeing it read) wrote
    # the next observation there, whose signal queued behind a zmq frame sent while the slot was
    # still unread. Reaching that zmq frame must not mark the new one read: its signal still comes.
    server, client = pair
    first = server.write(0, b"first")
    assert server.write(0, b"second") is None, "unread: by zmq"
    assert client.read(first)[2] == b"first"
    third = server.write(0, b"third")
    assert third is None, "the client has not reached the zmq frame yet: still by zmq, nothing written"
    client.skip_unread()  # "second" arrives
    fourth = server.write(0, b"fourth")
    assert fourth is None, "one zmq frame ('third') still unseen"
    client.skip_unread()  # "third"
    client.skip_unread()  # "fourth"
    assert client.read(server.write(0, b"fifth"))[2] == b"fifth", "every zmq frame seen: shared memory again"


def test_a_forged_stale_or_oversized_signal_is_refused(pair):
    server, client = pair
    signal = server.write(0, b"x" * 10)
    forged = signal[:4] + bytes(16) + signal[20:]
    with pytest.raises(ValueError, match="token"):
        client.read(forged)
    client.read(signal)
    with pytest.raises(ValueError, match="generation"):
        client.read(signal)  # read already: a replay
    assert server.write(0, b"y" * (CAPACITIES[0] + 1)) is None, "too large for the slot: zmq"


def test_attaching_checks_name_token_and_size():
    server = ShmLink.create("unit test", 1, capacities=CAPACITIES, peer_sender="agent_0")
    try:
        with pytest.raises(ShmUnavailable, match="not one of Parley's"):
            ShmLink.attach("../etc/passwd", server.token, capacities=CAPACITIES, peer_sender="env")
        with pytest.raises(ShmUnavailable, match="token"):
            ShmLink.attach(server.name, b"short", capacities=CAPACITIES, peer_sender="env")
        with pytest.raises(ShmUnavailable, match="layout needs"):
            ShmLink.attach(server.name, server.token, capacities=(512, 64), peer_sender="env")
    finally:
        server.close()


def test_segments_of_a_dead_server_of_this_run_are_reaped_and_live_ones_kept():
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    stale = SHM_DIR / f"parley-reap_test-{dead_pid}-1-00ff00ff"
    stale.write_bytes(b"")
    live = ShmLink.create("reap test", 1, capacities=CAPACITIES, peer_sender="agent_0")  # this process: alive
    other_run = SHM_DIR / f"parley-another_run-{dead_pid}-1-00ff00ff"
    other_run.write_bytes(b"")
    try:
        assert reap_stale_segments("reap test") == [stale.name]
        assert not stale.exists() and (SHM_DIR / live.name).exists() and other_run.exists()
    finally:
        live.close()
        other_run.unlink()
        if stale.exists():
            stale.unlink()


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
    client_link = ShmLink.attach(server_link.name, server_link.token, capacities=(1024, 256), peer_sender="env")
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


def test_a_signal_from_a_peer_without_a_segment_is_dropped(channels, hubs, tmp_path):
    router, _dealer, server_link, _client_link = channels
    stranger = hubs("agent_1").connect_dealer(router.endpoint, name="env", identity="agent_1")
    stranger.socket.send(server_link.write(0, b"x"))  # a valid-looking signal, on another connection
    deadline = time.monotonic() + 30
    while router.stats.dropped_invalid == 0 and time.monotonic() < deadline:
        assert router.wait_for(object, timeout_s=0.2) is None, "nothing is delivered from it"
    assert router.stats.dropped_invalid == 1
