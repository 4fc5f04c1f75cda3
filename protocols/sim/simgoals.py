"""The goal protocols for many simulated agents: team negotiation and hindsight sharing under faults.

`protocols/sim/simplan.py` runs the consensus engines at scale; this module does the same for the two
protocols agents speak around an episode (ALGORITHMS.md section 2), unchanged, in the network
simulator (`protocols/sim/netsim.py`):

- `team_flood` (protocols/engines/team_negotiation.py): before each episode every agent proposes a goal
  with a lottery priority and floods the proposals over the topology for its diameter (plus
  `extra_rounds`); each agent then follows the highest priority it heard;
- `hindsight` (protocols/engines/hindsight.py): after each episode every agent sends each neighbour the
  goals it saw achieved (a `HindsightReport`) and waits for theirs, up to `timeout_s`.

A plan runs `episodes` episodes one after another over links that lose and delay messages
(`link`, by default 30% loss and Pareto delays, as simplan's fault plan), with `crash_fraction`
of the agents crashed for the whole plan (dead processes: they never answer; the others are not
told, so each waits out its rounds or its timeout for them). Each agent starts each episode a
few milliseconds apart (`stagger_s`), as processes do.

Measured per episode and averaged (`GoalPlanResult`): for the team flood, the fraction of live
agents that follow their live team's winner (the highest priority among the live agents they are
connected to through live agents: what every one of them would follow with no loss; crashed
agents can cut a sparse graph such as a ring into several such teams, counted in
`live_components`), whether the whole live team agreed, the fraction that heard no
one (`timed_out`), negotiation time against its bound; for hindsight, the fraction of reports
between live neighbours that were applied and that were missing at the deadline. Messages and
bytes (`netsim.approximate_size`) per live agent per episode, virtual, wall and CPU seconds.

Invariants checked (`violations`, empty when fine):

- team flood: an agent's goal is the own goal of the agent it says it follows (no goal is made
  up or mixed between proposals); nobody follows a crashed agent (its proposal never left it);
  every negotiation decides within `rounds * round_timeout_s` of its start;
- hindsight: every partner's events an agent applied are exactly the events that partner saw (no
  report altered or mixed up), nobody applies a report from a crashed agent, no report is applied
  twice, and an agent's merged events hold all of its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import networkx as nx
import numpy as np

from protocols.engines.engine import Outgoing
from protocols.engines.hindsight import HindsightEngine, HindsightRequest
from protocols.net.links import LinkConfig
from protocols.engines.negotiation import NegotiationRequest
from protocols.sim.netsim import NetworkSimulator, approximate_size, same_link_everywhere
from protocols.engines.team_negotiation import TeamNegotiationEngine
from protocols.engines.topology import Topology

GoalEngineKind = Literal["team_flood", "hindsight"]
NUM_GOALS = 15  # goal_lines L = 6: its 15 cooperative goals
EPISODE_GAP_S = 1.0  # virtual time between one episode's last event and the next episode's first start
# Slack on the decision bound: a round's deadline timer fires at the deadline, and the decision
# follows in the same event; only float rounding can put it later.
BOUND_SLACK_S = 1e-6


@dataclass
class GoalPlanResult:
    engine: GoalEngineKind
    agents: int
    live_agents: int
    episodes: int
    # team flood
    live_components: int = 1  # connected groups of live agents (crashed agents can cut the graph)
    follow_winner: float = float("nan")  # live agents following their live team's winner, mean over episodes
    team_aligned: float = float("nan")  # episodes in which every live agent pursued one goal
    timed_out: float = float("nan")
    decision_s_mean: float = float("nan")
    decision_s_max: float = float("nan")
    decision_bound_s: float = float("nan")
    # hindsight
    reports_applied: float = float("nan")  # of the reports live neighbours sent each other
    reports_missing: float = float("nan")
    # both
    messages_per_agent: float = 0.0  # per live agent and episode
    bytes_per_agent: float = 0.0
    simulated_s: float = 0.0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    violations: list[str] = field(default_factory=list)


class _Counted:
    """An engine whose outgoing messages are counted and sized on their way to the simulator."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.messages = 0
        self.bytes = 0

    def _count(self, outgoing: list[Outgoing]) -> list[Outgoing]:
        self.messages += len(outgoing)
        self.bytes += sum(approximate_size(message) for _, message in outgoing)
        return outgoing

    def start(self, request: Any, now: float) -> list[Outgoing]:
        return self._count(self.engine.start(request, now))

    def on_message(self, sender: str, message: object, now: float) -> list[Outgoing]:
        return self._count(self.engine.on_message(sender, message, now))

    def on_timer(self, now: float) -> list[Outgoing]:
        return self._count(self.engine.on_timer(now))

    def next_deadline(self) -> float | None:
        return self.engine.next_deadline()


