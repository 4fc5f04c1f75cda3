"""The goal session (agent_node/goals/session.py): goals decided and negotiated per episode, goal
rewards from the env's achieved goals, hindsight after the episode; lists of messages, no sockets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from agent_node.algos.config import GoalDQNConfig
from agent_node.goals.config import GoalsConfig, goal_run_problems
from env_server.config import EnvConfig
from agent_node.goals.session import STAY, GoalSession, build_goal_session
from agent_node.goals.modules import LearningProgressGoals, NegotiatedGoals, SupervisorAssignment, UniformGoals
from agent_node.persistence import load_checkpoint, save_checkpoint
from agent_node.roles import Transition
from protocols.codec import messages as m
from protocols.goal_spaces.goal_space import goal_reward
from protocols.engines.hindsight import HindsightEngine, HindsightReport
from protocols.engines.negotiation import NegotiationEngine
from protocols.engines.supervision import GoalAssignment, SupervisionEngine
from protocols.engines.topology import full, ring

L = 3  # goals 0..2 individual, 3 = (0,1), 4 = (0,2), 5 = (1,2)
COOPERATIVE = [3, 4, 5]
OBS_DIM = 4


def reward_fn(goal, achieved):
    return goal_reward(goal, achieved, L)


class RecordingAgent:
    """Stands in for GoalDQNAgent: records the episodes it is given, acts 1 (up) always."""

    def __init__(self) -> None:
        self.episodes: list[dict] = []
        self.rows_relabelled = 0

    def act(self, obs, goals, explore=True):
        self.last_goals = np.asarray(goals)
        return np.ones(len(obs), dtype=np.int64)

    def observe_episode(self, obs, actions, next_obs, goal, events, extra_goal_events=()):
        self.episodes.append({"obs": obs, "actions": actions, "next_obs": next_obs, "goal": goal,
                              "events": list(events), "extra": list(extra_goal_events)})
        self.rows_relabelled += 3  # any count: the session reports the difference


def make_pair(*, negotiate=True, hindsight=True, seed=0, paid_by_env=False, in_steps=False):
    topology = full(2)
    agents, sessions = {}, {}
    for index, node in enumerate(topology.nodes):
        agent = RecordingAgent()
        inner = UniformGoals(COOPERATIVE, seed=seed + index)
        negotiation = None
        module = inner
        if negotiate:
            engine = NegotiationEngine(node, 6, seed=seed + 10 + index, allowed_goals=COOPERATIVE, round_timeout_s=0.5)
            negotiation = module = NegotiatedGoals(engine, inner)
        sessions[node] = GoalSession(
            node_id=node, env_agent=node, agent=agent, module=module, topology=topology, env_agents=list(topology.nodes),
            reward_fn=reward_fn, negotiation=negotiation, hindsight=HindsightEngine(node, timeout_s=1.0) if hindsight else None,
            paid_by_env=paid_by_env, num_landmarks=L, in_steps=in_steps,
        )
        agents[node] = agent
    return sessions, agents


def deliver(sessions, outgoing_by_sender, now, duplicate=False):
    """Pass messages until none are left (optionally each one twice); returns how many passed."""
    queue = [(sender, dest, msg) for sender, out in outgoing_by_sender.items() for dest, msg in out]
    passed = 0
    while queue:
        sender, dest, msg = queue.pop(0)
        for _ in range(2 if duplicate else 1):
            passed += 1
            queue.extend((dest, d, reply) for d, reply in sessions[dest].on_message(sender, msg, now))
    return passed


def announcement(step, active=("agent_0", "agent_1"), names=("agent_0", "agent_1")):
    return m.EnvEpisodeStart(step=step, episode_start=np.ones(1, bool),
                             active={a: np.array([a in active]) for a in names}, hold_s=2.0)


def observation(step, agent, achieved, *, start=False, truncated=False, active=True, reward=0.0):
    return m.EnvObservation(
        step=step, observations={agent: np.full((1, OBS_DIM), float(step), np.float32)},
        rewards={agent: np.full(1, reward, np.float32)}, terminated={agent: np.zeros(1, bool)},
        truncated={agent: np.array([truncated])}, active={agent: np.array([active])},
        final_observations={}, episode_start=np.array([start]),
        infos={agent: {"achieved_goals": np.array([achieved], dtype=np.int64).reshape(1, -1)}},
    )


def row(step):
    obs = np.full((1, OBS_DIM), float(step - 1), np.float32)
    return Transition(obs=obs, action=np.ones(1, np.int64), reward=np.zeros(1, np.float32), next_obs=obs + 1,
                      terminated=np.zeros(1, bool), truncated=np.zeros(1, bool))


def start_episode(sessions, step, now=0.0):
    """Announce, negotiate to the end, return the goals and the goal.ready lists."""
    outgoing = {node: session.on_episode_start(announcement(step), now) for node, session in sessions.items()}
    deliver(sessions, outgoing, now)
    ready = {node: session.take_ready() for node, session in sessions.items()}
    for node, session in sessions.items():
        outgoing = session.on_observation(observation(step, node, [], start=True), now)
        assert outgoing == []
    return {node: s.current.goal for node, s in sessions.items()}, ready


def test_a_negotiated_pair_says_ready_once_decided_and_follows_the_leaders_goal_or_keeps_its_own():
    sessions, _ = make_pair()
    goals, ready = start_episode(sessions, 0)
    assert ready == {"agent_0": [(0, None)], "agent_1": [(0, None)]}, "goal.ready for the held start, once per agent"
    assert all(goal in COOPERATIVE for goal in goals.values())
    results = {node: s.negotiation.engine.result for node, s in sessions.items()}
    leaders = {r.leader for r in results.values()}
    assert len(leaders) == 1, "one leader for the pair"
    assert sum(r.led for r in results.values()) == 1 and not any(r.timed_out for r in results.values())


def test_goal_reward_from_achieved_goals_freezes_the_agent_and_cuts_its_rows_at_the_reward():
    sessions, agents = make_pair(negotiate=False, hindsight=False)
    session = sessions["agent_0"]
    session.on_observation(observation(0, "agent_0", [], start=True), 0.0)
    goal = session.current.goal
    other = [g for g in COOPERATIVE if g != goal][0]
    assert session.take_ready() == [], "no announcement, no hold: nothing to say goal.ready for"
    assert session.act(np.zeros((1, OBS_DIM)), explore=True).tolist() == [1]
    # step 1: an other goal achieved; step 2: the agent's goal; steps 3..4: more, after the reward
    for step, achieved in [(1, [1, other]), (2, [0, goal]), (3, [goal]), (4, [])]:
        session.observe(row(step))
        session.on_observation(observation(step, "agent_0", achieved), 0.0)
    assert session.current.reward == 1.0 and session.current.rewarded_at == 1
    assert session.act(np.zeros((1, OBS_DIM)), explore=True).tolist() == [STAY], "done once rewarded: stays"
    session.observe(row(5))
    session.on_observation(observation(5, "agent_0", [], truncated=True), 0.0)
    (stored,) = agents["agent_0"].episodes
    assert stored["goal"] == goal and len(stored["actions"]) == 2, "rows up to the rewarded transition only"
    assert (1, goal) in stored["events"] and (0, other) in stored["events"] and (2, goal) in stored["events"]
    record = session.take_records()[0]
    assert record["goals/success"] == 1.0 and record["goals/reward"] == 1.0 and record["goals/rows"] == 2.0


def run_episode(sessions, start, length, achieved_at, now=0.0):
    """Steps start+1 .. start+length for both agents; the last one starts the next episode."""
    outgoing = {}
    for step in range(start + 1, start + length + 1):
        last = step == start + length
        for node, session in sessions.items():
            session.observe(row(step))
            outgoing.setdefault(node, [])
            outgoing[node] += session.on_observation(observation(step, node, achieved_at.get(step, []), start=last), now)
    return outgoing


def test_hindsight_after_the_episode_applies_the_partners_report_once_even_when_duplicated():
    sessions, agents = make_pair()
    goals, _ = start_episode(sessions, 0)
    # The next episode is announced (and negotiated) before its first observation, which also
    # ends this one: the order the env server sends them in.
    outgoing = {node: s.on_episode_start(announcement(4), 0.0) for node, s in sessions.items()}
    deliver(sessions, outgoing, 0.0)
    reports = run_episode(sessions, 0, 4, {2: [0, 1, 3]})
    assert all(isinstance(msg, HindsightReport) for out in reports.values() for _, msg in out)
    assert [dest for _, msg in reports["agent_0"] for dest in [_]] == ["agent_1"]
    assert agents["agent_0"].episodes == [], "stored only once the partner's report is in"
    deliver(sessions, reports, 0.1, duplicate=True)
    for node, session in sessions.items():
        (stored,) = agents[node].episodes
        assert stored["goal"] == goals[node] and len(stored["actions"]) == 4
        partner = "agent_1" if node == "agent_0" else "agent_0"
        assert sorted(stored["extra"]) == [(1, 0), (1, 1), (1, 3)], f"{partner}'s events, applied once"
        records = session.take_records()
        episode_record = next(r for r in records if "goals/goal" in r)
        assert episode_record["negotiation/rounds_used"] == 1.0 and episode_record["negotiation/timed_out"] == 0.0
        assert episode_record["negotiation/aligned"] == float(goals["agent_0"] == goals["agent_1"])
        shared = next(r for r in records if "hindsight/reports_applied" in r)
        assert shared["hindsight/reports_applied"] == 1.0
        # The duplicate came after the report was applied and the episode stored: ignored.
        assert session.hindsight.duplicates_ignored == 1 and session.hindsight.applied[(partner, 0)] == 1
        assert shared["her/rows_relabelled"] == 3.0 and shared["hindsight/partners_missing"] == 0.0
    assert {node: s.current.goal for node, s in sessions.items()} == {
        node: s.negotiation.engine.result.goal for node, s in sessions.items()}, "episode 4 runs with its negotiated goal"


def test_paid_by_env_names_the_goal_takes_the_env_reward_and_relabels_with_the_pairs_the_reports_imply():
    """`paid_by: env` under goal_lines' "own" view: goal.ready carries the goal; the env's reward,
    not the infos, decides when the agent is rewarded (and is recorded as its goal achieved);
    the partner's report of the landmark it touched makes the pair both touched a relabel goal."""
    sessions, agents = make_pair(paid_by_env=True)
    goals, ready = start_episode(sessions, 0)
    assert ready == {node: [(0, goals[node])] for node in sessions}, "goal.ready names the goal the env is to pay"
    outgoing = {node: s.on_episode_start(announcement(4), 0.0) for node, s in sessions.items()}
    deliver(sessions, outgoing, 0.0)
    # Step 2: agent_0 touches landmark 0, agent_1 landmark 2 (the pair (0, 2), goal 4); each sees
    # only its own landmark. The env pays agent_0 at step 3, whatever its infos say.
    own = {"agent_0": {2: [0]}, "agent_1": {2: [2]}}
    reports = {}
    for step in range(1, 5):
        for node, session in sessions.items():
            session.observe(row(step))
            reward = 1.0 if (node, step) == ("agent_0", 3) else 0.0
            reports.setdefault(node, [])
            reports[node] += session.on_observation(
                observation(step, node, own[node].get(step, []), start=step == 4, reward=reward), 0.0)
    deliver(sessions, reports, 0.1)
    first, second = agents["agent_0"].episodes[0], agents["agent_1"].episodes[0]
    assert len(first["actions"]) == 3, "rows end at the step the env paid"
    assert first["events"] == [(1, 0), (2, goals["agent_0"])], "the env's reward is the goal achieved at that step"
    assert len(second["actions"]) == 4 and second["events"] == [(1, 2)]
    assert sorted(first["extra"]) == [(1, 2), (1, 4)], "the partner's landmark, and the pair both touched"
    assert sorted(second["extra"]) == sorted({(1, 0), (1, 4), (2, goals["agent_0"])} - {(1, 2)})
    records = {node: next(r for r in s.take_records() if "goals/goal" in r) for node, s in sessions.items()}
    assert records["agent_0"]["goals/reward"] == 1.0 and records["agent_1"]["goals/reward"] == 0.0


