"""VDN and QMIX: VDN is the sum, QMIX is monotonic in every agent's Q, the TD target is what the
docstring says, the loss falls on a tiny cooperative game, and agents can load their parameters."""

from __future__ import annotations


import gymnasium as gym
import numpy as np
import pytest
import torch

from agent_node.algos.config import DQNConfig, MixerConfig
from agent_node.algos.dqn import DQNAgent
from agent_node.algos.mixers import CentralizedMixerLearner, JointReplayBuffer, QMIXMixer, VDNMixer
from tests.conftest import through_a_checkpoint

torch.set_num_threads(1)


def test_vdn_is_the_sum_of_the_agents_values():
    agent_qs = torch.randn(16, 3)
    torch.testing.assert_close(VDNMixer()(agent_qs, torch.randn(16, 5)), agent_qs.sum(dim=1))


@pytest.mark.parametrize("hypernet_layers", [1, 2])
def test_qmix_is_monotonic_in_every_agent_value(hypernet_layers):
    torch.manual_seed(0)
    mixer = QMIXMixer(num_agents=4, state_dim=6, embed_dim=8, hypernet_layers=hypernet_layers, hypernet_hidden=16)
    # Larger-than-init weights make any sign error in the mixing visible.
    with torch.no_grad():
        for param in mixer.parameters():
            param.mul_(3.0)
    state = torch.randn(256, 6)
    agent_qs = (torch.randn(256, 4) * 5).requires_grad_(True)
    total = mixer(agent_qs, state)
    (gradient,) = torch.autograd.grad(total.sum(), agent_qs)
    assert torch.all(gradient >= 0), gradient.min()
    assert (gradient > 0).float().mean() > 0.9  # mostly strictly increasing, not flat
    # Finite differences: raising one agent's value never lowers Q_tot.
    with torch.no_grad():
        for agent in range(4):
            for delta in (0.01, 1.0, 10.0):
                raised = agent_qs.detach().clone()
                raised[:, agent] += delta
                assert torch.all(mixer(raised, state) >= total.detach() - 1e-5)
    # And it is not merely additive: the cross-difference of two agents is non-zero somewhere.
    with torch.no_grad():
        base = agent_qs.detach()
        e0, e1 = torch.zeros_like(base), torch.zeros_like(base)
        e0[:, 0], e1[:, 1] = 3.0, 3.0
        cross = mixer(base + e0 + e1, state) - mixer(base + e0, state) - mixer(base + e1, state) + mixer(base, state)
        assert cross.abs().max() > 1e-3


def matrix_game_batch(rng: np.random.Generator, count: int) -> dict[str, np.ndarray]:
    """A one-step cooperative game: both agents see the state bit; each earns 1 for playing the
    state's target action (action 0 in state 0, action 2 in state 1), and the team earns 2 more
    when both do. Uniformly random joint actions (the data of an exploring team)."""
    bit = rng.integers(0, 2, count)
    state = np.eye(2, dtype=np.float32)[bit]
    obs = np.repeat(state[:, None, :], 2, axis=1)
    action = rng.integers(0, 3, (count, 2))
    hits = action == np.where(bit == 0, 0, 2)[:, None]
    reward = hits.sum(axis=1) + 2.0 * hits.all(axis=1)
    return {
        "state": state, "obs": obs, "action": action, "reward": reward.astype(np.float32),
        "next_state": state, "next_obs": obs, "terminated": np.ones(count, bool),
    }


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mixer", ["vdn", "qmix"])
def test_loss_falls_and_greedy_actions_solve_a_cooperative_matrix_game(mixer):
    config = MixerConfig(mixer=mixer, agent_hidden_sizes=(32,), mixing_embed_dim=8, hypernet_hidden=16,
                         learning_rate=5e-3, batch_size=64, target_update_period=50)
    learner = CentralizedMixerLearner(config, gym.spaces.Box(0, 1, (2,), np.float32), gym.spaces.Discrete(3),
                                      gym.spaces.Box(0, 1, (2,), np.float32), num_agents=2, seed=0)
    rng = np.random.default_rng(0)
    replay = learner.make_replay(capacity=2_000)
    replay.add(matrix_game_batch(rng, 2_000))
    losses = [learner.train_step(replay.sample(config.batch_size))["mixer/loss"] for _ in range(400)]
    assert np.mean(losses[-50:]) < 0.25 * np.mean(losses[:20]), (np.mean(losses[:20]), np.mean(losses[-50:]))
    obs = np.repeat(np.eye(2, dtype=np.float32)[:, None, :], 2, axis=1)
    np.testing.assert_array_equal(learner.greedy_actions(obs), [[0, 0], [2, 2]])


