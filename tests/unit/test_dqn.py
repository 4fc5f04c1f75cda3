"""DQNAgent: learns a small chain, bootstraps through truncation only, resumes exactly, and its
config schema validates without torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pydantic
import pytest
import torch

from agent_node.algos import build_learner
from agent_node.algos.config import CQLConfig, DQNConfig, LearnerConfig, SACConfig
from agent_node.algos.dqn import DQNAgent
from agent_node.algos.learner_parts import linear_schedule
from agent_node.roles import Actor, Learner, ParamSource, Transition
from tests.conftest import assert_goes_on_alike, through_a_checkpoint

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------------------------- a tiny chain

CHAIN_LENGTH = 6  # states 0..5; reaching state 5 gives reward 1 and ends the episode
CHAIN_TIME_LIMIT = 20
LEFT, RIGHT = 0, 1


def one_hot(states: np.ndarray) -> np.ndarray:
    obs = np.zeros((len(states), CHAIN_LENGTH), dtype=np.float32)
    obs[np.arange(len(states)), states] = 1.0
    return obs


class VectorChain:
    """K copies of the chain, each starting in a random non-goal state, like an env server."""

    def __init__(self, num_copies: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.num_copies = num_copies
        self.states = self.rng.integers(0, CHAIN_LENGTH - 1, num_copies)
        self.elapsed = np.zeros(num_copies, dtype=int)

    def step(self, actions: np.ndarray) -> Transition:
        next_states = np.clip(self.states + np.where(actions == RIGHT, 1, -1), 0, CHAIN_LENGTH - 1)
        self.elapsed += 1
        terminated = next_states == CHAIN_LENGTH - 1
        truncated = (self.elapsed >= CHAIN_TIME_LIMIT) & ~terminated
        transition = Transition(
            obs=one_hot(self.states),
            action=actions,
            reward=terminated.astype(np.float32),
            next_obs=one_hot(next_states),
            terminated=terminated,
            truncated=truncated,
        )
        done = terminated | truncated
        self.states = np.where(done, self.rng.integers(0, CHAIN_LENGTH - 1, self.num_copies), next_states)
        self.elapsed[done] = 0
        return transition


CHAIN_OBS_SPACE = gym.spaces.Box(0.0, 1.0, (CHAIN_LENGTH,), np.float32)
SMALL_CONFIG = DQNConfig(
    hidden_sizes=(32, 32),
    learning_rate=1e-3,
    gamma=0.9,
    batch_size=32,
    buffer_size=5_000,
    learning_starts=200,
    target_update_period=50,
    epsilon_decay_steps=1_000,
    epsilon_end=0.1,
)


def run_chain(agent: DQNAgent, rows: int, num_copies: int = 4, seed: int = 0) -> dict[str, float]:
    env = VectorChain(num_copies, seed)
    metrics: dict[str, float] = {}
    for _ in range(rows // num_copies):
        transition = env.step(agent.act(one_hot(env.states)))
        agent.observe(transition)
        metrics = agent.update()
    return metrics


@pytest.mark.timeout(60)
def test_greedy_policy_becomes_optimal_on_the_chain():
    agent = DQNAgent(SMALL_CONFIG, CHAIN_OBS_SPACE, gym.spaces.Discrete(2), seed=0)
    untrained = agent.act(one_hot(np.arange(CHAIN_LENGTH - 1)), explore=False)
    metrics = run_chain(agent, rows=1_200)

    non_goal_states = np.arange(CHAIN_LENGTH - 1)
    greedy = agent.act(one_hot(non_goal_states), explore=False)
    assert greedy.tolist() == [RIGHT] * (CHAIN_LENGTH - 1), f"untrained policy was {untrained.tolist()}"
    # Q*(s, right) = gamma^(steps to goal - 1): checks the TD target, not just the argmax.
    q_right = agent.q_values(one_hot(non_goal_states))[:, RIGHT]
    expected = SMALL_CONFIG.gamma ** (CHAIN_LENGTH - 2 - non_goal_states)
    np.testing.assert_allclose(q_right, expected, atol=0.05)
    assert set(metrics) >= {"dqn/loss", "dqn/q_mean", "dqn/epsilon"}
    assert agent.gradient_steps == 1_200 - SMALL_CONFIG.learning_starts


def loop_value(terminal_flag: str) -> float:
    """Q of a one-state loop with reward 1 per step, where every row is ended by `terminal_flag`."""
    config = DQNConfig(
        hidden_sizes=(16,), learning_rate=1e-2, gamma=0.5, batch_size=16, buffer_size=100,
        learning_starts=0, target_update_period=5, loss="mse",
    )
    agent = DQNAgent(config, gym.spaces.Box(0.0, 1.0, (1,), np.float32), gym.spaces.Discrete(1), seed=1)
    obs = np.ones((16, 1), np.float32)
    flags = {"terminated": np.zeros(16, bool), "truncated": np.zeros(16, bool)}
    flags[terminal_flag] = np.ones(16, bool)
    agent.observe(Transition(obs, np.zeros(16, np.int64), np.ones(16, np.float32), obs, **flags))
    for _ in range(200):
        agent.update()
        agent.observe(Transition(obs[:1], np.zeros(1, np.int64), np.ones(1, np.float32), obs[:1],
                                 flags["terminated"][:1], flags["truncated"][:1]))
    return float(agent.q_values(obs[:1])[0, 0])


def test_bootstraps_through_truncation_but_not_termination():
    # Truncated rows bootstrap: Q = 1 / (1 - gamma) = 2. Terminated rows do not: Q = 1.
    assert loop_value("truncated") == pytest.approx(2.0, abs=0.1)
    assert loop_value("terminated") == pytest.approx(1.0, abs=0.1)


def test_a_reward_bonus_adds_to_every_sampled_rows_reward():
    # The terminated loop's Q is its reward: 1, and 1.5 with a bonus of 0.5 on every row, which
    # is given the rows' observations and action indices as the replay holds them.
    config = DQNConfig(hidden_sizes=(16,), learning_rate=1e-2, gamma=0.5, batch_size=16, buffer_size=100,
                       learning_starts=0, target_update_period=5, loss="mse")
    agent = DQNAgent(config, gym.spaces.Box(0.0, 1.0, (1,), np.float32), gym.spaces.Discrete(1), seed=1)
    seen = []
    agent.reward_bonus = lambda obs, action: seen.append((obs.shape, action.tolist())) or np.full(len(obs), 0.5, np.float32)
    obs = np.ones((16, 1), np.float32)
    agent.observe(Transition(obs, np.zeros(16, np.int64), np.ones(16, np.float32), obs, np.ones(16, bool), np.zeros(16, bool)))
    for _ in range(200):
        metrics = agent.update()
        agent.observe(Transition(obs[:1], np.zeros(1, np.int64), np.ones(1, np.float32), obs[:1], np.ones(1, bool), np.zeros(1, bool)))
    assert float(agent.q_values(obs[:1])[0, 0]) == pytest.approx(1.5, abs=0.1)
    assert metrics["dqn/reward_bonus_mean"] == pytest.approx(0.5) and seen[0] == ((16, 1), [0] * 16)


def test_epsilon_schedule_and_exploration():
    config = DQNConfig(epsilon_start=1.0, epsilon_end=0.1, epsilon_decay_steps=100, learning_starts=10_000)
    agent = DQNAgent(config, gym.spaces.Box(-1.0, 1.0, (2,), np.float32), gym.spaces.Discrete(4), seed=0)
    obs = np.zeros((2_000, 2), np.float32)
    assert agent.epsilon == 1.0
    # epsilon 1: uniform over the 4 actions regardless of Q.
    counts = np.bincount(agent.act(obs), minlength=4)
    assert counts.min() > 400

    def observe_rows(count: int) -> None:
        agent.observe(Transition(obs[:count], np.zeros(count, np.int64), np.zeros(count, np.float32), obs[:count],
                                 np.zeros(count, bool), np.zeros(count, bool)))

    observe_rows(50)
    assert agent.epsilon == pytest.approx(0.55)
    assert agent.update()["dqn/epsilon"] == pytest.approx(0.55)
    observe_rows(50)
    assert agent.epsilon == pytest.approx(0.1)
    observe_rows(500)
    assert agent.epsilon == pytest.approx(0.1)
    greedy = agent.act(obs[:1], explore=False)[0]
    assert np.mean(agent.act(obs) != greedy) == pytest.approx(0.1 * 3 / 4, abs=0.03)
    assert linear_schedule(1.0, 0.0, 10, 5) == 0.5


def test_gradient_steps_follow_rows_not_calls():
    config = DQNConfig(batch_size=8, buffer_size=100, learning_starts=20, train_every=4, hidden_sizes=(8,))
    space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def feed(agent: DQNAgent, rows: int) -> None:
        obs = np.zeros((rows, 1), np.float32)
        agent.observe(Transition(obs, np.zeros(rows, np.int64), np.zeros(rows, np.float32), obs,
                                 np.zeros(rows, bool), np.zeros(rows, bool)))

    one_call, many_calls = (DQNAgent(config, space, gym.spaces.Discrete(2), seed=0) for _ in range(2))
    feed(one_call, 60)
    one_call.update()
    assert one_call.counters()["dqn/gradient_steps"] == (60 - 20) // 4
    for _ in range(60):
        feed(many_calls, 1)
        many_calls.update()
    assert many_calls.gradient_steps == one_call.gradient_steps == 10

    feed(one_call, 40)  # 10 more steps due
    one_call.update(max_gradient_steps=3)
    assert one_call.counters() == {
        "dqn/gradient_steps": 13.0, "dqn/steps_pending": 7.0, "dqn/steps_owed": 20.0, "dqn/rows_observed": 100.0
    }
    one_call.update()
    assert one_call.counters()["dqn/steps_pending"] == 0 and one_call.gradient_steps == 20
    one_call.update()
    assert one_call.gradient_steps == 20
    with pytest.raises(ValueError, match="max_gradient_steps"):
        one_call.update(max_gradient_steps=-1)


def test_learning_rate_decays_linearly_over_gradient_steps_then_holds():
    config = DQNConfig(batch_size=8, buffer_size=100, learning_starts=8, hidden_sizes=(8,), learning_rate=1e-2,
                       learning_rate_end=1e-3, learning_rate_decay_steps=10)
    space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    agent = DQNAgent(config, space, gym.spaces.Discrete(2), seed=0)
    rates = []
    for _ in range(20):  # one row a call; one gradient step per row once 8 rows are in: 12 steps
        obs = np.zeros((1, 1), np.float32)
        agent.observe(Transition(obs, np.zeros(1, np.int64), np.ones(1, np.float32), obs, np.ones(1, bool), np.zeros(1, bool)))
        before = agent.gradient_steps
        agent.update()
        if agent.gradient_steps > before:
            rates.append(agent.optimizer.param_groups[0]["lr"])
    # The step taken after k earlier ones runs at 1e-2 - (k / 10) * 9e-3; from the 11th on at 1e-3.
    expected = [1e-2 - min(k, 10) / 10 * 9e-3 for k in range(12)]
    np.testing.assert_allclose(rates, expected, rtol=1e-9)
    constant = DQNAgent(DQNConfig(learning_rate=1e-2), space, gym.spaces.Discrete(2), seed=0)
    assert constant.optimizer.param_groups[0]["lr"] == 1e-2  # no schedule: the rate never moves


def test_state_dict_round_trip_resumes_identically(tmp_path):
    agent = DQNAgent(SMALL_CONFIG, CHAIN_OBS_SPACE, gym.spaces.Discrete(2), seed=0)
    run_chain(agent, rows=400)
    state = through_a_checkpoint(agent.state_dict())  # no arbitrary pickle needed to resume
    agent.replay.save(tmp_path / "replay.npz")

    resumed = DQNAgent(SMALL_CONFIG, CHAIN_OBS_SPACE, gym.spaces.Discrete(2), seed=123)
    resumed.load_state_dict(state)
    resumed.replay.restore(tmp_path / "replay.npz")

    obs = one_hot(np.arange(CHAIN_LENGTH - 1))
    np.testing.assert_array_equal(resumed.q_values(obs), agent.q_values(obs))
    np.testing.assert_array_equal(resumed.act(obs, explore=False), agent.act(obs, explore=False))
    many_obs = np.repeat(obs, 40, axis=0)
    np.testing.assert_array_equal(resumed.act(many_obs), agent.act(many_obs))  # same exploration RNG
    # Training continues in lockstep: same batches, same optimizer moments, same parameters.
    assert_goes_on_alike(agent, resumed, VectorChain(4, seed=5).step(np.array([1, 0, 1, 1])))

    with pytest.raises(ValueError, match="expected a DQN state dict"):
        resumed.load_state_dict({"algorithm": "sac"})


def test_get_set_params_round_trip_and_validation():
    source = DQNAgent(SMALL_CONFIG, CHAIN_OBS_SPACE, gym.spaces.Discrete(2), seed=0)
    target = DQNAgent(SMALL_CONFIG, CHAIN_OBS_SPACE, gym.spaces.Discrete(2), seed=1)
    obs = one_hot(np.arange(CHAIN_LENGTH))
    assert not np.array_equal(source.q_values(obs), target.q_values(obs))
    params = source.get_params()
    assert sorted(params) == [
        "q_network.layers.0.bias", "q_network.layers.0.weight", "q_network.layers.2.bias",
        "q_network.layers.2.weight", "q_network.layers.4.bias", "q_network.layers.4.weight",
    ]
    target.set_params(params)
    np.testing.assert_array_equal(target.q_values(obs), source.q_values(obs))
    params["q_network.layers.0.bias"][:] = 7.0  # copies: mutating them leaves the agent alone
    assert not np.any(source.get_params()["q_network.layers.0.bias"] == 7.0)

    with pytest.raises(ValueError, match=r"missing \['q_network.layers.4.weight'\]"):
        target.set_params({k: v for k, v in params.items() if k != "q_network.layers.4.weight"})
    with pytest.raises(ValueError, match=r"must be \(32,\) float32, got \(31,\) float32"):
        target.set_params({**params, "q_network.layers.0.bias": np.zeros(31, np.float32)})
    with pytest.raises(ValueError, match="float32, got .*float64"):
        target.set_params({**params, "q_network.layers.0.bias": np.zeros(32, np.float64)})


def test_discrete_start_offset_and_input_validation():
    agent = DQNAgent(SMALL_CONFIG, CHAIN_OBS_SPACE, gym.spaces.Discrete(3, start=-1), seed=0)
    actions = agent.act(one_hot(np.zeros(300, int)))
    assert set(actions.tolist()) == {-1, 0, 1}
    obs = one_hot(np.zeros(2, int))
    no_flags = np.zeros(2, bool)
    agent.observe(Transition(obs, np.array([-1, 1]), np.zeros(2, np.float32), obs, no_flags, no_flags))
    assert agent.replay.action[:2].tolist() == [0, 2]  # stored as the network's index
    with pytest.raises(ValueError, match=r"actions must lie in \[-1, 1\]"):
        agent.observe(Transition(obs, np.array([2, 0]), np.zeros(2, np.float32), obs, no_flags, no_flags))
    with pytest.raises(TypeError, match="DQN actions must be integers"):
        agent.observe(Transition(obs, np.array([0.0, 1.0]), np.zeros(2, np.float32), obs, no_flags, no_flags))
    with pytest.raises(ValueError, match=r"obs must have shape \(K, 6\), got \(6,\)"):
        agent.act(one_hot(np.zeros(1, int))[0])
    with pytest.raises(TypeError, match="Discrete action space"):
        DQNAgent(SMALL_CONFIG, CHAIN_OBS_SPACE, gym.spaces.Box(-1, 1, (1,)), seed=0)
    with pytest.raises(TypeError, match="config must be a DQNConfig"):
        DQNAgent(SACConfig(), CHAIN_OBS_SPACE, gym.spaces.Discrete(2), seed=0)


def test_satisfies_the_role_protocols_and_builder():
    agent = build_learner(SMALL_CONFIG, CHAIN_OBS_SPACE, gym.spaces.Discrete(2), seed=0)
    assert isinstance(agent, DQNAgent)
    assert isinstance(agent, Actor) and isinstance(agent, Learner) and isinstance(agent, ParamSource)


def test_config_schema():
    adapter = pydantic.TypeAdapter(LearnerConfig)
    assert isinstance(adapter.validate_python({"kind": "dqn", "batch_size": 32}), DQNConfig)
    assert isinstance(adapter.validate_python({"kind": "sac"}), SACConfig)
    with pytest.raises(pydantic.ValidationError, match="learning_rat"):
        DQNConfig(learning_rat=1e-3)  # typo: unknown keys are errors that name the field
    with pytest.raises(pydantic.ValidationError, match="buffer_size .* must be at least batch_size"):
        DQNConfig(batch_size=64, buffer_size=10)
    for half in ({"learning_rate_end": 1e-4}, {"learning_rate_decay_steps": 100}):
        with pytest.raises(pydantic.ValidationError, match="learning_rate_end and learning_rate_decay_steps go together"):
            DQNConfig(**half)
    with pytest.raises(pydantic.ValidationError):
        adapter.validate_python({"kind": "ppo"})
    with pytest.raises(pydantic.ValidationError):
        SMALL_CONFIG.gamma = 0.5  # frozen


def test_config_module_does_not_import_torch():
    code = "import sys, agent_node.algos.config, agent_node.algos; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_agents_given_one_init_seed_start_from_one_policy_and_explore_on_their_own() -> None:
    """`init_seed` (protocols.consensus.same_initial_policy) draws the initial networks; exploration and
    replay sampling stay the agent's own."""
    obs_space, act_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32), gym.spaces.Discrete(3)
    config = DQNConfig(hidden_sizes=[8])
    first = build_learner(config, obs_space, act_space, seed=1, init_seed=77)
    second = build_learner(config, obs_space, act_space, seed=2, init_seed=77)
    alone = build_learner(config, obs_space, act_space, seed=2)
    for name, value in first.get_params().items():
        assert np.array_equal(value, second.get_params()[name])
        assert not np.array_equal(value, alone.get_params()[name])
    for name, value in second.target_network.state_dict().items():  # the target starts as the online network
        assert torch.equal(value, second.q_network.state_dict()[name])
    assert first.explore_rng.random() != second.explore_rng.random()
    assert first.replay.rng.random() != second.replay.rng.random()
    with pytest.raises(ValueError, match="for learner kind 'dqn'"):
        build_learner(CQLConfig(), obs_space, act_space, seed=1, init_seed=77)