def make_supervised(names=("agent_0", "agent_1", "agent_2")):
    topology = full(len(names))
    return {
        node: GoalSession(
            node_id=node, env_agent=node, agent=RecordingAgent(), module=None, topology=topology, env_agents=list(names),
            reward_fn=reward_fn, supervision=SupervisionEngine(node, timeout_s=0.5),
            supervisor_draws=SupervisorAssignment(COOPERATIVE, seed=7 + index),
        )
        for index, node in enumerate(names)
    }


def test_a_supervised_team_pursues_the_goal_its_smallest_node_id_assigns_over_the_wire():
    names = ("agent_0", "agent_1", "agent_2")
    for episode in (0, 10, 20):
        sessions = make_supervised(names)
        outgoing = {node: s.on_episode_start(announcement(episode, active=names, names=names), 0.0) for node, s in sessions.items()}
        assert [dest for dest, _ in outgoing["agent_0"]] == ["agent_1", "agent_2"] and outgoing["agent_1"] == []
        assert sessions["agent_1"].take_ready() == [] and sessions["agent_0"].take_ready() == [(episode, None)]
        deliver(sessions, outgoing, 0.0, duplicate=True)  # the duplicate assignment is dropped, counted
        assert {node: s.take_ready() for node, s in list(sessions.items())[1:]} == {"agent_1": [(episode, None)], "agent_2": [(episode, None)]}
        for node, session in sessions.items():
            session.on_observation(observation(episode, node, [], start=True), 0.0)
        goals = {node: s.current.goal for node, s in sessions.items()}
        assert len(set(goals.values())) == 1, "alignment 1: one goal for the team"
        assert sessions["agent_1"].supervision.stale_messages == 1
        assert sessions["agent_1"].current.supervision["supervision/timed_out"] == 0.0
        assert sessions["agent_0"].current.supervision["supervision/supervised"] == 1.0


