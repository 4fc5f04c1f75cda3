"""The team flood (protocols/engines/team_negotiation.py): one goal for a whole team on any graph, driven
through the deterministic network simulator under loss, partitions and a crash, and by hand."""

from __future__ import annotations

import numpy as np
import pytest

from agent_node.goals.config import GoalsConfig, goal_run_problems
from env_server.config import EnvConfig
from agent_node.goals.session import GoalSession
from agent_node.goals.modules import NegotiatedGoals, UniformGoals
from protocols.codec import wire
from protocols.net.links import LinkConfig
from protocols.engines.negotiation import GoalCommit, NegotiationRequest
from protocols.sim.netsim import NetworkSimulator, same_link_everywhere
from protocols.engines.team_negotiation import TeamNegotiationEngine, TeamProposals, team_choice
from protocols.engines.topology import Topology, grid, ring
from tests.unit.test_goal_session import COOPERATIVE, RecordingAgent, _built, announcement, deliver, observation, reward_fn

NUM_GOALS = 15
ROUND_TIMEOUT_S = 0.5


def negotiate(topology: Topology, *, link: LinkConfig, seed: int, episodes: int = 1, crashed=(), partition=None,
              stagger_s: float = 0.002, episode_every_s: float = 5.0, extra_rounds: int = 0):
    """`episodes` team negotiations, one every `episode_every_s`; per episode, every live node's
    outcome. Own goals drawn per node and episode; partition: groups cut off for the whole run."""
    engines = {node: TeamNegotiationEngine(node, NUM_GOALS, seed=1000 * seed + i, round_timeout_s=ROUND_TIMEOUT_S,
                                           extra_rounds=extra_rounds)
               for i, node in enumerate(topology.nodes)}
    sim = NetworkSimulator(engines, same_link_everywhere(link), seed=seed)
    if partition is not None:
        sim.partitions.partition(partition)
    for node in crashed:
        sim.crash(node)
    rng = np.random.default_rng(seed)
    own = {(episode, node): int(rng.integers(NUM_GOALS)) for episode in range(episodes) for node in topology.nodes}
    rounds = topology.diameter()
    for episode in range(episodes):
        for i, node in enumerate(topology.nodes):
            if node in crashed:
                continue
            neighbours = [topology.nodes[j] for j in topology.neighbours(i)]
            request = NegotiationRequest(episode, own[episode, node], neighbours, rounds, team_size=topology.num_nodes)
            sim.schedule(episode * episode_every_s + i * stagger_s,
                         lambda node=node, request=request: sim.call(node, lambda engine, now: engine.start(request, now)))
        # Close the episode on every node before the next one starts (the node's end_episode).
        sim.schedule(episode * episode_every_s + episode_every_s - 0.01, lambda episode=episode: [
            engines[node].end_episode(episode, 0.0) for node in topology.nodes if node not in crashed])
    sim.run()
    outcomes = {}
    for node, engine in engines.items():
        for record in engine.records:
            outcomes.setdefault(record.outcome.episode, {})[node] = record.outcome
    return engines, outcomes, own


TOPOLOGIES = [ring(6), grid(3, 3, torus=True)]


@pytest.mark.parametrize("topology", TOPOLOGIES, ids=["ring6", "torus9"])
def test_without_loss_the_whole_team_takes_the_highest_priority_goal_in_diameter_round_trips(topology):
    engines, outcomes, own = negotiate(topology, link=LinkConfig(delay_s=0.01), seed=0, episodes=5)
    for episode, by_node in outcomes.items():
        assert set(by_node) == set(topology.nodes)
        proposals = {node: np.array([engines[node].priority(episode), own[episode, node]], np.float32) for node in topology.nodes}
        leader, goal = team_choice(proposals, np.arange(NUM_GOALS))  # the decision one omniscient node would take
        for node, outcome in by_node.items():
            assert outcome.team_complete and outcome.proposals_known == topology.num_nodes
            assert (outcome.goal, outcome.leader, outcome.led) == (goal, leader, node == leader)
            assert outcome.rounds_closed_by_deadline == 0 and not outcome.timed_out
            # Rounds paced by the neighbours' tables: at most one link delay per round after the
            # last start (the starts are staggered by 2 ms a node).
            assert outcome.duration_s <= topology.diameter() * 0.01 + topology.num_nodes * 0.002 + 1e-9
    for engine in engines.values():  # every edge measured aligned through the commits
        assert all(all(record.aligned_per_edge.values()) for record in engine.records)


