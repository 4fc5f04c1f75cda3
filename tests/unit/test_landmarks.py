"""The main job's landmark session (agent_node/landmarks/session.py) and the env server's baselines
(env_server/baselines.py), on real simple_spread observations, without sockets."""

from __future__ import annotations

import numpy as np
import pytest
from mpe2 import simple_spread_v3

from agent_node.landmarks.config import LandmarksConfig
from agent_node.landmarks.session import LandmarkSession, SpreadLayout, assign
from agent_node.roles import Transition
from env_server.baselines import baseline_metrics, mean_return_per_agent, play, random_policy, spread_oracle
from env_server.vector import VectorizedParallelEnv
from protocols.codec import messages as m
from protocols.engines.flooding import FloodTable
from protocols.engines.hindsight import HindsightRows
from protocols.engines.topology import ring


def spread(n: int = 4):
    return simple_spread_v3.parallel_env(N=n, max_cycles=25, continuous_actions=False)


def test_the_layout_reads_distances_and_collisions_off_a_real_observation():
    env = spread()
    observations, _ = env.reset(seed=3)
    world = env.unwrapped.world
    layout = SpreadLayout.for_obs(24, 4)
    for index, agent in enumerate(env.possible_agents):
        obs = observations[agent][None]
        expected = [np.linalg.norm(landmark.state.p_pos - world.agents[index].state.p_pos) for landmark in world.landmarks]
        np.testing.assert_allclose(layout.distances(obs)[0], expected, rtol=1e-5)
    with pytest.raises(ValueError, match="simple_spread"):
        SpreadLayout.for_obs(18, 4)
    obs = np.zeros((2, 24), np.float32)
    obs[:, 12:18] = 5.0  # the other three agents far away
    obs[0, 12:14] = [0.1, 0.0]  # another agent 0.1 away: touching (sizes 0.15 each)
    obs[1, 12:14] = [0.5, 0.0]
    np.testing.assert_array_equal(layout.collisions(obs), [1, 0])
    obs[:, 4:6] = [[3.0, 4.0], [0.0, 1.0]]  # landmark 0 at distance 5 and 1
    np.testing.assert_allclose(layout.goal_reward(obs, np.array([0, 0]), 1.0), [-6.0, -1.0])


def test_assign_is_the_hungarian_assignment_and_the_same_on_every_node():
    costs = {f"agent_{i}": np.array([[abs(i - j) + 0.1 * j for j in range(4)]], np.float32) for i in range(4)}
    goals = [int(assign(costs, f"agent_{i}")[0]) for i in range(4)]
    assert goals == [0, 1, 2, 3]
    two = {"agent_0": costs["agent_0"], "agent_1": costs["agent_1"]}
    assert int(assign(two, "agent_1")[0]) == 1  # rows missing: assigned over the rows known


def make_session(**settings) -> LandmarkSession:
    return LandmarkSession(LandmarksConfig(**settings), node_id="agent_1", topology=ring(4),
                           layout=SpreadLayout(4, 4), num_copies=2)


def observation(step: int, obs: np.ndarray, starting, evaluation: bool = False) -> m.EnvObservation:
    return m.EnvObservation(step=step, observations={"agent_1": obs}, rewards={}, terminated={}, truncated={}, active={},
                            final_observations={}, episode_start=np.array(starting), evaluation=evaluation)


