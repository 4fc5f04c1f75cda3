"""A deterministic network simulator with a virtual clock, for driving sans-IO engines.

The protocol engines (`protocols/engines/consensus.py`, membership, negotiation, ...) take messages and
the current time and return the messages to send and when they next need a timer. This module
plays the network and the clock for a set of such engines: messages pass through the same
`LinkModel`, seeded the same way (`links.link_seed`), that the real transport uses (delay, jitter, loss, duplication, reordering, bandwidth)
and a `PartitionTable`, land on an event heap ordered by virtual time, and are handed to the
destination engine when their time comes; timers fire when an engine's deadline is reached.
Nodes can crash (they stop receiving and their timers stop; messages to them are lost) and be
revived with their state or replaced by a fresh engine (a restart).

No real time passes, so a test can simulate minutes of gossip in milliseconds, and the same
seed replays the same run event for event.

The simulated nodes run `protocols/engines/engine.py`'s `Engine` interface; the simulator itself only
needs `on_message`, `on_timer` and `next_deadline` (`SimulatedEngine` below), so a test may also
drive a small hand-written engine. Calls that are not a message or a timer (starting a run,
telling an engine a neighbour died) go through `call`, which routes whatever the engine returns.
"""

from __future__ import annotations

import heapq
import math
from collections import abc
from dataclasses import dataclass, fields, is_dataclass
from typing import Callable, Mapping, Protocol

import numpy as np

from protocols.engines.engine import Outgoing
from protocols.net.links import LinkConfig, LinkModel, PartitionTable, link_seed



class SimulatedEngine(Protocol):
    """The part of `protocols.engines.engine.Engine` the simulator drives by itself."""

    def on_message(self, sender: str, message: object, now: float) -> list[Outgoing]: ...

    def on_timer(self, now: float) -> list[Outgoing]: ...

    def next_deadline(self) -> float | None: ...


# Event kinds on the heap (see NetworkSimulator._events).
_DELIVER, _TIMER, _ACTION = 0, 1, 2

LinkModelFactory = Callable[[str, str, int], LinkModel]  # (src, dst, seed) -> model of that link


def links_from(config_for: Callable[[str, str], LinkConfig]) -> LinkModelFactory:
    """A factory reading each link's config from `config_for(src, dst)`: pass a run's
    `NetworkConfig.link_between` to simulate exactly the links a live run would have."""

    def make(src: str, dst: str, seed: int) -> LinkModel:
        return LinkModel(config_for(src, dst), seed)

    return make


def same_link_everywhere(config: LinkConfig) -> LinkModelFactory:
    """A factory giving every directed link this config, each with its own derived seed."""

    def make(src: str, dst: str, seed: int) -> LinkModel:
        return LinkModel(config, seed)

    return make


def approximate_size(message: object) -> int:
    """Bytes a message would take on the wire, roughly: array payloads plus a fixed allowance
    for the envelope and scalar fields. The bandwidth cap and the byte counts of
    `bench/simulate.py` use it."""
    envelope_bytes = 200
    names = _FIELD_NAMES.get(type(message))
    if names is None:
        names = tuple(field.name for field in fields(message)) if is_dataclass(message) else ()
        _FIELD_NAMES[type(message)] = names
    return envelope_bytes + sum(_payload_bytes(getattr(message, name)) for name in names)