def run_goal_plan(topology: Topology, engine: GoalEngineKind, *, seed: int = 0, episodes: int = 3,
                  link: LinkConfig | None = None, crash_fraction: float = 0.05, round_timeout_s: float = 0.5,
                  extra_rounds: int = 1, hindsight_timeout_s: float = 1.0, stagger_s: float = 0.002) -> GoalPlanResult:
    """Simulate `episodes` runs of `engine` on every live agent of `topology` (see the module docstring)."""
    if engine not in ("team_flood", "hindsight"):
        raise ValueError(f"engine: expected 'team_flood' or 'hindsight', got {engine!r}")
    if not topology.is_connected():
        raise ValueError("the goal protocols run on a connected topology")
    link = LinkConfig(delay_s=0.01, delay_distribution="pareto", pareto_shape=1.5, loss=0.3) if link is None else link
    rng = np.random.default_rng([seed, 7])
    nodes = list(topology.nodes)
    n = len(nodes)
    crashed = set(rng.choice(nodes, size=int(round(crash_fraction * n)), replace=False).tolist()) if crash_fraction > 0 else set()
    live = [node for node in nodes if node not in crashed]
    neighbours = {node: [nodes[j] for j in topology.neighbours(i)] for i, node in enumerate(nodes)}
    rounds = topology.diameter()
    alive_graph = topology.to_networkx().subgraph([i for i, node in enumerate(nodes) if node not in crashed])
    components = list(nx.connected_components(alive_graph))
    team_of = {nodes[i]: index for index, component in enumerate(components) for i in component}
    if engine == "team_flood":
        engines = {node: _Counted(TeamNegotiationEngine(node, NUM_GOALS, seed=derived_seed(seed, i), round_timeout_s=round_timeout_s,
                                                        extra_rounds=extra_rounds))
                   for i, node in enumerate(nodes)}
    else:
        engines = {node: _Counted(HindsightEngine(node, timeout_s=hindsight_timeout_s)) for node in nodes}
    sim = NetworkSimulator(engines, same_link_everywhere(link), seed=seed)
    for node in crashed:
        sim.crash(node)
    result = GoalPlanResult(engine=engine, agents=n, live_agents=len(live), episodes=episodes, live_components=len(components))
    wall, cpu = time.perf_counter(), time.process_time()
    per_episode: list[dict[str, float]] = []  # one row of measures per episode
    for episode in range(episodes):
        begun_at = sim.now + EPISODE_GAP_S  # after the previous episode's last message and timer
        starts = {node: begun_at + stagger_s * float(rng.random()) for node in live}
        if engine == "team_flood":
            own_goals = {node: int(rng.integers(NUM_GOALS)) for node in live}
            for node in live:
                request = NegotiationRequest(episode, own_goals[node], neighbours[node], rounds, team_size=n)
                sim.schedule(starts[node], lambda node=node, request=request: sim.call(node, lambda e, now: e.start(request, now)))
            sim.run()
            per_episode.append(_score_flood(engines, live, crashed, team_of, own_goals, episode, rounds + extra_rounds,
                                            round_timeout_s, result.violations))
        else:
            seen = {node: _events(rng) for node in live}
            for node in live:
                request = HindsightRequest(episode, neighbours[node], seen[node])
                sim.schedule(starts[node], lambda node=node, request=request: sim.call(node, lambda e, now: e.start(request, now)))
            sim.run()
            per_episode.append(_score_hindsight(engines, live, crashed, neighbours, seen, starts, episode,
                                                hindsight_timeout_s, result.violations))
    result.wall_s, result.cpu_s = time.perf_counter() - wall, time.process_time() - cpu
    result.simulated_s = float(sim.now)
    for key in per_episode[0]:
        setattr(result, key, float(np.mean([row[key] for row in per_episode])))
    result.decision_s_max = max((row.get("decision_s_max", float("nan")) for row in per_episode), default=float("nan"))
    result.messages_per_agent = sum(engines[node].messages for node in live) / (len(live) * episodes)
    result.bytes_per_agent = sum(engines[node].bytes for node in live) / (len(live) * episodes)
    return result


