"""A supervisor that assigns one goal to its team each episode, over the wire: sans-IO engines.

ALGORITHMS.md section 2, "Supervisor: one external draw given to both agents (upper bound;
alignment 1)". Two placements, one member engine:

- **external** (`agents.goals.supervisor.external: true`, the default): the supervisor is a node
  of its own (`supervisor`, agent_node/goals/supervisor.py), started by the orchestrator. Each
  member of an episode's team asks it (`GoalRequest`: the episode and the whole team); the
  supervisor draws the team's goal at the first request and answers every member with the same
  `GoalAssignment` (`SupervisorService`, below). It pursues no goal itself;
- **in the team** (`external: false`): the team member with the smallest node id (the same choice
  on every member, from the team list the env server's `env.episode_start` announcement
  implies) draws the goal, sends it to every other member and pursues it too. Every member must
  then be a neighbour of it (the run schema asks for a full topology).

A member that has not heard by `timeout_s` after its start (or whose supervisor went down) falls
back to its own goal (`timed_out`). Unlike negotiation nothing is learned: the supervisor knows
the goal and says it, so alignment is 1 whenever the message arrives.

    idle --start(request)--> supervising member: decided, assignment sent
                             other member: waiting --assignment | deadline | supervisor down--> decided

Assignments for a later episode (a supervisor that answered first) wait in a buffer until that
episode's `start`; earlier or foreign ones are dropped and counted. No sockets, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

from protocols.engines.engine import Outgoing, OutcomeOnceDone
from protocols.codec.messages import register_message


@register_message("goal.assignment")
@dataclass(frozen=True)
class GoalAssignment:
    """The goal the supervisor assigns its team for `episode`."""

    episode: int
    goal: int


@register_message("goal.request")
@dataclass(frozen=True)
class GoalRequest:
    """A team member asks the external supervisor for the goal of `episode`; `team` is every
    member of that episode's team, the asker included (sorted node ids)."""

    episode: int
    team: list[str]


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


class SupervisionEngine(OutcomeOnceDone[SupervisionOutcome]):
    """One node's side of supervision. See the module docstring."""

    message_types: ClassVar[tuple[type, ...]] = (GoalAssignment,)
    not_done_message = "supervision has not decided yet"

    def __init__(self, node_id: str, *, timeout_s: float = 0.5, external_supervisor: str | None = None) -> None:
        """`external_supervisor`: the node id of the supervisor node to ask (None: the team's
        smallest node id supervises)."""
        if not timeout_s > 0:
            raise ValueError(f"supervision timeout_s must be > 0 seconds, got {timeout_s}")
        if external_supervisor == node_id:
            raise ValueError(f"node {node_id!r} cannot be its own external supervisor")
        self.node_id = node_id
        self.timeout_s = timeout_s
        self.external_supervisor = external_supervisor
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
        self._supervisor = self.external_supervisor or supervisor_of(self.node_id, request.team)
        for episode in [e for e in self._future if e < request.episode]:
            del self._future[episode]
            self.stale_messages += 1
        outgoing: list[Outgoing] = []
        if self.external_supervisor is not None:
            outgoing.append((self.external_supervisor, GoalRequest(request.episode, sorted([self.node_id, *request.team]))))
        elif self._supervisor == self.node_id:
            self._decide(request.draw, timed_out=False)
            assignment = GoalAssignment(request.episode, request.draw)
            self.assignments_sent += len(request.team)
            return [(member, assignment) for member in request.team]
        self._deadline = now + self.timeout_s
        if request.episode in self._future:
            sender, assignment = self._future.pop(request.episode)
            return outgoing + self.on_message(sender, assignment, now)
        return outgoing

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

    def _outcome_so_far(self) -> SupervisionOutcome | None:
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


class SupervisorService:
    """The external supervisor node's engine: answers `GoalRequest`s, one draw per (episode, team).

    `draw(episode, team)` picks the team's goal (agent_node/goals/modules.py `SupervisorAssignment`); it is
    called once per team and episode, at the first member's request, and every member gets the same
    goal. The draws of the last `keep_episodes` episodes are kept to answer the other members; a
    request for an episode older than that gets a fresh draw (counted: it means a member was very
    late). A request whose sender is not in the team it names is refused: no answer, counted.
    """

    message_types: ClassVar[tuple[type, ...]] = (GoalRequest,)

    def __init__(self, draw: Callable[[int, list[str]], int], *, keep_episodes: int = 64) -> None:
        if keep_episodes < 1:
            raise ValueError(f"keep_episodes must be >= 1, got {keep_episodes}")
        self._draw = draw
        self.keep_episodes = keep_episodes
        self._goals: dict[tuple[int, tuple[str, ...]], int] = {}
        self.requests = 0
        self.teams_assigned = 0
        self.refused = 0
        self.redrawn_for_late_members = 0
        self._newest_episode = -1

    def on_message(self, sender: str, message: Any, now: float) -> list[Outgoing]:
        if not isinstance(message, GoalRequest):
            raise TypeError(f"the supervisor got a {type(message).__name__} from {sender!r}; it takes GoalRequest")
        self.requests += 1
        team = tuple(sorted(message.team))
        if sender not in team:
            self.refused += 1
            return []
        key = (message.episode, team)
        goal = self._goals.get(key)
        if goal is None:
            if message.episode <= self._newest_episode - self.keep_episodes:
                self.redrawn_for_late_members += 1
            goal = self._goals[key] = int(self._draw(message.episode, list(team)))
            self.teams_assigned += 1
            self._newest_episode = max(self._newest_episode, message.episode)
            self._forget_old_episodes()
        return [(sender, GoalAssignment(message.episode, goal))]

    def _forget_old_episodes(self) -> None:
        oldest_kept = self._newest_episode - self.keep_episodes + 1
        for key in [key for key in self._goals if key[0] < oldest_kept]:
            del self._goals[key]

    def state_dict(self) -> dict[str, Any]:
        """What a restarted supervisor needs to answer as this one would: the kept draws (so a
        member asking after the restart gets its team's goal, not a new one) and the counters.
        Plain data (JSON)."""
        return {"keep_episodes": self.keep_episodes, "newest_episode": self._newest_episode,
                "draws": [[episode, list(team), goal] for (episode, team), goal in self._goals.items()],
                "requests": self.requests, "teams_assigned": self.teams_assigned, "refused": self.refused,
                "redrawn_for_late_members": self.redrawn_for_late_members}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            draws = {(int(episode), tuple(str(a) for a in team)): int(goal) for episode, team, goal in state["draws"]}
            counters = {name: int(state[name]) for name in ("requests", "teams_assigned", "refused", "redrawn_for_late_members")}
            newest_episode = int(state["newest_episode"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"a supervisor state needs draws [[episode, team, goal], ...], newest_episode and its counters: {error!r}") from None
        self._goals, self._newest_episode = draws, newest_episode
        self.requests, self.teams_assigned = counters["requests"], counters["teams_assigned"]
        self.refused, self.redrawn_for_late_members = counters["refused"], counters["redrawn_for_late_members"]
        self._forget_old_episodes()  # a state saved with a longer memory than this service keeps

    def metrics(self) -> dict[str, float]:
        return {"supervisor/requests": float(self.requests), "supervisor/teams_assigned": float(self.teams_assigned),
                "supervisor/refused_requests": float(self.refused),
                "supervisor/redrawn_for_late_members": float(self.redrawn_for_late_members)}