def test_a_member_that_hears_no_assignment_falls_back_to_its_own_draw():
    sessions = make_supervised(("agent_0", "agent_1"))
    member = sessions["agent_1"]
    member.on_episode_start(announcement(0), 0.0)
    assert member.next_deadline() == 0.5
    member.on_timer(0.5)
    assert member.take_ready() == [(0, None)]
    member.on_observation(observation(0, "agent_1", [], start=True), 0.6)
    assert member.current.goal in COOPERATIVE and member.current.supervision["supervision/timed_out"] == 1.0
    # An assignment for an episode already decided is stale, and changes nothing.
    member.on_message("agent_0", GoalAssignment(0, 3), 0.7)
    assert member.supervision.stale_messages == 1


def test_a_silent_partner_is_given_up_on_at_the_hindsight_deadline():
    sessions, agents = make_pair()
    start_episode(sessions, 0)
    for session in sessions.values():
        session.on_episode_start(announcement(3), 0.0)  # agent_1 never hears agent_0: one-sided
    session = sessions["agent_0"]
    for step in (1, 2, 3):
        session.observe(row(step))
        session.on_observation(observation(step, "agent_0", [], start=step == 3), 10.0)
    assert agents["agent_0"].episodes == [] and session.next_deadline() is not None
    session.on_timer(11.0)
    assert len(agents["agent_0"].episodes) == 1 and agents["agent_0"].episodes[0]["extra"] == []
    shared = next(r for r in session.take_records() if "hindsight/partners_missing" in r)
    assert shared["hindsight/partners_missing"] == 1.0 and shared["hindsight/reports_applied"] == 0.0


