"""AMIGo on MiniGrid: the minigrid_v0 env (one task copy per agent, fully observed grid, the
agent's cell in infos), the network teacher (its REINFORCE update, the t* rule, checkpoints), and
what the settings and the run schema refuse."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from agent_node.amigo.session import AmigoStudent, build_amigo_session
from agent_node.amigo.config import AmigoSettings
from agent_node.amigo.network_teacher import NetworkTeacher
from agent_node.amigo.teacher import Curriculum, advance_difficulty
from agent_node.goals.config import GoalsConfig, goal_run_problems
from env_server.config import EnvConfig
from protocols.goal_spaces.cell_space import GRID_HEADER, cell_of_observation, grid_observation_size, grid_of_observation

SIZE = 5


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Small networks: several threads only contend on the shared 2-core machine (the learning test: 70 s vs 1.5 s here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def grid_observation(marker_cell: int, *, agent_cell: int = 0, rng=None) -> np.ndarray:
    """A synthetic grid observation: empty cells, a marker object on `marker_cell`."""
    observation = np.zeros(grid_observation_size(SIZE), dtype=np.float32)
    row, col = divmod(agent_cell, SIZE)
    observation[:2] = (row / (SIZE - 1), col / (SIZE - 1))
    grid = observation[GRID_HEADER:].reshape(SIZE, SIZE, 3)
    grid[..., 0] = 0.1  # MiniGrid's "empty" (1 / 10)
    grid[divmod(marker_cell, SIZE)] = (0.5, 0.2, 0.0)
    return observation


# ------------------------------------------------------------------------------------------
# The t* rule and the network teacher
# ------------------------------------------------------------------------------------------


def test_t_star_rises_after_counts_good_updates_resets_on_a_bad_one_and_stops_at_its_cap():
    t_star, counter = 7, 0
    for _ in range(9):
        t_star, counter = advance_difficulty(t_star, counter, 0.2, threshold=0.0, counts=10, t_star_max=9)
    assert (t_star, counter) == (7, 9)
    assert advance_difficulty(t_star, counter, -0.1, threshold=0.0, counts=10, t_star_max=9) == (7, 0), "a bad batch resets"
    assert advance_difficulty(t_star, counter, 0.0, threshold=0.0, counts=10, t_star_max=9) == (8, 0), "at the threshold counts"
    assert advance_difficulty(9, 9, 1.0, threshold=0.0, counts=10, t_star_max=9) == (9, 0), "capped"


def test_the_network_teacher_applies_the_t_star_rule_to_its_batch_rewards():
    teacher = NetworkTeacher(SIZE, seed=0, curriculum=Curriculum(batch_size=2, difficulty_threshold=0.0, difficulty_counts=3))
    observation = grid_observation(12)

    def goal_episode(reached: bool, steps: int) -> float:
        goal = teacher.propose_cell(0, observation)
        return teacher.observe_goal_episode(0, goal, reached, steps)

    assert goal_episode(True, 7) == pytest.approx(0.7) and goal_episode(True, 3) == pytest.approx(-0.3)
    assert teacher.updates == 1 and teacher.last_batch_reward == pytest.approx(0.2) and teacher.counter == 1
    goal_episode(False, 40), goal_episode(False, 40)  # mean -0.3 < 0: the counter resets
    assert teacher.counter == 0 and teacher.t_star == 7
    for _ in range(3):
        goal_episode(True, 9), goal_episode(True, 9)
    assert teacher.updates == 5 and teacher.t_star == 8 and teacher.counter == 0
    assert teacher.reach_history.count(False) == 2


def test_the_network_teacher_learns_which_cell_pays_from_what_it_sees():
    """The student reaches the marked cell in t* steps or more (1000: t* never gets there), any
    other cell too fast: the teacher must learn to propose the marker's cell in layouts it was trained on,
    wherever the marker lies, which a table indexed by the student's cell cannot."""
    rng = np.random.default_rng(0)
    teacher = NetworkTeacher(SIZE, seed=1, curriculum=Curriculum(batch_size=16), learning_rate=0.003, entropy_cost=0.1)
    markers = [8, 16]
    before = np.mean([teacher.policy(grid_observation(marker), 0)[marker] for marker in markers])
    for _ in range(16 * 40):
        marker = int(rng.choice(markers))
        goal = teacher.propose_cell(0, grid_observation(marker))
        teacher.observe_goal_episode(0, goal, reached=True, steps_to_reach=1000 if goal == marker else 1)
    after = [teacher.policy(grid_observation(marker), 0)[marker] for marker in markers]
    assert before < 0.1 and min(after) > 0.5, (before, after)


