"""goal_lines_v0: PettingZoo API, goal table, achievement rules, rewards, population draws."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from pettingzoo.test import parallel_api_test

from env_server.envs.goal_lines import (
    GoalLinesEnv,
    achieved_goals,
    achieved_in_view,
    goal_reward,
    goal_table,
    landmark_cells,
    num_goals,
    parallel_env,
)
from env_server.registry import make_env


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_landmarks": 3},
        {"num_landmarks": 6},
        {"num_landmarks": 6, "population": 4, "active_per_episode": 2},
        {"num_landmarks": 3, "population": 6, "active_per_episode": None},
        {"num_landmarks": 6, "view": "local"},
        {"num_landmarks": 6, "view": "own"},
    ],
)
def test_passes_pettingzoo_parallel_api_test(kwargs):
    parallel_api_test(parallel_env(**kwargs), num_cycles=200)


def test_goal_counts_match_the_reference():
    assert num_goals(3) == 6 and num_goals(6) == 21
    assert goal_table(3) == [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2)]
    assert len(goal_table(6)) == 21


@pytest.mark.parametrize("num_landmarks", [3, 6])
def test_strips_are_three_wall_cells_and_disjoint(num_landmarks):
    strips = landmark_cells(num_landmarks, 9)
    assert len(strips) == num_landmarks
    cells = [cell for strip in strips for cell in strip]
    assert len(set(cells)) == len(cells) == 3 * num_landmarks
    for row, col in cells:
        assert row in (0, 8) or col in (0, 8)


def test_achievement_rules():
    # L = 3: goals 0,1,2 individual; 3=(0,1), 4=(0,2), 5=(1,2)
    assert achieved_goals([-1, -1], 3).tolist() == []
    assert achieved_goals([1, -1], 3).tolist() == [1]
    assert achieved_goals([0, 2], 3).tolist() == [0, 2, 4]
    # Both agents on the same landmark: the individual goal only, no pair.
    assert achieved_goals([1, 1], 3).tolist() == [1]
    # Three agents on three landmarks achieve every pair.
    assert achieved_goals([0, 1, 2], 3).tolist() == [0, 1, 2, 3, 4, 5]


def test_local_view_holds_only_the_achievements_the_agent_takes_part_in():
    # L = 3: goals 0,1,2 individual; 3=(0,1), 4=(0,2), 5=(1,2)
    assert achieved_in_view([0, 2], 0, 3).tolist() == [0, 4]
    assert achieved_in_view([0, 2], 1, 3).tolist() == [2, 4]
    # The partner's lone touch is outside the view of an agent touching nothing.
    assert achieved_in_view([-1, 1], 0, 3).tolist() == []
    assert achieved_in_view([-1, 1], 1, 3).tolist() == [1]
    # Same landmark: the individual goal, no pair (as the joint view).
    assert achieved_in_view([1, 1], 0, 3).tolist() == [1]
    # Three agents: agent 0 sees its pairs with both others, not the pair (1, 2) they make.
    assert achieved_in_view([0, 1, 2], 0, 3).tolist() == [0, 3, 4]
    # Every cooperative goal in the joint view is in the view of both agents that achieve it.
    for touched in itertools.product(range(-1, 3), repeat=2):
        joint = set(achieved_goals(list(touched), 3).tolist())
        for own in (0, 1):
            local = set(achieved_in_view(list(touched), own, 3).tolist())
            assert local <= joint
            assert {g for g in joint if g >= 3} <= local


def test_local_view_in_an_episode_reports_each_agents_own_achievements_and_pays_the_same():
    joint, local = GoalLinesEnv(num_landmarks=3), GoalLinesEnv(num_landmarks=3, view="local")
    goals = {"agent_0": 4, "agent_1": 4}
    seen = {"joint": [], "local": []}
    for env, name in ((joint, "joint"), (local, "local")):
        env.reset(seed=3, options={"goals": goals})
        # agent_0 walks to landmark 0 while agent_1 stays; then agent_1 walks to landmark 2.
        plan_0 = _walk_to(env, "agent_0", env.strips[0][1])
        plan_1 = _walk_to(env, "agent_1", env.strips[2][1])
        for a0, a1 in [(a, 0) for a in plan_0] + [(0, a) for a in plan_1]:
            _, rewards, _, _, infos = env.step({"agent_0": a0, "agent_1": a1})
            seen[name].append(({a: infos[a]["achieved_goals"].tolist() for a in infos}, rewards))
    assert [r for _, r in seen["joint"]] == [r for _, r in seen["local"]], "the view changes no reward"
    # While agent_0 waits alone on landmark 0, only it observes goal 0.
    waiting = [infos for infos, _ in seen["local"] if infos["agent_0"] == [0]]
    assert waiting and all(infos["agent_1"] == [] for infos in waiting)
    assert all(infos["agent_1"] == [0] for infos, _ in seen["joint"] if infos["agent_0"] == [0])
    # The cooperative goal, reached at the last step, is in both agents' views.
    assert seen["local"][-1][0] == {"agent_0": [0, 4], "agent_1": [2, 4]}
    assert seen["joint"][-1][0] == {"agent_0": [0, 2, 4], "agent_1": [0, 2, 4]}


def test_goal_reward_values():
    achieved = np.array([0, 2, 4])
    assert goal_reward(4, achieved, 3) == 1.0
    assert goal_reward(0, achieved, 3) == 0.5
    assert goal_reward(0, achieved, 3, beta=4.0) == 0.25
    assert goal_reward(3, achieved, 3) == 0.0
    with pytest.raises(ValueError, match="goal must be in"):
        goal_reward(6, achieved, 3)


def _walk_to(env: GoalLinesEnv, agent: str, cell) -> list[int]:
    """Moves (up/down first, then left/right) from the agent's cell to `cell`."""
    row, col = env._positions[agent]
    moves = [1 if cell[0] < row else 2] * abs(cell[0] - row) + [3 if cell[1] < col else 4] * abs(cell[1] - col)
    return moves


