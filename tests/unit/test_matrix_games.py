"""The matrix games (two_step_v0, nonmonotonic_matrix_v0, climbing_v0): PettingZoo's API test,
every payoff and transition against the papers' tables, the split reward, the analytic projection."""

from __future__ import annotations

import numpy as np
import pytest
from pettingzoo.test import parallel_api_test

from env_server.envs import climbing, nonmonotonic, two_step
from env_server.envs.matrix_game import MatrixGameEnv, Stage
from env_server.registry import make_env

GAMES = {"two_step_v0": two_step, "nonmonotonic_matrix_v0": nonmonotonic, "climbing_v0": climbing}


@pytest.mark.parametrize("name", GAMES)
def test_pettingzoo_parallel_api_test_passes(name):
    env = make_env(name, {})
    assert env.metadata["name"] == name
    parallel_api_test(env, num_cycles=20)


def play(env, *joint_actions):
    """Reset, play the joint actions in turn; the team reward (sum over agents) of each step,
    the last step's terminations and the observations after it."""
    observations, _ = env.reset(seed=0)
    team_rewards = []
    for action_0, action_1 in joint_actions:
        observations, rewards, terminations, truncations, _ = env.step({"agent_0": action_0, "agent_1": action_1})
        assert not any(truncations.values())
        team_rewards.append(sum(rewards.values()))
        # The team payoff is split equally: each agent is paid half.
        assert rewards["agent_0"] == rewards["agent_1"]
    return team_rewards, terminations, observations


@pytest.mark.parametrize("module, table", [
    (nonmonotonic, [[8, -12, -12], [-12, 0, 0], [-12, 0, 0]]),
    (climbing, [[11, -30, 0], [-30, 7, 6], [0, 0, 5]]),
])
def test_one_step_games_pay_the_papers_matrix_and_end(module, table):
    env = module.parallel_env()
    for row in range(3):
        for column in range(3):
            rewards, terminations, observations = play(env, (row, column))
            assert rewards == [table[row][column]]
            assert all(terminations.values()) and env.agents == []
            assert all(np.array_equal(obs, [0.0]) for obs in observations.values())
    assert np.max(table) == module.OPTIMAL_RETURN


def test_two_step_game_branches_on_agent_0_and_pays_the_papers_second_stage():
    env = two_step.parallel_env()
    state_2a, state_2b = np.array([0, 1, 0], np.float32), np.array([0, 0, 1], np.float32)
    second = {0: [[7, 7], [7, 7]], 1: [[0, 1], [1, 8]]}  # agent 0's first action -> the stage's payoffs
    for first_0 in (0, 1):
        for first_1 in (0, 1):  # agent 1's first action does not matter
            for a0 in (0, 1):
                for a1 in (0, 1):
                    observations, _ = env.reset()
                    assert all(np.array_equal(o, [1, 0, 0]) for o in observations.values())
                    observations, rewards, terminations, _, _ = env.step({"agent_0": first_0, "agent_1": first_1})
                    assert sum(rewards.values()) == 0 and not any(terminations.values())
                    expected_state = state_2a if first_0 == 0 else state_2b
                    assert np.array_equal(env.state(), expected_state)
                    assert all(np.array_equal(o, expected_state) for o in observations.values())
                    _, rewards, terminations, _, _ = env.step({"agent_0": a0, "agent_1": a1})
                    assert sum(rewards.values()) == second[first_0][a0][a1]
                    assert all(terminations.values()) and env.agents == []
    assert play(env, (1, 0), (1, 1))[0] == [0, two_step.OPTIMAL_RETURN]


def test_the_papers_two_step_q_tot_tables_are_consistent_with_the_game():
    # QMIX's table is the true Q* with gamma 0.99; VDN's first stage picks 2A.
    qmix = two_step.PAPER_Q_TOT["qmix"]
    assert np.allclose(qmix["2B"], [[0, 1], [1, 8]]) and np.allclose(qmix["2A"], 7)
    assert np.allclose(qmix["1"], [[0.99 * 7] * 2, [0.99 * 8] * 2])
    vdn = two_step.PAPER_Q_TOT["vdn"]
    assert np.max(vdn["1"][0]) > np.max(vdn["1"][1])


def test_the_additive_projection_is_the_issues_table_and_the_least_squares_fit():
    projection = nonmonotonic.additive_projection(nonmonotonic.PAYOFF)
    assert projection[0, 0] == pytest.approx(-56 / 9)  # -6.22
    assert np.allclose(projection[0, 1:], -44 / 9) and np.allclose(projection[1:, 0], -44 / 9)  # -4.89
    assert np.allclose(projection[1:, 1:], -32 / 9)  # -3.56
    # The least-squares solution over f(row) + g(column), solved independently.
    design = np.array([[r == i for i in range(3)] + [c == j for j in range(3)] for r in range(3) for c in range(3)], float)
    coefficients = np.linalg.lstsq(design, np.ravel(nonmonotonic.PAYOFF), rcond=None)[0]
    assert np.allclose(coefficients[:3, None] + coefficients[None, 3:], projection)


def test_the_empirical_fit_is_the_projection_on_balanced_rows_and_moves_with_unequal_counts():
    grid = np.array([(r, c) for r in range(3) for c in range(3)])
    payoff = np.asarray(nonmonotonic.PAYOFF, float)
    balanced = np.repeat(grid, 5, axis=0)
    np.testing.assert_allclose(nonmonotonic.empirical_additive_fit(balanced, payoff[balanced[:, 0], balanced[:, 1]]),
                               nonmonotonic.additive_projection(payoff), atol=1e-9)
    # One more draw of (0, 0) than of the other cells pulls the fit towards its 8.
    unequal = np.vstack([balanced, [[0, 0]]])
    fit = nonmonotonic.empirical_additive_fit(unequal, payoff[unequal[:, 0], unequal[:, 1]])
    assert fit[0, 0] > nonmonotonic.additive_projection(payoff)[0, 0] + 0.1
    with pytest.raises(ValueError, match=r"expected actions \(R, 2\) and rewards \(R,\)"):
        nonmonotonic.empirical_additive_fit(grid[:, :1], payoff.ravel())


def test_bad_actions_and_bad_games_are_refused_naming_what_was_expected():
    env = climbing.parallel_env()
    env.reset()
    with pytest.raises(ValueError, match=r"action of agent_1 must be an int in \[0, 2\], got 3"):
        env.step({"agent_0": 0, "agent_1": 3})
    with pytest.raises(ValueError, match="missing \\['agent_1'\\]"):
        env.step({"agent_0": 0})
    with pytest.raises(ValueError, match="action of agent_0 must be an int"):
        env.step({"agent_0": 0.5, "agent_1": 0})
    env.step({"agent_0": 0, "agent_1": 0})
    with pytest.raises(RuntimeError, match="call reset"):
        env.step({"agent_0": 0, "agent_1": 0})
    with pytest.raises(ValueError, match="render_mode must be None"):
        climbing.parallel_env(render_mode="human")
    with pytest.raises(ValueError, match="leads to unknown stages"):
        MatrixGameEnv("bad_v0", [Stage("a", ((0, 0), (0, 0)), (("b", None), (None, None)))])
    with pytest.raises(ValueError, match="square"):
        MatrixGameEnv("bad_v0", [Stage("a", ((0, 0, 0), (0, 0, 0)))])
