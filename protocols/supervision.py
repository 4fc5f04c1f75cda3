"""A supervisor that assigns one goal to its team each episode, over the wire: a sans-IO engine.

ALGORITHMS.md section 2, "Supervisor: one external draw given to both agents (upper bound;
alignment 1)". In a run the supervisor is one of the team's nodes: the team member with the
smallest node id (the same choice on every member, from the team list the env server's
`env.episode_start` announcement implies). It draws the episode's goal and sends it to every other
member (`GoalAssignment`); it pursues the goal too. The others wait for the assignment until
`timeout_s` after their start; one that has not heard by then (or whose supervisor went down)
falls back to its own goal (`timed_out`). Unlike negotiation nothing is learned: the supervisor
knows the goal and says it, so alignment is 1 whenever the message arrives. Every member must be
a neighbour of the supervisor (the run schema asks for a full topology).

    idle --start(request)--> supervisor: decided, assignment sent
                             member: waiting --assignment | deadline | supervisor down--> decided

Assignments for a later episode (a supervisor that started first) wait in a buffer until that
episode's `start`; earlier or foreign ones are dropped and counted. No sockets, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

from protocols.engine import Outgoing
from protocols.messages import register_message


@register_message("goal.assignment")
@dataclass(frozen=True)
class GoalAssignment:
    """The goal the supervisor assigns its team for `episode`."""

    episode: int
    goal: int


@dataclass(frozen=True)
class SupervisionRequest:
    episode: int
    team: Sequence[str]  # the other members of this episode's team (all neighbours of the supervisor)
    draw: int  # this node's goal if it supervises; its fallback if the assignment never comes


@dataclass(frozen=True)
class SupervisionOutcome:
    episode: int
    goal: int
    supervisor: str
    supervised: bool  # this node was the supervisor
    timed_out: bool  # no assignment by the deadline (or the supervisor went down): own draw


def supervisor_of(node_id: str, team: Sequence[str]) -> str:
    """The team member that supervises: the smallest node id."""
    return min([node_id, *team])


class SupervisionEngine:
    """One node's side of supervision. See the module docstring."""

    message_types: ClassVar[tuple[type, ...]] = (GoalAssignment,)

    def __init__(self, node_id: str, *, timeout_s: float = 0.5) -> None:
        if not timeout_s > 0:
            raise ValueError(f"supervision timeout_s must be > 0 seconds, got {timeout_s}")
        self.node_id = node_id
        self.timeout_s = timeout_s
        self._request: SupervisionRequest | None = None
        self._supervisor = ""
        self._deadline: float | None = None
        self._outcome: SupervisionOutcome | None = None
        self._future: dict[int, tuple[str, GoalAssignment]] = {}
        self.stale_messages = 0
        self.assignments_sent = 0

    def start(self, request: SupervisionRequest, now: float) -> list[Outgoing]:
        if self._request is not None and request.episode <= self._request.episode:
            raise ValueError(f"episode numbers must increase: got {request.episode} after {self._request.episode}")
        if self.node_id in request.team:
            raise ValueError(f"node {self.node_id!r} lists itself in its team")
        self._request, self._outcome = request, None
        self._supervisor = supervisor_of(self.node_id, request.team)
        for episode in [e for e in self._future if e < request.episode]:
            del self._future[episode]
            self.stale_messages += 1
        if self._supervisor == self.node_id:
            self._decide(request.draw, timed_out=False)
            assignment = GoalAssignment(request.episode, request.draw)
            self.assignments_sent += len(request.team)
            return [(member, assignment) for member in request.team]
        self._deadline = now + self.timeout_s
        if request.episode in self._future:
            sender, assignment = self._future.pop(request.episode)
            return self.on_message(sender, assignment, now)
        return []

    def on_message(self, sender: str, message: Any, now: float) -> list[Outgoing]:
        if not isinstance(message, GoalAssignment):
            raise TypeError(f"supervision got a {type(message).__name__} from {sender!r}; it takes GoalAssignment")
        current = self._request.episode if self._request is not None else -1
        if message.episode > current:
            self._future[message.episode] = (sender, message)
            return []
        if message.episode < current or self.done or sender != self._supervisor:
            self.stale_messages += 1
            return []
        self._decide(message.goal, timed_out=False)
        return []

    def on_timer(self, now: float) -> list[Outgoing]:
        if self._request is not None and not self.done and now >= self._deadline:
            self._decide(self._request.draw, timed_out=True)
        return []

    def on_neighbour_down(self, node: str, now: float) -> list[Outgoing]:
        if self._request is not None and not self.done and node == self._supervisor:
            self._decide(self._request.draw, timed_out=True)
        return []

    def on_neighbour_up(self, node: str, now: float) -> list[Outgoing]:
        return []

    def next_deadline(self) -> float | None:
        return None if self._request is None or self.done else self._deadline

    @property
    def done(self) -> bool:
        return self._outcome is not None

    @property
    def result(self) -> SupervisionOutcome:
        if self._outcome is None:
            raise RuntimeError("supervision has not decided yet")
        return self._outcome

    def metrics(self) -> dict[str, float]:
        metrics = {"supervision/stale_messages": float(self.stale_messages)}
        if self._outcome is not None:
            metrics["supervision/supervised"] = float(self._outcome.supervised)
            metrics["supervision/timed_out"] = float(self._outcome.timed_out)
        return metrics

    def _decide(self, goal: int, *, timed_out: bool) -> None:
        self._outcome = SupervisionOutcome(
            episode=self._request.episode, goal=int(goal), supervisor=self._supervisor,
            supervised=self._supervisor == self.node_id, timed_out=timed_out,
        )