def test_cooperative_goal_pays_both_and_ends_the_episode_when_goals_are_given():
    env = GoalLinesEnv(num_landmarks=3)
    observations, infos = env.reset(seed=3, options={"goals": {"agent_0": 4, "agent_1": 4}})
    assert infos["agent_0"]["achieved_goals"].tolist() == []
    strips = env.strips
    plan_0 = _walk_to(env, "agent_0", strips[0][1])
    plan_1 = _walk_to(env, "agent_1", strips[2][1])
    # Pad the shorter plan with "stay" so both arrive at the same step.
    length = max(len(plan_0), len(plan_1))
    plan_0 = [0] * (length - len(plan_0)) + plan_0
    plan_1 = [0] * (length - len(plan_1)) + plan_1
    for step, (a0, a1) in enumerate(zip(plan_0, plan_1)):
        _, rewards, terminations, truncations, infos = env.step({"agent_0": a0, "agent_1": a1})
        if step < length - 1:
            assert rewards == {"agent_0": 0.0, "agent_1": 0.0}
    assert rewards == {"agent_0": 1.0, "agent_1": 1.0}
    assert terminations == {"agent_0": True, "agent_1": True}
    assert infos["agent_0"]["achieved_goals"].tolist() == [0, 2, 4]
    assert infos["agent_1"]["landmark"] == 2
    assert env.agents == []


def test_own_view_shows_only_the_own_landmark_and_assigned_goals_are_paid_without_ending_the_episode():
    env = GoalLinesEnv(num_landmarks=3, view="own", max_steps=30)
    env.reset(seed=3)
    env.assign_goals({"agent_0": 4, "agent_1": 4})  # the pair (0, 2)
    plan_0 = _walk_to(env, "agent_0", env.strips[0][1])
    plan_1 = _walk_to(env, "agent_1", env.strips[2][1])
    length = max(len(plan_0), len(plan_1))
    plan_0, plan_1 = [0] * (length - len(plan_0)) + plan_0, [0] * (length - len(plan_1)) + plan_1
    for a0, a1 in zip(plan_0, plan_1):
        _, rewards, terminations, truncations, infos = env.step({"agent_0": a0, "agent_1": a1})
    assert rewards == {"agent_0": 1.0, "agent_1": 1.0}, "the env pays the cooperative goal on the joint state"
    assert {a: infos[a]["achieved_goals"].tolist() for a in infos} == {"agent_0": [0], "agent_1": [2]}, \
        "each sees only its own landmark, not the pair"
    assert not any(terminations.values()) and env.agents == ["agent_0", "agent_1"], "paid, but the episode goes on"
    _, rewards, *_ = env.step({"agent_0": 2, "agent_1": 0})  # agent_0 steps off its strip
    assert rewards == {"agent_0": 0.0, "agent_1": 0.0}
    for _ in range(30 - length - 1):
        *_, truncations, _ = env.step({"agent_0": 0, "agent_1": 0})
    assert all(truncations.values()) and env.agents == []
    env.reset(seed=4)
    assert env.step({"agent_0": 0, "agent_1": 0})[1] == {"agent_0": 0.0, "agent_1": 0.0}, "a reset forgets the goals"