def test_the_network_teacher_never_proposes_the_students_cell_and_needs_the_observation():
    teacher = NetworkTeacher(SIZE, seed=0)
    observation = grid_observation(3, agent_cell=7)
    assert teacher.policy(observation, 7)[7] == 0.0
    assert 7 not in {teacher.propose_cell(7, observation) for _ in range(300)}
    with pytest.raises(ValueError, match="proposes from the observation"):
        teacher.propose_cell(7)
    with pytest.raises(RuntimeError, match="did not propose"):
        teacher.observe_goal_episode(7, 24 if teacher._proposal[2] != 24 else 23, True, 3)


def test_the_network_teacher_state_round_trips():
    teacher = NetworkTeacher(SIZE, seed=0, curriculum=Curriculum(batch_size=1, difficulty_threshold=-1.0, difficulty_counts=1))
    for marker in (1, 2, 3):
        goal = teacher.propose_cell(0, grid_observation(marker))
        teacher.observe_goal_episode(0, goal, True, 9)
    restored = NetworkTeacher(SIZE, seed=5)
    restored.load_state_dict(teacher.state_dict())
    observation = grid_observation(4)
    assert np.allclose(restored.policy(observation, 0), teacher.policy(observation, 0))
    assert (restored.t_star, restored.counter, restored.updates) == (teacher.t_star, teacher.counter, teacher.updates) == (10, 0, 3)


# ------------------------------------------------------------------------------------------
# Settings and the run schema
# ------------------------------------------------------------------------------------------


def amigo_problems(settings: dict, env_name: str, env_kwargs: dict) -> list[str]:
    env = EnvConfig(name=env_name, kwargs=env_kwargs, forward_infos=["cell"])
    return goal_run_problems(GoalsConfig(selection="amigo", amigo=settings), "goal_dqn", "none", env, topology_diameter=1)


def test_the_run_schema_takes_the_network_teacher_on_minigrid_and_refuses_it_on_the_open_room():
    minigrid = {"env_id": "MiniGrid-KeyCorridorS3R3-v0", "max_steps": 100}
    assert amigo_problems({"teacher": "network", "grid_size": 7, "max_steps": 100}, "minigrid_v0", minigrid) == []
    assert amigo_problems({"grid_size": 7, "max_steps": 100}, "minigrid_v0", minigrid) == [], "the table runs there too"
    [problem] = amigo_problems({"teacher": "network"}, "treasure_room_v0", {})
    assert problem.startswith("agents.goals.amigo.teacher: 'network'") and "treasure_room" in problem
    [problem] = amigo_problems({"teacher": "network", "grid_size": 7, "max_steps": 100}, "minigrid_v0", {"env_id": "x"})
    assert problem.startswith("env.kwargs.max_steps: expected agents.goals.amigo.max_steps (100)")


def test_the_amigo_settings_refuse_network_settings_on_the_table_and_teacher_settings_without_a_teacher():
    with pytest.raises(ValidationError, match="teacher_entropy_cost: network-teacher settings, but teacher is 'table'"):
        AmigoSettings(teacher_entropy_cost=0.1)
    with pytest.raises(ValidationError, match="teacher.*proposer is 'uniform'"):
        AmigoSettings(proposer="uniform", teacher="network")
    assert AmigoSettings().learning_rate() == 0.5 and AmigoSettings(teacher="network").learning_rate() == 0.001
    resolved = GoalsConfig(selection="amigo", amigo={"teacher": "network"}).model_dump(mode="json")
    assert GoalsConfig.model_validate(resolved).amigo.teacher == "network"


def test_the_node_refuses_a_grid_size_that_does_not_fit_the_observations():
    goals = GoalsConfig(selection="amigo", amigo={"teacher": "network", "grid_size": 6, "max_steps": 50})
    from agent_node.algos.config import GoalDQNConfig

    with pytest.raises(ValueError, match="grid_size: 6 does not fit the env's observations of 155 entries"):
        build_amigo_session(goals.amigo, GoalDQNConfig(her_strategy="none"), node_index=0, run_seed=0, env_agent="agent_0",
                            obs_dim=155, num_actions=7)
    with pytest.raises(ValueError, match="'network' proposes from a grid observation"):
        build_amigo_session(goals.amigo, GoalDQNConfig(her_strategy="none"), node_index=0, run_seed=0, env_agent="agent_0",
                            obs_dim=2, num_actions=5)


# ------------------------------------------------------------------------------------------
# The env (needs the minigrid package)
# ------------------------------------------------------------------------------------------


