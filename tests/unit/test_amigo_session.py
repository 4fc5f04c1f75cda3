"""AMIGo in a node (agent_node/amigo/session.py): cell goals proposed, reached and re-proposed
within an episode, the student's and the teacher's rewards, the env's `cell` infos, checkpoints,
and what the run schema refuses; scripted messages, no sockets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from agent_node.algos.config import GoalDQNConfig
from agent_node.algos.goal_dqn import GoalDQNAgent
from agent_node.amigo.session import AmigoSession, AmigoStudent, build_amigo_session
from agent_node.amigo.config import AmigoSettings
from agent_node.amigo.novelty import BeBoldNovelty
from agent_node.amigo.teacher import AmigoTeacher, Curriculum, UniformCells
from agent_node.goals.config import GoalsConfig, goal_run_problems
from env_server.config import EnvConfig
from agent_node.persistence import load_checkpoint, save_checkpoint
from agent_node.roles import Transition
from protocols.codec import messages as m
from protocols.goal_spaces.cell_space import cell_features, cell_index, manhattan

SIZE, T_MAX = 5, 20


class RecordingStudent:
    """Stands in for GoalDQNAgent: records the goals it acts on and the rows it is given."""

    def __init__(self) -> None:
        self.rows: list[tuple] = []
        self.acted_on: list[int] = []

    def act(self, obs, goals, explore=True):
        self.acted_on.append(int(goals[0]))
        return np.zeros(len(obs), dtype=np.int64)

    def observe_rows(self, obs, goals, actions, rewards, next_obs, terminated):
        self.rows.append((int(goals[0]), float(rewards[0]), bool(terminated[0])))


def teacher():
    return AmigoTeacher(SIZE * SIZE, seed=0, curriculum=Curriculum(batch_size=100))


def walk(student, cells, *, extrinsic=None, last_ends=False):
    for index, cell in enumerate(cells):
        reward = 0.0 if extrinsic is None else extrinsic[index]
        ends = last_ends and index == len(cells) - 1
        student.step(np.zeros(2), 0, reward, np.zeros(2), cell, terminated=False, truncated=ends)


def test_a_reached_goal_pays_the_student_by_time_scores_the_teacher_and_a_new_goal_follows():
    agent, proposer = RecordingStudent(), teacher()
    student = AmigoStudent(agent, proposer, size=SIZE, max_steps=T_MAX)
    student.begin_episode(start_cell=0)
    first = student.goal
    assert first != 0, "never the student's own cell"
    other = next(c for c in range(SIZE * SIZE) if c not in (0, first))
    walk(student, [other] * 7 + [first])  # reached after 8 steps (>= t* = 7)
    assert [r for r in agent.rows[:7]] == [(first, 0.0, False)] * 7
    assert agent.rows[7] == (first, pytest.approx(1 - 0.9 * 8 / T_MAX), True), "reached: terminated, r_int by time"
    assert proposer._batch == [(0, first, 0.7)], "teacher: +alpha, the goal proposed from the start cell"
    second = student.goal
    assert second != first, "a new goal, proposed from the cell the student reached"
    walk(student, [first] * 2, last_ends=True)  # the episode ends before the second goal
    record = student.end_episode()
    assert proposer._batch[-1] == (first, second, -0.3), "an open goal at the episode's end is not reached"
    assert record["amigo/goals_proposed"] == 2 and record["amigo/goals_reached"] == 1 and record["amigo/reach_rate"] == 0.5
    assert record["amigo/goal_distance"] == pytest.approx((manhattan(0, first, SIZE) + manhattan(first, second, SIZE)) / 2)
    assert record["amigo/t_star"] == 7 and record["amigo/steps_to_reach"] == 8
    assert record["amigo/teacher_reward"] == pytest.approx((0.7 - 0.3) / 2)


def test_a_goal_reached_too_soon_or_with_extrinsic_reward_scores_the_teacher_as_specified():
    agent, proposer = RecordingStudent(), teacher()
    student = AmigoStudent(agent, proposer, size=SIZE, max_steps=T_MAX)
    student.begin_episode(start_cell=0)
    walk(student, [student.goal])  # one step: easier than t*
    assert proposer._batch[-1][2] == -0.3
    goal = student.goal
    detour = next(c for c in range(SIZE * SIZE) if c not in (goal, student._cell))
    walk(student, [detour, goal], extrinsic=[1.0, 0.0])  # treasure on the way: +1 whatever t*
    assert proposer._batch[-1][2] == 1.0
    assert agent.rows[1] == (goal, 2.0, False), "clip(1 + 0, -1, 1) + 1 for a positive extrinsic reward"


def test_t_star_rises_through_the_session_and_is_logged():
    proposer = AmigoTeacher(SIZE * SIZE, seed=0, curriculum=Curriculum(batch_size=1))  # one goal episode per update
    student = AmigoStudent(RecordingStudent(), proposer, size=SIZE, max_steps=T_MAX)
    student.begin_episode(start_cell=0)
    for _ in range(10):
        away = next(c for c in range(SIZE * SIZE) if c != student.goal)
        walk(student, [away] * 7 + [student.goal])  # reached in 8 >= t* steps: good updates
    record = student.end_episode()
    assert record["amigo/t_star"] == 8 and record["amigo/teacher_updates"] == 11
    assert record["amigo/teacher_batch_reward"] == pytest.approx(-0.3), "the last update: the open goal"


def test_without_a_proposer_the_student_learns_from_the_extrinsic_reward_alone():
    agent = RecordingStudent()
    student = AmigoStudent(agent, None, size=SIZE, max_steps=T_MAX)
    student.begin_episode(start_cell=0)
    walk(student, [0, 1, 2], extrinsic=[0.0, 0.0, 1.0])
    assert agent.rows == [(0, 0.0, False), (0, 0.0, False), (0, 2.0, False)]
    record = student.end_episode()
    assert record["amigo/extrinsic_success"] == 1.0 and "amigo/t_star" not in record and "amigo/reach_rate" not in record


def test_uniform_cells_propose_everywhere_but_the_students_cell_and_bebold_adds_novelty():
    proposer = UniformCells(SIZE * SIZE, seed=0)
    assert {proposer.propose_cell(3) for _ in range(400)} == set(range(SIZE * SIZE)) - {3}
    agent = RecordingStudent()
    student = AmigoStudent(agent, proposer, size=SIZE, max_steps=T_MAX, novelty=BeBoldNovelty(), novelty_scale=0.5)
    student.begin_episode(start_cell=3)
    goal = student.goal
    fresh = next(c for c in range(SIZE * SIZE) if c not in (3, goal))
    walk(student, [fresh, 3])
    # N(fresh) = 1, N(3) = 1: max(1 - 1, 0) = 0; then 3 again: not a first visit.
    assert [reward for _, reward, _ in agent.rows] == [0.0, 0.0]
    student.end_episode()
    student.begin_episode(start_cell=3)  # N(3) = 3
    other = next(c for c in range(SIZE * SIZE) if c not in (3, fresh, student.goal))
    walk(student, [other])
    assert agent.rows[-1][1] == pytest.approx(0.5 * (1.0 - 1.0 / 3)), "a first visit to a less visited cell"
    assert student.end_episode()["amigo/novelty_return"] == pytest.approx(0.5 * (1.0 - 1.0 / 3))


# ------------------------------------------------------------------------------------------
# The node's side: observations with `cell` infos
# ------------------------------------------------------------------------------------------


def observation(step, cell, *, start=False, truncated=False, reward=0.0, infos=True, copies=1):
    row, col = divmod(cell, SIZE)
    obs = np.tile(np.array([row, col], np.float32) / (SIZE - 1), (copies, 1))
    return m.EnvObservation(
        step=step, observations={"agent_0": obs}, rewards={"agent_0": np.full(copies, reward, np.float32)},
        terminated={"agent_0": np.zeros(copies, bool)}, truncated={"agent_0": np.full(copies, truncated)},
        active={"agent_0": np.ones(copies, bool)}, final_observations={}, episode_start=np.full(copies, start),
        infos={"agent_0": {"cell": np.full(copies, cell, np.int64)}} if infos else {},
    )


def transition(reward=0.0):
    return Transition(obs=np.zeros((1, 2), np.float32), action=np.zeros(1, np.int64), reward=np.array([reward], np.float32),
                      next_obs=np.zeros((1, 2), np.float32), terminated=np.zeros(1, bool), truncated=np.zeros(1, bool))


def test_the_session_reads_the_start_cell_from_the_observation_and_later_cells_from_the_infos():
    agent, proposer = RecordingStudent(), teacher()
    session = AmigoSession(env_agent="agent_0", student=AmigoStudent(agent, proposer, size=SIZE, max_steps=T_MAX))
    assert session.act(np.zeros((1, 2)), explore=True).tolist() == [0], "no episode yet: stay"
    start = cell_index(1, 2, SIZE)
    session.on_observation(observation(0, start, start=True), now=0.0)
    goal = session.student.goal
    assert session.student.episode.start_cell == start
    session.act(np.zeros((1, 2)), explore=True)
    assert agent.acted_on == [goal]
    session.observe(transition())
    session.on_observation(observation(1, goal), now=0.0)  # reached after one step
    assert agent.rows == [(goal, pytest.approx(1 - 0.9 / T_MAX), True)] and proposer._batch[0][:2] == (start, goal)
    # Autoreset: the observation that starts the next episode carries the last step's infos.
    session.observe(transition())
    session.on_observation(observation(2, goal, start=True), now=0.0)
    (record,) = session.take_records()
    assert record["amigo/episode_end_step"] == 2.0 and record["amigo/goals_reached"] == 1.0
    assert session.student.in_episode and session.student.episode.start_cell == goal
    assert session.take_ready() == [] and session.next_deadline() is None


def test_the_session_refuses_missing_cell_infos_and_several_copies():
    session = AmigoSession(env_agent="agent_0", student=AmigoStudent(RecordingStudent(), teacher(), size=SIZE, max_steps=T_MAX))
    session.on_observation(observation(0, 0, start=True), now=0.0)
    session.observe(transition())
    with pytest.raises(ValueError, match=r"no infos\['cell'\].*forward_infos: \[cell\]"):
        session.on_observation(observation(1, 1, infos=False), now=0.0)
    with pytest.raises(ValueError, match="one env copy"):
        session.on_observation(observation(2, 1, copies=2), now=0.0)


def test_a_checkpoint_restores_the_student_the_teacher_and_the_novelty_counts(tmp_path):
    goals = GoalsConfig(selection="amigo", amigo={"grid_size": SIZE, "max_steps": T_MAX, "novelty": "bebold", "teacher_batch_size": 1})
    config = GoalDQNConfig(her_strategy="none", hidden_sizes=(8,), batch_size=4, learning_starts=0)
    session, learner = build_amigo_session(goals.amigo, config, node_index=0, run_seed=1, env_agent="agent_0", obs_dim=2, num_actions=5)
    session.on_observation(observation(0, 0, start=True), now=0.0)
    for step in range(1, 12):
        session.act(np.zeros((1, 2), np.float32), explore=True)
        session.observe(transition())
        session.on_observation(observation(step, session.student.goal if step % 2 else 0), now=0.0)
    learner.update()
    teacher_before = session.student.proposer
    assert teacher_before.updates > 0 and len(learner.replay) == 11
    save_checkpoint(tmp_path / "ckpt.pt", {"learner": learner.state_dict()})
    other_session, other = build_amigo_session(goals.amigo, config, node_index=0, run_seed=2, env_agent="agent_0", obs_dim=2, num_actions=5)
    other.load_state_dict(load_checkpoint(tmp_path / "ckpt.pt")["learner"])
    restored = other_session.student.proposer
    assert np.array_equal(restored.logits, teacher_before.logits) and restored.t_star == teacher_before.t_star
    assert restored.updates == teacher_before.updates
    assert other_session.student.novelty.counts == session.student.novelty.counts
    assert other.counters() == learner.counters()


def test_the_student_sees_a_cell_goal_as_its_coordinates_and_stores_rows_with_their_rewards():
    config = GoalDQNConfig(her_strategy="none", hidden_sizes=(8,), batch_size=2, learning_starts=0, train_every=1)
    agent = GoalDQNAgent(config, 2, 5, SIZE * SIZE, reward_fn=None, seed=0, goal_features=cell_features(SIZE))
    inputs = agent._inputs(np.zeros((1, 2), np.float32), np.array([cell_index(4, 2, SIZE)]))
    assert inputs.shape == (1, 4) and torch.allclose(inputs[0, 2:], torch.tensor([1.0, 0.5]))
    agent.observe_rows(np.zeros((3, 2)), [1, 2, 3], [0, 1, 2], [0.0, 0.5, 1.0], np.ones((3, 2)), [False, False, True])
    assert agent.env_steps == 3 and agent.replay.reward[:3].tolist() == [0.0, 0.5, 1.0]
    assert agent.replay.terminated[:3].tolist() == [0.0, 0.0, 1.0] and agent.gradient_steps_due() == 1
    with pytest.raises(ValueError, match="goals must lie in"):
        agent.observe_rows(np.zeros((1, 2)), [SIZE * SIZE], [0], [0.0], np.zeros((1, 2)), [False])
    with pytest.raises(ValueError, match="one row per goal"):
        GoalDQNAgent(config, 2, 5, SIZE * SIZE, reward_fn=None, seed=0, goal_features=cell_features(SIZE + 1))


# ------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------


def amigo_problems(**overrides):
    env = dict(name="treasure_room_v0", kwargs={"size": 9, "max_steps": 40}, num_copies=1, forward_infos=["cell"],
               episode_start_hold_s=0.0, eval_every_steps=None)
    her = overrides.pop("her", "none")
    env.update(overrides)
    return goal_run_problems(GoalsConfig(selection="amigo"), "goal_dqn", her, EnvConfig(**env), topology_diameter=1)


def test_the_run_schema_accepts_amigo_on_the_cell_grid_and_refuses_the_rest_by_name():
    assert amigo_problems() == []
    assert amigo_problems(kwargs={}) == [], "the env's defaults match the settings' defaults"
    refusals = {
        "her_strategy: expected 'none'": amigo_problems(her="future"),
        "env.name: selection 'amigo' runs on the cell grid": amigo_problems(name="goal_lines_v0"),
        "amigo.grid_size: expected env.kwargs.size (7)": amigo_problems(kwargs={"size": 7, "max_steps": 40}),
        "amigo.max_steps: expected env.kwargs.max_steps (50)": amigo_problems(kwargs={"max_steps": 50}),
        "env.num_copies": amigo_problems(num_copies=2),
        "env.forward_infos: expected 'cell'": amigo_problems(forward_infos=[]),
        "env.episode_start_hold_s: expected 0": amigo_problems(episode_start_hold_s=1.0),
        "env.eval_every_steps": amigo_problems(eval_every_steps=100),
    }
    for expected, problems in refusals.items():
        assert len(problems) == 1 and expected in problems[0], (expected, problems)


def test_the_amigo_settings_refuse_what_they_would_not_use():
    with pytest.raises(ValidationError, match="hindsight.*selection 'amigo'"):
        GoalsConfig(selection="amigo", hindsight={})
    with pytest.raises(ValidationError, match="teacher_alpha.*proposer is 'uniform'"):
        AmigoSettings(proposer="uniform", teacher_alpha=0.5)
    with pytest.raises(ValidationError, match="novelty_scale: set only with novelty 'bebold'"):
        AmigoSettings(novelty_scale=2.0)
    with pytest.raises(ValidationError, match="t_star_max"):
        AmigoSettings(t_star=10, t_star_max=9)
    # The resolved config (every default written out) validates again in each process.
    resolved = GoalsConfig(selection="amigo").model_dump(mode="json")
    assert GoalsConfig.model_validate(resolved) == GoalsConfig(selection="amigo")
