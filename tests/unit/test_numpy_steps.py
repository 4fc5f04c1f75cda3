"""DQN's gradient steps in numpy (`numpy_updates`, agent_node/algos/numpy_steps.py): the same
update as the torch path to float rounding, on memory the torch modules and optimizer share, so
checkpoints, averaging and acting see every step."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from agent_node.algos.config import DQNConfig
from agent_node.algos.dqn import DQNAgent, QNetwork
from agent_node.algos.numpy_steps import NumpyMLP, bind_flat, flat_views
from tests.unit.test_lean_steps import random_rows

torch.set_num_threads(1)
SPACE = gym.spaces.Box(-np.inf, np.inf, (10,), np.float32)


def config(**settings) -> DQNConfig:
    defaults = dict(hidden_sizes=(32, 32), batch_size=64, buffer_size=2_000, learning_starts=100,
                    target_update_period=1, target_tau=0.01, learning_rate=1e-3)
    return DQNConfig(**{**defaults, **settings})


def trained_pair(steps: int = 40, **settings) -> tuple[DQNAgent, DQNAgent]:
    """A torch agent and a numpy agent from one seed, fed the same rows and updated alike."""
    in_torch = DQNAgent(config(**settings), SPACE, gym.spaces.Discrete(4), seed=5)
    in_numpy = DQNAgent(config(numpy_updates=True, **settings), SPACE, gym.spaces.Discrete(4), seed=5)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        rows = random_rows(rng, 8)
        for agent in (in_torch, in_numpy):
            agent.observe(rows)
            agent.update()
    return in_torch, in_numpy


@pytest.mark.parametrize("hidden_sizes", [(64, 64), (16,), ()])
def test_the_numpy_passes_give_autograds_output_and_gradients(hidden_sizes):
    torch.manual_seed(0)
    network = QNetwork(30, 5, hidden_sizes)
    x, grad_output = torch.randn(128, 30), torch.randn(128, 5)
    out = network(x)
    out.backward(grad_output)
    expected = [param.grad.numpy().copy() for param in network.parameters()]

    params = list(network.parameters())
    flat = bind_flat(params)
    views = flat_views(flat, [tuple(param.shape) for param in params])
    mlp = NumpyMLP(views[0::2], views[1::2])
    grads = [np.empty_like(view) for view in views]
    tape: list[np.ndarray] = []
    np.testing.assert_allclose(mlp.forward(x.numpy(), tape), out.detach().numpy(), rtol=1e-5, atol=1e-5)
    mlp.backward(tape, grad_output.numpy(), grads[0::2], grads[1::2])
    for grad, want in zip(grads, expected):
        np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-4)


def test_bound_parameters_and_the_flat_buffer_are_one_memory():
    network = QNetwork(4, 2, (8,))
    before = [param.detach().clone() for param in network.parameters()]
    flat = bind_flat(list(network.parameters()))
    assert all(torch.equal(param, old) for param, old in zip(network.parameters(), before))  # values kept
    flat[:] = 0.5
    assert all(bool((param == 0.5).all()) for param in network.parameters())
    network.load_state_dict(QNetwork(4, 2, (8,)).state_dict())  # copies in place, into the buffer
    assert flat[0] == next(network.parameters()).reshape(-1)[0]


@pytest.mark.parametrize("settings", [dict(), dict(loss="mse", double_dqn=False, max_grad_norm=None),
                                      dict(max_grad_norm=0.1, learning_rate_end=1e-5, learning_rate_decay_steps=200),
                                      dict(target_update_period=25, target_tau=1.0)])
def test_numpy_updates_train_as_the_torch_path_does_to_float_rounding(settings):
    in_torch, in_numpy = trained_pair(**settings)
    assert in_numpy.gradient_steps == in_torch.gradient_steps > 100
    for network in ("q_network", "target_network"):
        for a, b in zip(getattr(in_torch, network).parameters(), getattr(in_numpy, network).parameters()):
            np.testing.assert_allclose(b.detach().numpy(), a.detach().numpy(), rtol=1e-3, atol=1e-4)
    torch_state, numpy_state = in_torch.optimizer.state_dict()["state"], in_numpy.optimizer.state_dict()["state"]
    for index in torch_state:
        assert float(numpy_state[index]["step"]) == float(torch_state[index]["step"])
        np.testing.assert_allclose(numpy_state[index]["exp_avg_sq"], torch_state[index]["exp_avg_sq"], rtol=1e-2, atol=1e-8)
    obs = np.random.default_rng(1).normal(size=(3, 10)).astype(np.float32)
    np.testing.assert_allclose(in_numpy.q_values(obs), in_torch.q_values(obs), rtol=1e-3, atol=1e-4)
    metrics = in_numpy.update(), in_torch.update()
    assert metrics[0].keys() == metrics[1].keys()


def test_a_checkpoint_restores_a_numpy_learner_to_the_bit(tmp_path):
    _, trained = trained_pair(steps=30)
    restored = DQNAgent(config(numpy_updates=True), SPACE, gym.spaces.Discrete(4), seed=99)
    restored.load_state_dict(trained.state_dict())
    trained.replay.save(tmp_path / "replay")
    restored.replay.restore(tmp_path / "replay")
    rng = np.random.default_rng(3)
    for _ in range(10):
        rows = random_rows(rng, 8)
        assert trained.observe(rows) is None and restored.observe(rows) is None
        assert trained.update() == restored.update()
    for a, b in zip([*trained.q_network.parameters(), *trained.target_network.parameters()],
                    [*restored.q_network.parameters(), *restored.target_network.parameters()]):
        assert torch.equal(a, b)


def test_a_torch_paths_checkpoint_loads_into_a_numpy_learner():
    in_torch, _ = trained_pair(steps=30)
    in_numpy = DQNAgent(config(numpy_updates=True), SPACE, gym.spaces.Discrete(4), seed=99)
    in_numpy.load_state_dict(in_torch.state_dict())
    state = in_torch.optimizer.state_dict()["state"]
    np.testing.assert_array_equal(in_numpy._numpy_update.exp_avg,
                                  np.concatenate([state[i]["exp_avg"].reshape(-1).numpy() for i in sorted(state)]))
    assert float(in_numpy._numpy_update.step_count) == float(state[0]["step"])


def test_a_numpy_learners_checkpoint_loads_into_a_torch_learner_that_trains_on():
    _, in_numpy = trained_pair(steps=30)
    in_torch = DQNAgent(config(), SPACE, gym.spaces.Discrete(4), seed=99)
    in_torch.load_state_dict(in_numpy.state_dict())
    for a, b in zip(in_torch.q_network.parameters(), in_numpy.q_network.parameters()):
        assert torch.equal(a, b)
    rng = np.random.default_rng(3)
    for _ in range(20):
        in_torch.observe(random_rows(rng, 8))
        assert np.isfinite(in_torch.update().get("dqn/loss", 0.0))
    assert in_torch.gradient_steps > in_numpy.gradient_steps


def test_an_average_set_by_consensus_is_what_the_next_numpy_step_starts_from():
    _, agent = trained_pair(steps=30)
    average = {name: np.full_like(value, 0.01) for name, value in agent.get_params().items()}
    agent.set_params(average)
    assert np.all(agent._numpy_update.online == np.float32(0.01))
    expected = QNetwork(10, 4, (32, 32))
    with torch.no_grad():
        for param in expected.parameters():
            param.fill_(0.01)
        obs = torch.ones((1, 10))
        np.testing.assert_allclose(agent.q_values(obs.numpy()), expected(obs).numpy(), rtol=1e-6)


def test_numpy_updates_refuse_a_cnn_encoder():
    with pytest.raises(ValueError, match="numpy_updates.*encoder 'cnn'"):
        config(numpy_updates=True, encoder="cnn")
    image = gym.spaces.Box(0, 255, (40, 40, 3), np.uint8)
    with pytest.raises(ValueError, match="numpy_updates.*CNN"):
        DQNAgent(config(numpy_updates=True), image, gym.spaces.Discrete(4), seed=0)