def test_an_observation_before_the_negotiation_ended_closes_it_as_its_deadline_would():
    sessions, _ = make_pair()
    session = sessions["agent_0"]
    sent = session.on_episode_start(announcement(0), 0.0)
    assert [dest for dest, _ in sent] == ["agent_1"] and session.take_ready() == []
    # The partner never answers; the server's hold deadline passes and the observation comes.
    out = session.on_observation(observation(0, "agent_0", [], start=True), 0.2)
    assert session.current is not None and session.current.cut_by_env
    assert session.negotiation.engine.result.timed_out, "heard nobody: its own goal"
    assert session.take_ready() == [], "the observation is out: no goal.ready any more"
    assert any(type(msg).__name__ == "GoalCommit" for _, msg in out)


def test_a_run_without_a_hold_decides_alone_at_the_first_observation():
    sessions, _ = make_pair(negotiate=False, hindsight=False)
    session = sessions["agent_1"]
    session.on_observation(observation(0, "agent_1", [], start=True), 0.0)
    assert session.current.goal in COOPERATIVE and session.take_ready() == []


# -- talking in env steps: the time is the step, deadlines count steps (round_timeout 0.5 -> here
# the engines of make_pair time out after 0.5 "steps", i.e. at the next step), nothing is held


def _step(sessions, step, in_flight, *, start=False, truncated=False, deliver_now=True):
    """One env step for both agents: the transition it closes, its observation, then the messages
    sent at the step before (delivered at this one) and the deadlines due by it. Returns what
    they sent during this step."""
    sent = {}
    for node, session in sessions.items():
        if step > 0:
            session.observe(row(step))
        sent[node] = list(session.on_observation(observation(step, node, [], start=start, truncated=truncated), float(step)))
    if deliver_now:
        for sender, outgoing in in_flight.items():
            for destination, message in outgoing:
                sent[destination] += sessions[destination].on_message(sender, message, float(step))
    for node, session in sessions.items():
        sent[node] += session.on_timer(float(step))
    return sent


