"""Membership: who among my neighbours (and the env server) is alive. A sans-IO engine.

The node's event loop feeds the engine the current time and every message it receives from a
watched peer (any message counts as a sign of life, heartbeats are only sent to fill silence);
the engine returns the heartbeats to send and the membership events to act on. It never touches
a socket or a clock, so the same object runs in the node, in unit tests and in the simulator.

A peer is declared down when nothing arrived from it for `timeout_s`; it is up again on its next
message. A heartbeat with a higher `incarnation` than before means the peer restarted (its
in-flight protocol state is gone), which the engines above must hear about.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocols.messages import Heartbeat


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


@dataclass
class _Peer:
    last_heard: float
    alive: bool = False
    incarnation: int = -1


class MembershipEngine:
    def __init__(
        self,
        node_id: str,
        peers: list[str],
        *,
        heartbeat_every_s: float,
        timeout_s: float,
        now: float,
        incarnation: int = 0,
    ) -> None:
        if timeout_s <= heartbeat_every_s:
            raise ValueError(
                f"membership timeout_s ({timeout_s}) must exceed heartbeat_every_s ({heartbeat_every_s})"
            )
        self.node_id = node_id
        self.incarnation = incarnation
        self.heartbeat_every_s = heartbeat_every_s
        self.timeout_s = timeout_s
        # Peers start as not-yet-alive: a peer is "up" only once it has been heard from.
        self._peers = {peer: _Peer(last_heard=now) for peer in peers}
        self._next_heartbeat = now
        self.state = "booting"

    # ------------------------------------------------------------------ inputs

    def on_message(self, peer: str, now: float) -> list[MembershipEvent]:
        """Any message from `peer` is a sign of life."""
        record = self._peers.get(peer)
        if record is None:
            return []
        record.last_heard = now
        if not record.alive:
            record.alive = True
            return [PeerUp(peer)]
        return []

    def on_heartbeat(self, heartbeat: Heartbeat, now: float) -> list[MembershipEvent]:
        events = self.on_message(heartbeat.node_id, now)
        record = self._peers.get(heartbeat.node_id)
        if record is None:
            return events
        if record.incarnation >= 0 and heartbeat.incarnation > record.incarnation:
            events.append(PeerRestarted(heartbeat.node_id, heartbeat.incarnation))
        record.incarnation = max(record.incarnation, heartbeat.incarnation)
        return events

    def on_timer(self, now: float) -> tuple[list[tuple[str, Heartbeat]], list[MembershipEvent]]:
        """Heartbeats due now, and peers that went silent for too long."""
        events: list[MembershipEvent] = []
        for peer, record in self._peers.items():
            silent_for = now - record.last_heard
            if record.alive and silent_for > self.timeout_s:
                record.alive = False
                events.append(PeerDown(peer, silent_for))
        outgoing: list[tuple[str, Heartbeat]] = []
        if now >= self._next_heartbeat:
            beat = Heartbeat(node_id=self.node_id, incarnation=self.incarnation, state=self.state)
            outgoing = [(peer, beat) for peer in self._peers]
            self._next_heartbeat = now + self.heartbeat_every_s
        return outgoing, events

    # ------------------------------------------------------------------ queries

    def next_deadline(self) -> float:
        deadlines = [self._next_heartbeat]
        deadlines += [r.last_heard + self.timeout_s for r in self._peers.values() if r.alive]
        return min(deadlines)

    def is_alive(self, peer: str) -> bool:
        return self._peers[peer].alive

    def alive_peers(self) -> list[str]:
        return [peer for peer, record in self._peers.items() if record.alive]
