"""Team-wide goal agreement on any graph: every agent's proposal flooded for the diameter, sans-IO.

ALGORITHMS.md section 2 (our extension). The naming game (protocols/engines/negotiation.py)
aligns neighbours through learned codes; on a ring of 6 its edge alignment reached 0.16 and the
whole team never agreed (README, Goals): each follower decodes the leader's message with its own
matrix, and six matrices learn six codes from weak evidence. This protocol gives up the learned
code for a shared goal vocabulary (goal i names the same landmark pair for every agent, as
goal_lines' goal indices do) and gets agreement by construction:

1. each agent proposes (priority, goal): its goal module's draw, and a priority drawn from
   (its seed, the episode), uniform in [0, 1);
2. the proposals are flooded for the team graph's diameter (protocols/engines/flooding.py's FloodEngine:
   each round every agent sends its neighbours the table of every proposal it knows; after
   `diameter` rounds without loss every agent holds every proposal);
3. every agent applies one deterministic rule to its table (`team_choice`): the highest priority
   wins, ties to the smallest node id. Agents that heard the whole team hold the same table and
   pick the same goal, with no further message.

An agent whose table lacks a member (a lost table, a partition, a dead neighbour) applies the same
rule to what it heard: it agrees with the team when the winner's proposal reached it, and cannot
know whether it did. Its outcome says `team_complete` False (`negotiation/team_complete` in the
metrics), so a run counts how often that fallback decided. An agent that heard nobody keeps its
own goal (`timed_out`). Rounds are FloodEngine's: each closes when every live neighbour's table of
that round came, or `round_timeout_s` after it began, so a negotiation ends within
`rounds * round_timeout_s` of its start whatever the loss. `extra_rounds` beyond the diameter
let a table lost in one round arrive in a later one; measured in the simulator (5 ms links, 500
negotiations each, `bench/goals_team.py --simulate`), the whole team agreed at 30% loss in 0.720 /
0.946 / 0.992 of negotiations with 0 / 1 / 2 extra rounds on a ring of 6, 0.782 / 0.998 / 1.000 on
a 3 x 3 torus; at 10% loss 0.976 / 1.000 and 0.984 / 1.000 with 0 / 1.

Who leads is a fair lottery (each member wins with probability 1 / team size), so the team's goal
is a random member's own draw: with uniform goal modules, one uniform goal for the whole team, as
a supervisor gives, without a supervisor node and on any connected topology. Nothing is learned
here, and the priorities need no state (a pure function of seed and episode): a restarted agent
negotiates as the one that stopped.

After deciding, an agent tells its neighbours its goal (`GoalCommit`, as the naming game does), so
that alignment per edge is measured the same way for both protocols (`AlignmentLedger`).

State machine of one episode (the node calls `start` before the episode's reset):

    idle --start--> flooding (FloodEngine's rounds) --(last round closed)--> decided (done)
    decided --GoalCommit from neighbours--> (recorded) --end_episode(reward)--> idle
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from protocols.engines.engine import EpisodeRuns, Outgoing
from protocols.engines.flooding import FloodEngine, FloodRequest, FloodTable
from protocols.codec.messages import register_message
from protocols.engines.negotiation import (AlignmentLedger, EpisodeRecord, GoalCommit, NegotiationOutcome, NegotiationRequest,
                                   allowed_goal_array)

PRIORITY, GOAL = 0, 1  # the columns of a proposal


@register_message("negotiation.team_proposals")
@dataclass(frozen=True)
class TeamProposals:
    """Every proposal the sender knows in round `round` of episode `episode`'s team negotiation:
    `values[i]` is `nodes[i]`'s (priority, goal)."""

    episode: int
    round: int
    nodes: list[str]
    values: np.ndarray  # float32 (len(nodes), 2)


@dataclass(frozen=True)
class TeamNegotiationOutcome(NegotiationOutcome):
    team_complete: bool = False  # a proposal from every team member was in the table
    proposals_known: int = 0
    team_size: int = 0


def team_choice(proposals: Mapping[str, np.ndarray], allowed_goals: np.ndarray) -> tuple[str, int]:
    """(leader, goal): the proposal with the highest priority among those whose goal this agent
    may pursue, ties to the smallest node id. Every agent holding the same table gets the same."""
    eligible = [node for node, value in proposals.items() if int(value[GOAL]) in allowed_goals]
    if not eligible:
        raise ValueError(f"no proposal names an allowed goal: {({n: v.tolist() for n, v in proposals.items()})}")
    leader = min(eligible, key=lambda node: (-float(proposals[node][PRIORITY]), node))
    return leader, int(proposals[leader][GOAL])