def derived_seed(seed: int, index: int) -> int:
    return 1000 * seed + index


def _events(rng: np.random.Generator) -> list[tuple[int, int]]:
    """What one agent saw achieved in an episode: a few (step, goal) events, sorted."""
    count = int(rng.integers(0, 6))
    return sorted({(int(rng.integers(40)), int(rng.integers(NUM_GOALS))) for _ in range(count)})


def _score_flood(engines, live, crashed, team_of, own_goals, episode, rounds, round_timeout_s, violations) -> dict[str, float]:
    outcomes = {node: engines[node].engine.result for node in live if engines[node].engine.done}
    for node in live:
        if node not in outcomes:
            violations.append(f"episode {episode}: {node} never decided")
    priorities = {node: engines[node].engine.priority(episode) for node in live}
    winner_of_team: dict[int, str] = {}
    for node in sorted(live, key=lambda node: (-priorities[node], node)):
        winner_of_team.setdefault(team_of[node], node)
    bound = rounds * round_timeout_s
    durations = []
    for node, outcome in outcomes.items():
        if outcome.leader in crashed:
            violations.append(f"episode {episode}: {node} follows {outcome.leader}, which is crashed")
        elif outcome.goal != own_goals[outcome.leader]:
            violations.append(f"episode {episode}: {node} pursues goal {outcome.goal}, but {outcome.leader} proposed "
                              f"{own_goals[outcome.leader]}")
        if outcome.duration_s > bound + BOUND_SLACK_S:
            violations.append(f"episode {episode}: {node} decided after {outcome.duration_s:.3f} s, over its bound {bound:.3f} s")
        durations.append(outcome.duration_s)
    return {
        "follow_winner": float(np.mean([outcome.leader == winner_of_team[team_of[node]] for node, outcome in outcomes.items()])),
        "team_aligned": float(len({outcome.goal for outcome in outcomes.values()}) == 1 and len(outcomes) == len(live)),
        "timed_out": float(np.mean([outcome.timed_out for outcome in outcomes.values()])),
        "decision_s_mean": float(np.mean(durations)),
        "decision_s_max": float(np.max(durations)),
        "decision_bound_s": bound,
    }


def _score_hindsight(engines, live, crashed, neighbours, seen, starts, episode, timeout_s, violations) -> dict[str, float]:
    applied = missing = expected = 0
    for node in live:
        engine = engines[node].engine
        if not engine.done:
            violations.append(f"episode {episode}: {node}'s hindsight never finished")
            continue
        outcome = engine.result
        live_partners = [partner for partner in neighbours[node] if partner not in crashed]
        expected += len(live_partners)
        for partner, events in outcome.from_partners.items():
            if partner in crashed:
                violations.append(f"episode {episode}: {node} applied a report from {partner}, which is crashed")
            elif sorted(map(tuple, events)) != sorted(seen[partner]):
                violations.append(f"episode {episode}: {node} applied {partner}'s events {sorted(events)}, "
                                  f"but {partner} saw {seen[partner]}")
        applied += sum(1 for partner in outcome.from_partners if partner not in crashed)
        missing += sum(1 for partner in outcome.missing if partner not in crashed)
        if any(count > 1 for count in engine.applied.values()):
            violations.append(f"episode {episode}: {node} applied a report twice")
        if not set(map(tuple, seen[node])) <= set(map(tuple, outcome.events)):
            violations.append(f"episode {episode}: {node}'s merged events lack some of its own")
    return {
        "reports_applied": applied / expected if expected else float("nan"),
        "reports_missing": missing / expected if expected else float("nan"),
    }