def test_minigrid_v0_gives_each_agent_its_own_fully_observed_copy_and_reports_its_cell():
    pytest.importorskip("minigrid")
    from pettingzoo.test import parallel_api_test

    from env_server.registry import make_env

    env = make_env("minigrid_v0", {"env_id": "MiniGrid-KeyCorridorS3R3-v0", "num_agents": 2, "max_steps": 30})
    parallel_api_test(env, num_cycles=40)
    observations, infos = env.reset(seed=3)
    assert env.size == 7 and observations["agent_0"].shape == (grid_observation_size(7),)
    for agent in env.agents:
        cell = int(infos[agent]["cell"])
        assert cell_of_observation(observations[agent], 7) == cell
        grid = grid_of_observation(observations[agent], 7)
        assert grid[divmod(cell, 7)][0] == pytest.approx(1.0), "the agent's cell is coded as the agent (10 / 10)"
    assert not np.array_equal(observations["agent_0"], observations["agent_1"]), "each agent its own layout"
    again, _ = env.reset(seed=3)
    assert all(np.array_equal(again[agent], observations[agent]) for agent in env.agents), "one seed, one layout"
    for step in range(30):  # MiniGrid's forward action (2) until the episode limit
        observations, rewards, terminations, truncations, infos = env.step({agent: 2 for agent in env.agents})
        for agent in infos:
            assert cell_of_observation(observations[agent], 7) == int(infos[agent]["cell"])
    assert env.agents == [] and all(truncations.values())
    with pytest.raises(ValueError, match="not a registered MiniGrid task"):
        make_env("minigrid_v0", {"env_id": "MiniGrid-NoSuchTask-v0"})


def test_a_student_with_a_network_teacher_runs_on_minigrid_and_logs_t_star():
    pytest.importorskip("minigrid")
    from agent_node.algos.config import GoalDQNConfig
    from env_server.registry import make_env

    env = make_env("minigrid_v0", {"env_id": "MiniGrid-KeyCorridorS3R3-v0", "num_agents": 1, "max_steps": 40})
    goals = GoalsConfig(selection="amigo", amigo={"teacher": "network", "grid_size": 7, "max_steps": 40, "teacher_batch_size": 4})
    session, _ = build_amigo_session(goals.amigo, GoalDQNConfig(her_strategy="none", learning_starts=50), node_index=0, run_seed=0,
                                     env_agent="agent_0", obs_dim=grid_observation_size(7), num_actions=7)
    student: AmigoStudent = session.student
    assert isinstance(student.proposer, NetworkTeacher)
    observations, infos = env.reset(seed=0)
    student.begin_episode(int(infos["agent_0"]["cell"]), observations["agent_0"])
    records = []
    for _ in range(200):
        action = int(student.act(observations["agent_0"][None], explore=True)[0])
        next_observations, rewards, terminations, truncations, infos = env.step({"agent_0": action})
        student.step(observations["agent_0"], action, rewards["agent_0"], next_observations["agent_0"], int(infos["agent_0"]["cell"]),
                     terminations["agent_0"], truncations["agent_0"])
        student.agent.update()
        observations = next_observations
        if not env.agents:
            records.append(student.end_episode())
            observations, infos = env.reset()
            student.begin_episode(int(infos["agent_0"]["cell"]), observations["agent_0"])
    assert len(records) == 5 and all(record["amigo/goals_proposed"] >= 1 for record in records)
    assert records[-1]["amigo/t_star"] >= 7 and records[-1]["amigo/teacher_updates"] >= 1


def test_a_node_checkpoint_restores_the_network_teacher(tmp_path):
    from agent_node.algos.config import GoalDQNConfig
    from agent_node.persistence import load_checkpoint, save_checkpoint

    goals = GoalsConfig(selection="amigo", amigo={"teacher": "network", "grid_size": SIZE, "max_steps": 20, "teacher_batch_size": 1})
    config = GoalDQNConfig(her_strategy="none", hidden_sizes=(8,), batch_size=4, learning_starts=0)
    build = lambda seed: build_amigo_session(goals.amigo, config, node_index=0, run_seed=seed, env_agent="agent_0",
                                             obs_dim=grid_observation_size(SIZE), num_actions=7)
    session, learner = build(1)
    student = session.student
    student.begin_episode(0, grid_observation(12))
    for _ in range(3):  # reach each proposed goal at once: three teacher updates
        student.step(grid_observation(12), 0, 0.0, grid_observation(12, agent_cell=student.goal), student.goal, False, False)
    assert student.proposer.updates == 3
    save_checkpoint(tmp_path / "ckpt.pt", {"learner": learner.state_dict()})
    other_session, other = build(2)
    other.load_state_dict(load_checkpoint(tmp_path / "ckpt.pt")["learner"])
    restored, before = other_session.student.proposer, student.proposer
    assert (restored.updates, restored.t_star) == (before.updates, before.t_star)
    observation = grid_observation(3)
    assert np.allclose(restored.policy(observation, 0), before.policy(observation, 0))