class TeamNegotiationEngine(EpisodeRuns[TeamNegotiationOutcome]):
    """One agent's side of the team flood. See the module docstring. The same calls as
    `NegotiationEngine` (start, on_message, on_timer, end_episode, records, ...), so the goal
    session drives either."""

    message_types: ClassVar[tuple[type, ...]] = (TeamProposals, GoalCommit)
    not_done_message = "team negotiation has not decided yet"
    runs_what = "team negotiation"

    def __init__(self, node_id: str, num_goals: int, *, seed: int, allowed_goals: Sequence[int] | None = None,
                 round_timeout_s: float = 0.5, extra_rounds: int = 0) -> None:
        if num_goals < 1:
            raise ValueError(f"num_goals must be >= 1, got {num_goals}")
        if extra_rounds < 0:
            raise ValueError(f"extra_rounds must be >= 0, got {extra_rounds}")
        self.extra_rounds = extra_rounds
        self.node_id = node_id
        self.num_goals = num_goals
        self.allowed_goals = allowed_goal_array(num_goals, allowed_goals)
        self.seed = seed
        self._flood = FloodEngine(node_id, round_timeout_s=round_timeout_s)  # checks round_timeout_s
        self._ledger = AlignmentLedger()
        self._request: NegotiationRequest | None = None
        self._outcome: TeamNegotiationOutcome | None = None
        self._started_at = 0.0
        self._sent_before = 0  # the flood's counters when this episode's run began
        self._received_before = 0
        self._commits_sent = 0
        self._last_episode = -1
        self._future_commits: dict[int, list[tuple[str, GoalCommit]]] = {}
        self.stale_messages = 0

    def priority(self, episode: int) -> float:
        """This agent's priority in `episode`'s lottery: a pure function of its seed and the episode."""
        return float(np.float32(np.random.default_rng([self.seed, episode]).random()))

    # ------------------------------------------------------------------ Engine inputs

    def start(self, request: NegotiationRequest, now: float) -> list[Outgoing]:
        self._check_next_episode(request.episode)
        if request.own_goal not in self.allowed_goals:
            raise ValueError(f"own_goal {request.own_goal} is not among the allowed goals {self.allowed_goals.tolist()}")
        if self.node_id in request.team_neighbours:
            raise ValueError(f"node {self.node_id!r} lists itself among its team neighbours")
        if request.team_size is None or request.team_size < len(request.team_neighbours) + 1:
            raise ValueError(f"team negotiation needs team_size (this agent's connected team, itself included) >= "
                             f"{len(request.team_neighbours) + 1}, got {request.team_size}")
        self._last_episode = request.episode
        self._request, self._outcome, self._started_at = request, None, now
        self._sent_before, self._received_before, self._commits_sent = self._flood.messages_sent, self._flood.messages_received, 0
        value = np.array([self.priority(request.episode), request.own_goal], dtype=np.float32)
        outgoing = self._tables(self._flood.start(
            FloodRequest(_key(request.episode), value, list(request.team_neighbours), request.team_size, self._rounds(request)), now))
        outgoing += self._decide_if_flooded(now)
        for sender, commit in self._future_commits.pop(request.episode, []):
            self._on_commit(sender, commit)
        for episode in [e for e in self._future_commits if e < request.episode]:
            self.stale_messages += len(self._future_commits.pop(episode))
        return outgoing

    def on_message(self, sender: str, message: Any, now: float) -> list[Outgoing]:
        if isinstance(message, GoalCommit):
            if message.episode > self._last_episode:  # a neighbour decided before this agent started
                self._future_commits.setdefault(message.episode, []).append((sender, message))
            else:
                self._on_commit(sender, message)
            return []
        if not isinstance(message, TeamProposals):
            raise TypeError(f"team negotiation got a {type(message).__name__} from {sender!r}; "
                            f"it takes {[t.__name__ for t in self.message_types]}")
        table = FloodTable(_key(message.episode), message.round, list(message.nodes), message.values)
        return self._tables(self._flood.on_message(sender, table, now)) + self._decide_if_flooded(now)

    def on_timer(self, now: float) -> list[Outgoing]:
        return self._tables(self._flood.on_timer(now)) + self._decide_if_flooded(now)

    def on_neighbour_down(self, node: str, now: float) -> list[Outgoing]:
        return self._tables(self._flood.on_neighbour_down(node, now)) + self._decide_if_flooded(now)

    def on_neighbour_up(self, node: str, now: float) -> list[Outgoing]:
        return []  # it takes part again from the next episode's request

    def end_episode(self, episode: int, reward: float) -> EpisodeRecord:
        """The episode is over: close its record (nothing is learned from the reward)."""
        return self._ledger.close(episode, reward)

    @property
    def records(self) -> list[EpisodeRecord]:
        """Closed episodes, oldest first."""
        return self._ledger.records

    # ------------------------------------------------------------------ Checkpoint

    def state_dict(self) -> dict[str, Any]:
        """Nothing to carry over (the priorities are a function of seed and episode); the protocol
        is named so that a naming game's checkpoint is not loaded into this engine unnoticed."""
        return {"protocol": "team_flood"}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("protocol") != "team_flood":
            raise ValueError(f"a team-flood negotiation state was expected, got one with keys {sorted(state)} "
                             "(a naming game's checkpoint? agents.goals.negotiation.protocol changed since it was saved)")

    # ------------------------------------------------------------------ Engine outputs

    def next_deadline(self) -> float | None:
        return None if self._request is None or self._outcome is not None else self._flood.next_deadline()

    def _outcome_so_far(self) -> TeamNegotiationOutcome | None:
        return self._outcome

    def metrics(self) -> dict[str, float]:
        metrics = {"negotiation/stale_messages": float(self.stale_messages)}
        if self._outcome is not None:
            outcome = self._outcome
            metrics.update({
                "negotiation/rounds_used": float(outcome.rounds_used),
                "negotiation/rounds_closed_by_deadline": float(outcome.rounds_closed_by_deadline),
                "negotiation/timed_out": float(outcome.timed_out),
                "negotiation/led": float(outcome.led),
                "negotiation/team_complete": float(outcome.team_complete),
            })
        return metrics

    # ------------------------------------------------------------------ internals

    def _tables(self, outgoing: list[Outgoing]) -> list[Outgoing]:
        """FloodEngine's tables as this protocol's messages (its own type, so that a node running
        the landmark flood too never mixes the two)."""
        return [(destination, TeamProposals(_episode(table.key), table.round, list(table.nodes), table.values))
                for destination, table in outgoing]

    def _decide_if_flooded(self, now: float) -> list[Outgoing]:
        request = self._request
        if request is None or self._outcome is not None or not self._flood.done or self._flood.result.key != _key(request.episode):
            return []
        flooded = self._flood.result
        leader, goal = team_choice(flooded.values, self.allowed_goals)
        timed_out = bool(request.team_neighbours) and len(flooded.values) == 1
        self._outcome = TeamNegotiationOutcome(
            episode=request.episode, goal=goal, message=None, leader=leader, led=leader == self.node_id and not timed_out,
            timed_out=timed_out, rounds_used=self._rounds(request), rounds_closed_by_deadline=flooded.rounds_closed_by_deadline,
            duration_s=now - self._started_at, team_complete=flooded.complete, proposals_known=len(flooded.values),
            team_size=request.team_size,
        )
        commit = GoalCommit(episode=request.episode, goal=goal, timed_out=timed_out)
        self._commits_sent = len(request.team_neighbours)
        self._ledger.open(self._outcome, request.team_neighbours,
                          self._flood.messages_sent - self._sent_before + self._commits_sent,
                          self._flood.messages_received - self._received_before)
        return [(neighbour, commit) for neighbour in request.team_neighbours]

    def _rounds(self, request: NegotiationRequest) -> int:
        return request.rounds + self.extra_rounds  # request.rounds: the team graph's diameter

    def _on_commit(self, sender: str, commit: GoalCommit) -> None:
        if not self._ledger.on_commit(sender, commit, self._last_episode):
            self.stale_messages += 1


def _key(episode: int) -> str:
    return f"goal:{episode}"


def _episode(key: str) -> int:
    return int(key.removeprefix("goal:"))