def test_talking_in_steps_acts_on_the_own_proposal_until_the_team_goal_lands():
    sessions, agents = make_pair(in_steps=True, hindsight=False)
    sent = _step(sessions, 0, {}, start=True)
    own = {node: s.decision.own_goal for node, s in sessions.items()}
    assert {node: s.current.goal for node, s in sessions.items()} == own, "nothing held: the episode starts on the own proposal"
    assert all(s.take_ready() == [] for s in sessions.values()), "no goal.ready: the env holds nothing"
    sessions["agent_0"].act(np.zeros((1, OBS_DIM)), explore=True)
    assert agents["agent_0"].last_goals.tolist() == [own["agent_0"]]
    landed = None
    for step in range(1, 6):  # each message takes one step
        sent = _step(sessions, step, sent)
        if landed is None and all(s.current.decided_at is not None for s in sessions.values()):
            landed = step
    assert landed is not None and 1 <= landed <= 3
    results = {node: s.negotiation.engine.result for node, s in sessions.items()}
    assert {node: s.current.goal for node, s in sessions.items()} == {node: r.goal for node, r in results.items()}, \
        "the negotiated goal (the leader's, or the follower's reading of its message) replaced the own proposal"
    assert sum(r.led for r in results.values()) == 1 and not any(r.timed_out for r in results.values())
    _step(sessions, 6, sent, start=True, truncated=True)  # the episode ends; the next starts
    for session in sessions.values():
        record = next(r for r in session.take_records() if "goals/goal" in r)
        assert record["negotiation/decision_age_steps"] == session.negotiation.engine.records[0].outcome.duration_s + 0 >= 1
        assert record["negotiation/cut_by_episode_end"] == 0.0 and "negotiation/duration_steps" in record
    assert [a.episodes[0]["goal"] for a in agents.values()] == [r.goal for r in results.values()], \
        "rows stored under the goal the episode ended with"


def test_talking_in_steps_a_negotiation_open_at_its_episode_end_is_closed_there_and_changes_nothing():
    sessions, agents = make_pair(in_steps=True, hindsight=False)
    _step(sessions, 0, {}, start=True)
    own = {node: s.current.goal for node, s in sessions.items()}
    # Every message is lost: step 1 passes its deadlines and the naming game goes on to commit;
    # the episode ends at step 1 before anything landed.
    _step(sessions, 1, {}, start=True, truncated=True, deliver_now=False)
    for node, session in sessions.items():
        record = next(r for r in session.take_records() if "goals/goal" in r)
        assert record["goals/goal"] == own[node], "the episode kept the own proposal it acted on"
        assert session.negotiation.engine.records[0].outcome.episode == 0, "its negotiation closed with the episode"
        assert record["negotiation/cut_by_episode_end"] == 1.0 and "negotiation/decision_age_steps" not in record
    assert [a.episodes[0]["goal"] for a in agents.values()] == list(own.values())


def test_talking_in_steps_refuses_what_needs_an_episode_start_hold():
    def in_steps(goals: GoalsConfig, hold_s: float, **kwargs) -> list[str]:
        env = EnvConfig(name="goal_lines_v0", kwargs={"num_landmarks": L, **kwargs}, forward_infos=["achieved_goals"],
                        episode_start_hold_s=hold_s)
        return goal_run_problems(goals, "goal_dqn", "final", env, topology_diameter=1, talk_in_steps=True)

    negotiation = GoalsConfig(selection="negotiation", num_landmarks=L)
    assert in_steps(negotiation, 0.0) == []
    held = in_steps(negotiation, 1.5)
    assert len(held) == 1 and held[0].startswith("env.episode_start_hold_s: protocols.talk: env_steps holds no episode start")
    supervisor = in_steps(GoalsConfig(selection="supervisor", num_landmarks=L), 0.0)
    assert [p.split(":")[0] for p in supervisor] == ["agents.goals.selection"]
    paid = in_steps(GoalsConfig(selection="negotiation", num_landmarks=L, paid_by="env"), 0.0)
    assert "agents.goals.paid_by" in [p.split(":")[0] for p in paid]
    drawn = in_steps(negotiation, 0.0, population=4, active_per_episode=2)
    assert [p.split(":")[0] for p in drawn] == ["env.kwargs.active_per_episode"], "who plays is known only from a held start"


def test_teams_are_the_playing_topology_neighbours_and_rounds_their_diameter():
    topology = ring(4)
    names = list(topology.nodes)
    sessions = {
        node: GoalSession(node_id=node, env_agent=node, agent=RecordingAgent(), module=UniformGoals(COOPERATIVE, seed=1),
                          topology=topology, env_agents=names, reward_fn=reward_fn)
        for node in names
    }
    all_play = {name: True for name in names}
    assert sessions["agent_0"].team(all_play) == (["agent_1", "agent_3"], 2)
    opposite = {name: name in ("agent_0", "agent_2") for name in names}
    assert sessions["agent_0"].team(opposite) == ([], 1), "not neighbours on the ring: each decides alone"
    adjacent = {name: name in ("agent_0", "agent_1") for name in names}
    assert sessions["agent_1"].team(adjacent) == (["agent_0"], 1)
    # An agent that sits the episode out decides nothing, says nothing and stays.
    out = sessions["agent_2"].on_episode_start(announcement(0, active=("agent_0", "agent_1"), names=names), 0.0)
    assert out == [] and sessions["agent_2"].take_ready() == []
    sessions["agent_2"].on_observation(observation(0, "agent_2", [], start=True, active=False), 0.0)
    assert sessions["agent_2"].current is None
    assert sessions["agent_2"].act(np.zeros((1, OBS_DIM)), explore=True).tolist() == [STAY]