# Field names per message class: `dataclasses.fields` on every message was a fifth of the
# simulator's time with a thousand nodes.
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _payload_bytes(value: object) -> int:
    # Most common first; `collections.abc.Mapping` rather than `typing.Mapping`, whose
    # isinstance check is several times slower.
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, (int, float)):
        return 8
    if isinstance(value, (bytes, str)):
        return len(value)
    if isinstance(value, abc.Mapping):
        return sum(len(str(key)) + _payload_bytes(item) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return sum(_payload_bytes(item) for item in value)
    return 8


@dataclass(frozen=True)
class DeliveryRecord:
    """One message handed to an engine (kept when `record_trace=True`)."""

    time: float
    sender: str
    destination: str
    message: object


class NetworkSimulator:
    """Event-driven simulation of engines exchanging messages over emulated links."""

    def __init__(
        self,
        engines: Mapping[str, SimulatedEngine],
        link_model_factory: LinkModelFactory,
        partition_table: PartitionTable | None = None,
        seed: int = 0,
        message_size: Callable[[object], int] = approximate_size,
        record_trace: bool = False,
    ) -> None:
        self.engines: dict[str, SimulatedEngine] = dict(engines)
        self.partitions = partition_table if partition_table is not None else PartitionTable()
        self.now = 0.0
        self._link_model_factory = link_model_factory
        self._seed = seed
        self._message_size = message_size
        self._node_index = {node: index for index, node in enumerate(self.engines)}
        self._links: dict[tuple[str, str], LinkModel] = {}
        self._crashed: set[str] = set()
        # Heap entries: flat tuples (time, sequence number, kind, a, b, c), kind one of _DELIVER
        # (a sender, b destination, c message), _TIMER (a node) and _ACTION (a callback). The
        # sequence number breaks ties in insertion order, which keeps runs deterministic, and is
        # unique, so tuples never compare past it. Flat tuples and int kinds: a simulation of a
        # thousand nodes handles millions of events, and one tuple per event instead of two, and
        # no string comparisons, are a measurable part of each.
        self._events: list[tuple] = []
        self._sequence = 0
        self._timer_scheduled_at: dict[str, float] = {}
        self.trace: list[DeliveryRecord] | None = [] if record_trace else None
        self.stats = {
            "sent": 0,
            "delivered": 0,
            "lost_on_link": 0,
            "duplicated": 0,
            "blocked_by_partition": 0,
            "lost_to_crashed_node": 0,
            "timers_fired": 0,
        }

    # -- driving engines -------------------------------------------------------------------

    def call(self, node: str, action: Callable[[SimulatedEngine, float], list[Outgoing]]) -> list[Outgoing]:
        """Run `action(engine, now)` on a node (e.g. start a run) and send what it returns."""
        self._check_node(node)
        outgoing = action(self.engines[node], self.now)
        self.send(node, outgoing)
        return outgoing

    def send(self, src: str, outgoing: list[Outgoing]) -> None:
        """Put messages from `src` on the network now, and refresh `src`'s timer."""
        self._check_node(src)
        self._send(src, outgoing)

    def schedule(self, time: float, action: Callable[[], None]) -> None:
        """Run a callback at virtual `time` (faults, partitions, test probes)."""
        if time < self.now:
            raise ValueError(f"cannot schedule an action in the past ({time} < now {self.now})")
        self._push(time, _ACTION, action, None, None)

    def crash(self, node: str) -> None:
        """The node stops: nothing is delivered to it and its timers do not fire."""
        self._check_node(node)
        self._crashed.add(node)

    def revive(self, node: str, engine: SimulatedEngine | None = None) -> None:
        """Bring a crashed node back, with its old state or with a fresh `engine` (a restart)."""
        self._check_node(node)
        self._crashed.discard(node)
        if engine is not None:
            self.engines[node] = engine
        self._timer_scheduled_at.pop(node, None)
        self._schedule_timer(node)

    def is_crashed(self, node: str) -> bool:
        return node in self._crashed

    def run(self, until: float | None = None, stop_when: Callable[[], bool] | None = None, max_events: int = 10_000_000) -> None:
        """Process events in time order until none are left, the next one is after `until`
        (the clock then stops at `until`), or `stop_when()` is true after an event."""
        events = self._events
        pop = heapq.heappop
        limit = math.inf if until is None else until
        processed = 0
        while events:
            if stop_when is not None and stop_when():
                return
            if events[0][0] > limit:
                break
            time, _, kind, a, b, c = pop(events)
            self.now = time
            if kind == _DELIVER:
                self._deliver(a, b, c)
            elif kind == _TIMER:
                self._fire_timer(a)
            else:
                a()
            processed += 1
            if processed >= max_events:
                raise RuntimeError(f"simulation exceeded max_events={max_events} at virtual time {self.now}")
        if until is not None:
            self.now = max(self.now, until)

    # -- internals ---------------------------------------------------------------------------

    def _deliver(self, sender: str, destination: str, message: object) -> None:
        if destination in self._crashed:
            self.stats["lost_to_crashed_node"] += 1
            return
        self.stats["delivered"] += 1
        if self.trace is not None:
            self.trace.append(DeliveryRecord(self.now, sender, destination, message))
        outgoing = self.engines[destination].on_message(sender, message, self.now)
        for receiver, reply in outgoing:
            self._transmit(destination, receiver, reply)
        self._schedule_timer(destination)

    def _fire_timer(self, node: str) -> None:
        if self._timer_scheduled_at.get(node) != self.now or node in self._crashed:
            return  # superseded by a newer deadline, or the node is down
        del self._timer_scheduled_at[node]
        deadline = self.engines[node].next_deadline()
        if deadline is not None and deadline <= self.now:
            self.stats["timers_fired"] += 1
            outgoing = self.engines[node].on_timer(self.now)
            self._send(node, outgoing)
        else:
            self._schedule_timer(node)

    def _send(self, src: str, outgoing: list[Outgoing]) -> None:
        for destination, message in outgoing:
            self._transmit(src, destination, message)
        self._schedule_timer(src)

    def _transmit(self, src: str, destination: str, message: object) -> None:
        if destination not in self.engines:
            raise ValueError(f"{src!r} sent a {type(message).__name__} to unknown node {destination!r}")
        if src in self._crashed:
            return  # a crashed node's late outputs never leave it
        stats = self.stats
        stats["sent"] += 1
        if self.partitions.blocks(src, destination):
            stats["blocked_by_partition"] += 1
            return
        link = self._links.get((src, destination))
        if link is None:
            link = self._link(src, destination)
        arrival_times = link.decide(self.now, self._message_size(message))
        if not arrival_times:
            stats["lost_on_link"] += 1
            return
        if len(arrival_times) > 1:
            stats["duplicated"] += len(arrival_times) - 1
        for arrival in arrival_times:
            heapq.heappush(self._events, (arrival, self._sequence, _DELIVER, src, destination, message))
            self._sequence += 1

    def _link(self, src: str, destination: str) -> LinkModel:
        key = (src, destination)
        if key not in self._links:
            # Each link's seed depends on the simulation seed and on the link only, so adding
            # traffic on one link never changes what happens on another; it is the seed the live
            # transport gives the same link with run seed = simulation seed.
            self._links[key] = self._link_model_factory(src, destination, link_seed(self._seed, src, destination))
        return self._links[key]

    def _schedule_timer(self, node: str) -> None:
        if node in self._crashed:
            return
        deadline = self.engines[node].next_deadline()
        if deadline is None:
            self._timer_scheduled_at.pop(node, None)
            return
        when = max(deadline, self.now)
        if self._timer_scheduled_at.get(node) == when:
            return
        self._timer_scheduled_at[node] = when
        self._push(when, _TIMER, node, None, None)

    def _push(self, time: float, kind: int, a: object, b: object, c: object) -> None:
        heapq.heappush(self._events, (time, self._sequence, kind, a, b, c))
        self._sequence += 1

    def _check_node(self, node: str) -> None:
        if node not in self.engines:
            raise ValueError(f"unknown node {node!r}; simulated nodes are {list(self.engines)}")


class StepNetwork:
    """The env-step rule of a run that talks in env steps (`protocols.talk: env_steps`,
    protocols/engines/step_links.py), played for a set of engines in lockstep.

    Each `step()` is one lockstep step: every node, in id order, gets the messages due by this
    step (`on_message` with the step as the time) and its timers (`on_timer`), and what its
    engine sends meanwhile is queued in its `StepOutbox`; then every node closes the step, so its
    messages leave with their fates decided and its marks after them, into the receivers'
    `StepInbox`es. These are the classes a live node uses (agent_node/step_talk.py), with the
    same link seeds (`step_link_seed`), so a simulation and a real run with the same run seed
    and the same sends decide every message alike. `begin(node, method, *args)` calls anything
    else on an engine (starting a run) during the next step, after its deliveries and timers, as
    a live node begins a protocol run when it handles a step. Every delivery is kept in
    `deliveries` as (step, sender, receiver, message).

    Links that follow positions (topology.kind: proximity): `positions(step)` gives every node's
    position at a step (rows in sorted node order: a mobility model), `radius` the range and
    `path_loss` (a `PathLossConfig`, optional) the loss rising with distance within it,
    `delay_steps_per_unit` (optional) the delay rising with it; `positions(step)` may give K env
    copies' positions ((K, nodes, dims): each copy its own graph, protocols/engines/proximity.py). A
    message goes out only to a neighbour in range at the step it is sent, and at the start of each
    step, before its deliveries, each engine hears which neighbours left the range
    (`on_neighbour_down`) or came back (`on_neighbour_up`), as a live node's capabilities do
    (protocols/engines/proximity.py's `ProximityNeighbours`, agent_node/step_talk.py). The graph
    of every step is kept in `graphs` (edges, components)."""

    def __init__(self, engines: Mapping[str, SimulatedEngine], neighbours: Mapping[str, list[str]], run_seed: int,
                 config_for: Callable[[str, str], LinkConfig], clock: str = "train",
                 positions: Callable[[int], np.ndarray] | None = None, radius: float | None = None,
                 path_loss=None, delay_steps_per_unit: float | None = None) -> None:
        from protocols.engines.proximity import ProximityNeighbours
        from protocols.engines.step_links import StepInbox, StepOutbox

        if (positions is None) != (radius is None):
            raise ValueError("StepNetwork: positions and radius go together (links that follow positions), got one of them")
        self.engines = dict(engines)
        self.neighbours = {node: sorted(neighbours[node]) for node in self.engines}
        self.clock = clock
        self.step_number = 0
        self.partitions = PartitionTable()
        self.positions = positions
        self.proximity = ({node: ProximityNeighbours(sorted(self.engines), node, radius, path_loss, delay_steps_per_unit)
                           for node in self.engines} if positions else {})
        self.graphs: list = []  # (links that follow positions) each step's GraphSummary
        self.outboxes = {node: StepOutbox(node, run_seed, config_for, self.partitions.blocks,
                                          range_link=self.proximity[node].link if positions else None)
                         for node in self.engines}
        self.inboxes = {node: StepInbox() for node in self.engines}
        self.deliveries: list[tuple[int, str, str, object]] = []
        self._begins: dict[str, list[tuple[Callable[..., list[Outgoing]], tuple]]] = {node: [] for node in self.engines}

    def begin(self, node: str, method: Callable[..., list[Outgoing]], *args) -> None:
        self._begins[node].append((method, args))

    def step(self) -> None:
        from protocols.engines.step_links import PeerStepMark

        now = float(self.step_number)
        changes: dict[str, tuple[list[str], list[str]]] = {}
        if self.positions is not None:
            where = np.asarray(self.positions(self.step_number), dtype=float)
            changes = {node: tracker.update(where) for node, tracker in self.proximity.items()}
            self.graphs.append(next(iter(self.proximity.values())).summary())
        for node in sorted(self.engines):
            engine, outbox = self.engines[node], self.outboxes[node]
            left, back = changes.get(node, ([], []))
            for peer in (p for p in left if p in self.neighbours[node]):
                outbox.queue(engine.on_neighbour_down(peer, now))
            for peer in (p for p in back if p in self.neighbours[node]):
                outbox.queue(engine.on_neighbour_up(peer, now))
            for sender, message in self.inboxes[node].take_due(self.clock, self.step_number):
                self.deliveries.append((self.step_number, sender, node, message))
                outbox.queue(engine.on_message(sender, message, now))
            outbox.queue(engine.on_timer(now))
            for method, args in self._begins[node]:
                outbox.queue(method(*args))
            self._begins[node] = []
        for node in sorted(self.engines):
            for destination, message in self.outboxes[node].close_step(self.clock, self.step_number, self.neighbours[node]):
                inbox = self.inboxes[destination]
                if isinstance(message, PeerStepMark):
                    inbox.on_mark(node, message)
                else:
                    inbox.on_message(node, message)
        self.step_number += 1

    def run_steps(self, count: int) -> None:
        for _ in range(count):
            self.step()
