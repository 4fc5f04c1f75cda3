"""The goal session: one goal-conditioned agent's goals, episode by episode, sans-IO.

ALGORITHMS.md section 2 (Dec-IMSAP). The node runs it beside the goal-conditioned
learner (`agent_node/algos/goal_dqn.py`) when the run has an `agents.goals` section
(`agent_node/goals/config.py`). Per episode it

1. picks the goal: the goal module's draw (uniform, learning progress, p-aligned), or a goal
   negotiated with the partners of the episode over the peer mesh (`protocols/engines/negotiation.py`'s
   naming game, or with `negotiation.protocol: team_flood` `protocols/engines/team_negotiation.py`'s
   flood of every member's proposal, which gives a connected team one goal). For negotiation the env server holds the episode's first observation
   (`env.episode_start_hold_s`): it announces who plays (`env.episode_start`), the session
   negotiates with the team neighbours that play too, and says `goal.ready` when decided (the
   server also starts at its hold deadline; a negotiation still undecided when the observation
   arrives is closed at once, as at its own deadline, and counted as `negotiation/cut_by_env`);
   or, with `selection: supervisor`, the goal the team's supervisor (its smallest node id)
   assigns over the wire (`protocols/engines/supervision.py`), under the same hold;
2. conditions the learner on it (`act`), and stops the agent (action 0, stay) once rewarded:
   the reference's agents are done once rewarded, and goal_lines cannot end one agent's episode
   on the agent's own goal;
3. computes the goal reward from the env's `achieved_goals` infos (`protocols/goal_spaces/goal_space.py`;
   the env pays nothing: it does not know the goals); or, with `paid_by: env`, names the goal in
   its `goal.ready` and takes the env's reward (an env reward is recorded as the goal achieved
   at that step, which is what it says);
4. after the episode, runs the hindsight engine (`protocols/engines/hindsight.py`) with the partners:
   each sends the goals the joint trajectory achieved and when; once every report arrived (or
   the hindsight deadline passed) the episode goes to the learner, relabelled by HER with its
   own and its partners' achieved goals (with `paid_by: env`, also the cooperative goals those
   reports imply together: `complete_events`). Each report is applied once (the engine deduplicates).
   The node does not wait for it: the next episode runs meanwhile.

Episode ids are the lockstep step at which the episode starts: the same number on every agent,
increasing, so negotiation and hindsight messages of an episode meet on every side.

Time inside an episode: transition `t` (t = 0, 1, ...) is the one completed by the observation
of lockstep step `start + t + 1`; its achieved goals are those in that observation's infos (with
autoreset, the observation that starts the next episode carries the infos of the last step).
Rows go to the learner up to the transition that earned the reward (the reference's agent is
done there); achieved goals are recorded for every step of the episode, for hindsight.

The team of an episode: the topology neighbours that are active in it (goal_lines may draw 2
agents of a population per episode); the negotiation floods for the diameter of the team's
connected part. An agent whose team is empty decides alone (its own goal, not timed out).

Talking in env steps (`protocols.talk: env_steps`, `in_steps`): nothing holds the episode start.
The node passes env steps as the time (`now`), the engines' deadlines count steps
(`negotiation.round_timeout_steps`, `hindsight.timeout_steps`), and an episode starts at once on
the agent's own proposal (its goal module's draw) while the team negotiates; the negotiated goal
replaces it when it lands (`negotiation/decision_age_steps`: steps from the episode's start; the
rows acted on the own proposal are stored under the goal the episode ends with, as off-policy
rows). A negotiation still open when its episode ends is closed then, as its deadlines would
(`negotiation/cut_by_episode_end`), so that no decision outlives its episode; one that lands after
the agent was rewarded changes nothing (`negotiation/decided_after_reward`). The supervisor and
the env's payment name a goal before the first step, so they stay with talk that is free.

Only one env copy (the run schema refuses more). The node feeds: `on_episode_start`,
`observe` (through `GoalConditionedLearner`), `on_observation`, peer messages, timers,
neighbour up/down; it sends the returned peer messages, `take_ready()` to the env server, and
writes `take_records()` to its metrics.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from agent_node.goals.config import GoalsConfig
from agent_node.goals.modules import (
    GoalModule,
    LearningProgressGoals,
    NegotiatedGoals,
    PAlignedGoals,
    SupervisorAssignment,
    UniformGoals,
)
from agent_node.goal_agent import SessionLearner, build_goal_agent
from agent_node.plugins import GoalSpace
from agent_node.roles import Transition
from protocols.codec import messages as m
from protocols.engines.engine import Outgoing
from protocols.goal_spaces.goal_space import events_reports_add, goal_reward, goal_set, num_goals
from protocols.engines.hindsight import HindsightEngine, HindsightReport, HindsightRequest, HindsightResult
from protocols.engines.negotiation import GoalCommit, NegotiationEngine, NegotiationProposal
from protocols.seeds import derive_seed
from protocols.run.settings import SUPERVISOR_NODE_ID
from protocols.engines.supervision import GoalAssignment, SupervisionEngine, SupervisionRequest
from protocols.engines.team_negotiation import TeamNegotiationEngine, TeamNegotiationOutcome, TeamProposals
from protocols.engines.topology import Topology

log = logging.getLogger("agent_node.goals")

STAY = 0  # goal_lines' action 0: stay in place


class GoalAgent(Protocol):
    """What the session needs from the goal-conditioned learner (GoalDQNAgent)."""

    rows_relabelled: int

    def act(self, obs: np.ndarray, goals: np.ndarray, explore: bool = True) -> np.ndarray: ...

    def observe_episode(self, obs, actions, next_obs, goal: int, events, extra_goal_events=()) -> None: ...


@dataclass
class GoalEpisode:
    """One episode of this agent, from its start to its end."""

    episode: int  # the lockstep step at which it started
    goal: int
    team: list[str]
    obs: list[np.ndarray] = field(default_factory=list)
    actions: list[Any] = field(default_factory=list)
    next_obs: list[np.ndarray] = field(default_factory=list)
    events: list[tuple[int, int]] = field(default_factory=list)  # (transition index, goal achieved after it)
    reward: float = 0.0
    rewarded_at: int | None = None
    rows_closed: bool = False  # rewarded, or a step without a transition (later rows would not line up)
    cut_by_env: bool = False  # the observation arrived before the negotiation had decided
    # Talking in env steps: the step at which the team's goal replaced the own proposal (None:
    # not yet, or decided alone), and whether the episode ended before the team had decided.
    decided_at: int | None = None
    cut_at_end: bool = False
    decided_after_reward: bool = False
    supervision: dict[str, float] = field(default_factory=dict)  # supervisor mode: how the goal came


@dataclass
class _Decision:
    """The goal for the episode starting at `episode`, once known."""

    episode: int
    team: list[str]
    rounds: int
    announced: bool  # the server holds the start for goal.ready (env.episode_start came)
    goal: int | None = None
    ready_sent: bool = False
    own_goal: int | None = None  # this agent's proposal (talking in env steps: acted on until the goal lands)


class GoalSession:
    def __init__(
        self,
        *,
        node_id: str,
        env_agent: str,
        agent: GoalAgent,
        module: GoalModule | None,
        topology: Topology,
        env_agents: Sequence[str],
        reward_fn: Callable[[int, np.ndarray], float],
        negotiation: NegotiatedGoals | None = None,
        hindsight: HindsightEngine | None = None,
        supervision: SupervisionEngine | None = None,
        supervisor_draws: SupervisorAssignment | None = None,
        freeze_when_rewarded: bool = True,
        paid_by_env: bool = False,
        num_landmarks: int | None = None,
        in_steps: bool = False,
    ) -> None:
        if (supervision is None) != (supervisor_draws is None):
            raise ValueError("supervision and supervisor_draws go together")
        if (module is None) == (supervision is None):
            raise ValueError("a goal session has either a goal module or supervision, not both or neither")
        if in_steps and (supervision is not None or paid_by_env):
            raise ValueError("talking in env steps holds no episode start: the supervisor and the env's payment need one")
        if len(env_agents) != topology.num_nodes:
            raise ValueError(
                f"the env has {len(env_agents)} possible agents {list(env_agents)}, the topology {topology.num_nodes} nodes"
            )
        self.node_id = node_id
        self.env_agent = env_agent
        self.agent = agent
        self.module = module
        self.topology = topology
        self.node_of_env_agent = dict(zip(env_agents, topology.nodes))  # agent_i drives possible_agents[i]
        self.reward_fn = reward_fn
        self.negotiation = negotiation
        self.hindsight = hindsight
        self.supervision = supervision
        self.supervisor_draws = supervisor_draws
        self.freeze_when_rewarded = freeze_when_rewarded
        if paid_by_env and num_landmarks is None:
            raise ValueError("paid_by_env needs num_landmarks (to rebuild the cooperative goals partners imply)")
        self.paid_by_env = paid_by_env
        self.num_landmarks = num_landmarks
        self.in_steps = in_steps
        self.decision: _Decision | None = None
        self.current: GoalEpisode | None = None
        self._step_now = 0  # talking in env steps: the step of the latest call (their `now`)
        self.sharing: GoalEpisode | None = None  # the episode waiting for its partners' reports
        self._pending_row: Transition | None = None
        self._ready: deque[int] = deque()
        self._records: list[dict[str, float]] = []
        self.episodes_finished = 0
        self.reports_applied = 0
        self.relabelled_rows = 0

    # ------------------------------------------------------------------ episode start

    def on_episode_start(self, announcement: m.EnvEpisodeStart, now: float) -> list[Outgoing]:
        """The env server announces an episode start and holds its first observation."""
        self._check_one_copy(announcement.episode_start, "env.episode_start")
        if not bool(announcement.episode_start[0]):
            return []
        active = {agent: bool(np.asarray(rows)[0]) for agent, rows in announcement.active.items()}
        if not active.get(self.env_agent, False):
            self.decision = None  # this agent sits the episode out
            return []
        return self._decide(announcement.step, active, now, announced=True)

    def _decide(self, episode: int, active: Mapping[str, bool], now: float, *, announced: bool) -> list[Outgoing]:
        team, rounds, team_size = self._team(active)
        self.decision = decision = _Decision(episode, team, rounds, announced)
        outgoing: list[Outgoing] = []
        if self.supervision is not None:
            draw = self.supervisor_draws.assign(episode, [self.node_id, *team])[self.node_id]
            outgoing = self.supervision.start(SupervisionRequest(episode, team, draw), now)
        elif self.negotiation is not None:
            request = self.negotiation.request(episode, team, rounds, team_size)
            decision.own_goal = request.own_goal
            outgoing = self.negotiation.engine.start(request, now)
        else:
            decision.goal = self.module.propose(episode)
        self._collect_decision()
        return outgoing

    @property
    def _coordination(self) -> NegotiationEngine | TeamNegotiationEngine | SupervisionEngine | None:
        """The engine that decides goals with the peers, if any."""
        if self.supervision is not None:
            return self.supervision
        return self.negotiation.engine if self.negotiation is not None else None

    def team(self, active: Mapping[str, bool]) -> tuple[list[str], int]:
        """This episode's team neighbours (topology neighbours that play too) and the number of
        flooding rounds: the diameter of the connected part of the playing agents' graph that
        holds this node (1 at least)."""
        neighbours, rounds, _ = self._team(active)
        return neighbours, rounds

    def _team(self, active: Mapping[str, bool]) -> tuple[list[str], int, int]:
        """`team`, and how many agents the connected part holds (this one included)."""
        playing = {self.node_of_env_agent[agent] for agent, plays in active.items() if plays and agent in self.node_of_env_agent}
        index = {node: i for i, node in enumerate(self.topology.nodes)}
        adjacency = {node: [self.topology.nodes[j] for j in self.topology.neighbours(index[node]) if self.topology.nodes[j] in playing]
                     for node in playing}
        component = _reachable(self.node_id, adjacency)
        diameter = max(max(_reachable(node, adjacency).values()) for node in component)
        return sorted(adjacency.get(self.node_id, [])), max(1, diameter), len(component)

    def _collect_decision(self) -> None:
        """Take the negotiated goal once decided; queue goal.ready when the server waits for it."""
        decision = self.decision
        if decision is None:
            return
        engine = self._coordination
        if decision.goal is None and engine is not None and engine.done and engine.result.episode == decision.episode:
            decision.goal = engine.result.goal
            if self.in_steps:
                self._goal_landed(decision)
        if decision.goal is not None and decision.announced and not decision.ready_sent:
            decision.ready_sent = True
            self._ready.append((decision.episode, decision.goal if self.paid_by_env else None))

    def _goal_landed(self, decision: _Decision) -> None:
        """Talking in env steps: the team's goal replaces the own proposal in the episode it was
        for (unless the agent was rewarded already: that episode is over for it)."""
        episode = self.current
        if episode is None or episode.episode != decision.episode or episode.decided_at is not None or episode.cut_at_end:
            return  # another episode's, or closed at its episode's end: acted on the own proposal throughout
        episode.decided_at = self._step_now
        if episode.rewarded_at is not None:
            episode.decided_after_reward = True
        else:
            episode.goal = int(decision.goal)

    def take_ready(self) -> list[tuple[int, int | None]]:
        """The episode starts (lockstep steps) to send `goal.ready` for, oldest first, each with
        the goal the env is to pay (None: the agent computes its reward)."""
        ready, self._ready = list(self._ready), deque()
        return ready

    # ------------------------------------------------------------------ peers and timers

    message_types = (NegotiationProposal, TeamProposals, GoalCommit, HindsightReport, GoalAssignment)

    def on_message(self, sender: str, message: Any, now: float) -> list[Outgoing]:
        self._clock(now)
        if isinstance(message, HindsightReport):
            if self.hindsight is None:
                log.warning("hindsight report from %s, but this run shares no hindsight", sender)
                return []
            outgoing = self.hindsight.on_message(sender, message, now)
            self._store_if_shared()
            return outgoing
        engine = self.supervision if isinstance(message, GoalAssignment) else (
            self.negotiation.engine if self.negotiation is not None else None)
        if engine is None:
            log.warning("%s from %s, but this agent's goals.selection does not take it", type(message).__name__, sender)
            return []
        outgoing = engine.on_message(sender, message, now)
        self._collect_decision()
        return outgoing

    def on_timer(self, now: float) -> list[Outgoing]:
        self._clock(now)
        outgoing: list[Outgoing] = []
        if self._coordination is not None:
            outgoing += self._coordination.on_timer(now)
            self._collect_decision()
        if self.hindsight is not None:
            outgoing += self.hindsight.on_timer(now)
            self._store_if_shared()
        return outgoing

    def next_deadline(self) -> float | None:
        deadlines = []
        if self._coordination is not None and (due := self._coordination.next_deadline()) is not None:
            deadlines.append(due)
        if self.hindsight is not None and (due := self.hindsight.next_deadline()) is not None:
            deadlines.append(due)
        return min(deadlines) if deadlines else None

    def on_neighbour_down(self, node: str, now: float) -> list[Outgoing]:
        outgoing: list[Outgoing] = []
        if self._coordination is not None:
            outgoing += self._coordination.on_neighbour_down(node, now)
            self._collect_decision()
        if self.hindsight is not None:
            outgoing += self.hindsight.on_neighbour_down(node, now)
            self._store_if_shared()
        return outgoing

    def on_neighbour_up(self, node: str, now: float) -> list[Outgoing]:
        return []  # a neighbour back up takes part from the next episode's team

    def _clock(self, now: float) -> None:
        if self.in_steps:
            self._step_now = int(now)

    # ------------------------------------------------------------------ acting and observing

    def act(self, obs: np.ndarray, explore: bool) -> np.ndarray:
        """Actions for this agent's (1, obs_dim) observation, conditioned on the episode's goal."""
        episode = self.current
        if episode is None or (self.freeze_when_rewarded and episode.rewarded_at is not None):
            return np.full(len(obs), STAY, dtype=np.int64)  # sitting out, or done once rewarded
        return self.agent.act(obs, np.full(len(obs), episode.goal), explore=explore)

    def observe(self, transition: Transition) -> None:
        """The transition the node assembled from the observation `on_observation` gets next."""
        self._pending_row = transition

    def on_observation(self, message: m.EnvObservation, now: float) -> list[Outgoing]:
        """A training observation, after its transition went through `observe`: record the
        achieved goals and the reward, end the episode that ended, begin the one that starts."""
        self._check_one_copy(message.episode_start, "env.observation")
        self._clock(now)
        row, self._pending_row = self._pending_row, None
        outgoing: list[Outgoing] = []
        agent = self.env_agent
        episode = self.current
        if episode is not None and message.step > episode.episode:
            t = message.step - episode.episode - 1
            achieved = self._achieved(message)
            episode.events += [(t, int(goal)) for goal in achieved]
            if not episode.rows_closed:
                if row is None or len(episode.actions) != t:
                    episode.rows_closed = True  # a step without our transition: later rows would not line up
                else:
                    episode.obs.append(row.obs[0])
                    episode.actions.append(row.action[0])
                    episode.next_obs.append(row.next_obs[0])
            if episode.rewarded_at is None:
                if self.paid_by_env:
                    reward = float(np.asarray(message.rewards[agent])[0])
                    if reward > 0:  # the env's word that the goal was achieved at t
                        episode.events.append((t, episode.goal))
                else:
                    reward = self.reward_fn(episode.goal, achieved)
                if reward > 0:
                    episode.reward, episode.rewarded_at, episode.rows_closed = reward, t, True
            ended = bool(np.asarray(message.terminated[agent])[0] or np.asarray(message.truncated[agent])[0])
            if ended or bool(message.episode_start[0]):
                outgoing += self._end_episode(now)
        if bool(message.episode_start[0]) and not message.run_finished:
            outgoing += self._begin_episode(message, now)
        return outgoing

    def _achieved(self, message: m.EnvObservation) -> np.ndarray:
        infos = message.infos.get(self.env_agent, {})
        if "achieved_goals" not in infos:
            raise ValueError(
                f"env.observation of step {message.step} has no infos['achieved_goals'] for {self.env_agent}: "
                "the env section must forward it (env.forward_infos: [achieved_goals])"
            )
        return np.asarray(infos["achieved_goals"][0], dtype=np.int64)

    def _begin_episode(self, message: m.EnvObservation, now: float) -> list[Outgoing]:
        step = message.step
        active = {agent: bool(np.asarray(rows)[0]) for agent, rows in message.active.items()}
        if self.in_steps:
            # Who else plays comes only with a held start's announcement; talking in env steps the
            # run schema allows only envs where every agent plays every episode.
            active = {**{agent: True for agent in self.node_of_env_agent}, **active}
        if not active.get(self.env_agent, False):
            self.current, self.decision = None, None
            return []
        outgoing: list[Outgoing] = []
        decision = self.decision
        if decision is None or decision.episode != step:
            # No announcement for this start (no hold): decide now.
            outgoing += self._decide(step, active, now, announced=False)
            decision = self.decision
        if self.in_steps:
            # Nothing holds the start: act on the own proposal until the team's goal lands.
            goal = decision.goal if decision.goal is not None else decision.own_goal
            self.current = GoalEpisode(episode=step, goal=int(goal), team=list(decision.team))
            if decision.goal is not None and decision.own_goal is not None:
                self.current.decided_at = step  # decided at once (alone, or every round closed already)
            return outgoing
        cut_by_env = decision.goal is None
        if cut_by_env:
            # The server started before the negotiation ended (its hold deadline): close the
            # rounds as their deadlines would, with what was heard by now.
            engine = self._coordination
            while not engine.done:
                outgoing += engine.on_timer(engine.next_deadline())
            decision.ready_sent = True  # the observation is out: no goal.ready any more
            self._collect_decision()
        self.current = GoalEpisode(episode=step, goal=int(decision.goal), team=list(decision.team), cut_by_env=cut_by_env)
        if self.supervision is not None:
            self.current.supervision = {**self.supervision.metrics(), "supervision/cut_by_env": float(cut_by_env)}
        return outgoing

    # ------------------------------------------------------------------ episode end

    def _end_episode(self, now: float) -> list[Outgoing]:
        outgoing: list[Outgoing] = []
        if self.in_steps and self.decision is not None and self.decision.goal is None \
                and self.decision.episode == self.current.episode and self._coordination is not None:
            # Talking in env steps: no decision outlives its episode; close the rounds with what was heard.
            self.current.cut_at_end = True
            engine = self._coordination
            while not engine.done:
                outgoing += engine.on_timer(engine.next_deadline())
            self._collect_decision()
        episode, self.current = self.current, None
        self.episodes_finished += 1
        record = {
            "goals/episode": float(episode.episode),
            "goals/goal": float(episode.goal),
            "goals/reward": episode.reward,
            "goals/success": float(episode.reward > 0),
            "goals/team_neighbours": float(len(episode.team)),
            "goals/rows": float(len(episode.actions)),
        }
        if self.module is not None:
            self.module.observe_outcome(episode.episode, episode.goal, episode.reward)
        record.update(episode.supervision)
        if self.negotiation is not None:
            negotiated = self.negotiation.engine.records[-1] if self.negotiation.engine.records else None
            if negotiated is not None and negotiated.outcome.episode == episode.episode:
                record.update(_negotiation_record(negotiated, episode.cut_by_env, self.in_steps))
            if self.in_steps:
                record.update({
                    "negotiation/cut_by_episode_end": float(episode.cut_at_end),
                    "negotiation/decided_after_reward": float(episode.decided_after_reward),
                })
                if episode.decided_at is not None:
                    record["negotiation/decision_age_steps"] = float(episode.decided_at - episode.episode)
        self._records.append(record)
        if self.hindsight is None or not episode.team:
            self._store(episode, None)
            return outgoing
        if self.sharing is not None:
            # The previous episode's reports are overdue (its deadline has not passed yet):
            # close it now with what arrived.
            self.hindsight.on_timer(self.hindsight.next_deadline())
            self._store_if_shared()
        self.sharing = episode
        outgoing += self.hindsight.start(HindsightRequest(episode.episode, episode.team, list(episode.events)), now)
        self._store_if_shared()
        return outgoing

    def _store_if_shared(self) -> None:
        if self.sharing is not None and self.hindsight.done and self.hindsight.result.episode == self.sharing.episode:
            episode, self.sharing = self.sharing, None
            self._store(episode, self.hindsight.result)

    def _store(self, episode: GoalEpisode, shared: HindsightResult | None) -> None:
        """The episode goes to the learner: its rows with the pursued goal, and HER's relabelled
        copies over its own and (when shared) its partners' achieved goals."""
        before = self.agent.rows_relabelled
        partner_events = [event for events in shared.from_partners.values() for event in events] if shared else []
        if shared is not None and self.paid_by_env:
            # Under the env's (joint) reward, the landmarks partners touched at the step this
            # agent touched another are a cooperative goal achieved: the reports imply it.
            partner_events = events_reports_add(episode.events, partner_events, self.num_landmarks)
        if episode.actions:
            self.agent.observe_episode(
                np.asarray(episode.obs), np.asarray(episode.actions), np.asarray(episode.next_obs),
                episode.goal, episode.events, extra_goal_events=partner_events,
            )
        relabelled = self.agent.rows_relabelled - before
        self.relabelled_rows += relabelled
        record = {"goals/episode": float(episode.episode), "her/rows_relabelled": float(relabelled),
                  "her/rows_relabelled_total": float(self.relabelled_rows)}
        if shared is not None:
            self.reports_applied += len(shared.from_partners)
            own = set(episode.events)
            record.update({
                "hindsight/reports_applied": float(len(shared.from_partners)),
                "hindsight/reports_applied_total": float(self.reports_applied),
                "hindsight/partners_missing": float(len(shared.missing)),
                "hindsight/events_from_partners_only": float(len(set(partner_events) - own)),
                "hindsight/duplicates_ignored": float(self.hindsight.duplicates_ignored),
                "hindsight/late_dropped": float(self.hindsight.late_dropped),
            })
        self._records.append(record)

    def take_records(self) -> list[dict[str, float]]:
        records, self._records = self._records, []
        return records

    @staticmethod
    def _check_one_copy(episode_start: np.ndarray, what: str) -> None:
        if np.asarray(episode_start).shape != (1,):
            raise ValueError(f"{what}: goal agents run on one env copy (env.num_copies: 1), got {np.asarray(episode_start).shape[0]} copies")