def test_more_than_one_env_copy_is_refused_with_a_clear_error():
    sessions, _ = make_pair(negotiate=False, hindsight=False)
    two = m.EnvEpisodeStart(step=0, episode_start=np.ones(2, bool), active={"agent_0": np.ones(2, bool)}, hold_s=1.0)
    with pytest.raises(ValueError, match="one env copy"):
        sessions["agent_0"].on_episode_start(two, 0.0)


def test_missing_achieved_goals_infos_are_an_error_naming_the_setting():
    sessions, _ = make_pair(negotiate=False, hindsight=False)
    session = sessions["agent_0"]
    session.on_observation(observation(0, "agent_0", [], start=True), 0.0)
    bare = observation(1, "agent_0", [])
    bare = m.EnvObservation(**{**bare.__dict__, "infos": {}})
    with pytest.raises(ValueError, match="forward_infos"):
        session.on_observation(bare, 0.0)


def test_built_learner_checkpoints_the_network_and_the_negotiation_engine(tmp_path):
    torch.set_num_threads(1)
    goals = GoalsConfig(selection="negotiation", num_landmarks=3, hindsight={"timeout_s": 1.0})
    config = GoalDQNConfig(hidden_sizes=(16,), batch_size=8, learning_starts=8, buffer_size=100)
    build = dict(node_id="agent_0", node_index=0, run_seed=0, env_agent="agent_0", possible_agents=["agent_0", "agent_1"],
                 obs_dim=OBS_DIM, num_actions=5, topology=full(2))
    session, learner = build_goal_session(goals, config, **build)
    session.negotiation.engine.matrix[3, 7] = 0.5
    session.on_observation(observation(0, "agent_0", [], start=True), 0.0)
    for step in range(1, 13):
        learner.observe(row(step))
        session.on_observation(observation(step, "agent_0", [], start=step == 12), 0.0)
    session.on_timer(100.0)  # the partner never reports: stored at the hindsight deadline
    assert learner.gradient_steps_due() > 0 and len(learner.replay) >= 12
    learner.update(max_gradient_steps=2)
    assert learner.counters()["goal_dqn/gradient_steps"] == 2.0
    learner.replay.save(tmp_path / "buffer.npz")
    save_checkpoint(tmp_path / "ckpt.pt", {"learner": learner.state_dict()})  # as the node does: weights_only on load
    other_session, other = build_goal_session(goals, config, **{**build, "run_seed": 5})
    other.load_state_dict(load_checkpoint(tmp_path / "ckpt.pt")["learner"])
    other.replay.restore(tmp_path / "buffer.npz")
    assert other_session.negotiation.engine.matrix[3, 7] == 0.5
    # The generator (messages, leaders) and the pending M update come back too, not just M.
    assert other_session.negotiation.engine.state_dict() == session.negotiation.engine.state_dict()
    assert other_session.negotiation.engine._rng.random() == session.negotiation.engine._rng.random()
    assert len(other.replay) == len(learner.replay) and other.counters() == learner.counters()
    obs = np.zeros((1, OBS_DIM), np.float32)
    session.current = other_session.current = None
    assert np.array_equal(learner.agent.act(obs, np.array([4]), explore=False), other.agent.act(obs, np.array([4]), explore=False))


def test_the_gradient_steps_owed_for_a_lost_replay_buffer_are_forgiven_through_the_session_s_learner():
    """As for every other learner (agent_node/persistence.py forgives them after a restart that
    lost the buffer): without it a goal agent would owe steps for rows it no longer has."""
    goals = GoalsConfig(selection="uniform", num_landmarks=3)
    config = GoalDQNConfig(hidden_sizes=(16,), batch_size=8, learning_starts=8, buffer_size=100)
    session, learner = build_goal_session(goals, config, node_id="agent_0", node_index=0, run_seed=0, env_agent="agent_0",
                                          possible_agents=["agent_0", "agent_1"], obs_dim=OBS_DIM, num_actions=5,
                                          topology=full(2))
    session.on_observation(observation(0, "agent_0", [], start=True), 0.0)
    for step in range(1, 13):
        learner.observe(row(step))
        session.on_observation(observation(step, "agent_0", [], start=step == 12), 0.0)
    assert learner.gradient_steps_due() == 2
    learner.forgive_gradient_steps(2)
    assert learner.gradient_steps_due() == 0


