"""ZeroMQ transport: the one module that imports zmq.

`Hub` owns every zmq object of a process: the context, one poller over all its sockets, socket
creation (a ROUTER bound to an endpoint, DEALERs connected to one) and their options, waiting with
a deadline, delayed sends of link emulation, and closing. A node's event loop is then:

    hub = Hub(sender=node_id, run_id=run_id, options=SocketOptions(...))
    inbox = hub.bind_router(address)                # inbox.endpoint: what peers connect to
    server = hub.connect_dealer(endpoint, identity=node_id)
    while running:
        for channel in hub.wait(timeout_s):         # never busy-waits
            for envelope in channel.recv_all():     # decoded, validated, typed
                dispatch(channel, envelope)
        hub.flush_due(now)                          # delayed (emulated) sends that are due

A `Channel` wraps one socket and speaks envelopes. Sending encodes a message dataclass into
frames; receiving decodes and validates them, and a bad message is logged, counted and dropped
here, so the code above only ever sees well-formed, typed messages. Socket hygiene is decided in
one place: `LINGER=0` (closing never blocks), `ROUTER_MANDATORY` (a message to an unknown peer is
counted as unroutable, not silently dropped), zmq heartbeats (a frozen TCP peer is noticed), and
receive deadlines via one poller. A DEALER's routing id is its node id, or, where a restarted
node must be heard by a ROUTER that reads behind (an agent at the learner node), a routing id of
its own incarnation (`incarnation_routing_id`), or, on a link the far end never answers (an
agent's links to its neighbours' inboxes), none: the ROUTER names each connection itself, so a
reconnect is never refused as a duplicate (`connect_dealer`: a neighbour frozen past the
heartbeat timeout would otherwise stop hearing the link for good); nothing sets
ZMQ_ROUTER_HANDOVER, which would let anyone who reaches a socket take over a node's routing id.
A DEALER made with `watch_peer` watches its connection through a socket monitor (`PeerWatch`):
`channel.peer_lost()` says when its peer went (a killed process at once, a frozen one after the
heartbeat timeout), and `wait_for` stops waiting then.

Endpoints: `bind_router` binds `ipc://PATH` (the default on one host; the socket file lives in the
run's 0700 socket directory) or `tcp://HOST:PORT` (port 0 picks a free port; `LOW-HIGH` the
lowest free port of that range, for firewalls: `network.port_range`) and records the address to
advertise to peers.

Packed lockstep bodies (protocols/codec/packed.py): a channel told a peer's `PackedLayout`
(`use_packed`) sends that peer's env.observation / env.action packed and turns packed ones from
it back into the same messages; a packed message from a peer without a layout is dropped and
counted like any malformed one. A packed peer on this host may also have a shared-memory segment
(`use_shm`, protocols/net/shm_lockstep.py): those two messages then go into the segment, with a byte
into the peer's wake-up pipe instead of a zmq message, or as packed frames when they may not
(the module's ordering rules); the pipe is polled with the sockets (`Hub.wait`, `wait_for`).

Network emulation: a hub made with a `LinkTable` (`protocols/net/links.py`, built from the run's
`network:` section) passes every message to another node through the model of that directed
link: a DEALER channel knows its `peer` (the node id it was connected to), a ROUTER channel sends
to the node named by its routing id. The model says when each copy arrives (none: lost, or
blocked by a partition); frames due now go out at once, later ones wait in the channel's heap
until the loop calls `hub.flush_due(now)`. The loop sleeps until `hub.next_due()` at the latest
(`hub.wait` caps its timeout there by itself), so held messages leave on time without polling.
Received messages' ages (now minus the sender's `sent_at`) are recorded per sending node, and
`hub.link_metrics()` reports every link's counters. Channels without a peer (the control link
to the orchestrator) are never emulated. CURVE authentication will be applied where the hub
makes sockets (tcp between hosts).

Authentication (see `protocols/net/auth.py`): a hub given the node's `NodeKeys` makes every tcp socket
a CURVE socket (ROUTERs are servers behind a ZAP handler that admits only the run's node keys and
names each connection by its node; DEALERs are clients) and signs every ipc message with the
node's HMAC key. A received message whose header claims another sender than the node that
authenticated (tcp: zmq's `User-Id`; ipc: the signing key) is dropped and counted, as is every
message over the size limits of `LimitsConfig`; bad input is logged through a rate-limited
`BadInputLog`, never once per message.

Well-formed, authentic messages that a node's own logic refuses (a type with no handler from
where it came, a sender that is not a neighbour, a request out of turn) are a peer's bad input
too: the node hands them to `hub.refusals`, the same `BadInputLog`, so a buggy or compromised peer
of the run gets one line per 5 s, not one per message, and they are counted in
`security/refused_messages` beside the transport's drops.

A context must not cross a fork: make the hub in the process that uses it.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import math
import os
import struct
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import zmq
from zmq.utils import z85

from protocols import PROTOCOL_VERSION
from protocols.codec import messages as m
from protocols.codec import wire
from protocols.net.auth import ZAP_DOMAIN, BadInputLog, LimitsConfig, NodeKeys, signing_keys, write_run_keys
from protocols.codec.errors import ProtocolError, SignatureError
from protocols.net.links import LinkCounters, LinkTable
from protocols.codec.packed import PackedLayout
from protocols.net.shm_lockstep import ShmLink

UNIX_SOCKET_PATH_LIMIT = 107  # sun_path holds 108 bytes including the terminating NUL
# Between a node id and the random part of an incarnation's routing id; node ids never hold it.
INCARNATION_SEPARATOR = "~"

log = logging.getLogger(__name__)


def incarnation_routing_id(node_id: str) -> str:
    """A routing id for this process's connection as `node_id`: the node id and 64 random bits.

    For a DEALER whose ROUTER may read behind (the learner node). libzmq 4.3 refuses a connection
    under a routing id whose previous connection still holds unread messages, and never
    reconsiders it, so a restarted node reconnecting under its bare node id would not be heard
    until the dead one's messages were read. ZMQ_ROUTER_HANDOVER would let it take the id over,
    and let anyone who can reach the socket do the same and receive what is sent to that node
    (over ipc, signing authenticates messages, not connections). A fresh id per incarnation needs
    neither: the ROUTER answers the id the node's authenticated messages came from, which no one else
    knows or can claim."""
    return f"{node_id}{INCARNATION_SEPARATOR}{os.urandom(8).hex()}"


def node_of_routing_id(routing_id: str) -> str:
    """The node id a routing id stands for (`incarnation_routing_id` or a bare node id)."""
    return routing_id.partition(INCARNATION_SEPARATOR)[0]


def curve_keypair() -> tuple[str, str]:
    """A fresh CURVE key pair, z85-encoded `(public, secret)` as the key files hold them."""
    public, secret = zmq.curve_keypair()
    return public.decode("ascii"), secret.decode("ascii")


def generate_run_keys(keys_dir: str | Path, node_ids: Iterable[str]) -> Path:
    """Draw the keys of a run for `node_ids` into `keys_dir` (which must not exist yet).

    The key pairs are drawn here, with zmq; `protocols.net.auth.write_run_keys` writes the files."""
    return write_run_keys(keys_dir, curve_keypair(), {node: curve_keypair() for node in node_ids})


@dataclass(frozen=True)
class SocketOptions:
    """Options every socket of a hub gets (from the run's `network` section)."""

    # zmq-level heartbeats on every connection: a frozen or vanished TCP peer is noticed after
    # `heartbeat_timeout_s` even when the application has nothing to say to it.
    heartbeat_ivl_s: float = 1.0
    heartbeat_timeout_s: float = 5.0


def _make_socket(
    context: zmq.Context, kind: int, options: SocketOptions, identity: bytes | None, max_frame_bytes: int = -1
) -> zmq.Socket:
    socket = context.socket(kind)
    socket.setsockopt(zmq.LINGER, 0)
    # zmq refuses (and disconnects) a peer that sends a bigger frame before reading it.
    socket.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes)
    if kind == zmq.ROUTER:
        socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
    if identity is not None:
        socket.setsockopt(zmq.IDENTITY, identity)
    socket.setsockopt(zmq.HEARTBEAT_IVL, round(options.heartbeat_ivl_s * 1000))
    socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, round(options.heartbeat_timeout_s * 1000))
    return socket


