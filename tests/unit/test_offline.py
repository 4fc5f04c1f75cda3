"""Offline learners from a recorded dataset, no env server: CQL recovers the optimal policy from a
mostly-wrong behaviour policy that behaviour cloning copies; CQL keeps unseen actions below seen
ones; both resume exactly and refuse online transitions."""

from __future__ import annotations


import gymnasium as gym
import numpy as np
import pytest
import torch

from agent_node.algos import build_learner
from agent_node.algos.bc import BCAgent
from agent_node.algos.config import BCConfig, CQLConfig, DQNConfig
from agent_node.algos.cql import CQLAgent
from agent_node.algos.dqn import DQNAgent
from agent_node.offline.datasets import DatasetWriter, MultiAgentDataset, ShardSpec
from agent_node.roles import Transition
from tests.conftest import through_a_checkpoint

torch.set_num_threads(1)

CHAIN_LENGTH = 6  # states 0..5; reaching 5 pays GOAL_REWARD and ends the episode
GOAL_REWARD = 10.0
TIME_LIMIT = 20
LEFT, RIGHT = 0, 1
OBS_SPACE = gym.spaces.Box(0.0, 1.0, (CHAIN_LENGTH,), np.float32)
ACTION_SPACE = gym.spaces.Discrete(2)


def one_hot(states: np.ndarray) -> np.ndarray:
    return np.eye(CHAIN_LENGTH, dtype=np.float32)[states]