def test_the_session_floods_its_distance_row_and_takes_its_landmark_once_the_ring_has_answered():
    session = make_session()
    obs = np.zeros((2, 24), np.float32)
    obs[:, 4:12] = np.array([[1, 0, 2, 0, 3, 0, 4, 0]] * 2)  # landmark j at distance j + 1
    message = observation(0, obs, [True, True])
    assert session.needs_decision(message, 0)
    session.begin(message, obs, now=0.0, training_step=0)
    sent = session.take_outgoing()
    assert sorted(destination for destination, _ in sent) == ["agent_0", "agent_2"] and session.deciding
    near = np.tile(np.array([0.0, 5, 5, 5], np.float32), (2, 1))  # agents 0, 2, 3 each want landmark 0 most
    table = FloodTable("train:0", 1, ["agent_0", "agent_3"], np.stack([near, near + [0, 9, 0, 9]]))
    session.on_message("agent_0", table, 0.01)
    session.on_message("agent_2", FloodTable("train:0", 1, ["agent_2"], (near + [0, 0, 9, 0])[None]), 0.01)
    session.take_outgoing()  # round 2 tables
    session.on_message("agent_0", FloodTable("train:0", 2, ["agent_0", "agent_3"], np.stack([near, near + [0, 9, 0, 9]])), 0.02)
    session.on_message("agent_2", FloodTable("train:0", 2, ["agent_2"], (near + [0, 0, 9, 0])[None]), 0.02)
    assert not session.deciding and not session.needs_decision(message, 0)
    nodes = {"agent_0": near, "agent_1": session.layout.distances(obs), "agent_2": near + [0, 0, 9, 0], "agent_3": near + [0, 9, 0, 9]}
    np.testing.assert_array_equal(session.goals[False], assign(nodes, "agent_1"))
    record = session.take_records()[0]
    assert record["landmarks/complete"] == 1.0 and record["landmarks/rows_known"] == 4.0
    conditioned = session.condition(obs, evaluation=False)
    assert conditioned.shape == (2, 28) and (conditioned[:, 24:].sum(axis=1) == 1).all()


def test_choosing_alone_says_nothing_of_whole_tables():
    # No table is flooded under `assignment: nearest`, so none can be whole: the record leaves the
    # key out rather than count every decision as complete (a sweep's "whole tables" column).
    session = make_session(assignment="nearest")
    obs = np.zeros((2, 24), np.float32)
    obs[:, 4:12] = [[5, 0, 1, 0, 5, 0, 5, 0], [1, 0, 5, 0, 5, 0, 5, 0]]
    session.begin(observation(0, obs, [True, True]), obs, 0.0, training_step=0)
    (record,) = session.take_records()
    assert "landmarks/complete" not in record and record["landmarks/rows_known"] == 1.0
    np.testing.assert_array_equal(session.goals[False], [1, 0])


def test_nearest_decides_alone_and_evaluation_copies_keep_their_own_landmarks():
    session = make_session(assignment="nearest")
    obs = np.zeros((3, 24), np.float32)
    obs[:, 4:12] = [[5, 0, 1, 0, 5, 0, 5, 0], [5, 0, 5, 0, 5, 0, 1, 0], [1, 0, 5, 0, 5, 0, 5, 0]]
    message = observation(0, obs, [True, True, True], evaluation=True)
    session.begin(message, obs, 0.0, training_step=500)
    assert session.take_outgoing() == [] and not session.deciding
    np.testing.assert_array_equal(session.goals[True], [1, 3, 0])
    np.testing.assert_array_equal(session.goals[False], [0, 0])  # training copies untouched
    assert not session.needs_decision(message, 500)
    assert session.needs_decision(observation(0, obs, [True, True, True], evaluation=True), 1000)  # the next evaluation


def rows(copies: int = 2, ended: bool = False) -> Transition:
    rng = np.random.default_rng(0)
    flags = np.full(copies, ended)
    return Transition(obs=rng.normal(size=(copies, 24)).astype(np.float32), action=np.arange(copies), reward=np.zeros(copies, np.float32),
                      next_obs=rng.normal(size=(copies, 24)).astype(np.float32), terminated=np.zeros(copies, bool), truncated=flags,
                      copy_index=np.arange(copies))


def test_rows_are_relabelled_for_every_landmark_and_an_episode_is_shared_with_the_neighbours():
    session = make_session()
    session.goals[False][:] = [2, 3]
    first = session.training_rows(rows(), step=1)
    assert sum(len(t.obs) for t in first) == 2 * 4  # each row once per landmark
    pursued = first[0]
    np.testing.assert_array_equal(pursued.obs[:, 24:].argmax(axis=1), [2, 3])
    np.testing.assert_allclose(pursued.reward, SpreadLayout(4, 4).goal_reward(rows().next_obs, np.array([2, 3]), 1.0))
    session.training_rows(rows(ended=True), step=2)
    shared = session.take_outgoing()
    assert sorted(destination for destination, _ in shared) == ["agent_0", "agent_2"]
    report = shared[0][1]
    assert isinstance(report, HindsightRows) and len(report.obs) == 4 and list(report.pursued) == [2, 3, 2, 3]