def _negotiation_record(negotiated, cut_by_env: bool, in_steps: bool = False) -> dict[str, float]:
    outcome = negotiated.outcome
    known = [aligned for aligned in negotiated.aligned_per_edge.values() if aligned is not None]
    record = {
        "negotiation/rounds_used": float(outcome.rounds_used),
        "negotiation/rounds_closed_by_deadline": float(outcome.rounds_closed_by_deadline),
        # the engine's clock: env steps when talking takes them, else seconds
        "negotiation/duration_steps" if in_steps else "negotiation/duration_s": float(outcome.duration_s),
        "negotiation/timed_out": float(outcome.timed_out),
        "negotiation/led": float(outcome.led),
        "negotiation/messages_sent": float(negotiated.messages_sent),
        "negotiation/messages_received": float(negotiated.messages_received),
        "negotiation/edges_known": float(len(known)),
    }
    if not in_steps:  # (talking in env steps nothing holds the start, so nothing cuts it)
        record["negotiation/cut_by_env"] = float(cut_by_env)
    if known:
        record["negotiation/aligned"] = float(all(known))  # every team edge of this agent agrees
        record["negotiation/aligned_edges_fraction"] = float(np.mean(known))
    if isinstance(outcome, TeamNegotiationOutcome):
        # Whether this agent heard every team member's proposal (if not, it decided on part of
        # the table and agrees with the team only if the winner's proposal reached it).
        record["negotiation/team_complete"] = float(outcome.team_complete)
        record["negotiation/proposals_known"] = float(outcome.proposals_known)
        record["negotiation/team_size"] = float(outcome.team_size)
    return record