def behaviour(states: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mostly wrong near the start (LEFT with probability 0.6 in states 0-2), mostly right near
    the goal (RIGHT with probability 0.9 in states 3-4): the data covers both actions everywhere."""
    p_right = np.where(states <= 2, 0.4, 0.9)
    return (rng.random(len(states)) < p_right).astype(np.int64)


def record_chain_dataset(root, rows: int = 6_000, copies: int = 4, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    spec = ShardSpec(agent="agent_0", agent_index=0, env_name="test_chain", env_kwargs={"length": CHAIN_LENGTH},
                     possible_agents=("agent_0",), observation_space=OBS_SPACE, action_space=ACTION_SPACE,
                     seeds={"run_seed": seed}, behaviour_policy={"kind": "scripted", "p_right": [0.4, 0.9]})
    states = rng.integers(0, CHAIN_LENGTH - 1, copies)
    elapsed = np.zeros(copies, int)
    with DatasetWriter(root, spec, chunk_rows=1_000) as writer:
        for step in range(rows // copies):
            actions = behaviour(states, rng)
            next_states = np.clip(states + np.where(actions == RIGHT, 1, -1), 0, CHAIN_LENGTH - 1)
            elapsed += 1
            terminated = next_states == CHAIN_LENGTH - 1
            truncated = (elapsed >= TIME_LIMIT) & ~terminated
            writer.append(step, Transition(one_hot(states), actions, GOAL_REWARD * terminated.astype(np.float32),
                                           one_hot(next_states), terminated, truncated, copy_index=np.arange(copies)))
            done = terminated | truncated
            states = np.where(done, rng.integers(0, CHAIN_LENGTH - 1, copies), next_states)
            elapsed[done] = 0


@pytest.mark.timeout(90)
def test_cql_beats_behaviour_cloning_on_a_dataset_from_a_mostly_wrong_policy(tmp_path):
    record_chain_dataset(tmp_path)
    dataset = MultiAgentDataset(tmp_path)
    observation_space, action_space = dataset.spaces("agent_0")
    arrays = dataset.arrays("agent_0")
    assert len(arrays["reward"]) == 6_000

    cql = build_learner(CQLConfig(hidden_sizes=(32,), gamma=0.9, cql_alpha=0.5, gradient_steps=1_500,
                                  target_update_period=100, learning_rate=1e-3), observation_space, action_space, seed=0)
    bc = build_learner(BCConfig(hidden_sizes=(32,), gradient_steps=500), observation_space, action_space, seed=0)
    for learner in (cql, bc):
        learner.load_dataset(arrays)
        while learner.gradient_steps_due() > 0:
            learner.update(max_gradient_steps=250)

    non_goal = one_hot(np.arange(CHAIN_LENGTH - 1))
    assert cql.act(non_goal).tolist() == [RIGHT] * 5, cql.q_values(non_goal)
    # BC copies the behaviour's majority action: LEFT in states 0-2, so it never reaches the goal from there.
    assert bc.act(non_goal).tolist() == [LEFT, LEFT, LEFT, RIGHT, RIGHT], bc.action_probabilities(non_goal)
    probabilities = bc.action_probabilities(non_goal)[:, RIGHT]
    np.testing.assert_allclose(probabilities, [0.4, 0.4, 0.4, 0.9, 0.9], atol=0.08)


@pytest.mark.timeout(60)
def test_cql_values_actions_missing_from_the_data_below_the_actions_present():
    """Three states, three actions, and a dataset in which only action 0 was ever taken (reward 1,
    one-step episodes). CQL must rank the unseen actions below it; with alpha = 0 nothing
    constrains them."""
    states = np.repeat(np.arange(3), 200)
    arrays = {"obs": np.eye(3, dtype=np.float32)[states], "action": np.zeros(600, np.int64),
              "reward": np.ones(600, np.float32), "next_obs": np.eye(3, dtype=np.float32)[states],
              "terminated": np.ones(600, bool)}
    space = gym.spaces.Box(0.0, 1.0, (3,), np.float32)
    values = {}
    for alpha in (0.0, 1.0):
        agent = CQLAgent(CQLConfig(hidden_sizes=(16,), cql_alpha=alpha, gradient_steps=600, learning_rate=3e-3,
                                   loss="mse"), space, gym.spaces.Discrete(3), seed=1)
        agent.load_dataset(arrays)
        agent.update()
        values[alpha] = agent.q_values(np.eye(3, dtype=np.float32))
    np.testing.assert_allclose(values[1.0][:, 0], values[0.0][:, 0], atol=0.5)  # seen action: near its return, 1
    np.testing.assert_allclose(values[0.0][:, 0], 1.0, atol=0.05)
    assert np.all(values[1.0][:, 1:] < values[1.0][:, :1] - 1.0), values[1.0]
    # The conservative term lowered the unseen actions well below where plain fitting left them.
    assert np.all(values[1.0][:, 1:] < values[0.0][:, 1:] - 1.0), values


def test_resume_parameters_and_refusals():
    arrays = {"obs": one_hot(np.array([0, 1, 2, 3])), "action": np.array([0, 1, 1, 0]), "reward": np.ones(4, np.float32),
              "next_obs": one_hot(np.array([1, 2, 3, 4])), "terminated": np.zeros(4, bool)}
    for make in (lambda seed: CQLAgent(CQLConfig(hidden_sizes=(8,), gradient_steps=10, batch_size=4), OBS_SPACE, ACTION_SPACE, seed),
                 lambda seed: BCAgent(BCConfig(hidden_sizes=(8,), gradient_steps=10, batch_size=4), OBS_SPACE, ACTION_SPACE, seed)):
        agent = make(0)
        assert agent.gradient_steps_due() == 0  # nothing to learn from before a dataset is loaded
        agent.load_dataset(arrays)
        agent.update(max_gradient_steps=4)
        state = through_a_checkpoint(agent.state_dict())
        resumed = make(7)
        resumed.load_dataset(arrays)
        resumed.load_state_dict(state)
        assert resumed.gradient_steps_due() == 6
        assert resumed.update() == agent.update()
        np.testing.assert_array_equal(resumed.act(arrays["obs"]), agent.act(arrays["obs"]))
        with pytest.raises(TypeError, match="offline learner"):
            agent.observe(Transition(arrays["obs"], arrays["action"], arrays["reward"], arrays["next_obs"],
                                     arrays["terminated"], arrays["terminated"]))

    # A CQL network loads into a DQN agent (same parameter names), for evaluation by an agent node.
    cql = CQLAgent(CQLConfig(hidden_sizes=(8,)), OBS_SPACE, ACTION_SPACE, seed=0)
    dqn = DQNAgent(DQNConfig(hidden_sizes=(8,)), OBS_SPACE, ACTION_SPACE, seed=1)
    dqn.set_params(cql.get_params())
    np.testing.assert_array_equal(dqn.q_values(arrays["obs"]), cql.q_values(arrays["obs"]))
    with pytest.raises(TypeError, match="Discrete action spaces"):
        CQLAgent(CQLConfig(), OBS_SPACE, gym.spaces.Box(-1, 1, (2,)), seed=0)


def test_offline_training_on_a_damaged_chunk_is_one_line_naming_it_and_exit_2(tmp_path, capsys):
    from agent_node.offline.train import main

    record_chain_dataset(tmp_path / "data", rows=400)
    chunk = sorted((tmp_path / "data").glob("*/chunk-*.npz"))[0]
    data = bytearray(chunk.read_bytes())
    data[200] ^= 0xFF  # one changed byte
    chunk.write_bytes(bytes(data))
    assert main(["--dataset", str(tmp_path / "data"), "--gradient-steps", "1", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(chunk) in err[0] and "its CRC32 does not match its contents" in err[0], err
    assert not (tmp_path / "out").exists()