@pytest.mark.parametrize("topology", TOPOLOGIES, ids=["ring6", "torus9"])
@pytest.mark.parametrize("loss, extra_rounds", [(0.0, 0), (0.1, 0), (0.3, 0), (0.3, 1)])
def test_under_loss_every_run_ends_in_bounded_rounds_and_nodes_that_heard_everyone_agree(topology, loss, extra_rounds):
    runs, team_aligned, complete_nodes, all_nodes = 40, 0, 0, 0
    rounds = topology.diameter() + extra_rounds
    for seed in range(runs):
        engines, outcomes, own = negotiate(topology, link=LinkConfig(delay_s=0.005, jitter_s=0.003, loss=loss), seed=seed,
                                           extra_rounds=extra_rounds)
        by_node = outcomes[0]
        assert set(by_node) == set(topology.nodes)  # loss costs time, never a hang
        assert all(outcome.duration_s <= rounds * ROUND_TIMEOUT_S + 1e-9 for outcome in by_node.values())
        assert all(outcome.rounds_used == rounds for outcome in by_node.values())
        complete = {node: outcome for node, outcome in by_node.items() if outcome.team_complete}
        assert len({outcome.goal for outcome in complete.values()}) <= 1, f"seed {seed}: complete nodes disagree"
        for outcome in by_node.values():
            assert outcome.team_complete == (outcome.proposals_known == topology.num_nodes)
        complete_nodes += len(complete)
        all_nodes += len(by_node)
        team_aligned += len({outcome.goal for outcome in by_node.values()}) == 1
    fraction = team_aligned / runs
    if loss == 0.0:
        assert fraction == 1.0 and complete_nodes == all_nodes
    elif loss == 0.1 or extra_rounds:
        assert fraction >= 0.9  # a lost table costs a round timeout; the flood's redundancy covers most
    else:
        assert fraction >= 0.5 and complete_nodes < all_nodes  # the fallback decides, and is counted