def _reachable(source: str, adjacency: Mapping[str, list[str]]) -> dict[str, int]:
    """Breadth-first distances from `source` over `adjacency`."""
    distances = {source: 0}
    frontier = [source]
    while frontier:
        nxt = []
        for node in frontier:
            for neighbour in adjacency.get(node, []):
                if neighbour not in distances:
                    distances[neighbour] = distances[node] + 1
                    nxt.append(neighbour)
        frontier = nxt
    return distances


# ------------------------------------------------------------------------------------------
# The learner the node drives, and how both are built
# ------------------------------------------------------------------------------------------


class GoalConditionedLearner(SessionLearner):
    """The learner of a goal-lines agent (agent_node/goal_agent.py's SessionLearner); its
    checkpoints also hold what picks its goals."""

    session: GoalSession

    def state_dict(self) -> dict[str, Any]:
        """The node's checkpoint of this agent: the network, and what picks its goals (the goal
        module's windows and generators, the supervisor's draws, the negotiation engine's matrix,
        generator and pending matrix update)."""
        session = self.session
        state = {"goal_dqn": self.agent.state_dict()}
        if session.module is not None and hasattr(session.module, "state_dict"):
            state["goal_module"] = session.module.state_dict()
        if session.supervisor_draws is not None:
            state["supervisor_draws"] = session.supervisor_draws.state_dict()
        if session.negotiation is not None:
            # Plain lists, not ndarrays: the node loads checkpoints with weights_only=True, which
            # refuses numpy arrays (a matrix saved as one made the checkpoint unloadable).
            state["negotiation"] = session.negotiation.engine.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """A checkpoint from before goal modules were saved has no `goal_module` /
        `supervisor_draws`: those then start as built (fresh windows, generators at their seed);
        one from before the negotiation engine's state was saved has only its matrix."""
        session = self.session
        self.agent.load_state_dict(state["goal_dqn"])
        for key, part in (("goal_module", session.module), ("supervisor_draws", session.supervisor_draws)):
            if part is None or not hasattr(part, "load_state_dict"):
                continue
            if key in state:
                part.load_state_dict(state[key])
            else:
                log.info("checkpoint has no %s state: %s starts afresh", key, type(part).__name__)
        if session.negotiation is not None:
            if "negotiation" in state:
                session.negotiation.engine.load_state_dict(state["negotiation"])
            elif "negotiation_matrix" in state:
                session.negotiation.engine.matrix = np.asarray(state["negotiation_matrix"], dtype=np.float64)
                log.info("checkpoint has the negotiation matrix only: messages and leaders are drawn afresh")


