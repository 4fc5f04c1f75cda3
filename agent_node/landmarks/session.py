"""Who covers which landmark: the main job's goals, agreed by the team before each episode. Sans-IO.

simple_spread (MPE) pays the team for every landmark covered and each agent for every collision,
and every agent sees every landmark: without talking, two agents head for one landmark and one is
left bare. Here (ARCHITECTURE.md "The main job") each agent

1. at the start of an episode (per env copy, training and evaluation alike) holds its first
   observation, measures its distance to every landmark (one row of costs), and floods that row
   over the topology (`protocols/engines/flooding.py`, for the diameter of the graph). Every agent then
   holds the same table and takes its part of the one assignment the Hungarian method
   (`scipy.optimize.linear_sum_assignment`) gives on it: one landmark each, team-wide, with no
   further message. An agent that did not hear every row (loss, a dead neighbour, a round's
   deadline) assigns over the rows it has and says so (`landmarks/complete` = 0). With
   `assignment: nearest` it takes its nearest landmark alone (the ablation without talking);
2. acts with a goal-conditioned policy: the learner sees its observation with the landmark's
   one-hot appended (`condition`);
3. learns from its rows relabelled for every landmark (the goal reward below is a function of the
   next observation, so every landmark's reward is known: hindsight relabelling in full), and,
   with `share_hindsight`, sends its partners each episode's rows with the landmark it pursued and
   the one it reached (`protocols/engines/hindsight.py`, `hindsight.rows`); a partner adds them for both
   (the agents' dynamics are the same, and their observations have the same layout).

The learner's reward is named here and in the report: minus the distance from the agent to its
landmark, minus `collision_penalty` for each agent it touches (both read from the next
observation). The env's own reward stays the objective reported (`env/episode_return`,
`eval/return_mean`).

Episode keys (the flooding run's key, the same on every agent): `train:<step>` for a training
episode starting at lockstep step `step`, `eval:<training step>:<step>` for an evaluation's (the
last training step every agent saw, and the evaluation's own step).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from agent_node.landmarks.config import LandmarksConfig
from agent_node.roles import Transition
from protocols.codec import messages as m
from protocols.engines.engine import Outgoing
from protocols.engines.flooding import FloodEngine, FloodRequest, FloodResult, FloodTable
from protocols.engines.hindsight import HindsightRows
from protocols.engines.topology import Topology

log = logging.getLogger("agent_node.landmarks")

AGENT_SIZE = 0.15  # simple_spread's agents (mpe2 simple_spread.py make_world); they touch within 2x


# ------------------------------------------------------------------------------------------
# What an observation says (pure)
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpreadLayout:
    """Where things are in a simple_spread observation: own velocity (2), own position (2),
    each landmark relative to the agent (2 L), each other agent relative to it (2 (N-1)), their
    communication (2 (N-1))."""

    num_agents: int
    num_landmarks: int

    @property
    def obs_dim(self) -> int:
        return 4 + 2 * self.num_landmarks + 4 * (self.num_agents - 1)

    @classmethod
    def for_obs(cls, obs_dim: int, num_agents: int) -> SpreadLayout:
        layout = cls(num_agents, num_agents)  # simple_spread: N landmarks for N agents
        if layout.obs_dim != obs_dim:
            raise ValueError(
                f"agents.landmarks reads simple_spread observations: with {num_agents} agents and {num_agents} "
                f"landmarks they have {layout.obs_dim} entries, this env's have {obs_dim} (env.name should be "
                "mpe2.simple_spread_v3)"
            )
        return layout

    def landmark_offsets(self, obs: np.ndarray) -> np.ndarray:
        """(K, L, 2): each landmark's position relative to the agent."""
        return obs[:, 4:4 + 2 * self.num_landmarks].reshape(len(obs), self.num_landmarks, 2)

    def distances(self, obs: np.ndarray) -> np.ndarray:
        """(K, L): the agent's distance to each landmark."""
        return np.linalg.norm(self.landmark_offsets(obs), axis=2)

    def collisions(self, obs: np.ndarray) -> np.ndarray:
        """(K,): how many other agents this one touches."""
        start = 4 + 2 * self.num_landmarks
        others = obs[:, start:start + 2 * (self.num_agents - 1)].reshape(len(obs), self.num_agents - 1, 2)
        return (np.linalg.norm(others, axis=2) < 2 * AGENT_SIZE).sum(axis=1)

    def goal_reward(self, next_obs: np.ndarray, goals: np.ndarray, collision_penalty: float) -> np.ndarray:
        """(K,) float32: minus the distance to landmark `goals[k]`, minus the collision penalty."""
        distance = self.distances(next_obs)[np.arange(len(next_obs)), goals]
        return (-distance - collision_penalty * self.collisions(next_obs)).astype(np.float32)


