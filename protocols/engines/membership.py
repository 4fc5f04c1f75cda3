"""Membership: who among my neighbours is alive. A sans-IO engine (see `protocols/engines/engine.py`).

The node's peer mesh feeds the engine every message it receives from a neighbour (any message is
a sign of life; heartbeats are only sent to fill silence) and calls `on_timer` at
`next_deadline()`; the engine returns the heartbeats to send and queues membership events that
the mesh collects with `take_events()` and passes on to the other engines as
`on_neighbour_down` / `on_neighbour_up`. It never touches a socket or a clock, so the same object
runs in the node, in unit tests and in the simulator.

A peer is declared down when nothing arrived from it for `timeout_s`; it is up again on its next
message. A peer never heard from is declared down too, `timeout_s` after this node began running
(RUNNING_STATES; at start-up the nodes boot at their own pace and are not waited for): a node
restarted while a neighbour is cut off would otherwise wait for that neighbour in every
consensus round until the cut heals. A heartbeat with a higher `incarnation` than before means
the peer restarted (its in-flight protocol state is gone), which the engines above must hear about.

Membership runs for the node's whole life: `start` begins it, it is never `done`, and its
`result` is the set of neighbours alive now.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from protocols.engines.engine import Outgoing
from protocols.codec.messages import Heartbeat


@dataclass(frozen=True)
class PeerUp:
    peer: str


@dataclass(frozen=True)
class PeerDown:
    peer: str
    silent_for_s: float


@dataclass(frozen=True)
class PeerRestarted:
    peer: str
    incarnation: int


MembershipEvent = PeerUp | PeerDown | PeerRestarted


# The node states (agent_node/node.py NodeState) in which a neighbour never heard from counts as down.
RUNNING_STATES = frozenset({"running", "negotiating", "sharing", "averaging"})


@dataclass
class _Peer:
    last_heard: float
    alive: bool = False
    declared_down: bool = False  # a PeerDown went out and no message came since
    incarnation: int = -1


class MembershipEngine:
    """Heartbeats to every neighbour, liveness of every neighbour. See the module docstring."""

    message_types: ClassVar[tuple[type, ...]] = (Heartbeat,)

    def __init__(
        self,
        node_id: str,
        peers: list[str],
        *,
        heartbeat_every_s: float,
        timeout_s: float,
        incarnation: int = 0,
    ) -> None:
        if timeout_s <= heartbeat_every_s:
            raise ValueError(
                f"membership timeout_s ({timeout_s}) must exceed heartbeat_every_s ({heartbeat_every_s})"
            )
        if node_id in peers:
            raise ValueError(f"node {node_id!r} lists itself among its peers")
        self.node_id = node_id
        self.incarnation = incarnation
        self.heartbeat_every_s = heartbeat_every_s
        self.timeout_s = timeout_s
        # The node's state travels in its heartbeats (the node sets it on every transition).
        self.state = "booting"
        self._peers = {peer: _Peer(last_heard=0.0) for peer in peers}
        self._next_heartbeat: float | None = None  # None until started
        self._events: list[MembershipEvent] = []
        self._restarts_seen = 0
        self._downs_seen = 0
        self._running_since: float | None = None  # when `state` first was one of RUNNING_STATES

    # ------------------------------------------------------------------ Engine inputs

    def start(self, request: None, now: float) -> list[Outgoing]:
        """Start watching: silence is counted from now, and the first heartbeats go out at once.
        Peers start as not-yet-alive: a peer is "up" only once it has been heard from."""
        for record in self._peers.values():
            record.last_heard = now
        self._next_heartbeat = now
        return self.on_timer(now)

    def on_message(self, sender: str, message: Any, now: float) -> list[Outgoing]:
        """Any message from `sender` is a sign of life; a heartbeat also carries its incarnation."""
        record = self._peers.get(sender)
        if record is None:
            return []  # not a neighbour: the mesh logs and drops such messages
        record.last_heard = now
        record.declared_down = False
        if not record.alive:
            record.alive = True
            self._events.append(PeerUp(sender))
        if isinstance(message, Heartbeat):
            if record.incarnation >= 0 and message.incarnation > record.incarnation:
                self._restarts_seen += 1
                self._events.append(PeerRestarted(sender, message.incarnation))
            record.incarnation = max(record.incarnation, message.incarnation)
        return []

    def on_timer(self, now: float) -> list[Outgoing]:
        """Heartbeats due now; peers silent for too long are declared down (see take_events)."""
        if self._next_heartbeat is None:
            return []
        if self._running_since is None and self.state in RUNNING_STATES:
            self._running_since = now
            for record in self._peers.values():
                if not record.alive:  # never heard: its silence counts from now
                    record.last_heard = max(record.last_heard, now)
        for peer, record in self._peers.items():
            silent_for = now - record.last_heard
            # The same expression as next_deadline's, so a timer fired at that deadline
            # acts on it (with `silent_for > timeout_s`, float rounding could leave the
            # deadline in place and a deterministic simulator would fire it forever).
            if self._watched(record) and now >= record.last_heard + self.timeout_s:
                record.alive = False
                record.declared_down = True
                self._downs_seen += 1
                self._events.append(PeerDown(peer, silent_for))
        if now < self._next_heartbeat:
            return []
        self._next_heartbeat = now + self.heartbeat_every_s
        beat = Heartbeat(node_id=self.node_id, incarnation=self.incarnation, state=self.state)
        return [(peer, beat) for peer in self._peers]

    def on_neighbour_down(self, node: str, now: float) -> list[Outgoing]:
        """Membership is the source of these notices; it has nothing to do with its own."""
        return []

    def on_neighbour_up(self, node: str, now: float) -> list[Outgoing]:
        return []

    # ------------------------------------------------------------------ Engine outputs

    def next_deadline(self) -> float | None:
        if self._next_heartbeat is None:
            return None
        # `_watched` written out: this runs after every timer of every node, over every peer.
        timing_unheard = self._running_since is not None
        timeout_s = self.timeout_s
        deadline = self._next_heartbeat
        for record in self._peers.values():
            if record.alive or (timing_unheard and not record.declared_down):
                silence_ends = record.last_heard + timeout_s
                if silence_ends < deadline:
                    deadline = silence_ends
        return deadline

    def _watched(self, record: _Peer) -> bool:
        """Whether silence from this peer is being timed: it is up, or never heard from (nor
        declared down) while this node runs."""
        return record.alive or (self._running_since is not None and not record.declared_down)

    @property
    def done(self) -> bool:
        return False  # membership lasts as long as the node

    @property
    def result(self) -> frozenset[str]:
        """The neighbours alive now."""
        return frozenset(self.alive_peers())

    def metrics(self) -> dict[str, float]:
        return {
            "membership/peers_alive": float(len(self.alive_peers())),
            "membership/downs_seen": float(self._downs_seen),
            "membership/restarts_seen": float(self._restarts_seen),
        }

    def take_events(self) -> list[MembershipEvent]:
        """The events since the last call, oldest first."""
        events, self._events = self._events, []
        return events

    # ------------------------------------------------------------------ queries

    @property
    def peers(self) -> list[str]:
        return list(self._peers)

    def is_alive(self, peer: str) -> bool:
        return self._peers[peer].alive

    def is_declared_down(self, peer: str) -> bool:
        """Membership declared `peer` down (silent past the timeout) and has not heard it since."""
        return self._peers[peer].declared_down

    def alive_peers(self) -> list[str]:
        return [peer for peer, record in self._peers.items() if record.alive]
