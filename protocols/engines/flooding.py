"""Team-wide agreement on any graph by flooding: every node learns every node's value, sans-IO.

Pairwise games (protocols/engines/negotiation.py) align neighbours; they do not make a whole ring agree.
Flooding does: each node starts with a value of its own (an array: a row of costs, a proposal),
and in each round sends every neighbour the table of all values it knows. After `rounds` rounds
a value has travelled `rounds` hops, so with `rounds` equal to the diameter of the team's graph
every node holds every value, and a deterministic rule applied to the same table (an assignment
by the Hungarian method, the smallest proposal, ...) gives every node the same decision with no
further message. The rule is the caller's: this engine only gathers.

One run per key (a string both sides derive from the lockstep, e.g. `train:1000`):

    idle --start(FloodRequest)--> round 1: table sent to every live neighbour
         --(every live neighbour's table of round r | round deadline)--> round r + 1 ...
         --(round `rounds` closed)--> done; result: every value heard, complete or not

Rounds are paced by the neighbours' tables: round r closes when each live neighbour's table of
round r (or a later one) arrived (values are merged whatever round they came in), or
`round_timeout_s` after it began. So on links without loss a run costs `rounds` exchanges, and a lost table costs one
round timeout, never a hang. Under loss a node may end without every value (`complete` False);
the caller then decides on what it has and says so in its metrics.

Values about env copies (`FloodRequest.copy_axis`: a landmark table's (K, L) rows, one per
copy): on links that follow positions with several copies each copy floods over its own graph
(protocols/engines/proximity.py), so a table may come with some copies cut out (NaN). The merge
fills a value's missing copies from any table that has them, a value is known in a copy once it
is finite there, and a run is complete when every value is known in every copy.

A table for a key this node has not started yet (a faster neighbour) waits in a small buffer
until `start` takes it; one for a key that already finished is counted as late and dropped.
Both are bounded: at most `max_buffered_keys` future keys and `max_finished_keys` remembered.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import ClassVar, Sequence

import numpy as np

from protocols.engines.engine import Outgoing, OutcomeOnceDone
from protocols.codec.messages import register_message


@register_message("flood.table")
@dataclass(frozen=True)
class FloodTable:
    """Every value the sender knows for run `key`, in round `round`: `values[i]` is `nodes[i]`'s."""

    key: str
    round: int
    nodes: list[str]
    values: np.ndarray  # float32 (len(nodes), *value_shape)
    # The axis of a value (of `value_shape`) that indexes env copies, so links that follow
    # positions can cut out the copies out of range (NaN there); None: the values are about no copy.
    copy_axis: int | None = None

    def is_about_copies(self) -> bool:
        return self.copy_axis is not None

    def restricted_to_copies(self, keep: np.ndarray) -> FloodTable | None:
        """The table with the copies not in `keep` cut out (NaN): a `CopyContent`
        (protocols/engines/proximity.py)."""
        keep = np.asarray(keep, dtype=bool)
        if keep.all() or self.copy_axis is None:
            return self
        if not keep.any():
            return None
        values = np.array(self.values, dtype=np.float32)
        index = [slice(None)] * values.ndim
        index[1 + self.copy_axis] = ~keep
        values[tuple(index)] = np.nan
        return replace(self, values=values)


@dataclass(frozen=True)
class FloodRequest:
    key: str
    value: np.ndarray  # this node's own value; every node of the team sends one of the same shape
    neighbours: Sequence[str]  # live team neighbours
    team_size: int  # how many values make the table complete
    rounds: int  # the diameter of the team's graph (1 at least)
    copy_axis: int | None = None  # the axis of `value` that indexes env copies (see FloodTable)


@dataclass(frozen=True)
class FloodResult:
    key: str
    values: dict[str, np.ndarray]  # node id -> value, this node's own included
    complete: bool  # a value from every team member
    rounds_closed_by_deadline: int
    duration_s: float


@dataclass
class _Run:
    request: FloodRequest
    started_at: float
    round: int = 1
    round_deadline: float = 0.0
    latest_round: dict[str, int] = field(default_factory=dict)  # neighbour -> newest round of its tables heard
    down: set[str] = field(default_factory=set)
    values: dict[str, np.ndarray] = field(default_factory=dict)
    closed_by_deadline: int = 0
    result: FloodResult | None = None