def assign(table: dict[str, np.ndarray], node_id: str) -> np.ndarray:
    """This node's landmark per copy from the cost rows it knows (node -> (K, L) distances): the
    Hungarian method on the rows sorted by node id, so every node with the same table takes its
    part of the same assignment. Rows missing from the table are simply not assigned, and so are
    a row's copies it does not know (NaN: on links that follow positions with several env copies,
    each copy's rows flood over that copy's graph only)."""
    nodes = sorted(table)
    costs = np.stack([table[node] for node in nodes]).astype(np.float64)  # (n, K, L)
    goals = np.empty(costs.shape[1], dtype=np.int64)
    for copy in range(costs.shape[1]):
        known = [i for i, node in enumerate(nodes) if node == node_id or np.isfinite(costs[i, copy]).all()]
        rows, columns = linear_sum_assignment(costs[known, copy, :])
        goals[copy] = columns[list(rows).index(known.index(nodes.index(node_id)))]
    return goals


def rows_known(table: dict[str, np.ndarray]) -> float:
    """How many agents' rows the table holds, averaged over the copies (a row cut out of a copy
    is not known there)."""
    return float(np.mean(np.sum([np.isfinite(row).all(axis=1) for row in table.values()], axis=0)))


def one_hot(goals: np.ndarray, num_goals: int) -> np.ndarray:
    return np.eye(num_goals, dtype=np.float32)[goals]


# ------------------------------------------------------------------------------------------
# The session the node drives
# ------------------------------------------------------------------------------------------


@dataclass
class _Episode:
    """One training episode's rows (every copy), kept to share them when it ends."""

    key: str
    obs: list[np.ndarray] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    next_obs: list[np.ndarray] = field(default_factory=list)
    terminated: list[np.ndarray] = field(default_factory=list)
    pursued: list[np.ndarray] = field(default_factory=list)
    copies: list[np.ndarray] = field(default_factory=list)


@dataclass
class _Decision:
    """A team decision under way, for the episode that starts at step `start_step` in `copies`."""

    key: str
    evaluation: bool
    copies: np.ndarray  # (K,) bool: the copies whose episode starts
    started_at: float  # when the flooding began (seconds, or the step when talking takes env steps)
    start_step: int  # the lockstep step of the episode's first observation (of its clock)


