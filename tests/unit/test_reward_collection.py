"""Tests of the OG-MARL reward-collection environment (`reward_collection_v0`).

Expected numbers are written out by hand from the specification (ALGORITHMS.md section 1), not
recomputed with the module's own helpers, so a wrong layout or reward formula fails here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from pettingzoo.test import parallel_api_test

from env_server.envs.reward_collection import (
    ACTION_PENALTY_COEF,
    SITE_POSITIONS,
    SITE_RADIUS,
    SITE_VALUES,
    RewardCollectionEnv,
    collection_reward,
    drift_at,
    parallel_env,
    site_value_at,
)

pytestmark = pytest.mark.timeout(20)

AGENTS = [f"agent_{index}" for index in range(5)]


def stack(observations: dict[str, np.ndarray]) -> np.ndarray:
    return np.stack([observations[agent] for agent in AGENTS])


def as_actions(array: np.ndarray) -> dict[str, np.ndarray]:
    return {agent: np.asarray(array[index], dtype=np.float32) for index, agent in enumerate(AGENTS)}


def drive_to(env: RewardCollectionEnv, targets: np.ndarray, steps: int) -> float:
    """Steer every agent onto its target using the known gains; return the last step's reward.

    Inside reach the command `(target - p) / eta` lands exactly on the target (up to rounding).
    """
    reward = float("nan")
    for _ in range(steps):
        command = np.clip((targets - env.positions) / env.eta, -1.0, 1.0)
        _, rewards, _, _, _ = env.step(as_actions(command))
        reward = rewards["agent_0"]
    np.testing.assert_allclose(env.positions, targets, atol=1e-9)
    return reward


# --- PettingZoo API -------------------------------------------------------------------------


@pytest.mark.parametrize("action_penalty", [False, True])
def test_pettingzoo_parallel_api_test_passes(action_penalty):
    env = parallel_env(action_penalty=action_penalty)
    parallel_api_test(env, num_cycles=100)


def test_metadata_agents_and_spaces():
    env = parallel_env()
    assert env.metadata["name"] == "reward_collection_v0"
    assert env.metadata["render_modes"] == []
    assert env.metadata["is_parallelizable"] is True
    assert env.possible_agents == AGENTS
    for agent in AGENTS:
        observation_space = env.observation_space(agent)
        action_space = env.action_space(agent)
        assert observation_space.shape == (2,) and observation_space.dtype == np.float32
        assert np.all(observation_space.low == -10) and np.all(observation_space.high == 10)
        assert action_space.shape == (2,) and action_space.dtype == np.float32
        assert np.all(action_space.low == -1) and np.all(action_space.high == 1)
    assert env.state_space.shape == (10,)
    assert np.all(env.state_space.low == -10) and np.all(env.state_space.high == 10)


def test_state_is_all_positions_flattened():
    env = parallel_env()
    observations, _ = env.reset()
    env.step(as_actions(np.full((5, 2), 0.3)))
    observations, *_ = env.step(as_actions(np.full((5, 2), -0.7)))
    state = env.state()
    assert state.dtype == np.float32 and state.shape == (10,)
    np.testing.assert_array_equal(state, stack(observations).reshape(-1))
    assert env.state_space.contains(state)


# --- reset ----------------------------------------------------------------------------------


def test_reset_positions_are_evenly_spaced_on_the_radius_6_circle():
    env = parallel_env()
    observations, infos = env.reset()
    assert env.agents == AGENTS
    assert set(infos) == set(AGENTS)
    # cos/sin of multiples of 72 degrees in closed form (golden-ratio identities).
    root5 = math.sqrt(5.0)
    cos72, sin72 = (root5 - 1) / 4, math.sqrt(10 + 2 * root5) / 4
    cos144, sin144 = -(root5 + 1) / 4, math.sqrt(10 - 2 * root5) / 4
    expected = 6.0 * np.array(
        [[1.0, 0.0], [cos72, sin72], [cos144, sin144], [cos144, -sin144], [cos72, -sin72]]
    )
    np.testing.assert_allclose(env.positions, expected, rtol=0, atol=1e-12)
    # Agent 0 sits exactly at (6, 0).
    assert env.positions[0].tolist() == [6.0, 0.0]
    for agent in AGENTS:
        assert observations[agent].dtype == np.float32
        assert env.observation_space(agent).contains(observations[agent])
    np.testing.assert_array_equal(stack(observations), expected.astype(np.float32))


def test_reset_positions_for_four_agents():
    env = parallel_env(num_agents=4)
    env.reset()
    expected = np.array([[6.0, 0.0], [0.0, 6.0], [-6.0, 0.0], [0.0, -6.0]])
    np.testing.assert_allclose(env.positions, expected, rtol=0, atol=1e-12)


def test_reset_is_deterministic_whatever_the_seed():
    env = parallel_env()
    first, _ = env.reset(seed=1)
    env.step(as_actions(np.ones((5, 2))))
    second, _ = env.reset(seed=12345)
    third, _ = parallel_env().reset()
    for agent in AGENTS:
        np.testing.assert_array_equal(first[agent], second[agent])
        np.testing.assert_array_equal(first[agent], third[agent])


# --- sites and reward -------------------------------------------------------------------------


def test_site_layout_and_values_are_as_specified():
    expected_positions = np.array(
        [
            [-6, -5], [-2, -5], [2, -5], [6, -5],
            [-6, 0], [-2, 0], [2, 0], [6, 0],
            [-6, 5], [-2, 5],
        ],
        dtype=np.float64,
    )
    expected_values = np.array([0.1, 0.5, 1.0, 0.1, 0.5, 1.0, 0.1, 0.5, 1.0, 0.1])
    np.testing.assert_array_equal(SITE_POSITIONS, expected_positions)
    np.testing.assert_array_equal(SITE_VALUES, expected_values)
    assert SITE_RADIUS == 0.5
    with pytest.raises(ValueError):
        SITE_POSITIONS[0, 0] = 0.0  # shared constants are read-only


# Two agents share the 1.0-site (2, -5), one is 0.49 from the 0.1-site (-6, -5), one is 0.51 from
# the 0.1-site (6, -5), one stands at the origin, 2 away from the nearest site.
HAND_PLACED = np.array(
    [[2.0, -5.0], [2.0, -5.0], [-6.0 + 0.49, -5.0], [6.0 - 0.51, -5.0], [0.0, 0.0]]
)
HAND_PLACED_REWARD = 1.0 + 1.0 + 0.1


def test_collection_reward_of_a_hand_placed_configuration():
    reward = collection_reward(HAND_PLACED, None, False)
    assert reward == pytest.approx(HAND_PLACED_REWARD, abs=1e-12)
    np.testing.assert_allclose(site_value_at(HAND_PLACED), [1.0, 1.0, 0.1, 0.0, 0.0], atol=1e-12)


def test_collection_radius_is_strict():
    exactly_on_the_rim = np.array([[2.5, -5.0]])  # distance 0.5 from the 1.0-site (2, -5)
    assert collection_reward(exactly_on_the_rim, None, False) == 0.0
    just_inside = np.array([[2.0, -5.0 + 0.4999]])
    assert collection_reward(just_inside, None, False) == pytest.approx(1.0)


def test_every_site_pays_its_value_to_an_agent_on_it():
    np.testing.assert_allclose(site_value_at(SITE_POSITIONS + 0.3), SITE_VALUES, atol=0)
    batch = np.broadcast_to(HAND_PLACED, (3, 4, 5, 2))
    assert site_value_at(batch).shape == (3, 4, 5)
    np.testing.assert_allclose(site_value_at(batch)[2, 1], site_value_at(HAND_PLACED))


def test_collection_reward_penalty_uses_clipped_actions():
    actions = np.array([[0.5, -0.25], [3.0, 0.0], [0.0, 0.0], [-1.0, 1.0], [0.1, -2.0]])
    clipped_abs_sum = 0.5 + 0.25 + 1.0 + 0.0 + 1.0 + 1.0 + 0.1 + 1.0
    assert collection_reward(HAND_PLACED, actions, True, penalty_coef=1.0) == pytest.approx(
        HAND_PLACED_REWARD - clipped_abs_sum, abs=1e-12
    )
    assert collection_reward(HAND_PLACED, actions, True) == pytest.approx(
        HAND_PLACED_REWARD - ACTION_PENALTY_COEF * clipped_abs_sum, abs=1e-12
    )
    assert collection_reward(HAND_PLACED, actions, True, penalty_coef=0.1) == pytest.approx(
        HAND_PLACED_REWARD - 0.1 * clipped_abs_sum, abs=1e-12
    )
    assert collection_reward(HAND_PLACED, actions, False) == pytest.approx(HAND_PLACED_REWARD)


def test_env_pays_the_hand_placed_reward_to_every_agent():
    env = parallel_env()
    env.reset()
    reward = drive_to(env, HAND_PLACED, steps=15)
    assert reward == pytest.approx(HAND_PLACED_REWARD, abs=1e-9)
    _, rewards, *_ = env.step(as_actions(np.zeros((5, 2))))
    assert set(rewards) == set(AGENTS)
    assert all(value == pytest.approx(HAND_PLACED_REWARD, abs=1e-9) for value in rewards.values())


def test_reward_is_paid_for_positions_after_the_move():
    env = parallel_env()
    env.reset()
    # Standing still: agent 0 stays on the 0.5-site (6, 0); nobody else is on a site.
    _, rewards, *_ = env.step(as_actions(np.zeros((5, 2))))
    assert rewards["agent_0"] == pytest.approx(0.5)
    # Stepping off it: the reward of this step already counts the new position.
    leave = np.zeros((5, 2))
    leave[0] = [-1.0, 0.0]
    _, rewards, *_ = env.step(as_actions(leave))
    assert rewards["agent_0"] == 0.0


# --- dynamics ---------------------------------------------------------------------------------


def test_eta_is_fixed_across_resets_and_depends_on_the_dynamics_seed():
    env = parallel_env(dynamics_seed=3)
    eta = env.eta
    assert eta.shape == (5, 2)
    assert np.all(np.abs(eta - 1.0) < 0.6)  # N(1, 0.1): six sigma
    assert len(np.unique(eta)) == 10  # every agent and axis has its own gain
    for _ in range(3):
        env.reset()
        for _ in range(5):
            env.step(as_actions(np.full((5, 2), 0.5)))
        np.testing.assert_array_equal(env.eta, eta)
    np.testing.assert_array_equal(parallel_env(dynamics_seed=3).eta, eta)
    assert not np.allclose(parallel_env(dynamics_seed=4).eta, eta)
    assert not np.allclose(parallel_env(dynamics_seed=0).eta, eta)


def test_eta_std_zero_gives_every_agent_the_same_gain():
    env = parallel_env(dynamics_seed=3, eta_std=0.0)
    np.testing.assert_array_equal(env.eta, np.ones((5, 2)))
    env.reset()
    start = env.positions
    env.step(as_actions(np.full((5, 2), 0.5)))
    np.testing.assert_allclose(env.positions, np.clip(start + 0.5, -10, 10))
    # The default is the reference's spread, the same draw as before the argument existed.
    np.testing.assert_array_equal(parallel_env(dynamics_seed=3, eta_std=0.1).eta, parallel_env(dynamics_seed=3).eta)


def test_a_step_moves_each_agent_by_action_times_its_gain():
    env = parallel_env(dynamics_seed=7)
    env.reset()
    start = env.positions
    actions = np.array([[1.0, 0.0], [-0.5, 0.5], [0.25, -1.0], [0.0, 0.0], [-1.0, -1.0]])
    env.step(as_actions(actions))
    np.testing.assert_allclose(env.positions, start + actions * env.eta, atol=1e-6)


def test_drift_off_by_default_leaves_the_dynamics_bit_for_bit():
    # The reference's step written out, compared exactly (not approximately) step by step, with
    # commands beyond [-1, 1] and long enough that some agents reach a wall.
    env, explicit = parallel_env(dynamics_seed=5), parallel_env(dynamics_seed=5, drift_amplitude=0.0)
    assert env.drift_amplitude == 0.0
    env.reset()
    explicit.reset()
    expected = env.positions
    rng = np.random.default_rng(0)
    for _ in range(60):
        actions = rng.uniform(-1.5, 1.5, (5, 2)).astype(np.float32)  # what as_actions sends
        expected = np.clip(expected + np.clip(actions.astype(np.float64), -1, 1) * env.eta, -10, 10)
        env.step(as_actions(actions))
        explicit.step(as_actions(actions))
        assert np.array_equal(env.positions, expected) and np.array_equal(explicit.positions, expected)


def test_drift_field_values_by_hand():
    # d(p) = A (sin(pi p_y / 5), sin(pi p_x / 5)): each axis drifts by the other coordinate.
    points = np.array([[0.0, 0.0], [2.5, 0.0], [0.0, 2.5], [-2.5, 7.5], [5.0, 5.0]])
    expected = 0.5 * np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-1.0, -1.0], [0.0, 0.0]])
    np.testing.assert_allclose(drift_at(points, 0.5), expected, atol=1e-12)
    np.testing.assert_array_equal(drift_at(points, 0.0), np.zeros_like(points))


def test_a_step_with_drift_moves_by_action_times_gain_plus_the_drift_at_the_old_position():
    env = parallel_env(dynamics_seed=7, drift_amplitude=0.5)
    env.reset()
    start = env.positions  # on the radius-6 circle, where the field is far from zero
    actions = np.array([[1.0, 0.0], [-0.5, 0.5], [0.25, -1.0], [0.0, 0.0], [-1.0, -1.0]])
    env.step(as_actions(actions))
    field = 0.5 * np.stack([np.sin(np.pi * start[:, 1] / 5), np.sin(np.pi * start[:, 0] / 5)], axis=1)
    assert np.max(np.abs(field)) > 0.4  # the test can tell the drift from none
    np.testing.assert_allclose(env.positions, start + actions * env.eta + field, atol=1e-12)
    # Agent 3 sent no command: it moved by the field alone, the same field for everybody.
    np.testing.assert_allclose(env.positions[3] - start[3], field[3], atol=1e-12)


def test_a_drifted_move_is_clipped_to_the_world():
    # Agent 0 starts at (6, 0), where d = A (sin 0, sin(6 pi / 5)) = (0, -0.588 A): at A = 20 one
    # step down leaves the world in y, and the position is clipped like any other move.
    env = parallel_env(num_agents=1, drift_amplitude=20.0)
    env.reset()
    start, command = env.positions[0], np.array([1.0, -1.0])
    env.step({"agent_0": command.astype(np.float32)})
    unclipped = start + command * env.eta[0] + drift_at(start, 20.0)
    assert unclipped[1] < -10.0  # the clip has something to do
    np.testing.assert_allclose(env.positions[0], np.clip(unclipped, -10, 10), atol=1e-12)
    assert env.positions[0, 1] == -10.0


def test_the_drift_is_not_in_the_task_spec():
    # The agents learn the dynamics: the task spec (the reward function) must not give it away.
    with_drift, without = parallel_env(drift_amplitude=0.5).task_spec(), parallel_env().task_spec()
    assert with_drift == without
    assert not any("drift" in key for key in with_drift)


def test_actions_are_clipped_before_use():
    clipped_env, wild_env = parallel_env(action_penalty=True), parallel_env(action_penalty=True)
    clipped_env.reset()
    wild_env.reset()
    wild = np.array([[5.0, -3.0], [0.2, 100.0], [-7.0, 0.0], [1.5, -1.5], [0.0, 0.3]])
    _, wild_rewards, *_ = wild_env.step(as_actions(wild))
    _, clipped_rewards, *_ = clipped_env.step(as_actions(np.clip(wild, -1, 1)))
    np.testing.assert_array_equal(wild_env.positions, clipped_env.positions)
    assert wild_rewards == clipped_rewards


def test_positions_stay_within_the_world():
    env = parallel_env(max_cycles=60)
    env.reset()
    for _ in range(30):
        env.step(as_actions(np.ones((5, 2))))
    np.testing.assert_array_equal(env.positions, np.full((5, 2), 10.0))
    rng = np.random.default_rng(0)
    for _ in range(30):
        observations, *_ = env.step(as_actions(rng.uniform(-1, 1, size=(5, 2)) * 3))
        assert np.all(np.abs(env.positions) <= 10.0)
        for agent in AGENTS:
            assert env.observation_space(agent).contains(observations[agent])


# --- episodes -------------------------------------------------------------------------------


@pytest.mark.parametrize("max_cycles", [100, 7])
def test_episode_lasts_exactly_max_cycles_steps(max_cycles):
    env = parallel_env(max_cycles=max_cycles)
    for _ in range(2):  # the second episode after a reset is as long as the first
        env.reset()
        steps = 0
        while env.agents:
            observations, rewards, terminations, truncations, infos = env.step(
                as_actions(np.zeros((5, 2)))
            )
            steps += 1
            assert set(observations) == set(rewards) == set(truncations) == set(AGENTS)
            assert not any(terminations.values())
            assert all(truncations.values()) == (steps == max_cycles)
            assert steps <= max_cycles
        assert steps == max_cycles
        assert env.agents == [] and env.num_agents == 0
        with pytest.raises(RuntimeError, match="reset"):
            env.step({})


def test_step_before_reset_is_refused():
    with pytest.raises(RuntimeError, match="reset"):
        parallel_env().step(as_actions(np.zeros((5, 2))))


def test_action_penalty_subtracts_the_weighted_sum_of_absolute_actions():
    rng = np.random.default_rng(1)
    action_sequence = rng.uniform(-1.2, 1.2, size=(40, 5, 2))
    for coef in (0.1, ACTION_PENALTY_COEF):
        plain = parallel_env()
        penalized = parallel_env(action_penalty=True, action_penalty_coef=coef)
        plain.reset()
        penalized.reset()
        for actions in action_sequence:
            _, plain_rewards, *_ = plain.step(as_actions(actions))
            _, penalized_rewards, *_ = penalized.step(as_actions(actions))
            sent = actions.astype(np.float32).astype(np.float64)  # what as_actions sends
            penalty = coef * np.abs(np.clip(sent, -1, 1)).sum()
            assert penalized_rewards["agent_0"] == pytest.approx(
                plain_rewards["agent_0"] - penalty, abs=1e-9
            )


def test_default_penalty_is_the_references_unweighted_sum():
    # ManuelWendl/OG-MARL env.py:144 subtracts np.sum(np.abs(actions)), weight 1.
    assert ACTION_PENALTY_COEF == 1.0
    env = parallel_env(action_penalty=True)
    assert env.action_penalty_coef == 1.0 and env.task_spec()["action_penalty_coef"] == 1.0


def test_random_play_with_the_reference_penalty_scores_about_minus_495():
    """Uniform actions in [-1, 1]^2 (the learners' random phase, as the reference's
    `np.random.uniform(-1, 1, ...)`) cost 500 per episode in expectation at weight 1.0; agent 0
    starts on a 0.5-site and collects a little. 200 episodes over 5 draws of the gains."""
    rng = np.random.default_rng(0)
    returns = []
    for dynamics_seed in range(5):
        env = parallel_env(action_penalty=True, dynamics_seed=dynamics_seed)
        for _ in range(40):
            env.reset()
            episode_return = 0.0
            while env.agents:
                actions = {agent: rng.uniform(-1.0, 1.0, 2).astype(np.float32) for agent in env.agents}
                _, rewards, *_ = env.step(actions)
                episode_return += rewards["agent_0"]
            returns.append(episode_return)
    returns = np.asarray(returns)
    # Measured: mean -492.0, sample std 10.4 per episode.
    assert abs(returns.mean() - (-495.0)) < 15.0, returns.mean()
    assert returns.std(ddof=1) < 15.0, returns.std(ddof=1)
    assert -500.0 < returns.mean() < -480.0  # the penalty dominates; collection adds a few points


# --- bad input ------------------------------------------------------------------------------


def test_bad_actions_raise_clear_errors():
    env = parallel_env()
    env.reset()
    good = as_actions(np.zeros((5, 2)))
    missing = dict(good)
    del missing["agent_3"]
    with pytest.raises(ValueError, match="agent_3"):
        env.step(missing)
    with pytest.raises(ValueError, match="agent_9"):
        env.step({**good, "agent_9": np.zeros(2)})
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        env.step({**good, "agent_1": np.zeros(3)})
    with pytest.raises(ValueError, match="finite"):
        env.step({**good, "agent_2": np.array([np.nan, 0.0])})
    with pytest.raises(TypeError, match="agent_4"):
        env.step({**good, "agent_4": "left"})
    with pytest.raises(TypeError, match="dict"):
        env.step(np.zeros((5, 2)))
    with pytest.raises(ValueError, match="unknown agent"):
        env.action_space("agent_5")


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"num_agents": 0}, ValueError),
        ({"num_agents": 2.5}, TypeError),
        ({"num_agents": True}, TypeError),
        ({"max_cycles": 0}, ValueError),
        ({"action_penalty": 1}, TypeError),
        ({"action_penalty_coef": -0.1}, ValueError),
        ({"dynamics_seed": -1}, ValueError),
        ({"eta_std": -0.1}, ValueError),
        ({"eta_std": float("nan")}, ValueError),
        ({"eta_std": "0.1"}, TypeError),
        ({"drift_amplitude": -0.5}, ValueError),
        ({"drift_amplitude": float("nan")}, ValueError),
        ({"drift_amplitude": float("inf")}, ValueError),
        ({"drift_amplitude": "0.5"}, TypeError),
        ({"drift_amplitude": True}, TypeError),
        ({"render_mode": "human"}, ValueError),
    ],
)
def test_bad_constructor_arguments_raise(kwargs, error):
    with pytest.raises(error):
        parallel_env(**kwargs)


def test_collection_reward_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        collection_reward(np.zeros((5, 3)), None, False)
    with pytest.raises(ValueError, match="shape of positions"):
        collection_reward(np.zeros((5, 2)), np.zeros((4, 2)), True)
    with pytest.raises(ValueError, match="None"):
        collection_reward(np.zeros((5, 2)), None, True)
    with pytest.raises(TypeError, match="bool"):
        collection_reward(np.zeros((5, 2)), None, 0.1)