def test_a_partners_rows_are_learned_for_what_it_pursued_and_what_it_reached():
    session = make_session(assignment="nearest")  # alone: rows are learned as they come
    partner = rows(copies=3)
    report = HindsightRows("train:0", partner.obs, np.array([0, 1, 2]), partner.next_obs, np.zeros(3, bool),
                           pursued=np.array([1, 1, 1]), reached=np.array([1, 0, 3]))
    session.on_message("agent_0", report, 0.0)
    learned = session.training_rows(rows(), step=1)[4:]  # after this agent's own 4 relabellings
    assert [len(t.obs) for t in learned] == [3, 2]
    np.testing.assert_array_equal(learned[1].obs[:, 24:].argmax(axis=1), [0, 3])
    bad = HindsightRows("train:0", partner.obs, np.array([0, 1, 2]), partner.next_obs, np.zeros(3, bool),
                        pursued=np.array([1, 1, 7]), reached=np.array([1, 0, 3]))
    session.on_message("agent_0", bad, 0.0)
    assert session.training_rows(rows(), step=2)[4:] == []  # an out-of-range landmark: dropped, not learned


def test_talking_free_a_partners_rows_wait_for_the_next_training_agreement():
    # Rows come by the wall clock; the team's next agreement is a point every run shares (each
    # neighbour's rows precede its tables on their link), so they are learned from there on.
    session = make_session()
    partner = rows(copies=3)
    session.on_message("agent_0", HindsightRows("train:0", partner.obs, np.array([0, 1, 2]), partner.next_obs,
                                                np.zeros(3, bool), pursued=np.array([1, 1, 1]), reached=np.array([1, 1, 1])), 0.0)
    assert session.training_rows(rows(), step=1)[4:] == []  # no agreement since: not yet
    obs = np.zeros((2, 24), np.float32)
    session.begin(observation(25, obs, [True, True]), obs, now=0.0, training_step=25)
    tables = {name: np.zeros((1, 2, 4), np.float32) for name in ("agent_0", "agent_2", "agent_3")}  # 2 copies each
    for round_ in (1, 2):
        session.on_message("agent_0", FloodTable("train:25", round_, ["agent_0", "agent_3"], np.concatenate([tables["agent_0"], tables["agent_3"]])), 0.0)
        session.on_message("agent_2", FloodTable("train:25", round_, ["agent_2"], tables["agent_2"]), 0.0)
    assert not session.deciding
    assert [len(t.obs) for t in session.training_rows(rows(), step=26)[4:]] == [3]
    assert session.training_rows(rows(), step=27)[4:] == []  # learned once


def test_the_oracle_beats_random_by_far_on_the_same_episodes():
    envs = VectorizedParallelEnv(spread, 16, autoreset=False)
    random_returns = play(envs, 7, random_policy(envs.action_spaces, 7))
    oracle_returns = play(envs, 7, spread_oracle(envs.possible_agents))
    assert len(random_returns) == len(oracle_returns) == 16
    # Measured over 200 episodes: random -30.9, oracle -10.4 per agent per episode.
    assert mean_return_per_agent(oracle_returns) > -14 > -25 > mean_return_per_agent(random_returns)
    metrics = baseline_metrics(envs, 7, "mpe2.simple_spread_v3")
    assert metrics["eval/oracle_return_mean"] == mean_return_per_agent(oracle_returns)
    assert metrics["eval/random_return_mean"] == mean_return_per_agent(random_returns)
    # The landmarks each leaves covered at the end (an agent within 0.1): the oracle steers one
    # agent onto each, random play covers almost none.
    assert metrics["eval/oracle_landmarks_covered"] > 0.5 > 0.1 > metrics["eval/random_landmarks_covered"]
    assert "eval/oracle_return_mean" not in baseline_metrics(envs, 7, "pursuit_v4")
    continuous = VectorizedParallelEnv(lambda: simple_spread_v3.parallel_env(N=4, max_cycles=25, continuous_actions=True), 2,
                                       autoreset=False)
    assert set(baseline_metrics(continuous, 7, "mpe2.simple_spread_v3")) == {"eval/random_return_mean",
                                                                           "eval/random_landmarks_covered"}