def test_assign_goals_refuses_what_it_could_not_pay_for_a_whole_episode():
    env = GoalLinesEnv(num_landmarks=3, population=4, active_per_episode=2)
    env.reset(seed=0)
    idle = next(agent for agent in env.possible_agents if agent not in env.agents)
    with pytest.raises(ValueError, match="not active in this episode"):
        env.assign_goals({idle: 3})
    with pytest.raises(ValueError, match=r"must be in \[0, 6\), got 6"):
        env.assign_goals({env.agents[0]: 6})
    env.step({agent: 0 for agent in env.agents})
    with pytest.raises(ValueError, match="before the episode's first step"):
        env.assign_goals({env.agents[0]: 3})
    pair = GoalLinesEnv(num_landmarks=3)
    pair.reset(seed=1, options={"goals": {"agent_0": 3, "agent_1": 3}})
    with pytest.raises(ValueError, match="given to reset already"):
        pair.assign_goals({"agent_0": 3})


def test_without_goals_the_env_pays_nothing_and_truncates_at_the_limit():
    env = GoalLinesEnv(num_landmarks=6, max_steps=5)
    env.reset(seed=0)
    for step in range(5):
        _, rewards, terminations, truncations, infos = env.step({a: 1 for a in env.agents})
        assert set(rewards.values()) == {0.0}
        assert not any(terminations.values())
    assert all(truncations.values()) and env.agents == []
    # Five steps up from any free cell reaches the top wall: the top strips may be touched.
    assert set(infos["agent_0"]) == {"achieved_goals", "landmark"}


def test_population_draws_two_of_four_and_seed_fixes_the_sequence():
    def draws(seed):
        env = GoalLinesEnv(population=4, active_per_episode=2)
        sequence = [tuple(env.reset(seed=seed)[0])]
        sequence += [tuple(env.reset()[0]) for _ in range(40)]
        return sequence

    first = draws(7)
    assert first == draws(7)
    assert all(len(active) == 2 for active in first)
    pairs = set(first)
    assert len(pairs) == 6  # all C(4,2) pairs appear in 41 draws
    env = GoalLinesEnv(population=4, active_per_episode=2)
    obs, _ = env.reset(options={"active": ["agent_3", "agent_1"]})
    assert list(obs) == ["agent_1", "agent_3"]
    assert obs["agent_1"].shape == (2 + 12 + 2,)
    with pytest.raises(ValueError, match="must name 2 distinct agents"):
        env.reset(options={"active": ["agent_1"]})


def test_observation_offsets_and_bounds():
    env = GoalLinesEnv(num_landmarks=3, population=3, active_per_episode=None)
    observations, _ = env.reset(seed=1)
    for agent, obs in observations.items():
        assert env.observation_space(agent).contains(obs)
        own = env._positions[agent]
        np.testing.assert_allclose(obs[:2], own / 8.0, atol=1e-6)
        centre = np.array(env.strips[1][1])
        np.testing.assert_allclose(obs[4:6], (centre - own) / 8.0, atol=1e-6)
    assert observations["agent_0"].shape == (2 + 6 + 4,)


def test_bad_arguments_are_refused_with_the_field_named():
    with pytest.raises(ValueError, match="num_landmarks must be 3 or 6"):
        GoalLinesEnv(num_landmarks=4)
    with pytest.raises(ValueError, match="active_per_episode"):
        GoalLinesEnv(population=2, active_per_episode=3)
    with pytest.raises(ValueError, match="beta"):
        GoalLinesEnv(beta=0)
    with pytest.raises(ValueError, match="view must be one of \\['joint', 'local', 'own'\\], got 'near'"):
        GoalLinesEnv(view="near")
    env = GoalLinesEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="options\\['goals'\\]"):
        env.reset(options={"goals": {"agent_0": 1}})
    with pytest.raises(ValueError, match="missing"):
        env.step({"agent_0": 0})


def test_registered_for_the_env_server():
    env = make_env("goal_lines_v0", {"num_landmarks": 3})
    assert isinstance(env, GoalLinesEnv) and env.num_goals == 6