def test_learning_rate_schedule_reaches_the_mixer_learner_from_the_agents_dqn_settings():
    from agent_node.ctde.config import CentralizedTraining, mixer_config

    dqn = DQNConfig(learning_rate=1e-2, learning_rate_end=1e-3, learning_rate_decay_steps=4)
    config = mixer_config(CentralizedTraining(mode="centralized", mixer="vdn"), dqn)
    assert (config.learning_rate_end, config.learning_rate_decay_steps) == (1e-3, 4)
    learner = CentralizedMixerLearner(config, gym.spaces.Box(0, 1, (2,), np.float32), gym.spaces.Discrete(3),
                                      gym.spaces.Box(0, 1, (2,), np.float32), num_agents=2, seed=0)
    replay = learner.make_replay(capacity=64)
    replay.add(matrix_game_batch(np.random.default_rng(0), 64))
    rates = [learner.train_step(replay.sample(16))["mixer/learning_rate"] for _ in range(6)]
    np.testing.assert_allclose(rates, [1e-2, 7.75e-3, 5.5e-3, 3.25e-3, 1e-3, 1e-3], rtol=1e-9)
    with pytest.raises(ValueError, match="learning_rate_end and learning_rate_decay_steps go together"):
        MixerConfig(learning_rate_decay_steps=4)


def test_td_target_uses_online_argmax_target_values_and_the_target_mixer():
    config = MixerConfig(mixer="vdn", agent_hidden_sizes=(8,), gamma=0.9)
    learner = CentralizedMixerLearner(config, gym.spaces.Box(-1, 1, (3,), np.float32), gym.spaces.Discrete(4),
                                      gym.spaces.Box(-1, 1, (5,), np.float32), num_agents=2, seed=1)
    with torch.no_grad():  # make target networks differ from the online ones
        for param in learner.target_agent_networks.parameters():
            param.add_(torch.randn_like(param))
    rng = np.random.default_rng(1)
    batch = {
        "state": rng.normal(size=(6, 5)), "obs": rng.normal(size=(6, 2, 3)), "action": rng.integers(0, 4, (6, 2)),
        "reward": rng.normal(size=6), "next_state": rng.normal(size=(6, 5)), "next_obs": rng.normal(size=(6, 2, 3)),
        "terminated": np.array([0, 1, 0, 0, 1, 0], bool), "next_active": np.array([[1, 1]] * 5 + [[1, 0]], bool),
    }
    target = learner.td_targets(learner._tensors(batch)).numpy()
    expected = []
    with torch.no_grad():
        for row in range(6):
            value = 0.0
            for agent in range(2):
                next_obs = torch.as_tensor(batch["next_obs"][row, agent], dtype=torch.float32)[None]
                pick = learner.agent_networks[agent](next_obs).argmax().item()
                if batch["next_active"][row, agent]:
                    value += learner.target_agent_networks[agent](next_obs)[0, pick].item()
            expected.append(batch["reward"][row] + 0.9 * (1 - batch["terminated"][row]) * value)
    np.testing.assert_allclose(target, expected, rtol=1e-5, atol=1e-5)


def test_inactive_agents_do_not_influence_the_loss():
    config = MixerConfig(mixer="qmix", agent_hidden_sizes=(8,), mixing_embed_dim=4, hypernet_hidden=8)
    learner = CentralizedMixerLearner(config, gym.spaces.Box(-1, 1, (3,), np.float32), gym.spaces.Discrete(4),
                                      gym.spaces.Box(-1, 1, (5,), np.float32), num_agents=3, seed=2)
    rng = np.random.default_rng(2)
    batch = {
        "state": rng.normal(size=(8, 5)), "obs": rng.normal(size=(8, 3, 3)), "action": rng.integers(0, 4, (8, 3)),
        "reward": rng.normal(size=8), "next_state": rng.normal(size=(8, 5)), "next_obs": rng.normal(size=(8, 3, 3)),
        "terminated": np.zeros(8, bool), "active": np.array([[1, 1, 0]] * 8, bool), "next_active": np.array([[1, 1, 0]] * 8, bool),
    }
    other = {**batch, "obs": batch["obs"].copy(), "next_obs": batch["next_obs"].copy(), "action": batch["action"].copy()}
    other["obs"][:, 2] += 5.0
    other["next_obs"][:, 2] -= 5.0
    other["action"][:, 2] = (other["action"][:, 2] + 1) % 4
    for name in ("td_targets", "chosen_total"):
        a = getattr(learner, name)(learner._tensors(batch))
        b = getattr(learner, name)(learner._tensors(other))
        torch.testing.assert_close(a, b)