class FloodEngine(OutcomeOnceDone[FloodResult]):
    """One node's side of flooding. See the module docstring."""

    message_types: ClassVar[tuple[type, ...]] = (FloodTable,)
    not_done_message = "the flooding run has not finished"

    def __init__(self, node_id: str, *, round_timeout_s: float = 0.5, max_buffered_keys: int = 8,
                 max_finished_keys: int = 64) -> None:
        if not round_timeout_s > 0:
            raise ValueError(f"flooding round_timeout_s must be > 0 seconds, got {round_timeout_s}")
        self.node_id = node_id
        self.round_timeout_s = round_timeout_s
        self.max_buffered_keys = max_buffered_keys
        self.max_finished_keys = max_finished_keys
        self._run: _Run | None = None
        self._early: OrderedDict[str, list[tuple[str, FloodTable]]] = OrderedDict()
        self._finished: OrderedDict[str, None] = OrderedDict()
        self.messages_sent = 0
        self.messages_received = 0
        self.late_dropped = 0
        self.early_dropped = 0
        self.foreign_dropped = 0

    # ------------------------------------------------------------------ the run

    def start(self, request: FloodRequest, now: float) -> list[Outgoing]:
        if request.rounds < 1:
            raise ValueError(f"flooding needs rounds >= 1, got {request.rounds}")
        if request.team_size < 1:
            raise ValueError(f"flooding needs team_size >= 1, got {request.team_size}")
        if self._run is not None and not self.done:
            self._finish(now)  # a new run supersedes one still open: close it with what it has
        if request.key in self._finished:
            raise ValueError(f"flooding run {request.key!r} was already run by {self.node_id}")
        value = np.asarray(request.value, dtype=np.float32)
        self._run = run = _Run(request, started_at=now, values={self.node_id: value})
        for sender, table in self._early.pop(request.key, []):
            self._merge(run, sender, table)
        if not request.neighbours:
            self._finish(now)  # alone: nothing to hear
            return []
        return self._begin_round(now) + self._advance(now)  # neighbours' round-1 tables may be here

    def _outcome_so_far(self) -> FloodResult | None:
        return None if self._run is None else self._run.result

    def on_message(self, sender: str, message: FloodTable, now: float) -> list[Outgoing]:
        self.messages_received += 1
        run = self._run
        if run is not None and message.key == run.request.key:
            if run.result is not None:
                return []  # finished already: a neighbour's last round, nothing more to learn
            if sender not in run.request.neighbours:
                self.foreign_dropped += 1
                return []
            self._merge(run, sender, message)
            return self._advance(now)
        if message.key in self._finished:
            self.late_dropped += 1
            return []
        early = self._early.setdefault(message.key, [])
        early.append((sender, message))
        while len(self._early) > self.max_buffered_keys:  # bounded: the oldest future key goes
            _, dropped = self._early.popitem(last=False)
            self.early_dropped += len(dropped)
        return []

    def on_timer(self, now: float) -> list[Outgoing]:
        run = self._run
        if run is None or run.result is not None or now < run.round_deadline:
            return []
        run.closed_by_deadline += 1
        return self._close_round(now)

    def on_neighbour_down(self, node: str, now: float) -> list[Outgoing]:
        run = self._run
        if run is None or run.result is not None or node not in run.request.neighbours:
            return []
        run.down.add(node)
        return self._advance(now)

    def on_neighbour_up(self, node: str, now: float) -> list[Outgoing]:
        return []  # a neighbour back up takes part in the next run

    def next_deadline(self) -> float | None:
        run = self._run
        return None if run is None or run.result is not None else run.round_deadline

    def metrics(self) -> dict[str, float]:
        out = {
            "flooding/messages_sent": float(self.messages_sent),
            "flooding/messages_received": float(self.messages_received),
            "flooding/late_dropped": float(self.late_dropped),
            "flooding/early_dropped": float(self.early_dropped),
        }
        if self.done:
            result = self.result
            out.update({
                "flooding/complete": float(result.complete),
                "flooding/values_known": float(len(result.values)),
                "flooding/rounds_closed_by_deadline": float(result.rounds_closed_by_deadline),
                "flooding/duration_s": result.duration_s,
            })
        return out

    # ------------------------------------------------------------------ internals

    def _merge(self, run: _Run, sender: str, table: FloodTable) -> None:
        values = np.asarray(table.values, dtype=np.float32)
        own_shape = run.values[self.node_id].shape
        if values.shape != (len(table.nodes), *own_shape):
            raise ValueError(
                f"flood.table {table.key!r} from {sender}: expected values of shape "
                f"({len(table.nodes)}, {', '.join(map(str, own_shape))}), got {values.shape}"
            )
        for node, value in zip(table.nodes, values):
            known = run.values.get(node)
            if known is None:
                if table.copy_axis is None or not np.isnan(value).all():  # (a value cut out of every copy says nothing)
                    run.values[node] = value
            elif table.copy_axis is not None and np.isnan(known).any():
                run.values[node] = np.where(np.isnan(known), value, known)
        run.latest_round[sender] = max(table.round, run.latest_round.get(sender, 0))

    def _live_neighbours(self, run: _Run) -> set[str]:
        return set(run.request.neighbours) - run.down

    def _advance(self, now: float) -> list[Outgoing]:
        run = self._run
        # A neighbour already past this round sent its table of this round too (maybe lost): its
        # newer table carries at least as much.
        if run.result is None and all(run.latest_round.get(n, 0) >= run.round for n in self._live_neighbours(run)):
            return self._close_round(now)
        return []

    def _close_round(self, now: float) -> list[Outgoing]:
        run = self._run
        if run.round >= run.request.rounds:
            self._finish(now)
            return []
        run.round += 1
        outgoing = self._begin_round(now)
        return outgoing + self._advance(now)  # a neighbour's table of this round may be here already

    def _begin_round(self, now: float) -> list[Outgoing]:
        run = self._run
        run.round_deadline = now + self.round_timeout_s
        nodes = sorted(run.values)
        table = FloodTable(run.request.key, run.round, nodes, np.stack([run.values[node] for node in nodes]),
                           copy_axis=run.request.copy_axis)
        destinations = sorted(self._live_neighbours(run))
        self.messages_sent += len(destinations)
        return [(neighbour, table) for neighbour in destinations]

    def _finish(self, now: float) -> None:
        run = self._run
        run.result = FloodResult(
            key=run.request.key,
            values=dict(run.values),
            complete=len(run.values) >= run.request.team_size and not any(np.isnan(v).any() for v in run.values.values()),
            rounds_closed_by_deadline=run.closed_by_deadline,
            duration_s=now - run.started_at,
        )
        self._finished[run.request.key] = None
        while len(self._finished) > self.max_finished_keys:
            self._finished.popitem(last=False)
