"""The peer mesh: this node's links to its topology neighbours and who among them is alive.

Each neighbour gets one outgoing link (a DEALER connected to the neighbour's inbox, made by the
transport hub); everything neighbours send arrives on this node's own inbox. The mesh owns
those links and the membership engine, so every user of the mesh — the agent node, the
consensus bench worker — sends engine output the same way (`send`), hears heartbeats the same
way (`accept`), and gets the same up/down/restarted events (`on_timer`, `accept`).

It holds no socket logic of its own: a link is anything with `send(message)` (a transport
`Channel` in production, a recording list in the unit tests), and time is passed in.
Messages from a node that is not a neighbour are dropped and counted, never handled, and logged
through the node's refusal log (`Hub.refusals`: one line per source per 5 s, counted in
`security/refused_messages`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping, Protocol

from protocols.net.auth import BadInputLog
from protocols.engines.engine import Outgoing
from protocols.engines.membership import MembershipEngine, MembershipEvent

log = logging.getLogger("agent_node.peers")


class Link(Protocol):
    def send(self, message: Any) -> None: ...


@dataclass(frozen=True)
class PeerMessage:
    sender: str
    message: Any


class PeerMesh:
    def __init__(
        self, node_id: str, links: Mapping[str, Link], *, heartbeat_every_s: float, timeout_s: float, incarnation: int = 0,
        refusals: BadInputLog | None = None,
    ) -> None:
        """`refusals`: where a stranger's messages are recorded (the node's `Hub.refusals`); by
        default a log of the mesh's own."""
        self.node_id = node_id
        self.refusals = refusals if refusals is not None else BadInputLog(log, node_id, one="refused a message",
                                                                          many="refused {n} messages")
        self.links = dict(links)
        self.membership = MembershipEngine(
            node_id, sorted(self.links), heartbeat_every_s=heartbeat_every_s, timeout_s=timeout_s, incarnation=incarnation
        )
        self.dropped_from_strangers = 0

    @property
    def neighbours(self) -> list[str]:
        return sorted(self.links)

    def start(self, now: float) -> None:
        """Start counting silence from `now` and send the first heartbeats."""
        self.send(self.membership.start(None, now))

    def set_state(self, state: str) -> None:
        """The node's state, carried in its heartbeats."""
        self.membership.state = state

    def send(self, outgoing: list[Outgoing]) -> None:
        """Send engine output: each `(destination, message)` pair over that neighbour's link."""
        for destination, message in outgoing:
            link = self.links.get(destination)
            if link is None:
                raise ValueError(
                    f"{self.node_id}: an engine addressed {type(message).__name__} to {destination!r}, "
                    f"which is not a neighbour (neighbours: {self.neighbours})"
                )
            link.send(message)

    def accept(self, sender: str, message: Any, now: float) -> tuple[PeerMessage | None, list[MembershipEvent]]:
        """A message that arrived on the inbox: any message is a sign of life. Returns it for
        dispatch (None when the sender is not a neighbour) and the membership events it caused."""
        if sender not in self.links:
            self.dropped_from_strangers += 1
            self.refusals.record(sender, f"{getattr(message, 'MSG_TYPE', type(message).__name__)} from a node that is not a neighbour")
            return None, []
        self.membership.on_message(sender, message, now)
        return PeerMessage(sender, message), self.membership.take_events()

    def replace_link(self, neighbour: str, link: Link) -> Link:
        """`neighbour` listens elsewhere now (restarted on a new port or another host): send over
        `link` from now on. Returns the old link, for the caller to close. Its liveness is kept:
        the neighbour's first heartbeat over the new link says it came back (a new incarnation)."""
        if neighbour not in self.links:
            raise ValueError(f"{self.node_id}: {neighbour!r} is not a neighbour (neighbours: {self.neighbours})")
        old, self.links[neighbour] = self.links[neighbour], link
        return old

    def on_timer(self, now: float) -> list[MembershipEvent]:
        """Heartbeats due by `now` go out; returns the events (peers declared down, ...)."""
        self.send(self.membership.on_timer(now))
        return self.membership.take_events()

    def next_deadline(self) -> float | None:
        return self.membership.next_deadline()

    def alive_peers(self) -> list[str]:
        return self.membership.alive_peers()