def test_talking_in_steps_the_agent_acts_on_its_nearest_landmark_until_the_teams_assignment_lands():
    session = LandmarkSession(LandmarksConfig(), node_id="agent_1", topology=ring(4), layout=SpreadLayout(4, 4),
                              num_copies=2, in_steps=True)
    obs = np.zeros((2, 24), np.float32)
    obs[:, 4:12] = np.array([[1, 0, 2, 0, 3, 0, 4, 0]] * 2)  # landmark 0 nearest
    session.begin(observation(25, obs, [True, True]), obs, now=25.0, training_step=25)
    np.testing.assert_array_equal(session.goals[False], [0, 0])  # its own choice, at once
    assert session.deciding and session.take_outgoing()
    near = np.tile(np.array([0.0, 5, 5, 5], np.float32), (2, 1))  # the others want landmark 0 more
    for round_, at in ((1, 27.0), (2, 29.0)):
        session.on_message("agent_0", FloodTable("train:25", round_, ["agent_0", "agent_3"], np.stack([near, near + [0, 9, 0, 9]])), at)
        session.on_message("agent_2", FloodTable("train:25", round_, ["agent_2"], (near + [0, 0, 9, 0])[None]), at)
    assert not session.deciding
    assert (session.goals[False] != 0).all()  # the assignment replaced the own choice
    record = session.take_records()[-1]
    assert record["landmarks/decision_age_steps"] == 4.0 and record["landmarks/decided_after_episode"] == 0.0


def test_talking_in_steps_a_decision_that_lands_after_its_episode_ended_changes_nothing():
    session = LandmarkSession(LandmarksConfig(round_timeout_steps=30), node_id="agent_1", topology=ring(4),
                              layout=SpreadLayout(4, 4), num_copies=2, in_steps=True)
    obs = np.zeros((2, 24), np.float32)
    obs[:, 4:12] = np.array([[1, 0, 2, 0, 3, 0, 4, 0]] * 2)
    session.begin(observation(0, obs, [True, False]), obs, now=0.0, training_step=0)
    session.episode_start_step[False][0] = 25  # copy 0's episode ended and another began (its own flooding elsewhere)
    session.goals[False][0] = 3  # ... whose own landmark is another
    near = np.tile(np.array([0.0, 5, 5, 5], np.float32), (2, 1))
    for round_ in (1, 2):
        session.on_message("agent_0", FloodTable("train:0", round_, ["agent_0", "agent_3"], np.stack([near, near + [0, 9, 0, 9]])), 26.0)
        session.on_message("agent_2", FloodTable("train:0", round_, ["agent_2"], (near + [0, 0, 9, 0])[None]), 26.0)
    assert not session.deciding
    np.testing.assert_array_equal(session.goals[False], [3, 0])  # neither copy was playing that episode's start
    record = session.take_records()[-1]
    assert record["landmarks/decided_after_episode"] == 1.0 and record["landmarks/decision_age_steps"] == 26.0


@pytest.mark.parametrize("in_steps", [False, True])
def test_a_restarted_agent_rejoining_mid_episode_pursues_its_nearest_landmark_until_the_next_start(in_steps):
    # A restarted agent's first observations belong to episodes (of training, or of an
    # evaluation under way) it never saw begin: no decision is coming for them.
    session = LandmarkSession(LandmarksConfig(), node_id="agent_1", topology=ring(4), layout=SpreadLayout(4, 4),
                              num_copies=2, in_steps=in_steps)  # fmt: skip
    obs = np.zeros((3, 24), np.float32)
    obs[:, 4:12] = [[5, 0, 1, 0, 5, 0, 5, 0], [5, 0, 5, 0, 5, 0, 1, 0], [1, 0, 5, 0, 5, 0, 5, 0]]
    conditioned = session.condition(obs, evaluation=True)  # 3 evaluation copies mid-episode
    np.testing.assert_array_equal(conditioned[:, 24:].argmax(axis=1), [1, 3, 0])
    conditioned = session.condition(obs[:2], evaluation=False)
    np.testing.assert_array_equal(conditioned[:, 24:].argmax(axis=1), [1, 3])
    assert session.take_records() == [{"landmarks/joined_mid_evaluation": 3.0}, {"landmarks/joined_mid_episode": 2.0}]
    # Once seen, a copy keeps its landmark: counted once, and the next start decides as usual.
    session.condition(obs[::-1][:2], evaluation=False)
    assert session.take_records() == []
    np.testing.assert_array_equal(session.goals[False], [1, 3])
    session.begin(observation(25, obs[:2], [True, False]), obs[:2], now=25.0, training_step=25)
    assert session.seen_start[False].all() and session.deciding