def _bind(socket: zmq.Socket, address: str, advertise_host: str | None = None) -> str:
    """Bind `address` and return the endpoint peers should connect to."""
    if address.startswith("ipc://"):
        path = address[len("ipc://") :]
        if len(path.encode()) > UNIX_SOCKET_PATH_LIMIT - 1:
            raise ValueError(
                f"ipc socket path is {len(path.encode())} bytes, over the unix limit of "
                f"{UNIX_SOCKET_PATH_LIMIT - 1}: {path}"
            )
        if os.path.exists(path):  # a stale socket file from a crashed incarnation
            os.unlink(path)
        socket.bind(address)
        return address
    if address.startswith("tcp://"):
        host, _, port = address[len("tcp://") :].rpartition(":")
        if "-" in port:
            _bind_in_range(socket, host, port)
        else:
            socket.bind(f"tcp://{host}:{'*' if port in ('', '0', '*') else port}")
        bound = socket.getsockopt_string(zmq.LAST_ENDPOINT)
        bound_port = bound.rpartition(":")[2]
        return f"tcp://{advertise_host or host}:{bound_port}"
    raise ValueError(f"endpoint must start with ipc:// or tcp://, got {address!r}")


class PortRangeExhausted(OSError):
    """Every port of a `tcp://HOST:LOW-HIGH` bind address is taken on this host."""


def _bind_in_range(socket: zmq.Socket, host: str, port_range: str) -> None:
    """Bind the lowest free port of `LOW-HIGH` (inclusive) on `host`.

    zmq itself only knows one port or any port; a firewall that opens a fixed range needs every
    node's listener inside it (`network.port_range`). Ports are tried in order, so the nodes of
    a run on one host take the bottom of the range and a user can tell which ports are Parley's;
    two nodes that race for one port are fine: the loser's bind fails with EADDRINUSE and it
    takes the next. Any other error (no such address, a port below 1024 without root) is the
    user's to fix and is raised at once.
    """
    low_text, _, high_text = port_range.partition("-")
    try:
        low, high = int(low_text), int(high_text)
    except ValueError:
        raise ValueError(f"tcp bind address: expected a port range LOW-HIGH, got {port_range!r}") from None
    if not 1 <= low <= high <= 65535:
        raise ValueError(f"tcp bind address: expected a port range with 1 <= LOW <= HIGH <= 65535, got {port_range!r}")
    for port in range(low, high + 1):
        try:
            socket.bind(f"tcp://{host}:{port}")
            return
        except zmq.ZMQError as error:
            if error.errno != zmq.EADDRINUSE:
                raise
    raise PortRangeExhausted(
        f"no free tcp port on {host} in the port range {low}-{high} (network.port_range): all {high - low + 1} "
        "are in use; widen the range (and the firewall rule with it) or stop what holds them"
    )


# The monitor events of a CURVE server whose handshake with a connecting peer failed.
HANDSHAKE_FAILED_EVENTS = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
_ZAP_DENIED = 400  # the ZAP status code of a refused key (RFC 27/ZAP)