def _built(selection, run_seed, **goal_fields):
    goals = GoalsConfig(selection=selection, num_landmarks=3, **goal_fields)
    config = GoalDQNConfig(hidden_sizes=(8,), batch_size=8, learning_starts=8, buffer_size=100)
    return build_goal_session(goals, config, node_id="agent_0", node_index=0, run_seed=run_seed, env_agent="agent_0",
                              possible_agents=["agent_0", "agent_1"], obs_dim=OBS_DIM, num_actions=5, topology=full(2))


def _goals_of_episodes(session, first, count):
    """The goals `count` episodes of 3 steps pick, starting at step `first`; the agent improves:
    the second half of them is rewarded (so learning progress moves)."""
    goals = []
    for episode in range(count):
        start = first + 3 * episode
        session.on_observation(observation(start, "agent_0", [], start=True), 0.0)
        goals.append(session.current.goal)
        achieved = [session.current.goal] if episode >= count // 2 else []
        for step in (start + 1, start + 2):
            session.observe(row(step))
            session.on_observation(observation(step, "agent_0", achieved), 0.0)
    return goals


def _own_goal_module(session):
    return session.module.inner if session.negotiation is not None else session.module


@pytest.mark.parametrize("selection, fields", [
    ("learning_progress", {"lp_window": 4}),
    ("negotiation", {"inner": "learning_progress", "lp_window": 4}),  # the agent plays alone: its own goal
    ("p_aligned", {"p": 0.5}),
    ("uniform", {}),
])
def test_a_checkpoint_restores_the_goal_module_so_the_next_goals_are_the_same(tmp_path, selection, fields):
    torch.set_num_threads(1)
    session, learner = _built(selection, 0, **fields)
    _goals_of_episodes(session, 0, 12)
    save_checkpoint(tmp_path / "ckpt.pt", {"learner": learner.state_dict()})
    restarted_session, restarted = _built(selection, 0, **fields)  # a restart: the same run seed
    restarted.load_state_dict(load_checkpoint(tmp_path / "ckpt.pt")["learner"])
    module, restored = _own_goal_module(session), _own_goal_module(restarted_session)
    if isinstance(module, LearningProgressGoals):
        assert module.learning_progress().sum() > 0, "the windows hold progress to restore"
        np.testing.assert_array_equal(restored.learning_progress(), module.learning_progress())
    expected = [module.propose(e) for e in range(100, 130)]
    assert [restored.propose(e) for e in range(100, 130)] == expected
    not_restored = _own_goal_module(_built(selection, 0, **fields)[0])
    assert [not_restored.propose(e) for e in range(100, 130)] != expected, "without the checkpoint it would start over"


def test_a_checkpoint_restores_the_supervisors_draws(tmp_path):
    session, learner = _built("supervisor", 0)
    for episode in range(5):
        session.supervisor_draws.assign(episode, ["agent_0"])
    save_checkpoint(tmp_path / "ckpt.pt", {"learner": learner.state_dict()})
    other_session, other = _built("supervisor", 0)
    other.load_state_dict(load_checkpoint(tmp_path / "ckpt.pt")["learner"])
    draws = [session.supervisor_draws.assign(e, ["agent_0"]) for e in range(5, 30)]
    assert [other_session.supervisor_draws.assign(e, ["agent_0"]) for e in range(5, 30)] == draws
    assert [_built("supervisor", 0)[0].supervisor_draws.assign(e, ["agent_0"]) for e in range(5, 30)] != draws


def test_a_checkpoint_from_before_goal_modules_were_saved_loads_and_leaves_the_module_as_built(tmp_path):
    session, learner = _built("learning_progress", 0, lp_window=4)
    _goals_of_episodes(session, 0, 12)
    old = {key: value for key, value in learner.state_dict().items() if key != "goal_module"}
    save_checkpoint(tmp_path / "old.pt", {"learner": old})
    other_session, other = _built("learning_progress", 0, lp_window=4)
    other.load_state_dict(load_checkpoint(tmp_path / "old.pt")["learner"])
    assert other.counters() == learner.counters(), "the network part of the checkpoint is restored"
    assert session.module.learning_progress().sum() > 0 and other_session.module.learning_progress().sum() == 0, "the windows start empty"
    fresh, _ = _built("learning_progress", 0, lp_window=4)
    assert [other_session.module.propose(e) for e in range(40)] == [fresh.module.propose(e) for e in range(40)]


# ------------------------------------------------------------------------------------------
# Configuration: what is refused, with what message
# ------------------------------------------------------------------------------------------