class LandmarkSession:
    """One agent's landmarks, episode by episode (see the module docstring).

    Talk that is free in env time (`protocols.talk: free`): the node calls `needs_decision`
    before it acts on an observation; when it does, `begin` starts the team's flooding and the
    node holds the observation while `deciding` (driven by `on_message`, `on_timer`,
    `on_neighbour_down`), then acts with `condition`.

    Talk that takes env steps (`in_steps`): nothing is held. At an episode start each copy acts
    on the agent's own nearest landmark at once while the team floods (`begin`, with the step as
    the time); the tables come at the step starts they are due (`on_message`, `on_timer` with the
    step), and the assignment, once it lands, replaces the own choice in the copies still playing
    that episode. Its age in steps is written (`landmarks/decision_age_steps`), and a decision
    that lands after its episode ended changes nothing (`landmarks/decided_after_episode`).
    Training and evaluation have clocks of their own, so each has its own flooding.

    Training rows go through `training_rows`; `take_outgoing` and `take_records` hand the node
    what to send and to write."""

    message_types = (FloodTable, HindsightRows)

    def __init__(self, config: LandmarksConfig, *, node_id: str, topology: Topology, layout: SpreadLayout,
                 num_copies: int, in_steps: bool = False, graph_changes: bool = False) -> None:
        self.config = config
        self.node_id = node_id
        self.topology = topology
        self.layout = layout
        self.num_goals = layout.num_landmarks
        self.in_steps = in_steps
        index = topology.nodes.index(node_id)
        self.neighbours = sorted(topology.nodes[j] for j in topology.neighbours(index))
        # A value travels one hop per round, so flooding for the diameter reaches everyone. On a
        # graph that follows positions (graph_changes: topology.kind proximity) the full graph's
        # diameter (1) would reach only those in range: flood for n - 1 rounds, the most hops a
        # connected graph of n nodes needs, so a row reaches its whole component (if it holds).
        self.rounds = max(1, topology.num_nodes - 1 if graph_changes else topology.diameter())
        timeout = config.round_timeout_steps if in_steps else config.round_timeout_s
        training_engine = FloodEngine(node_id, round_timeout_s=timeout)
        # One flooding at a time while the node holds; in steps, one per clock.
        self.engines = {False: training_engine, True: FloodEngine(node_id, round_timeout_s=timeout) if in_steps else training_engine}
        self.down: set[str] = set()
        # The landmark of each copy, for training and for evaluation copies (which may differ in count).
        self.goals = {False: np.zeros(num_copies, dtype=np.int64), True: np.zeros(0, dtype=np.int64)}
        # The step at which each copy's current episode began (in steps: a late decision applies
        # only to the copies still playing its episode).
        self.episode_start_step = {False: np.zeros(num_copies, dtype=np.int64), True: np.zeros(0, dtype=np.int64)}
        # The copies whose current episode this session saw begin. A restarted agent rejoins in
        # the middle of episodes (of training, or of an evaluation under way): until their next
        # start, those copies pursue its own nearest landmark (`condition`).
        self.seen_start = {False: np.zeros(num_copies, dtype=bool), True: np.zeros(0, dtype=bool)}
        self.pending: dict[bool, _Decision] = {}  # evaluation? -> the decision under way
        self.decided_keys: set[str] = set()
        self.last_train_key: str | None = None
        self.episode: _Episode | None = None
        self._outgoing: list[Outgoing] = []
        self._records: list[dict[str, float]] = []
        # Partners' rows as they come, and those the learner may take. Talking free in env time,
        # rows come when the wall clock brings them; learned at once, a run's buffer would depend
        # on timing. So they are handed to the learner at a point every run shares: the team's
        # next training agreement, which cannot complete before every neighbour's round-1 table,
        # and each neighbour sent its episode's rows before that table, on the same link (FIFO).
        # In env steps they come at fixed step starts already; alone (`assignment: nearest`)
        # nothing orders them, and the node says so (`rows_arrive_by_wall_clock`).
        self._partner_rows: list[tuple[str, Transition]] = []  # (sender, rows) in the order they came
        self._partner_rows_ready: list[Transition] = []
        self.rows_arrive_by_wall_clock = not in_steps and config.assignment == "nearest"
        self._rows_wait_for_agreement = not in_steps and config.assignment == "negotiated"
        self.partner_rows_received = 0
        self._arrived_count = 0  # rows of `_partner_rows`, not counted yet

    # ------------------------------------------------------------------ deciding

    @staticmethod
    def key(message: m.EnvObservation, training_step: int) -> str:
        """The same on every agent: evaluations run between two training steps, so the last
        training step every agent saw names the evaluation."""
        if message.evaluation:
            return f"eval:{training_step}:{message.step}"
        return f"train:{message.step}"

    def needs_decision(self, message: m.EnvObservation, training_step: int) -> bool:
        return bool(np.asarray(message.episode_start).any()) and self.key(message, training_step) not in self.decided_keys

    def begin(self, message: m.EnvObservation, obs: np.ndarray, now: float, training_step: int) -> None:
        """An episode starts in some copies of `message`: find this agent's landmarks there.
        In steps, `now` is the step, and the copies take the agent's own nearest landmark until
        the team's assignment lands."""
        key = self.key(message, training_step)
        evaluation = bool(message.evaluation)
        starting = np.asarray(message.episode_start, dtype=bool)
        if evaluation and len(self.goals[True]) != len(starting):
            self._evaluation_copies(len(starting))
        self.episode_start_step[evaluation][starting] = message.step
        self.seen_start[evaluation][starting] = True
        costs = self.layout.distances(np.asarray(obs, dtype=np.float32))
        if self.in_steps:
            self.goals[evaluation][starting] = costs.argmin(axis=1)[starting]
        if evaluation in self.pending:  # a newer episode supersedes the one still deciding
            self._collect_superseded(evaluation, now)
        decision = self.pending[evaluation] = _Decision(key, evaluation, starting, now, message.step)
        if self.config.assignment == "nearest":
            self._decide(decision, {self.node_id: costs}, complete=None, flood=None, now=now)
            return
        live = [node for node in self.neighbours if node not in self.down]
        request = FloodRequest(key, costs, live, team_size=self.topology.num_nodes, rounds=self.rounds, copy_axis=0)
        self._outgoing += self.engines[evaluation].start(request, now)
        self._collect(evaluation, now)

    @property
    def deciding(self) -> bool:
        return bool(self.pending)

    def on_message(self, sender: str, message, now: float) -> None:
        if isinstance(message, HindsightRows):
            self._on_partner_rows(sender, message)
            return
        evaluation = message.key.startswith("eval:")
        self._outgoing += self.engines[evaluation].on_message(sender, message, now)
        self._collect(evaluation, now)

    def on_timer(self, now: float, evaluation: bool | None = None) -> None:
        """The engines' deadlines due by `now` (in steps: only the clock `evaluation` names)."""
        for clock in self._clocks(evaluation):
            self._outgoing += self.engines[clock].on_timer(now)
            self._collect(clock, now)

    def on_neighbour_down(self, node: str, now: float | dict[bool, float]) -> None:
        """`now` per clock in steps (each flooding's own time), else seconds."""
        self.down.add(node)
        for clock in self._clocks(None):
            clock_now = now[clock] if isinstance(now, dict) else now
            self._outgoing += self.engines[clock].on_neighbour_down(node, clock_now)
            self._collect(clock, clock_now)

    def on_neighbour_up(self, node: str, now: float) -> None:
        self.down.discard(node)

    def next_deadline(self) -> float | None:
        deadlines = [self.engines[clock].next_deadline() for clock in self.pending]
        return min((d for d in deadlines if d is not None), default=None)

    def close_now(self, now: float) -> None:
        """The env server moved on without us (its step deadline): decide with what was heard."""
        for clock in list(self.pending):
            engine = self.engines[clock]
            while clock in self.pending and not engine.done:
                self._outgoing += engine.on_timer(engine.next_deadline())
            self._collect(clock, now)

    def _clocks(self, evaluation: bool | None) -> list[bool]:
        if not self.in_steps:
            return [False]  # one engine for both
        return [False, True] if evaluation is None else [evaluation]

    def _collect(self, clock: bool, now: float) -> None:
        decision = self.pending.get(clock) if self.in_steps else next(iter(self.pending.values()), None)
        engine = self.engines[clock]
        if decision is None or not engine.done or engine.result.key != decision.key:
            return
        result: FloodResult = engine.result
        self._decide(decision, result.values, complete=result.complete, flood=result, now=now)

    def _collect_superseded(self, clock: bool, now: float) -> None:
        """A decision still under way when the next episode starts (talk in steps, long delays):
        its flooding closes with what it heard; the decision lands on no copy."""
        decision = self.pending.pop(clock)  # (the engine closes its run when the next one starts)
        self.decided_keys.add(decision.key)
        if not decision.evaluation:
            self._records.append({"landmarks/complete": 0.0, "landmarks/decision_age_steps": float(now - decision.started_at),
                                  "landmarks/decided_after_episode": 1.0})

    def _decide(self, decision: _Decision, table: dict[str, np.ndarray], *, complete: bool | None,
                flood: FloodResult | None, now: float) -> None:
        """Apply a decision: `complete` says whether the flooding heard the whole team (None when
        the agent chose alone: no table was flooded, so none can be whole or partial)."""
        evaluation, starting = decision.evaluation, decision.copies
        goals = assign(table, self.node_id) if len(table) > 1 else table[self.node_id].argmin(axis=1)
        # The copies still playing the episode this decision is for (all of them while the node holds).
        playing = starting & (self.episode_start_step[evaluation] == decision.start_step)
        self.goals[evaluation][playing] = goals[playing]
        del self.pending[evaluation]
        self.decided_keys.add(decision.key)
        if len(self.decided_keys) > 64:  # only the newest keys can come again
            self.decided_keys = {decision.key}
        if evaluation:
            return
        if self._rows_wait_for_agreement:  # the partners' rows that came by now go to the learner,
            # by sender, not arrival: the buffer then holds them in the same order in every run
            arrived = [rows for _, rows in sorted(self._partner_rows, key=lambda item: item[0])]
            self._partner_rows_ready += arrived
            self.partner_rows_received += self._arrived_count
            self._partner_rows, self._arrived_count = [], 0
        self.last_train_key = decision.key
        record = {
            "landmarks/rows_known": rows_known(table),
            # Every copy's landmark in one number (base L digits, copy 0 lowest): the report puts
            # the agents' numbers of one step side by side to see whether any two share one.
            "landmarks/goals_code": float(sum(int(g) * self.num_goals ** k for k, g in enumerate(self.goals[False]))),
            "landmarks/copies": float(len(self.goals[False])),
        }
        if complete is not None:
            record["landmarks/complete"] = float(complete)
        if self.in_steps:
            record["landmarks/decision_age_steps"] = float(now - decision.started_at)
            record["landmarks/decided_after_episode"] = float(not playing.any())
        if flood is not None:
            duration_key = "landmarks/flood_duration_steps" if self.in_steps else "landmarks/flood_duration_s"
            record[duration_key] = flood.duration_s
            record["landmarks/rounds_closed_by_deadline"] = float(flood.rounds_closed_by_deadline)
        self._records.append(record)

    # ------------------------------------------------------------------ acting and learning

    def condition(self, obs: np.ndarray, evaluation: bool) -> np.ndarray:
        """The learner's input: the observation with its copy's landmark one-hot appended. A copy
        whose episode began before this agent was there takes its own nearest landmark, counted
        (`landmarks/joined_mid_episode`, `landmarks/joined_mid_evaluation`: copies)."""
        obs = np.asarray(obs, dtype=np.float32)
        if evaluation and len(self.goals[True]) != len(obs):
            self._evaluation_copies(len(obs))
        goals = self.goals[evaluation]
        if len(goals) != len(obs):
            raise ValueError(f"{len(obs)} observations but landmarks for {len(goals)} copies")
        unseen = ~self.seen_start[evaluation]
        if unseen.any():
            goals[unseen] = self.layout.distances(obs).argmin(axis=1)[unseen]
            self.seen_start[evaluation][unseen] = True
            self.episode_start_step[evaluation][unseen] = -1  # not an episode any decision is for
            key = "landmarks/joined_mid_evaluation" if evaluation else "landmarks/joined_mid_episode"
            self._records.append({key: float(unseen.sum())})
        return np.concatenate([obs, one_hot(goals, self.num_goals)], axis=1)

    def _evaluation_copies(self, count: int) -> None:
        """An evaluation with `count` copies (they may differ in count from training's)."""
        self.goals[True] = np.zeros(count, dtype=np.int64)
        self.episode_start_step[True] = np.zeros(count, dtype=np.int64)
        self.seen_start[True] = np.zeros(count, dtype=bool)

    def training_rows(self, transition: Transition, step: int) -> list[Transition]:
        """The learner's rows for one lockstep transition: relabelled for every landmark (the
        pursued one first), plus the partners' rows that arrived since. Keeps the rows for the
        episode's hindsight report and sends it when the episode ends."""
        copies = transition.copy_index if transition.copy_index is not None else np.arange(len(transition.obs))
        pursued = self.goals[False][copies]
        obs = np.asarray(transition.obs, dtype=np.float32)
        next_obs = np.asarray(transition.next_obs, dtype=np.float32)
        self._remember(transition, obs, next_obs, pursued, copies, step)
        rows = [self._relabelled(obs, transition.action, next_obs, transition.terminated, transition.truncated, pursued)]
        for goal in range(self.num_goals):
            others = pursued != goal
            if others.any():
                goals = np.full(int(others.sum()), goal)
                rows.append(self._relabelled(obs[others], transition.action[others], next_obs[others],
                                             transition.terminated[others], transition.truncated[others], goals))
        if self._rows_wait_for_agreement:
            rows += self._partner_rows_ready
            self._partner_rows_ready = []
        else:
            rows += [partner_rows for _, partner_rows in self._partner_rows]
            self._partner_rows = []
        return rows

    def _relabelled(self, obs, actions, next_obs, terminated, truncated, goals) -> Transition:
        code = one_hot(goals, self.num_goals)
        return Transition(
            obs=np.concatenate([obs, code], axis=1),
            action=np.asarray(actions),
            reward=self.layout.goal_reward(next_obs, goals, self.config.collision_penalty),
            next_obs=np.concatenate([next_obs, code], axis=1),
            terminated=np.asarray(terminated, dtype=bool),
            truncated=np.asarray(truncated, dtype=bool),
        )

    def _remember(self, transition: Transition, obs, next_obs, pursued, copies, step: int) -> None:
        if self.episode is None:
            self.episode = _Episode(key=self.last_train_key or f"train:{step - 1}")
        episode = self.episode
        episode.obs.append(obs)
        episode.actions.append(np.asarray(transition.action, dtype=np.int64))
        episode.next_obs.append(next_obs)
        episode.terminated.append(np.asarray(transition.terminated, dtype=bool))
        episode.pursued.append(pursued)
        episode.copies.append(copies)
        ended = np.asarray(transition.terminated, dtype=bool) | np.asarray(transition.truncated, dtype=bool)
        if ended.all() and len(ended) == len(self.goals[False]):
            self._end_episode()

    def _end_episode(self) -> None:
        """Every copy's episode ended (simple_spread's all end together): report it."""
        episode, self.episode = self.episode, None
        pursued = np.concatenate(episode.pursued)
        copies = np.concatenate(episode.copies)
        final_next_obs = episode.next_obs[-1]
        reached_per_copy = dict(zip(episode.copies[-1].tolist(), self.layout.distances(final_next_obs).argmin(axis=1).tolist()))
        reached = np.array([reached_per_copy.get(int(c), -1) for c in copies], dtype=np.int64)
        final_distance = self.layout.distances(final_next_obs)[np.arange(len(final_next_obs)), episode.pursued[-1]]
        self._records.append({
            "landmarks/final_distance": float(final_distance.mean()),
            "landmarks/reached_pursued": float((reached[-len(final_next_obs):] == episode.pursued[-1]).mean()),
            "hindsight/partner_rows_received": float(self.partner_rows_received),
        })
        if not self.config.share_hindsight:
            return
        keep = reached >= 0
        report = HindsightRows(
            episode=episode.key,
            obs=np.concatenate(episode.obs)[keep],
            actions=np.concatenate(episode.actions)[keep],
            next_obs=np.concatenate(episode.next_obs)[keep],
            terminated=np.concatenate(episode.terminated)[keep],
            pursued=pursued[keep],
            reached=reached[keep],
            copies=copies[keep].astype(np.int64),
        )
        self._outgoing += [(node, report) for node in self.neighbours if node not in self.down]

    def _on_partner_rows(self, sender: str, rows: HindsightRows) -> None:
        """A partner's episode: its rows, for the landmark it pursued and the one it reached."""
        if not self.config.share_hindsight:
            log.warning("hindsight.rows from %s, but this run shares no hindsight (agents.landmarks.share_hindsight)", sender)
            return
        obs = np.asarray(rows.obs, dtype=np.float32)
        if obs.ndim != 2 or obs.shape[1] != self.layout.obs_dim or len(rows.next_obs) != len(obs):
            log.warning("hindsight.rows from %s: expected (m, %d) observations, got %s; dropped",
                        sender, self.layout.obs_dim, obs.shape)
            return
        goals_ok = all(((g >= 0) & (g < self.num_goals)).all() for g in (rows.pursued, rows.reached))
        if not goals_ok:
            log.warning("hindsight.rows from %s: landmarks outside [0, %d); dropped", sender, self.num_goals)
            return
        next_obs = np.asarray(rows.next_obs, dtype=np.float32)
        not_truncated = np.zeros(len(obs), dtype=bool)
        self._partner_rows.append((sender, self._relabelled(obs, rows.actions, next_obs, rows.terminated, not_truncated, rows.pursued)))
        other = rows.reached != rows.pursued
        if other.any():
            self._partner_rows.append((sender, self._relabelled(obs[other], rows.actions[other], next_obs[other],
                                                                rows.terminated[other], not_truncated[other], rows.reached[other])))
        # Counted when the learner may take them (`partner_rows_received` is a metric: the same
        # in every run), and they came when the wall clock brought them.
        if self._rows_wait_for_agreement:
            self._arrived_count += len(obs)
        else:
            self.partner_rows_received += len(obs)

    def take_outgoing(self) -> list[Outgoing]:
        outgoing, self._outgoing = self._outgoing, []
        return outgoing

    def take_records(self) -> list[dict[str, float]]:
        records, self._records = self._records, []
        return records
