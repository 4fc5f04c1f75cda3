"""Goal negotiation before an episode: Dec-IMSAP's goal-coordination game, on any topology.

ALGORITHMS.md section 2 (Nisioti et al., arXiv 2211.06082). Two autotelic agents that pick their
goals independently rarely pick the same cooperative goal (chance: 1/15 at L = 6), so they rarely
get the reward for it. The goal-coordination game lets them agree without a supervisor and
without a shared vocabulary: every agent keeps a matrix `M` (goals x messages, zeros at start).

Pairwise game (two agents):
    A random leader samples its goal `g` (from its own goal module) and a message
    `msg ~ softmax(temperature * M[g, :])`, and sends `msg`. The follower samples its goal from
    `softmax(temperature * M[:, msg])` (over the goals it may choose). After episodes, for each
    (goal, message) pair an agent used, `M <- (1 - lr) M + lr * mean reward` of the episodes that
    used it, and every unused entry decays, `M <- (1 - lr) M` (lr = 0.1, temperature = 30, 30
    messages). Messages never enter the policy. As rewarded pairs grow, the leader's message
    comes to name its goal and the follower learns to read it: a one-to-one code emerges.

n agents on a topology (our extension, as ALGORITHMS.md suggests):
    The "random leader" becomes a leader election by flooding. Every agent draws a random
    priority and builds its own proposal `(priority, origin = itself, msg)` from its own goal.
    In round r = 0 .. rounds-1 it sends the best proposal it knows (highest priority, ties by
    origin name) to its team neighbours and keeps the best of what it receives. After `rounds`
    rounds (the diameter of the team's graph) every agent of a connected team without loss
    knows the same best proposal: its origin is the leader (keeps its own goal) and everyone
    else decodes the leader's `msg` with their own `M`. For two agents this is exactly the
    pairwise game. A round ends when every live neighbour's proposal of that round (or a later
    one) arrived, or at its deadline `start + (r + 1) * round_timeout_s`, a fixed schedule like
    consensus's, so negotiation always ends within `rounds * round_timeout_s` of its start. An
    agent that heard nothing from anyone by then falls back to its own goal (`timed_out`).

The update runs every `update_every_episodes` episodes over the pairs used since the last one;
by default every `DRAWS_PER_GOAL_PER_UPDATE` (4) x the number of goals the agent may choose
(60 episodes for L = 6's 15 cooperative goals, 12 for L = 3's 3). The batch must hold several
draws of every goal: an entry's update is the mean reward of the episodes that used its pair
*in that batch*, and a goal absent from a batch has its entries decay. A batch much smaller than
the goal count makes a learned code fade between two draws of the same goal faster than
successes renew it. The reference updates per training batch (Reytuag/imgc-marl,
`imgc_marl/policies/full_naming_game_single_matrix.py`, lines 144-173: `M *= 0.9` then
`M += 0.1 * rewards / counts` per SGD minibatch of 10,000 steps, `scripts/train_population.py`
line 92), i.e. over dozens of episodes at once. Measured with the matrix game alone
(`tests/unit/test_negotiation.py`'s `_fixed_success_game`: aligned pairs rewarded with
probability 0.65, 15 goals, 1,500 episodes, 8 seeds, alignment over the last 300): batches of 5
episodes stayed at chance (0.09); 15, 30, 60 (the default), 120 reached 0.58, 0.79, 0.80, 0.78.
With 3 goals over 150 episodes, batches of 3, 5, 12 (the default), 24 gave 0.83, 0.82, 0.84, 0.70.
On graphs (the same file's `negotiate`: 3 goals, each agent rewarded by the fraction of its
neighbours on its goal, 1,000 episodes, seeds 0 and 1, edge alignment over the last 100 on a
ring of 6, a 3x3 torus, a star of 5 and a pair), batches of 5 and of 12 (the default) each
ended one of the eight runs in a partly inconsistent code (edge alignment 0.75: the torus's
seed 1 with 5, the ring's seed 1 with 12) and the other seven at 0.99-1.0.

After deciding, an agent tells its team neighbours its goal (`GoalCommit`). That is for
measurement only (alignment per edge; per team with `team_alignment` over all agents' results):
it never changes a goal. `end_episode(episode, reward)` closes the episode's record and feeds the
matrix update.

State machine of one episode (the node calls `start` before the episode's reset):

    idle --start--> round 0 --(all neighbours heard | deadline)--> round 1 ... --> decided (done)
    decided --GoalCommit from neighbours--> (recorded) --end_episode(reward)--> idle, M updated

Messages from a later episode (a neighbour started first) wait in a buffer until `start` of that
episode; messages of an earlier episode are dropped and counted. Sans-IO: no sockets, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from protocols.engines.engine import EpisodeRuns, Outgoing
from protocols.codec.messages import register_message

NUM_MESSAGES = 30
TEMPERATURE = 30.0
LEARNING_RATE = 0.1
DRAWS_PER_GOAL_PER_UPDATE = 4  # default M-update batch: this many episodes per goal the agent may choose (see above)

# ------------------------------------------------------------------------------------------
# Messages
# ------------------------------------------------------------------------------------------


@register_message("negotiation.proposal")
@dataclass(frozen=True)
class NegotiationProposal:
    """The best proposal the sender knows at round `round` of episode `episode`'s negotiation:
    `origin` drew `priority` and sent `message` for its goal."""

    episode: int
    round: int
    priority: float
    origin: str
    message: int


@register_message("negotiation.commit")
@dataclass(frozen=True)
class GoalCommit:
    """The goal the sender will pursue in `episode` (for alignment measurement only)."""

    episode: int
    goal: int
    timed_out: bool


@dataclass(frozen=True)
class NegotiationRequest:
    """One episode's negotiation: this agent's own goal (its goal module's draw; kept if it
    leads or hears nothing), the team neighbours taking part, and how many flooding rounds
    (the diameter of the team's graph; 1 for a pair)."""

    episode: int
    own_goal: int
    team_neighbours: Sequence[str]
    rounds: int
    # The agents of this agent's connected team, itself included: the team flood
    # (protocols/engines/team_negotiation.py) needs it to know whether it heard everyone; the naming
    # game does not read it.
    team_size: int | None = None


@dataclass(frozen=True)
class NegotiationOutcome:
    """What the agent pursues this episode, and how it got there."""

    episode: int
    goal: int
    message: int | None  # the message this agent's goal went with (None: timed out)
    leader: str  # origin of the proposal it followed (itself when it led or timed out)
    led: bool
    timed_out: bool  # heard no proposal at all by the deadline: own goal
    rounds_used: int
    rounds_closed_by_deadline: int
    duration_s: float = 0.0  # from start to decision (what a negotiation costs the episode's start)


@dataclass
class EpisodeRecord:
    """The per-episode record: outcome, alignment per edge (None: the neighbour's goal never
    arrived), messages, reward."""

    outcome: NegotiationOutcome
    neighbour_goals: dict[str, int]
    aligned_per_edge: dict[str, bool | None]
    messages_sent: int
    messages_received: int
    reward: float


# ------------------------------------------------------------------------------------------
# The matrix game (pure functions, used by the engine and testable alone)
# ------------------------------------------------------------------------------------------


def softmax_sample(scores: np.ndarray, temperature: float, rng: np.random.Generator, allowed: np.ndarray | None = None) -> int:
    """An index drawn from softmax(temperature * scores), over `allowed` indices only."""
    indices = np.arange(scores.shape[0]) if allowed is None else np.asarray(allowed)
    logits = temperature * scores[indices]
    logits = logits - logits.max()
    probabilities = np.exp(logits)
    probabilities /= probabilities.sum()
    return int(indices[rng.choice(indices.shape[0], p=probabilities)])


def update_matrix(matrix: np.ndarray, used: Sequence[tuple[int, int, float]], learning_rate: float = LEARNING_RATE) -> np.ndarray:
    """`M <- (1 - lr) M + lr * mean reward` for each used (goal, message) pair, `M <- (1 - lr) M`
    for every other entry. `used` lists (goal, message, episode reward) since the last update."""
    totals = np.zeros_like(matrix)
    counts = np.zeros_like(matrix)
    for goal, message, reward in used:
        totals[goal, message] += reward
        counts[goal, message] += 1
    mean_reward = np.divide(totals, counts, out=np.zeros_like(matrix), where=counts > 0)
    return (1.0 - learning_rate) * matrix + learning_rate * mean_reward


def team_alignment(goals: Mapping[str, int]) -> bool:
    """Every agent of the team pursues the same goal."""
    return len(set(goals.values())) == 1


def edge_alignment(goals: Mapping[str, int], edges: Sequence[tuple[str, str]]) -> float:
    """The fraction of edges whose two ends pursue the same goal."""
    if not edges:
        raise ValueError("edge_alignment needs at least one edge")
    return float(np.mean([goals[a] == goals[b] for a, b in edges]))


def chance_alignment(num_goals_allowed: int) -> float:
    """Probability that two independent uniform draws from `num_goals_allowed` goals agree."""
    return 1.0 / num_goals_allowed


class AlignmentLedger:
    """Per episode, the goals the team neighbours committed to (`GoalCommit`), joined with this
    agent's decision into an `EpisodeRecord`: alignment per edge, for measurement only. Shared
    by the naming game and the team flood (protocols/engines/team_negotiation.py)."""

    def __init__(self) -> None:
        self._open: dict[int, EpisodeRecord] = {}
        self._early: dict[int, dict[str, int]] = {}  # commits that came before this agent decided
        self.records: list[EpisodeRecord] = []  # closed episodes, oldest first

    def open(self, outcome: NegotiationOutcome, neighbours: Sequence[str], messages_sent: int, messages_received: int) -> EpisodeRecord:
        record = EpisodeRecord(
            outcome=outcome,
            neighbour_goals=dict(self._early.pop(outcome.episode, {})),
            aligned_per_edge={neighbour: None for neighbour in neighbours},
            messages_sent=messages_sent,
            messages_received=messages_received,
            reward=0.0,
        )
        self._open[outcome.episode] = record
        return record

    def on_commit(self, sender: str, commit: GoalCommit, current_episode: int) -> bool:
        """Record a neighbour's goal; False when it belongs to no episode still open (stale)."""
        record = self._open.get(commit.episode)
        if record is not None:
            record.neighbour_goals[sender] = commit.goal
        elif commit.episode == current_episode:
            # Decided before us: keep it until our own decision opens the record.
            self._early.setdefault(commit.episode, {})[sender] = commit.goal
        else:
            return False
        return True

    def close(self, episode: int, reward: float) -> EpisodeRecord:
        record = self._open.pop(episode, None)
        if record is None:
            raise ValueError(f"no decided negotiation for episode {episode} (open: {sorted(self._open)})")
        record.reward = float(reward)
        for neighbour, goal in self._early.pop(episode, {}).items():
            record.neighbour_goals[neighbour] = goal
        record.aligned_per_edge = {
            neighbour: (record.neighbour_goals[neighbour] == record.outcome.goal if neighbour in record.neighbour_goals else None)
            for neighbour in record.aligned_per_edge
        }
        self.records.append(record)
        return record


# ------------------------------------------------------------------------------------------
# The engine
# ------------------------------------------------------------------------------------------


def allowed_goal_array(num_goals: int, allowed_goals: Sequence[int] | None) -> np.ndarray:
    """The goals an agent may pick, sorted and without repeats (all of [0, num_goals) when None);
    refused unless a non-empty subset of [0, num_goals)."""
    allowed = np.arange(num_goals) if allowed_goals is None else np.array(sorted(set(allowed_goals)), dtype=np.int64)
    if allowed.size == 0 or allowed.min() < 0 or allowed.max() >= num_goals:
        raise ValueError(f"allowed_goals must be a non-empty subset of [0, {num_goals}), got {allowed_goals!r}")
    return allowed


@dataclass
class _Run:
    request: NegotiationRequest
    started_at: float
    round_timeout_s: float
    own_message: int
    best: tuple[float, str, int]  # (priority, origin, message)
    waiting_for: set[str]
    heard_round: dict[str, int] = field(default_factory=dict)
    heard_anyone: bool = False
    round: int = 0
    closed_by_deadline: int = 0
    outcome: NegotiationOutcome | None = None
    messages_sent: int = 0
    messages_received: int = 0


class NegotiationEngine(EpisodeRuns[NegotiationOutcome]):
    """One agent's side of goal negotiation. See the module docstring."""

    message_types: ClassVar[tuple[type, ...]] = (NegotiationProposal, GoalCommit)
    not_done_message = "negotiation has not decided yet"
    runs_what = "negotiation"

    def __init__(
        self,
        node_id: str,
        num_goals: int,
        *,
        seed: int,
        allowed_goals: Sequence[int] | None = None,
        num_messages: int = NUM_MESSAGES,
        temperature: float = TEMPERATURE,
        learning_rate: float = LEARNING_RATE,
        update_every_episodes: int | None = None,
        round_timeout_s: float = 0.5,
    ) -> None:
        if num_goals < 1 or num_messages < 1:
            raise ValueError(f"num_goals and num_messages must be >= 1, got {num_goals}, {num_messages}")
        if not temperature > 0 or not 0 < learning_rate <= 1:
            raise ValueError(f"temperature must be > 0 and learning_rate in (0, 1], got {temperature}, {learning_rate}")
        if update_every_episodes is not None and update_every_episodes < 1:
            raise ValueError(f"update_every_episodes must be >= 1 (or None: the default batch), got {update_every_episodes}")
        if not round_timeout_s > 0:
            raise ValueError(f"round_timeout_s must be > 0 seconds, got {round_timeout_s}")
        self.node_id = node_id
        self.num_goals = num_goals
        self.allowed_goals = allowed_goal_array(num_goals, allowed_goals)
        self.num_messages = num_messages
        self.temperature = temperature
        self.learning_rate = learning_rate
        self.update_every_episodes = (DRAWS_PER_GOAL_PER_UPDATE * self.allowed_goals.size
                                      if update_every_episodes is None else update_every_episodes)
        self.round_timeout_s = round_timeout_s
        self.matrix = np.zeros((num_goals, num_messages))
        self._rng = np.random.default_rng(seed)
        self._run: _Run | None = None
        self._last_episode = -1
        self._future: dict[int, list[tuple[str, Any]]] = {}
        self._ledger = AlignmentLedger()
        self._used_since_update: list[tuple[int, int, float]] = []
        self._episodes_since_update = 0
        self.stale_messages = 0

    # ------------------------------------------------------------------ Engine inputs

    def start(self, request: NegotiationRequest, now: float) -> list[Outgoing]:
        self._check_next_episode(request.episode)
        if request.own_goal not in self.allowed_goals:
            raise ValueError(f"own_goal {request.own_goal} is not among the allowed goals {self.allowed_goals.tolist()}")
        if request.rounds < 1:
            raise ValueError(f"rounds must be >= 1 (the team graph's diameter), got {request.rounds}")
        if self.node_id in request.team_neighbours:
            raise ValueError(f"node {self.node_id!r} lists itself among its team neighbours")
        self._last_episode = request.episode
        own_message = softmax_sample(self.matrix[request.own_goal], self.temperature, self._rng)
        priority = float(self._rng.random())
        self._run = _Run(
            request=request,
            started_at=now,
            round_timeout_s=self.round_timeout_s,
            own_message=own_message,
            best=(priority, self.node_id, own_message),
            waiting_for=set(request.team_neighbours),
        )
        if not request.team_neighbours:
            return self._decide(now)
        outgoing = self._send_round()
        for sender, message in self._future.pop(request.episode, []):
            outgoing += self.on_message(sender, message, now)
        for episode in [e for e in self._future if e < request.episode]:
            self.stale_messages += len(self._future.pop(episode))
        return outgoing

    def on_message(self, sender: str, message: Any, now: float) -> list[Outgoing]:
        if not isinstance(message, self.message_types):
            raise TypeError(f"negotiation got a {type(message).__name__} from {sender!r}; it takes {[t.__name__ for t in self.message_types]}")
        run = self._run
        current = run.request.episode if run is not None else self._last_episode
        if message.episode > current:
            self._future.setdefault(message.episode, []).append((sender, message))
            return []
        if isinstance(message, GoalCommit):
            return self._on_commit(sender, message)
        if message.episode < current or run is None:
            self.stale_messages += 1
            return []
        run.messages_received += 1
        if sender not in run.request.team_neighbours:
            self.stale_messages += 1
            return []
        run.heard_anyone = True
        candidate = (message.priority, message.origin, message.message)
        if candidate[:2] > run.best[:2]:
            run.best = candidate
        run.heard_round[sender] = max(run.heard_round.get(sender, -1), message.round)
        if run.outcome is not None:
            return []
        return self._advance_while_complete(now)

    def on_timer(self, now: float) -> list[Outgoing]:
        run = self._run
        if run is None or run.outcome is not None or now < self._round_deadline(run):
            return []
        run.closed_by_deadline += 1
        return self._next_round(now) + self._advance_while_complete(now)

    def on_neighbour_down(self, node: str, now: float) -> list[Outgoing]:
        run = self._run
        if run is None or run.outcome is not None:
            return []
        run.waiting_for.discard(node)
        return self._advance_while_complete(now)

    def on_neighbour_up(self, node: str, now: float) -> list[Outgoing]:
        return []  # it takes part again from the next episode's request

    @property
    def records(self) -> list[EpisodeRecord]:
        """Closed episodes, oldest first."""
        return self._ledger.records

    def end_episode(self, episode: int, reward: float) -> EpisodeRecord:
        """The episode is over with this agent's `reward`: close its record, feed the M update."""
        record = self._ledger.close(episode, reward)
        if record.outcome.message is not None:
            self._used_since_update.append((record.outcome.goal, record.outcome.message, record.reward))
        self._episodes_since_update += 1
        if self._episodes_since_update >= self.update_every_episodes:
            self.matrix = update_matrix(self.matrix, self._used_since_update, self.learning_rate)
            self._used_since_update = []
            self._episodes_since_update = 0
        return record

    # ------------------------------------------------------------------ Checkpoint

    def state_dict(self) -> dict[str, Any]:
        """What a restarted agent needs to negotiate as this one would have: the matrix M, the
        generator that draws messages and priorities, and the M update accumulated since the
        last one. Plain data (lists, ints, floats), as a weights_only checkpoint needs."""
        return {"matrix": self.matrix.tolist(), "rng": dict(self._rng.bit_generator.state),
                "used_since_update": [list(used) for used in self._used_since_update],
                "episodes_since_update": self._episodes_since_update}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        try:
            matrix = np.asarray(state["matrix"], dtype=np.float64)
            used = [(int(goal), int(message), float(reward)) for goal, message, reward in state["used_since_update"]]
            episodes = int(state["episodes_since_update"])
            rng_state = dict(state["rng"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"a negotiation state needs matrix, rng, used_since_update and episodes_since_update: {error!r}") from None
        if matrix.shape != self.matrix.shape:
            raise ValueError(f"negotiation matrix of shape {matrix.shape} in the state, this engine's is {self.matrix.shape}")
        generator = type(self._rng.bit_generator).__name__
        if rng_state.get("bit_generator") != generator:
            raise ValueError(f"negotiation generator: expected a {generator} state, got {rng_state.get('bit_generator')!r}")
        self.matrix, self._used_since_update, self._episodes_since_update = matrix, used, episodes
        self._rng.bit_generator.state = rng_state

    # ------------------------------------------------------------------ Engine outputs

    def next_deadline(self) -> float | None:
        run = self._run
        if run is None or run.outcome is not None:
            return None
        return self._round_deadline(run)

    def _outcome_so_far(self) -> NegotiationOutcome | None:
        return None if self._run is None else self._run.outcome

    def metrics(self) -> dict[str, float]:
        if not self.done:
            return {"negotiation/stale_messages": float(self.stale_messages)}
        run = self._run
        outcome = run.outcome
        metrics = {
            "negotiation/rounds_used": float(outcome.rounds_used),
            "negotiation/rounds_closed_by_deadline": float(outcome.rounds_closed_by_deadline),
            "negotiation/timed_out": float(outcome.timed_out),
            "negotiation/led": float(outcome.led),
            "negotiation/messages_sent": float(run.messages_sent),
            "negotiation/messages_received": float(run.messages_received),
            "negotiation/stale_messages": float(self.stale_messages),
        }
        if self.records:
            known = [v for v in self.records[-1].aligned_per_edge.values() if v is not None]
            if known:
                metrics["negotiation/aligned_edges_fraction"] = float(np.mean(known))
        return metrics

    # ------------------------------------------------------------------ internals

    def _round_deadline(self, run: _Run) -> float:
        return run.started_at + (run.round + 1) * run.round_timeout_s

    def _send_round(self) -> list[Outgoing]:
        run = self._run
        priority, origin, message = run.best
        proposal = NegotiationProposal(episode=run.request.episode, round=run.round, priority=priority, origin=origin, message=message)
        run.messages_sent += len(run.request.team_neighbours)
        return [(neighbour, proposal) for neighbour in run.request.team_neighbours]

    def _round_complete(self, run: _Run) -> bool:
        return all(run.heard_round.get(neighbour, -1) >= run.round for neighbour in run.waiting_for)

    def _advance_while_complete(self, now: float) -> list[Outgoing]:
        outgoing: list[Outgoing] = []
        while self._run.outcome is None and self._round_complete(self._run):
            outgoing += self._next_round(now)
        return outgoing

    def _next_round(self, now: float) -> list[Outgoing]:
        run = self._run
        run.round += 1
        if run.round >= run.request.rounds:
            return self._decide(now)
        return self._send_round()

    def _decide(self, now: float) -> list[Outgoing]:
        run = self._run
        request = run.request
        priority, origin, message = run.best
        led = origin == self.node_id
        timed_out = bool(request.team_neighbours) and not run.heard_anyone
        if led or timed_out:
            goal, used_message, leader = request.own_goal, (run.own_message if not timed_out else None), self.node_id
        else:
            goal = softmax_sample(self.matrix[:, message], self.temperature, self._rng, self.allowed_goals)
            used_message, leader = message, origin
        run.outcome = NegotiationOutcome(
            episode=request.episode,
            goal=goal,
            message=used_message,
            leader=leader,
            led=led and not timed_out,
            timed_out=timed_out,
            rounds_used=min(run.round, request.rounds),
            rounds_closed_by_deadline=run.closed_by_deadline,
            duration_s=now - run.started_at,
        )
        commit = GoalCommit(episode=request.episode, goal=goal, timed_out=timed_out)
        run.messages_sent += len(request.team_neighbours)
        self._ledger.open(run.outcome, request.team_neighbours, run.messages_sent, run.messages_received)
        return [(neighbour, commit) for neighbour in request.team_neighbours]

    def _on_commit(self, sender: str, message: GoalCommit) -> list[Outgoing]:
        if not self._ledger.on_commit(sender, message, self._last_episode):
            self.stale_messages += 1
        return []