def test_goals_section_refuses_what_is_not_implemented():
    assert GoalsConfig(selection="supervisor").supervisor.timeout_s == 0.5
    with pytest.raises(ValidationError, match="supervisor: set only with selection 'supervisor'"):
        GoalsConfig(selection="uniform", supervisor={})
    assert GoalsConfig(selection="amigo").amigo.t_star == 7, "AMIGo runs in a node (agent_node/amigo/session.py)"
    with pytest.raises(ValidationError, match="goal_set.*selection 'amigo'"):
        GoalsConfig(selection="amigo", goal_set="individual")
    with pytest.raises(ValidationError, match="amigo: set only with selection 'amigo'"):
        GoalsConfig(selection="uniform", amigo={})
    with pytest.raises(ValidationError, match="needs p"):
        GoalsConfig(selection="p_aligned")
    with pytest.raises(ValidationError, match="only selection 'p_aligned'"):
        GoalsConfig(selection="uniform", p=0.5)
    with pytest.raises(ValidationError, match="negotiation"):
        GoalsConfig(selection="uniform", negotiation={})
    assert GoalsConfig(selection="negotiation").negotiation.round_timeout_s == 0.5, "the reference's defaults"


def test_the_goal_learner_and_the_goals_section_go_together():
    from orchestrator.config import load_config
    from protocols.run.config_errors import ConfigError
    from tests.conftest import REPO

    goals = REPO / "configs" / "goals_supervisor.yaml"
    with pytest.raises(ConfigError, match="agents.goals: learner kind 'goal_dqn' needs a goals section"):
        load_config(goals, ["agents.goals=null", "env.episode_start_hold_s=0"])
    with pytest.raises(ConfigError, match="agents.learner.kind: agents.goals needs the goal-conditioned learner 'goal_dqn'"):
        load_config(goals, ["agents.learner={kind: dqn}"])
    assert load_config(goals).agents.learner.kind == "goal_dqn"


def problems(goals=GoalsConfig(selection="negotiation", hindsight={}), her="future", topology_diameter=1,
             topology_complete=True, **env):
    """The run-level goal problems of a goal_lines run; `env`: fields of its env section."""
    env = EnvConfig(**{"name": "goal_lines_v0", "forward_infos": ["achieved_goals"], "episode_start_hold_s": 2.0, **env})
    return goal_run_problems(goals, "goal_dqn" if goals is not None else "dqn", her, env,
                             topology_diameter=topology_diameter, topology_complete=topology_complete)


def test_run_level_goal_problems_name_the_field_and_what_was_expected():
    assert problems() == []
    assert problems(name="mpe2.simple_spread_v3")[0].startswith("env.name:")
    assert problems(kwargs={"num_landmarks": 3})[0].startswith("agents.goals.num_landmarks: expected env.kwargs.num_landmarks (3)")
    assert problems(num_copies=2)[0].startswith("env.num_copies: expected 1")
    assert problems(forward_infos=[])[0].startswith("env.forward_infos: expected 'achieved_goals'")
    assert problems(eval_every_steps=100)[0].startswith("env.eval_every_steps:")
    assert "at least 2 round(s) x 0.5 s = 1.0 s" in problems(episode_start_hold_s=0.6, topology_diameter=2)[0]
    assert problems(her="none")[0].startswith("agents.goals.hindsight: sharing achieved goals needs HER")
    assert problems(goals=GoalsConfig(selection="uniform"))[0].startswith("env.episode_start_hold_s: only selections")
    supervised = GoalsConfig(selection="supervisor")
    assert problems(goals=supervised) == []
    assert problems(goals=supervised, episode_start_hold_s=0.2)[0].startswith("env.episode_start_hold_s: the supervisor's")
    assert supervised.supervisor.external, "the supervisor is a node of its own by default"
    assert problems(goals=supervised, topology_complete=False) == [], "an external supervisor reaches every agent directly"
    in_team = GoalsConfig(selection="supervisor", supervisor={"external": False})
    assert problems(goals=in_team, topology_complete=False)[0].startswith("topology.kind: a supervisor in the team")
    assert problems(goals=None)[0].startswith("env.episode_start_hold_s: expected 0 without goal-negotiating agents")
    # The "own" view needs the env to pay; the env is told the goal in the episode-start hold.
    assert problems(kwargs={"view": "own"})[0].startswith("agents.goals.paid_by: env.kwargs.view 'own'")
    paid = GoalsConfig(selection="uniform", paid_by="env")
    assert problems(goals=paid, her="future", kwargs={"view": "own"}) == [], "a hold without negotiation, for the goal"
    assert problems(goals=paid, episode_start_hold_s=0.0)[0].startswith("env.episode_start_hold_s: agents.goals.paid_by 'env'")
