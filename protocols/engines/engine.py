"""The one interface every peer-protocol engine implements.

An engine is one node's side of a protocol it runs with its topology neighbours: membership
(who is alive), consensus (sync rounds or push-sum), goal negotiation, hindsight sharing. Engines
are *sans-IO*, like h11 for HTTP: they never touch a socket or a clock. Time and messages go in;
the messages to send come out, as `(destination node id, message)` pairs, and `next_deadline()`
says when the engine next needs `on_timer`. Because the interface is the same for every engine,
one piece of code drives them all — the agent node's peer mesh (`agent_node/peers.py`), the unit
tests (lists of messages), and the deterministic network simulator (`protocols/sim/netsim.py`) — and
a new peer protocol is a new engine, not a new branch in the node.

Lifecycle of one protocol run:

    outgoing = engine.start(request, now)         # e.g. ConsensusRequest(tensors, epoch)
    while not engine.done:
        outgoing = engine.on_message(sender, message, now)   # for each message of its types
        outgoing = engine.on_timer(now)                      # when now >= next_deadline()
        outgoing = engine.on_neighbour_down(node, now)       # membership says a peer died
    engine.result, engine.metrics()

`message_types` lists the message classes an engine consumes: the node's dispatch table is built
from them, so a message reaches exactly one engine. An engine may be started again for the next
run (consensus: a higher epoch); `done`, `result` and `metrics()` describe the latest run.
Membership runs for the node's whole life: it is never `done`, and it is the source of the
neighbour up/down notices that every other engine receives.
"""

from __future__ import annotations

from typing import Any, ClassVar, Generic, Protocol, TypeVar, runtime_checkable

Outgoing = tuple[str, object]  # (destination node id, message)

Request = TypeVar("Request", contravariant=True)
Result = TypeVar("Result", covariant=True)


@runtime_checkable
class Engine(Protocol[Request, Result]):
    """One node's sans-IO side of a peer protocol. See the module docstring."""

    message_types: ClassVar[tuple[type, ...]]

    def start(self, request: Request, now: float) -> list[Outgoing]:
        """Begin a run of the protocol; returns the messages to send right away."""
        ...

    def on_message(self, sender: str, message: Any, now: float) -> list[Outgoing]:
        """A message of one of `message_types` from peer `sender`."""
        ...

    def on_timer(self, now: float) -> list[Outgoing]:
        """Called when `now >= next_deadline()` (late calls are fine; early ones do nothing)."""
        ...

    def on_neighbour_down(self, node: str, now: float) -> list[Outgoing]:
        """Membership declared `node` dead: stop waiting for it."""
        ...

    def on_neighbour_up(self, node: str, now: float) -> list[Outgoing]:
        """`node` is alive again (or for the first time)."""
        ...

    def next_deadline(self) -> float | None:
        """When `on_timer` is next needed; None while the engine waits for nothing timed."""
        ...

    @property
    def done(self) -> bool:
        """The run begun by the last `start` has finished."""
        ...

    @property
    def result(self) -> Result:
        """The outcome of the finished run; raises RuntimeError before it is done."""
        ...

    def metrics(self) -> dict[str, float]:
        """Scalars describing the latest run, namespaced (`consensus/rounds`, ...)."""
        ...


Outcome = TypeVar("Outcome")


class OutcomeOnceDone(Generic[Outcome]):
    """`done` and `result` for an engine that keeps its latest run's outcome, None while the run
    goes on: it is done when there is one, and `result` refuses before (the Engine contract)."""

    # What `result` says before the run is done, e.g. "negotiation has not decided yet".
    not_done_message: ClassVar[str]

    def _outcome_so_far(self) -> Outcome | None:
        raise NotImplementedError

    @property
    def done(self) -> bool:
        return self._outcome_so_far() is not None

    @property
    def result(self) -> Outcome:
        outcome = self._outcome_so_far()
        if outcome is None:
            raise RuntimeError(self.not_done_message)
        return outcome


class EpisodeRuns(OutcomeOnceDone[Outcome]):
    """OutcomeOnceDone for an engine run once per episode (goal negotiation, team negotiation,
    hindsight sharing). The engine keeps `_last_episode`, the episode of its latest run (-1: none)."""

    # Who refuses a start while a run goes on, e.g. "negotiation".
    runs_what: ClassVar[str]
    _last_episode: int

    def _check_next_episode(self, episode: int) -> None:
        """A run starts only once the latest is done, and for a later episode."""
        if self._last_episode >= 0 and not self.done:
            raise RuntimeError(f"{self.runs_what} of episode {self._last_episode} is still running")
        if episode <= self._last_episode:
            raise ValueError(f"episode numbers must increase: got {episode} after {self._last_episode}")