def test_agent_parameters_load_into_a_dqn_agent_that_then_acts_the_same():
    obs_space, action_space = gym.spaces.Box(-1, 1, (3,), np.float32), gym.spaces.Discrete(4)
    config = MixerConfig(agent_hidden_sizes=(16, 16))
    learner = CentralizedMixerLearner(config, obs_space, action_space, gym.spaces.Box(-1, 1, (5,), np.float32),
                                      num_agents=2, seed=3)
    agent = DQNAgent(DQNConfig(hidden_sizes=(16, 16)), obs_space, action_space, seed=9)
    agent.set_params(learner.agent_params(1))
    obs = np.random.default_rng(3).normal(size=(10, 3)).astype(np.float32)
    with torch.no_grad():
        expected = learner.agent_networks[1](torch.as_tensor(obs)).numpy()
    np.testing.assert_array_equal(agent.q_values(obs), expected)


def test_state_dict_round_trip_and_bad_batches():
    obs_space, action_space, state_space = gym.spaces.Box(0, 1, (2,), np.float32), gym.spaces.Discrete(3), gym.spaces.Box(0, 1, (2,), np.float32)
    config = MixerConfig(agent_hidden_sizes=(8,), mixing_embed_dim=4, hypernet_hidden=8, batch_size=16)
    learner = CentralizedMixerLearner(config, obs_space, action_space, state_space, num_agents=2, seed=4)
    batch = matrix_game_batch(np.random.default_rng(4), 16)
    learner.train_step(batch)
    state = through_a_checkpoint(learner.state_dict())
    resumed = CentralizedMixerLearner(config, obs_space, action_space, state_space, num_agents=2, seed=5)
    resumed.load_state_dict(state)
    assert resumed.train_step(batch) == learner.train_step(batch)
    with pytest.raises(ValueError, match=r"'action' must have shape \(16, 2\)"):
        learner.train_step({**batch, "action": batch["action"][:, :1]})
    with pytest.raises(ValueError, match=r"actions must lie in \[0, 2\]"):
        learner.train_step({**batch, "action": np.full((16, 2), 3)})
    with pytest.raises(TypeError, match="Discrete action space"):
        CentralizedMixerLearner(config, obs_space, gym.spaces.Box(0, 1, (2,)), state_space, num_agents=2, seed=0)
    replay = JointReplayBuffer(capacity=4, num_agents=2, obs_dim=2, state_dim=2, seed=0)
    with pytest.raises(ValueError, match="'obs' must have shape"):
        replay.add({**batch, "obs": batch["obs"][:, :1]})


@pytest.mark.parametrize("mixer", ["vdn", "qmix"])
def test_joint_q_table_mixes_each_joint_actions_agent_values(mixer):
    box = gym.spaces.Box(0.0, 1.0, (3,), np.float32)
    learner = CentralizedMixerLearner(MixerConfig(mixer=mixer, agent_hidden_sizes=(8,)), box, gym.spaces.Discrete(2), box, num_agents=2, seed=3)
    obs, state = np.array([[1, 0, 0], [0, 1, 0]], np.float32), np.array([0, 0, 1], np.float32)
    table = learner.joint_q_table(obs, state)
    assert table.shape == (2, 2)
    with torch.no_grad():
        q_values = learner.agent_q_values(torch.as_tensor(obs).unsqueeze(0), learner.agent_networks)[0]
        for u0 in range(2):
            for u1 in range(2):
                chosen = torch.stack([q_values[0, u0], q_values[1, u1]]).unsqueeze(0)
                assert table[u0, u1] == pytest.approx(float(learner.mixer(chosen, torch.as_tensor(state).unsqueeze(0))), abs=1e-6)
    if mixer == "vdn":
        assert np.allclose(table, q_values[0].numpy()[:, None] + q_values[1].numpy()[None, :], atol=1e-6)