def handshake_failure_reason(event: int, value: int) -> str:
    """What a zmq monitor event of a failed handshake means, in words for the log.

    Measured with libzmq 4.3.5 on a CURVE ROUTER behind our ZAP handler: a client with a key not
    of the run gives HANDSHAKE_FAILED_AUTH with ZAP status 400; a client without CURVE gives
    HANDSHAKE_FAILED_PROTOCOL with ZMTP_MECHANISM_MISMATCH or, depending on timing,
    HANDSHAKE_FAILED_NO_DETAIL (which a connection cut mid-handshake gives too); a client with a
    wrong server key gives HANDSHAKE_FAILED_PROTOCOL with ZMTP_CRYPTOGRAPHIC (and it keeps
    reconnecting, so it is counted once per attempt)."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return "unknown key" if value == _ZAP_DENIED else f"refused by the authenticator (ZAP status {value})"
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        if value == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
            return "bad encryption (wrong server key)"
        if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            return "no CURVE"
        return f"protocol error {value:#x}"
    return "no CURVE or cut short"  # NO_DETAIL


def _open_monitor(socket: zmq.Socket, events: int) -> zmq.Socket:
    """The PAIR socket on which zmq reports `events` of `socket` (a socket monitor)."""
    monitor = socket.get_monitor_socket(events)
    monitor.setsockopt(zmq.LINGER, 0)
    return monitor


def _monitor_events(monitor: zmq.Socket) -> Iterator[tuple[int, int, str]]:
    """Every event waiting on a socket monitor, as (event, value, peer address); never blocks."""
    while True:
        try:
            frames = monitor.recv_multipart(flags=zmq.NOBLOCK)
        except zmq.Again:
            return
        if len(frames) != 2 or len(frames[0]) != 6:
            continue  # not a monitor event (cannot happen on an inproc PAIR of our own)
        event, value = struct.unpack("=Hi", frames[0])
        yield event, value, frames[1].decode(errors="replace")


def _close_monitor(socket: zmq.Socket, monitor: zmq.Socket) -> None:
    if not socket.closed:
        socket.disable_monitor()
    monitor.close(linger=0)


class HandshakeMonitor:
    """Counts the failed CURVE handshakes of one server socket, through a zmq socket monitor.

    A stranger that never completes a handshake sends no message at all, so `Channel.recv`
    never sees it: the socket monitor is where its attempts show. The hub polls the monitor's
    PAIR socket with its other sockets and calls `drain` when it is readable; the counts go
    into the node's metrics (`Hub.link_metrics`) and the rate-limited log ("env: refused 20
    handshakes on env in the last 5 s: 20 unknown key").
    """

    def __init__(self, socket: zmq.Socket, channel_name: str, log_where: str) -> None:
        self.socket = socket
        self.channel_name = channel_name
        self.events = _open_monitor(socket, HANDSHAKE_FAILED_EVENTS)
        self.refused: Counter[str] = Counter()  # reason -> count, over the life of the socket
        self.log = BadInputLog(log, log_where, one="refused a handshake", many="refused {n} handshakes", preposition="on")

    def drain(self) -> None:
        """Count every event waiting (never blocks)."""
        for event, value, address in _monitor_events(self.events):
            reason = handshake_failure_reason(event, value)
            self.refused[reason] += 1
            self.log.record(self.channel_name, reason, f"at {address}")

    @property
    def total(self) -> int:
        return sum(self.refused.values())

    def close(self) -> None:
        self.drain()
        self.log.flush(force=True)
        _close_monitor(self.socket, self.events)


# The monitor events of a DEALER's connection to its peer: the ZMTP handshake done (the peer is
# there and speaks zmq), and the connection dropped (closed by the peer's kernel when the process
# died, or by zmq when the peer stopped answering heartbeats).
PEER_WATCH_EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED


class PeerWatch:
    """Whether a DEALER's connection to its one peer is up, through a zmq socket monitor.

    zmq hides a lost connection from the application: it reconnects in the background, and a
    client blocked on an answer waits out its own timeout for a peer that is gone. The monitor
    says at once. A peer process that dies (even by SIGKILL) has its end closed by its kernel,
    and the drop is an event within milliseconds; a peer that froze, or a host that vanished,
    stops answering zmq's heartbeats (`SocketOptions`), and zmq drops the connection after
    `heartbeat_timeout_s`. `lost_at` is when the connection dropped, None while it is up (or
    before the first handshake: a peer not there yet is the caller's timeout to judge). A new
    handshake (a server back at the same endpoint) clears it.
    """

    def __init__(self, socket: zmq.Socket, clock: Callable[[], float]) -> None:
        self.socket = socket
        self.clock = clock
        self.events = _open_monitor(socket, PEER_WATCH_EVENTS)
        self.lost_at: float | None = None
        self.ever_connected = False

    def drain(self) -> None:
        """Take every event waiting (never blocks)."""
        for event, _, _ in _monitor_events(self.events):
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.ever_connected, self.lost_at = True, None
            elif event == zmq.EVENT_DISCONNECTED and self.ever_connected and self.lost_at is None:
                self.lost_at = self.clock()

    def close(self) -> None:
        _close_monitor(self.socket, self.events)


# After a lost connection, how long `wait_for` still waits for a message the peer sent before
# it went (zmq may report the drop a moment before it hands over the last message read).
_PEER_LOST_GRACE_S = 0.05


class LinkEmulation:
    """How one channel's sends pass the link emulation (protocols/net/links.py): the node each goes
    to, what the model of that link decides for it (lost, now, later), and the copies it holds
    until they are due. A channel made without a `LinkTable` has none."""

    def __init__(self, links: LinkTable, peer: str | None, is_router: bool) -> None:
        self.links, self.peer, self.is_router = links, peer, is_router
        # Held copies: (due time, tiebreak, frames, the link's counters).
        self.delayed: list[tuple[float, int, list[Any], LinkCounters]] = []
        self._tiebreak = itertools.count()

    def destination(self, identity: bytes | None) -> str | None:
        """The node a message to `identity` goes to (None: not emulated)."""
        if self.peer is not None:
            return self.peer
        if identity is None or not self.is_router:
            return None  # a DEALER without a peer: never emulated
        return node_of_routing_id(identity.decode(errors="replace"))

    def lets_through(self, destination: str) -> bool:
        """Whether a message to node `destination` may skip the emulation, and so go through
        shared memory: an ideal link that no partition blocks now. Otherwise it goes by zmq,
        where the emulation delays, loses or blocks it as it would any message."""
        return self.links.model_for(destination).ideal and not self.links.partitions.blocks(self.links.src, destination)

    def count_delivered_now(self, destination: str, size: int, now: float) -> None:
        """A message that went through shared memory, counted on its (ideal) link as zmq's would be:
        the same draw from the link's random stream, delivered at once."""
        self.links.decide(destination, now, size)
        self.links.model_for(destination).counters.delivered += 1

    def decide(self, destination: str, frames: list[Any], now: float) -> int | None:
        """How many copies of `frames` go out now (None: lost, or blocked by a partition); the
        later ones are held until `take_due` gives them."""
        deliveries = self.links.decide(destination, now, sum(memoryview(f).nbytes for f in frames))
        if not deliveries:
            return None
        counters = self.links.model_for(destination).counters
        copies_now = 0
        for when in deliveries:
            if when <= now:
                counters.delivered += 1
                copies_now += 1
            else:
                counters.in_flight += 1
                heapq.heappush(self.delayed, (when, next(self._tiebreak), frames, counters))
        return copies_now

    def take_due(self, now: float) -> list[list[Any]]:
        """The held copies due by `now`, in order, counted as delivered."""
        due = []
        while self.delayed and self.delayed[0][0] <= now:
            _, _, frames, counters = heapq.heappop(self.delayed)
            counters.in_flight -= 1
            counters.delivered += 1
            due.append(frames)
        return due

    def next_due(self) -> float | None:
        return self.delayed[0][0] if self.delayed else None


@dataclass
class ChannelStats:
    sent: int = 0
    received: int = 0
    bytes_sent: int = 0
    dropped_invalid: int = 0  # received messages dropped: invalid, oversized, or a wrong sender
    dropped_bad_signature: int = 0  # (part of dropped_invalid) signature or CURVE User-Id mismatch
    dropped_oversized: int = 0  # (part of dropped_invalid) over the `LimitsConfig` size limits
    dropped_by_link: int = 0  # sends the link emulator decided to lose
    unroutable: int = 0  # ROUTER sends to a peer that is not connected


class Channel:
    """One socket, speaking envelopes. Made by a `Hub`. Not thread-safe (neither are zmq sockets).

    `name` says what the channel is for in logs ("env", "peer:agent_1", "control"); `endpoint` is
    the address a bound channel advertises (None for a connected one).
    """

    def __init__(
        self,
        socket: zmq.Socket,
        *,
        sender: str,
        run_id: str,
        name: str = "",
        endpoint: str | None = None,
        key: bytes = b"",
        verify_key: bytes | Callable[[str], bytes] | None = None,
        check_user_id: bool = False,
        zero_copy: bool = False,
        limits: LimitsConfig | None = None,
        bad_input: BadInputLog | None = None,
        links: LinkTable | None = None,
        peer: str | None = None,
        clock=time.monotonic,
        close_linger_s: float = 0.0,
    ) -> None:
        self.socket = socket
        self.name = name
        self.endpoint = endpoint
        self.close_linger_s = close_linger_s
        self.sender = sender
        self.run_id = run_id
        self.key = key  # what this channel signs with (empty: unsigned)
        self.verify_key = key if verify_key is None else verify_key  # what received messages must be signed with
        self.check_user_id = check_user_id  # CURVE server: the header's sender must be the authenticated node
        # Frames received as zmq.Frame objects (arrays then decode as views of zmq's own buffer)
        # rather than copied into bytes: CURVE needs them (the authenticated User-Id is a frame
        # property), and a channel of large arrays (`zero_copy`) saves a copy per message.
        self.receives_frames = check_user_id or zero_copy
        self.limits = limits if limits is not None else LimitsConfig()
        self.bad_input = bad_input if bad_input is not None else BadInputLog(log, name or "channel")
        self.links = links  # None: no emulation on this channel
        self.peer = peer  # the node a DEALER is connected to (None on a ROUTER, or not a node)
        self.clock = clock
        self.stats = ChannelStats()
        self.handshakes: HandshakeMonitor | None = None  # failed CURVE handshakes (CURVE servers only)
        self.peer_watch: PeerWatch | None = None  # the connection to the peer (DEALERs made with watch_peer)
        self._seq = itertools.count(1)
        self._is_router = socket.type == zmq.ROUTER
        self.emulation = LinkEmulation(links, peer, self._is_router) if links is not None else None
        self._poller = zmq.Poller()  # for `wait_for`, which waits on this socket (and its wake-up pipes) alone
        self._poller.register(socket, zmq.POLLIN)
        # Peers that agreed on packed lockstep bodies (protocols/codec/packed.py): routing id (None on
        # a DEALER: its one peer) -> their layout.
        self._packed: dict[bytes | None, PackedLayout] = {}
        # Peers on this host whose packed bodies go through shared memory (protocols/net/shm_lockstep.py),
        # the peer of each wake-up pipe, the peers whose pipe the last poll found readable, and
        # zmq messages held back while a peer's slot is delivered first (the ordering rule).
        self._shm: dict[bytes | None, ShmLink] = {}
        self._shm_of_pipe: dict[int, bytes | None] = {}
        self._shm_woken: list[bytes | None] = []
        self._held: collections.deque[wire.Envelope] = collections.deque()
        self.watch_pipe: Callable[[int, Channel | None], None] | None = None  # set by the hub: poll this pipe too

    def use_shm(self, link: ShmLink, identity: bytes | None = None) -> None:
        """Send this (packed) peer's env.observation / env.action through `link`'s segment, and
        read what it writes there when its wake-up pipe is readable (protocols/net/shm_lockstep.py)."""
        if (old := self._shm.get(identity)) is not None and old is not link:
            self.forget_shm(identity)
        self._shm[identity] = link
        self._shm_of_pipe[link.wake_fd] = identity
        self._poller.register(link.wake_fd, zmq.POLLIN)
        if self.watch_pipe is not None:
            self.watch_pipe(link.wake_fd, self)

    def forget_shm(self, identity: bytes | None = None) -> None:
        if (link := self._shm.pop(identity, None)) is not None:
            self._shm_of_pipe.pop(link.wake_fd, None)
            self._poller.unregister(link.wake_fd)
            if self.watch_pipe is not None:
                self.watch_pipe(link.wake_fd, None)
            link.close()

    def pipe_readable(self, fd: int) -> None:
        """The hub's poll found this channel's wake-up pipe `fd` readable: `recv` reads that slot."""
        if (identity := self._shm_of_pipe.get(fd, _NO_PEER)) is not _NO_PEER:
            self._shm_woken.append(identity)

    def shm_link(self, identity: bytes | None = None) -> ShmLink | None:
        return self._shm.get(identity)

    @property
    def shm_peers(self) -> set[bytes | None]:
        return set(self._shm)

    @property
    def shm_peers_any(self) -> bool:
        return bool(self._shm)

    def use_packed(self, layout: PackedLayout, identity: bytes | None = None) -> None:
        """Send this peer's env.observation / env.action packed with `layout`, and read packed
        ones from it with the same layout (on a ROUTER, the peer with routing id `identity`)."""
        self._packed[identity] = layout

    def packed_layout(self, identity: bytes | None = None) -> PackedLayout | None:
        return self._packed.get(identity)

    def forget_packed(self, identity: bytes | None = None) -> None:
        self._packed.pop(identity, None)

    @property
    def packed_peers(self) -> set[bytes | None]:
        return set(self._packed)

    def send(self, message: Any, *, to: str | bytes | None = None, parent: wire.Header | None = None) -> bool:
        """Encode and send `message`; `to` is the routing id on a ROUTER socket.

        Returns False when a ROUTER has no such peer (counted, never raised: a peer may be gone).
        """
        frames = self._encode(message, to, parent)
        return True if frames is None else self._transmit(frames)

    def send_batch(self, outgoing: list[tuple[str | bytes | None, Any]]) -> list[bool]:
        """Send `(to, message)` pairs: every message is encoded first, then all are sent back to
        back. The lockstep's broadcast uses it: the first send wakes zmq's I/O thread, which on a
        busy machine can take the CPU from this one, so the encoding is done by then and the
        clients get their observations close together. Returns `send`'s answer for each."""
        encoded = [self._encode(message, to, None) for to, message in outgoing]
        return [True if frames is None else self._transmit(frames) for frames in encoded]

    def _encode(self, message: Any, to: str | bytes | None, parent: wire.Header | None) -> list[Any] | None:
        """The frames for zmq, or None when the message went through the peer's shared memory."""
        identity = None if to is None else (to.encode() if type(to) is str else to)
        identities = () if identity is None else (identity,)
        link = self._shm.get(identity) if self._shm else None
        if self._packed and (layout := self._packed.get(identity)) is not None and layout.fits(message):
            body = layout.pack(message)
            if link is not None and type(message) in _SHM_TYPES and self._write_slot(link, identity, message.MSG_TYPE, lambda: body):
                return None
        else:
            body = None
        if body is not None and len(body) <= wire.MAX_PACKED_BODY_BYTES:
            frames = wire.encode_packed(message.MSG_TYPE, body, sender=self.sender, seq=next(self._seq),
                                        identities=identities, key=self.key)
        else:  # not packed, or too large for a packed frame (only a shared-memory peer gets such bodies)
            frames = wire.encode(message, sender=self.sender, run_id=self.run_id, seq=next(self._seq), parent=parent,
                                 identities=identities, key=self.key)
        if link is not None:
            link.sent_zmq()  # the peer must see it before this side writes its slot again
        return frames

    def write_packed(self, identity: bytes | None, msg_type: str, pack: Callable[[PackedLayout], bytes]) -> bool:
        """A packed `msg_type` body for `identity` written straight into its shared-memory slot,
        `pack` making it with the peer's layout: no message object on the way (the env server's
        lockstep hot path: it packs a step's rows for each client). False when it cannot go that
        way now (no segment or layout, the slot not read yet, an emulated link that is not
        ideal): the caller then sends the message, which takes the usual way (`_encode`)."""
        link, layout = self._shm.get(identity), self._packed.get(identity)
        if link is None or layout is None:
            return False
        return self._write_slot(link, identity, msg_type, lambda: pack(layout))

    def _write_slot(self, link: ShmLink, identity: bytes | None, msg_type: str, pack: Callable[[], bytes]) -> bool:
        """Write the body `pack` gives into `link`'s slot, if the link emulation lets it skip zmq
        (`LinkEmulation.lets_through`) and the slot is free (packed only then)."""
        emulation = self.emulation
        destination = emulation.destination(identity) if emulation is not None else None
        if destination is not None and not emulation.lets_through(destination):
            return False
        body = pack()
        if not link.write(wire.PACKED_CODE[msg_type], body):
            return False
        if destination is not None:
            emulation.count_delivered_now(destination, len(body), self.clock())
        return True

    def _transmit(self, frames: list[Any]) -> bool:
        emulation = self.emulation
        destination = None if emulation is None else emulation.destination(bytes(frames[0]) if self._is_router else None)
        if destination is None:
            return self._send_frames(frames)  # not emulated
        copies_now = emulation.decide(destination, frames, self.clock())
        if copies_now is None:
            self.stats.dropped_by_link += 1
            if self._shm and (link := self._shm.get(bytes(frames[0]) if self._is_router else None)) is not None:
                link.sent_by_zmq -= 1  # lost on the way: the peer will never see it (protocols/net/shm_lockstep.py)
            return True
        sent = True
        for _ in range(copies_now):
            sent = self._send_frames(frames) and sent
        return sent

    def reply(self, request: wire.Envelope, message: Any) -> bool:
        """Answer `request` through the same routing ids, with its header as parent."""
        to = request.identities[0] if request.identities else None
        return self.send(message, to=to, parent=request.header)

    def flush_due(self, now: float | None = None) -> None:
        if self.emulation is not None:
            for frames in self.emulation.take_due(self.clock() if now is None else now):
                self._send_frames(frames)

    def next_due(self) -> float | None:
        return self.emulation.next_due() if self.emulation is not None else None

    def recv(self) -> wire.Envelope | None:
        """One message if one is waiting (never blocks); invalid frames are logged and dropped."""
        if self._held:
            return self._held.popleft()
        while self._shm_woken:
            if (envelope := self._take_shm(self._shm_woken.pop(), drain=True)) is not None:
                return envelope
        while True:
            try:
                # Without CURVE (every ipc run) frames arrive as bytes: for the small messages of
                # the lockstep a zmq.Frame object per frame costs more than the copy (measured:
                # ~20 us per 6-frame message); a large array pays one memcpy (~0.3 ms per MiB)
                # and a fresh allocation, which a `zero_copy` channel avoids.
                if self.receives_frames:
                    frames = self.socket.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                else:
                    frames = _recv_bytes(self.socket)
            except zmq.Again:
                return self._take_unannounced_shm()
            if frames is None:
                return self._take_unannounced_shm()
            if self.receives_frames:
                views = [frame.buffer for frame in frames]
                size = sum(view.nbytes for view in views)
            else:
                views = frames
                size = 0
                for frame in frames:
                    size += len(frame)
            if self._shm and (link := self._shm.get(identity := bytes(views[0]) if self._is_router else None)) is not None:
                # A zmq message from a peer with a segment (protocols/net/shm_lockstep.py): counted as
                # seen, valid or not, and whatever the peer's slot holds unread was written before
                # it was sent, so that goes first.
                link.saw_zmq()
                if (first := self._take_shm(identity, drain=False)) is not None:
                    if (envelope := self._envelope_of(frames, views, size)) is not None:
                        self._held.append(envelope)
                    return first
            if (envelope := self._envelope_of(frames, views, size)) is not None:
                return envelope

    def _take_unannounced_shm(self) -> wire.Envelope | None:
        """Before the loop goes back to its poll: the messages peers wrote into their slots since
        the poll returned, taken now instead of after one more wake-up each (on the env server,
        the actions that came in while it handled the first: 1.5 wake-ups a K=1 step at N=4
        instead of 2.7, each ~13 us of its thread). Emptying the pipe first keeps its byte from waking
        the poll for a message already taken. Order is safe: a slot only ever holds a message
        written after every zmq message its writer sent before it was seen (module docstring of
        protocols/net/shm_lockstep.py)."""
        if not self._shm:
            return None
        for identity, link in list(self._shm.items()):  # (a handled action may step the env, which may drop a link)
            if link.unread() and (envelope := self._take_shm(identity, drain=True)) is not None:
                return envelope
        return None

    def _envelope_of(self, frames: list[Any], views: list[Any], size: int) -> wire.Envelope | None:
        """The message of one received zmq message, checked; None when it was dropped."""
        if size > self.limits.max_message_bytes:
            self._drop(frames, "oversized", f"{size} bytes, over max_message_bytes {self.limits.max_message_bytes}")
            return None
        try:
            envelope = wire.decode(views, key=self.verify_key)
        except SignatureError as error:
            self._drop(frames, "bad signature", str(error))
            return None
        except ProtocolError as error:
            self._drop(frames, type(error).__name__, str(error))
            return None
        if size > (limit := self.limits.max_bytes_for(envelope.msg_type)):
            self._drop(frames, "oversized", f"{envelope.msg_type} of {size} bytes, over its limit of {limit}")
            return None
        if type(envelope.message) is wire.Packed:
            identity = envelope.identities[0] if envelope.identities else None
            layout = self._packed.get(identity)
            if layout is None:
                self._drop(frames, "FieldError", f"a packed {envelope.msg_type} from a peer that agreed on no packed layout")
                return None
            try:
                envelope = wire.Envelope(envelope.header, layout.unpack(envelope.msg_type, envelope.message.data), {},
                                         envelope.identities)
            except ProtocolError as error:
                self._drop(frames, type(error).__name__, str(error))
                return None
        if self.check_user_id:
            authenticated = frames[-1].get("User-Id")
            if authenticated != envelope.sender:
                self._drop(frames, "bad signature",
                           f"header claims sender {envelope.sender!r}, the connection authenticated as {authenticated!r}")
                return None
        self.stats.received += 1
        if self.links is not None:
            self.links.record_age(envelope.header.sender, time.time() - envelope.header.sent_at)
        return envelope

    def _take_shm(self, identity: bytes | None, *, drain: bool) -> wire.Envelope | None:
        """The message `identity`'s slot holds unread, as a packed zmq frame would give it (None:
        nothing unread, or dropped). `drain`: empty its wake-up pipe first (woken by the poll)."""
        link, layout = self._shm.get(identity), self._packed.get(identity)
        if link is None or layout is None:
            return None
        if drain:
            link.drain_wake()
        try:
            taken = link.take()
            if taken is None:
                return None
            code, sent_at, body = taken
            msg_type = wire.PACKED_TYPES[code]
            message = layout.unpack(msg_type, body)
        except (ValueError, IndexError, KeyError, ProtocolError) as error:
            self.stats.dropped_invalid += 1
            self.bad_input.record(link.peer_sender, "FieldError", f"shared-memory slot: {error}"[:300])
            return None
        self.stats.received += 1
        header = wire.Header("", msg_type, link.peer_sender, self.run_id, PROTOCOL_VERSION, 0, sent_at)
        return wire.Envelope(header, message, {}, () if identity is None else (identity,))

    def _drop(self, frames: list[Any], reason: str, detail: str) -> None:
        self.stats.dropped_invalid += 1
        if reason == "bad signature":
            self.stats.dropped_bad_signature += 1
        elif reason == "oversized":
            self.stats.dropped_oversized += 1
        # On a ROUTER the first frame is the peer's routing id: the best name a stranger has.
        # One libzmq drew (a DEALER made without one) starts with a zero byte, and is new at every
        # connection: such sources are logged together, so reconnecting cannot outrun the rate limit.
        first = frames[0] if type(frames[0]) is bytes else frames[0].buffer
        if self.socket.type != zmq.ROUTER or len(frames) < 2:
            source = "the peer"
        elif bytes(first[:1]) == b"\0":
            source = "an unnamed connection"
        else:
            source = repr(bytes(first[:64]))
        self.bad_input.record(source, reason, detail[:300])

    def use_peer_watch(self, watch: PeerWatch) -> None:
        """Watch this DEALER's connection with `watch` (made by `Hub.connect_dealer(watch_peer=True)`)."""
        self.peer_watch = watch
        self._poller.register(watch.events, zmq.POLLIN)  # `wait_for` wakes when the connection drops

    def peer_lost(self) -> float | None:
        """When (this channel's clock) the connection to the peer dropped, if it is down now;
        None while it is up, before it first came up, or on a channel made without `watch_peer`.
        Never blocks."""
        if self.peer_watch is None:
            return None
        self.peer_watch.drain()
        return self.peer_watch.lost_at

    def wait_for(self, *message_types: type, timeout_s: float) -> Any | None:
        """Block until a message of one of `message_types` arrives and return it; messages of
        other types are dropped on the way. None when `timeout_s` passes first, or, on a
        channel made with `watch_peer`, as soon as the connection to the peer is lost (after
        the messages it sent before it went; `peer_lost()` then says when).

        For the short request/answer exchanges before a node's main loop runs (join, welcome,
        directory); inside the loop, a node polls all its sockets together instead.
        """
        deadline = self.clock() + timeout_s
        while (remaining := deadline - self.clock()) > 0:
            if self.peer_lost() is not None:
                return self._last_messages_of_lost_peer(message_types)
            # This channel's own held (link-emulated) sends, e.g. the request being answered,
            # must leave while we wait for the answer.
            if (due := self.next_due()) is not None:
                remaining = min(remaining, max(0.0, due - self.clock()))
            ready = wait_readable(self._poller, remaining)
            self.flush_due()
            if not ready:
                continue
            if (message := self._first_of(ready, message_types)) is not None:
                return message
        return None

    def _last_messages_of_lost_peer(self, message_types: tuple[type, ...]) -> Any | None:
        """A message of `message_types` that the lost peer sent before it went, or None."""
        return self._first_of(wait_readable(self._poller, _PEER_LOST_GRACE_S), message_types)

    def _first_of(self, ready: set, message_types: tuple[type, ...]) -> Any | None:
        """The first received message of `message_types` (others are dropped), after reading the
        wake-up pipes among `ready`; None when none came."""
        for item in ready:
            if type(item) is int:  # a wake-up pipe (protocols/net/shm_lockstep.py)
                self.pipe_readable(item)
        for envelope in self.recv_all():
            if isinstance(envelope.message, message_types):
                return envelope.message
        return None

    def recv_all(self) -> Iterable[wire.Envelope]:
        while (envelope := self.recv()) is not None:
            yield envelope

    @property
    def closed(self) -> bool:
        return self.socket.closed

    def close(self) -> None:
        """Close the socket; waits up to `close_linger_s` for queued messages (0: drops them)."""
        for identity in list(self._shm):
            self.forget_shm(identity)
        if self.handshakes is not None:
            self.handshakes.close()
        if self.peer_watch is not None:
            self.peer_watch.close()
        if not self.socket.closed:
            self.socket.close(linger=round(self.close_linger_s * 1000))

    def _send_frames(self, frames: list[Any]) -> bool:
        size, all_bytes = 0, True
        for frame in frames:
            if type(frame) is bytes:
                size += len(frame)
            else:
                all_bytes = False
                size += memoryview(frame).nbytes
        try:
            if all_bytes:
                # The lockstep's case: all-bytes frames, copied (no zmq.Frame objects), through
                # the socket's C-level send; pyzmq's `send_multipart` re-checks every frame's
                # type and goes through its Python `send` per frame (measured warm: 1.2 us
                # against 3.4 us for a three-frame message).
                socket, last = self.socket, len(frames) - 1
                for index in range(last):
                    _raw_send(socket, frames[index], _SNDMORE, True)
                _raw_send(socket, frames[last], 0, True)
            else:  # a large array among them is sent without a copy
                self.socket.send_multipart(frames, copy=False)
        except zmq.ZMQError as error:
            if error.errno == zmq.EHOSTUNREACH:
                self.stats.unroutable += 1
                return False
            raise
        self.stats.sent += 1
        self.stats.bytes_sent += size
        return True


class Hub:
    """Every zmq object of one process: context, poller, sockets. See the module docstring."""

    def __init__(
        self,
        *,
        sender: str,
        run_id: str,
        options: SocketOptions = SocketOptions(),
        key: bytes = b"",
        keys: NodeKeys | None = None,
        limits: LimitsConfig | None = None,
        clock=time.monotonic,
        links: LinkTable | None = None,
    ) -> None:
        """`keys`: this node's keys of the run (see `protocols/net/auth.py`): CURVE on tcp, per-node
        HMAC signatures on ipc. None: no authentication (tests, benches, a standalone server);
        `key` then optionally signs every message with one shared key. `limits`: the size limits
        of received messages (default `LimitsConfig()`)."""
        if not wire.NODE_ID_FORM.fullmatch(sender):
            # Receivers refuse any other sender (wire.py, "What a claimed sender costs"): say so here.
            raise ValueError(f"a hub's sender must be a node id ({wire.NODE_ID_FORM.pattern}, at most "
                             f"{wire.NODE_ID_MAX_CHARS} characters), got {sender[:100]!r}")
        if keys is not None and keys.node_id != sender:
            raise ValueError(f"the hub of {sender!r} was given the keys of {keys.node_id!r}")
        self.sender = sender
        self.links = links
        self.run_id = run_id
        self.options = options
        self.key = key
        self.keys = keys
        self.limits = limits if limits is not None else LimitsConfig()
        self.clock = clock
        self._context = zmq.Context()
        self._next_log_flush = 0.0  # `wait` flushes the aggregated bad-input logs at most this often
        # What the node's own logic refused of well-formed messages (see the module doc): the
        # reason names the message type and why, the source is the claimed (authenticated) sender.
        self.refusals = BadInputLog(log, sender, one="refused a message", many="refused {n} messages")
        self._poller = zmq.Poller()
        self._channels: dict[zmq.Socket, Channel] = {}
        self._pipes: dict[int, Channel] = {}  # shared-memory wake-up pipes -> their channel
        self._monitors: dict[zmq.Socket, HandshakeMonitor] = {}  # monitor PAIR socket -> its monitor
        self._peer_watches: dict[zmq.Socket, Channel] = {}  # a PeerWatch's monitor PAIR socket -> its channel
        self._authenticator: Any = None  # the ZAP handler, started with the first CURVE server

    # ------------------------------------------------------------------ making channels

    def bind_router(
        self, address: str, *, name: str, advertise_host: str | None = None, emulated: bool = True, zero_copy: bool = False
    ) -> Channel:
        """A ROUTER bound to `address` (ipc://PATH or tcp://HOST:PORT; port 0 = any free port,
        LOW-HIGH = the lowest free port of that range).

        Its `endpoint` is the address peers connect to: `advertise_host` replaces the bind host
        (e.g. bind 0.0.0.0, advertise the host's reachable name), and a free port is filled in.
        With a link table, replies go through the link to the node named by the routing id
        (`node_of_routing_id`), unless `emulated=False` (the orchestrator's control socket).
        `zero_copy`: received arrays are views of zmq's buffers, not copies (for channels of large
        arrays, such as the peers' consensus shares; small messages cost a little more).
        """
        socket = _make_socket(self._context, zmq.ROUTER, self.options, identity=None, max_frame_bytes=self.limits.max_frame_bytes)
        try:
            if self.keys is not None and address.startswith("tcp://"):
                self._start_authenticator()
                socket.curve_server = True
                socket.curve_secretkey = self.keys.server_secret
                socket.curve_publickey = self.keys.server_public
                socket.zap_domain = ZAP_DOMAIN.encode()
            endpoint = _bind(socket, address, advertise_host)
        except BaseException:
            socket.close(linger=0)
            raise
        channel = self._register(
            socket, name=name, endpoint=endpoint, close_linger_s=0.0, tcp=address.startswith("tcp://"), emulated=emulated, peer=None,
            zero_copy=zero_copy,
        )
        if socket.curve_server:  # strangers knock here: count the handshakes refused
            channel.handshakes = HandshakeMonitor(socket, name, self.sender)
            self._monitors[channel.handshakes.events] = channel.handshakes
            self._poller.register(channel.handshakes.events, zmq.POLLIN)
        return channel

    def connect_dealer(
        self, endpoint: str, *, name: str, identity: str | None, close_linger_s: float = 0.0, peer: str | None = None,
        watch_peer: bool = False,
    ) -> Channel:
        """A DEALER connected to `endpoint`, known to the ROUTER there by `identity`.

        `identity` None: the ROUTER names each connection of this DEALER itself (libzmq draws a
        fresh routing id per connection). For links the far end never answers, such as an agent's
        links to its neighbours' inboxes: a fixed routing id can lose such a link for good. When
        the far process is frozen (SIGSTOP) past the zmq heartbeat timeout, this DEALER drops the
        connection and reconnects to it; on waking, its ROUTER may see the new connection while
        the old one, still holding messages, is being torn down, and libzmq 4.3 then refuses the
        new one as a duplicate routing id and never reconsiders it: every later message over the
        link is lost until the connection drops again.

        `close_linger_s` > 0 lets the last messages out when the channel closes (a goodbye).
        `peer`: the node id at the other end; with a link table, sends go through that link.
        `watch_peer`: watch the connection (`PeerWatch`): `channel.peer_lost()` says when it
        dropped, `wait_for` returns as soon as it does, and `wait` returns the channel then.
        """
        socket = _make_socket(self._context, zmq.DEALER, self.options, identity=None if identity is None else identity.encode(),
                              max_frame_bytes=self.limits.max_frame_bytes)
        # (before connecting: the monitor must see the first handshake)
        watch = PeerWatch(socket, self.clock) if watch_peer else None
        tcp = endpoint.startswith("tcp://")
        if self.keys is not None and tcp:
            socket.curve_serverkey = self.keys.server_public
            socket.curve_publickey = self.keys.public
            socket.curve_secretkey = self.keys.secret
        try:
            socket.connect(endpoint)
        except BaseException:
            if watch is not None:
                watch.close()
            socket.close(linger=0)
            raise
        channel = self._register(
            socket, name=name, endpoint=None, close_linger_s=close_linger_s, tcp=tcp, emulated=peer is not None, peer=peer
        )
        if watch is not None:
            channel.use_peer_watch(watch)
            self._peer_watches[watch.events] = channel
            self._poller.register(watch.events, zmq.POLLIN)
        return channel

    def _register(
        self, socket: zmq.Socket, *, name: str, endpoint: str | None, close_linger_s: float, tcp: bool, emulated: bool, peer: str | None,
        zero_copy: bool = False,
    ) -> Channel:
        if self.keys is None:
            key, verify_key, check_user_id = self.key, None, False
        elif tcp:  # CURVE authenticates the connection; a ROUTER also checks each header's sender
            key, verify_key, check_user_id = b"", None, socket.type == zmq.ROUTER
        else:  # ipc: every message signed with its sender's key
            key, verify_key, check_user_id = self.keys.signing_key(self.sender), signing_keys(self.keys), False
        channel = Channel(
            socket, sender=self.sender, run_id=self.run_id, name=name, endpoint=endpoint,
            key=key, verify_key=verify_key, check_user_id=check_user_id, zero_copy=zero_copy,
            limits=self.limits, clock=self.clock, close_linger_s=close_linger_s,
            links=self.links if emulated else None, peer=peer,
        )
        self._poller.register(socket, zmq.POLLIN)
        self._channels[socket] = channel
        channel.watch_pipe = self._watch_pipe
        return channel

    def _watch_pipe(self, fd: int, channel: Channel | None) -> None:
        """Poll a channel's shared-memory wake-up pipe with the sockets (None: stop)."""
        if channel is None:
            if self._pipes.pop(fd, None) is not None:
                self._poller.unregister(fd)
        else:
            self._pipes[fd] = channel
            self._poller.register(fd, zmq.POLLIN)

    # ------------------------------------------------------------------ the loop's calls

    def wait(self, timeout_s: float) -> list[Channel]:
        """The channels with something to read, after waiting at most `timeout_s` (never spins).

        With link emulation the wait also ends when a held message falls due, and the due ones
        are sent before returning: a caller that never calls `flush_due` still delivers on time.
        """
        due = self.next_due()
        if due is not None:
            timeout_s = min(timeout_s, max(0.0, due - self.clock()))
        ready = []
        for socket in wait_readable(self._poller, timeout_s):
            channel = self._channels.get(socket)
            if channel is not None:
                ready.append(channel)
            elif (channel := self._pipes.get(socket)) is not None:  # a wake-up pipe (protocols/net/shm_lockstep.py)
                channel.pipe_readable(socket)
                if channel not in ready:
                    ready.append(channel)
            elif (channel := self._peer_watches.get(socket)) is not None:  # its connection came up or dropped
                channel.peer_watch.drain()
                if channel.peer_watch.lost_at is not None and channel not in ready:
                    ready.append(channel)  # the caller asks `peer_lost()`
            else:  # a handshake monitor's events: counted here, never seen by the caller
                self._monitors[socket].drain()
        if due is not None:
            self.flush_due()
        self.flush_logs()
        return ready

    def flush_logs(self) -> None:
        """Write the aggregated bad-input lines whose window is over. `wait` calls it; a loop
        that may go a long time without calling `wait` (a learner reading behind a stream of
        transitions, whose `recv_all` never runs dry) calls it too, so a flood's lines come
        within their window, not at exit."""
        now = time.monotonic()
        if now >= self._next_log_flush:
            self._next_log_flush = now + _LOG_FLUSH_EVERY_S
            for channel in self._channels.values():
                channel.bad_input.flush(now)
            for monitor in self._monitors.values():
                monitor.drain()  # refused handshakes are counted when drained, which `wait` may not reach
                monitor.log.flush(now)
            self.refusals.flush(now)

    def _start_authenticator(self) -> None:
        """Start the ZAP handler of this context: it admits the run's node keys only and names
        each connection (zmq's User-Id on every message) by the node whose key it presented."""
        if self._authenticator is not None:
            return
        from zmq.auth.thread import ThreadAuthenticator

        node_of_key = self.keys.node_of_public_key()

        class RunAuthenticator(ThreadAuthenticator):
            def curve_user_id(self, client_public_key: bytes) -> str:
                return node_of_key[z85.encode(client_public_key)]

        class RunKeys:
            def callback(self, domain: str, key: bytes) -> bool:
                return key in node_of_key

        authenticator = RunAuthenticator(self._context, log=logging.getLogger(__name__ + ".zap"))
        authenticator.start()
        authenticator.configure_curve_callback(ZAP_DOMAIN, credentials_provider=RunKeys())
        self._authenticator = authenticator

    def next_due(self) -> float | None:
        """When the earliest delayed (link-emulated) send is due, or None."""
        if self.links is None:  # only link emulation holds sends back (asked on every wait)
            return None
        due = [when for channel in self._channels.values() if (when := channel.next_due()) is not None]
        return min(due) if due else None

    def flush_due(self, now: float | None = None) -> None:
        """Send every delayed message whose time has come."""
        for channel in self._channels.values():
            channel.flush_due(now)

    def link_metrics(self) -> dict[str, float]:
        """Per-link counters (`link/SRC_to_DST/sent`, delivered, dropped, duplicated, in_flight,
        bytes, and for incoming links age_p50_ms / age_p99_ms; only with link emulation), plus
        the security drop counters of every channel of this hub, summed (always):
        `security/dropped_bad_signature` and `security/dropped_oversized`, and the CURVE
        handshakes refused (`security/refused_handshakes`, and per server socket
        `security/refused_handshakes/<channel name>`), and the well-formed messages the node
        refused (`security/refused_messages`, through `refusals`). Nodes write this dict into
        their metrics.jsonl every status period, so the drops show up without node code."""
        metrics = dict(self.links.metrics()) if self.links is not None else {}
        channels = list(self._channels.values())
        metrics["security/dropped_bad_signature"] = float(sum(c.stats.dropped_bad_signature for c in channels))
        metrics["security/dropped_oversized"] = float(sum(c.stats.dropped_oversized for c in channels))
        for monitor in self._monitors.values():
            monitor.drain()  # a status period may end before the loop's next wait drains it
        metrics["security/refused_handshakes"] = float(sum(m.total for m in self._monitors.values()))
        for monitor in self._monitors.values():
            metrics[f"security/refused_handshakes/{monitor.channel_name}"] = float(monitor.total)
        metrics["security/refused_messages"] = float(sum(self.refusals.totals.values()))
        return metrics

    @property
    def channels(self) -> list[Channel]:
        return list(self._channels.values())

    def close_channel(self, channel: Channel) -> None:
        """Close one channel (a neighbour that left the run, say) and stop polling it."""
        if channel.socket in self._channels:
            self._poller.unregister(channel.socket)
            del self._channels[channel.socket]
        if channel.handshakes is not None and channel.handshakes.events in self._monitors:
            self._poller.unregister(channel.handshakes.events)
            del self._monitors[channel.handshakes.events]
        if channel.peer_watch is not None and channel.peer_watch.events in self._peer_watches:
            self._poller.unregister(channel.peer_watch.events)
            del self._peer_watches[channel.peer_watch.events]
        channel.close()

    def close(self) -> None:
        """Close every channel (each with its own linger) and the context. Idempotent."""
        self.refusals.flush(force=True)
        for channel in list(self._channels.values()):
            channel.bad_input.flush(force=True)
            self.close_channel(channel)
        if self._authenticator is not None:
            self._authenticator.stop()
            self._authenticator = None
        if not self._context.closed:
            self._context.term()


# The C-level send and receive of pyzmq's socket, below its Python sugar (`send_multipart`,
# `recv_multipart`), for the hot path's all-bytes frames.
_RawSocket = next(base for base in zmq.Socket.__mro__[1:] if "send" in vars(base) and "recv" in vars(base))
_raw_send, _raw_recv, _raw_get = _RawSocket.send, _RawSocket.recv, _RawSocket.get
# Plain ints: `events & zmq.POLLIN` with pyzmq's flag enum builds an enum member per call (~1 us).
# The messages that may go through a peer's shared-memory segment (protocols/net/shm_lockstep.py).
_SHM_TYPES = frozenset({m.EnvObservation, m.EnvAction})
# ... and their type codes in a slot's header (the server's hot path writes and reads them directly).
_NO_PEER = object()  # a pipe no peer owns any more (forgotten between the poll and `pipe_readable`)
_SNDMORE, _RCVMORE, _NOBLOCK, _EVENTS, _POLLIN = (int(flag) for flag in (zmq.SNDMORE, zmq.RCVMORE, zmq.NOBLOCK, zmq.EVENTS, zmq.POLLIN))
_LOG_FLUSH_EVERY_S = 0.25  # the bad-input logs aggregate over seconds: no need to look every wake-up


def _recv_bytes(socket: zmq.Socket) -> list[bytes] | None:
    """One whole message as bytes frames if one is waiting, else None (never blocks). Asks zmq
    whether a message is ready instead of letting a receive fail: a raised `zmq.Again` costs
    ~3 us, the question ~1 us, and every `recv_all` ends with one."""
    if not _raw_get(socket, _EVENTS) & _POLLIN:
        return None
    parts = [_raw_recv(socket, _NOBLOCK, True)]  # a multipart message arrives whole
    while _raw_get(socket, _RCVMORE):
        parts.append(_raw_recv(socket, _NOBLOCK, True))
    return parts


def wait_readable(poller: zmq.Poller, timeout_s: float) -> set[zmq.Socket | int]:
    """Block until a registered socket (or file descriptor: a wake-up pipe) is readable or
    `timeout_s` passes (never busy-waits)."""
    # Round up: a deadline 0.3 ms away must not turn into a zero timeout and a spin.
    timeout_ms = max(0, math.ceil(timeout_s * 1000))
    return {socket for socket, _ in poller.poll(timeout_ms)}