def build_goal_module(goals: GoalsConfig, allowed: np.ndarray, *, run_seed: int, node_index: int, selection: str) -> GoalModule:
    """The module drawing this agent's own goal (for negotiation: its proposal)."""
    own_seed = derive_seed(run_seed, node_index, "goals")
    if selection == "uniform":
        return UniformGoals(allowed, seed=own_seed)
    if selection == "learning_progress":
        return LearningProgressGoals(allowed, seed=own_seed, window=goals.lp_window, epsilon=goals.lp_epsilon)
    if selection == "p_aligned":
        # One team stream for the whole run: every agent seeds it the same way (index 0).
        return PAlignedGoals(allowed, goals.p, team_seed=derive_seed(run_seed, 0, "goals/p_aligned_team"), own_seed=own_seed)
    raise ValueError(f"goals.selection {selection!r} has no goal module in a node")


def build_goal_session(
    goals: GoalsConfig,
    learner_config,
    *,
    node_id: str,
    node_index: int,
    run_seed: int,
    env_agent: str,
    possible_agents: Sequence[str],
    obs_dim: int,
    num_actions: int,
    topology: Topology,
    in_steps: bool = False,
) -> tuple[GoalSession, GoalConditionedLearner]:
    """The session and the learner of one goal agent (imports torch: the learner's). AMIGo's
    cell goals have a session of their own (agent_node/amigo/session.py: build_amigo_session)."""
    total = num_goals(goals.num_landmarks)
    allowed = goal_set(goals.goal_set, goals.num_landmarks)

    def reward_fn(goal: int, achieved: np.ndarray) -> float:
        return goal_reward(goal, achieved, goals.num_landmarks, goals.beta)

    agent = build_goal_agent(learner_config, obs_dim, num_actions, derive_seed(run_seed, node_index, "learner"),
                             GoalSpace(total, reward_fn))
    negotiation = None
    if goals.selection == "negotiation":
        settings = goals.negotiation
        # Talking in env steps, the engines' time is the step: their deadlines count steps.
        round_timeout = settings.round_timeout_steps if in_steps else settings.round_timeout_s
        if settings.protocol == "team_flood":
            engine = TeamNegotiationEngine(node_id, total, seed=derive_seed(run_seed, node_index, "negotiation"),
                                           allowed_goals=allowed.tolist(), round_timeout_s=round_timeout,
                                           extra_rounds=settings.extra_rounds)
        else:
            engine = NegotiationEngine(
                node_id, total, seed=derive_seed(run_seed, node_index, "negotiation"), allowed_goals=allowed.tolist(),
                num_messages=settings.num_messages, temperature=settings.temperature, learning_rate=settings.learning_rate,
                update_every_episodes=settings.update_every_episodes, round_timeout_s=round_timeout,
            )
        inner = build_goal_module(goals, allowed, run_seed=run_seed, node_index=node_index, selection=goals.inner or "uniform")
        negotiation = NegotiatedGoals(engine, inner)
        module: GoalModule = negotiation
    elif goals.selection == "supervisor":
        module = None
    else:
        module = build_goal_module(goals, allowed, run_seed=run_seed, node_index=node_index, selection=goals.selection)
    supervision = supervisor_draws = None
    if goals.selection == "supervisor":
        # With an external supervisor node these draws are only this agent's fallback goals.
        supervision = SupervisionEngine(node_id, timeout_s=goals.supervisor.timeout_s,
                                        external_supervisor=SUPERVISOR_NODE_ID if goals.supervisor.external else None)
        supervisor_draws = SupervisorAssignment(allowed, seed=derive_seed(run_seed, node_index, "goals/supervisor"))
    hindsight = None
    if goals.hindsight is not None:
        hindsight = HindsightEngine(node_id, timeout_s=goals.hindsight.timeout_steps if in_steps else goals.hindsight.timeout_s)
    session = GoalSession(
        node_id=node_id, env_agent=env_agent, agent=agent, module=module, topology=topology,
        env_agents=possible_agents, reward_fn=reward_fn, negotiation=negotiation, hindsight=hindsight,
        supervision=supervision, supervisor_draws=supervisor_draws, freeze_when_rewarded=goals.freeze_when_rewarded,
        paid_by_env=goals.paid_by == "env", num_landmarks=goals.num_landmarks, in_steps=in_steps,
    )
    return session, GoalConditionedLearner(session)