@pytest.mark.parametrize("topology", TOPOLOGIES, ids=["ring6", "torus9"])
def test_a_partition_ends_every_negotiation_in_time_and_no_node_claims_the_whole_team(topology):
    half = topology.nodes[: topology.num_nodes // 2]
    other = topology.nodes[topology.num_nodes // 2:]
    engines, outcomes, own = negotiate(topology, link=LinkConfig(delay_s=0.01), seed=3, partition=[half, other])
    by_node = outcomes[0]
    assert set(by_node) == set(topology.nodes)
    for node, outcome in by_node.items():
        side = half if node in half else other
        assert not outcome.team_complete and outcome.proposals_known <= len(side)
        assert outcome.duration_s <= topology.diameter() * ROUND_TIMEOUT_S + 1e-9
        assert outcome.rounds_closed_by_deadline > 0 or outcome.proposals_known < len(side)


def test_a_crashed_member_is_not_waited_for_beyond_the_round_deadlines_and_the_others_still_agree():
    topology = ring(6)
    engines, outcomes, own = negotiate(topology, link=LinkConfig(delay_s=0.01), seed=4, crashed=["agent_3"])
    by_node = outcomes[0]
    assert set(by_node) == set(topology.nodes) - {"agent_3"}
    assert all(not outcome.team_complete and outcome.proposals_known == 5 for outcome in by_node.values())
    assert len({outcome.goal for outcome in by_node.values()}) == 1  # the five heard each other around the gap


def test_ties_go_to_the_smallest_node_id_and_goals_not_allowed_are_skipped():
    proposals = {"agent_2": np.array([0.5, 3], np.float32), "agent_1": np.array([0.5, 4], np.float32),
                 "agent_0": np.array([0.9, 14], np.float32)}
    assert team_choice(proposals, np.arange(15)) == ("agent_0", 14)
    assert team_choice(proposals, np.arange(14)) == ("agent_1", 4)
    with pytest.raises(ValueError, match="allowed goal"):
        team_choice(proposals, np.array([0]))


def test_a_lone_agent_decides_alone_and_one_that_hears_nobody_keeps_its_own_goal():
    alone = TeamNegotiationEngine("agent_0", NUM_GOALS, seed=1)
    assert alone.start(NegotiationRequest(0, 7, [], 1, team_size=1), 0.0) == []
    assert alone.done and alone.result.goal == 7 and alone.result.team_complete and not alone.result.timed_out
    deaf = TeamNegotiationEngine("agent_0", NUM_GOALS, seed=1)
    out = deaf.start(NegotiationRequest(0, 5, ["agent_1"], 2, team_size=2), 0.0)
    assert [(destination, type(message)) for destination, message in out] == [("agent_1", TeamProposals)]
    deaf.on_timer(0.5)
    commits = deaf.on_timer(1.0)
    assert deaf.done and deaf.result.timed_out and deaf.result.goal == 5 and deaf.result.duration_s == 1.0
    assert commits == [("agent_1", GoalCommit(0, 5, True))]
    with pytest.raises(ValueError, match="team_size"):
        TeamNegotiationEngine("agent_0", NUM_GOALS, seed=1).start(NegotiationRequest(0, 5, ["agent_1"], 1), 0.0)


def test_team_proposals_survive_the_wire():
    message = TeamProposals(40, 2, ["agent_0", "agent_1"], np.array([[0.25, 3], [0.75, 9]], np.float32))
    frames = wire.encode(message, sender="agent_0", run_id="r", seq=1, key=b"k" * 32)
    decoded = wire.decode([bytes(memoryview(frame)) for frame in frames], key=b"k" * 32).message
    assert (decoded.episode, decoded.round, decoded.nodes) == (40, 2, ["agent_0", "agent_1"])
    np.testing.assert_array_equal(decoded.values, message.values)


def test_the_team_flood_is_a_negotiation_protocol_that_refuses_the_naming_games_settings():
    config = GoalsConfig(selection="negotiation", negotiation={"protocol": "team_flood", "round_timeout_s": 0.2})
    assert config.negotiation.protocol == "team_flood"
    assert GoalsConfig(selection="negotiation").negotiation.protocol == "naming_game"
    with pytest.raises(ValueError, match="update_every_episodes: naming-game settings"):
        GoalsConfig(selection="negotiation", negotiation={"protocol": "team_flood", "update_every_episodes": 10})
    with pytest.raises(ValueError, match="protocol"):
        GoalsConfig(selection="negotiation", negotiation={"protocol": "max_consensus"})
    with pytest.raises(ValueError, match="extra_rounds: set only with protocol 'team_flood'"):
        GoalsConfig(selection="negotiation", negotiation={"extra_rounds": 1})


def test_the_hold_must_cover_the_extra_rounds():
    goals = GoalsConfig(selection="negotiation", negotiation={"protocol": "team_flood", "extra_rounds": 1})
    def env(hold_s: float) -> EnvConfig:
        return EnvConfig(name="goal_lines_v0", forward_infos=["achieved_goals"], episode_start_hold_s=hold_s)

    assert goal_run_problems(goals, "goal_dqn", "future", env(2.0), topology_diameter=3) == []
    (problem,) = goal_run_problems(goals, "goal_dqn", "future", env(1.5), topology_diameter=3)
    assert problem.startswith("env.episode_start_hold_s") and "4 round(s) x 0.5 s = 2.0 s" in problem


def test_goal_sessions_on_a_ring_negotiate_one_goal_for_the_team_and_record_whether_they_heard_everyone():
    topology = ring(4)
    names = tuple(topology.nodes)
    sessions = {}
    for index, node in enumerate(names):
        engine = TeamNegotiationEngine(node, 6, seed=20 + index, allowed_goals=COOPERATIVE, round_timeout_s=0.5)
        negotiation = NegotiatedGoals(engine, UniformGoals(COOPERATIVE, seed=index))
        sessions[node] = GoalSession(node_id=node, env_agent=node, agent=RecordingAgent(), module=negotiation, topology=topology,
                                     env_agents=list(names), reward_fn=reward_fn, negotiation=negotiation)
    for episode_start in (0, 5):
        outgoing = {node: s.on_episode_start(announcement(episode_start, active=names, names=names), 0.0) for node, s in sessions.items()}
        deliver(sessions, outgoing, 0.0)
        assert all(s.take_ready() == [(episode_start, None)] for s in sessions.values()), "goal.ready once the flood decided"
        for node, session in sessions.items():
            session.on_observation(observation(episode_start, node, [], start=True), 0.0)
        assert len({s.current.goal for s in sessions.values()}) == 1
        for node, session in sessions.items():  # the episode ends at the next start
            session.on_observation(observation(episode_start + 5, node, [], truncated=True), 0.0)
    for session in sessions.values():
        ended = [r for r in session.take_records() if "goals/goal" in r]
        assert len(ended) == 2
        assert all(r["negotiation/team_complete"] == 1.0 and r["negotiation/team_size"] == 4.0 for r in ended)
        assert all(r["negotiation/rounds_used"] == 2.0 and r["negotiation/aligned"] == 1.0 for r in ended)


def test_the_builder_runs_the_team_flood_when_asked_and_refuses_a_naming_games_checkpoint():
    session, learner = _built("negotiation", 0, negotiation={"protocol": "team_flood"})
    assert isinstance(session.negotiation.engine, TeamNegotiationEngine)
    assert learner.state_dict()["negotiation"] == {"protocol": "team_flood"}
    _, naming_game = _built("negotiation", 0)
    with pytest.raises(ValueError, match="team-flood negotiation state was expected"):
        learner.load_state_dict(naming_game.state_dict())
