"""DQN's gradient steps off torch (`numpy_updates`, agent_node/algos/numpy_steps.py): compiled by
numba, the numpy code they replaced bit for bit, the torch path's update to float rounding, on
memory the torch modules and optimizer share, so checkpoints, averaging and acting see every
step."""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn as nn

from agent_node.algos.config import DQNConfig
from agent_node.algos.dqn import DQNAgent, QNetwork
from agent_node.algos.numpy_steps import NumpyDQNUpdate, bind_flat, flat_views
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


class ReferenceStep:
    """The gradient step as numpy code, one array operation per line: the specification the
    compiled step (`_dqn_step`) repeats bit for bit (it was the product's step until then)."""

    def __init__(self, online: nn.Sequential, target: nn.Sequential, learning_rate: float) -> None:
        self.online, self.target = (np.concatenate([p.detach().numpy().reshape(-1) for p in net.parameters()])
                                    for net in (online, target))
        self.shapes = [tuple(param.shape) for param in online.parameters()]
        self.exp_avg, self.exp_avg_sq = np.zeros_like(self.online), np.zeros_like(self.online)
        self.grads = np.zeros_like(self.online)
        self.learning_rate, self.steps, self.clipped_steps = learning_rate, 0, 0

    def forward(self, flat: np.ndarray, x: np.ndarray, tape: list | None = None) -> np.ndarray:
        views = flat_views(flat, self.shapes)
        for index, (weight, bias) in enumerate(zip(views[0::2], views[1::2])):
            if tape is not None:
                tape.append(x)
            x = x @ weight.T
            x += bias
            if index < len(views) // 2 - 1:
                np.maximum(x, 0.0, out=x)
        return x

    def backward(self, tape: list[np.ndarray], grad: np.ndarray) -> None:
        views, grad_views = flat_views(self.online, self.shapes), flat_views(self.grads, self.shapes)
        for index in range(len(views) // 2 - 1, -1, -1):
            layer_input = tape[index][:len(grad)]
            np.matmul(grad.T, layer_input, out=grad_views[2 * index])
            np.sum(grad, axis=0, out=grad_views[2 * index + 1])
            if index > 0:
                grad = grad @ views[2 * index]
                grad *= layer_input > 0

    def step(self, batch, *, gamma, double_dqn, loss, max_grad_norm, tau):
        obs, next_obs, action = batch["obs"], batch["next_obs"], batch["action"]
        rows = np.arange(len(obs))
        tape: list[np.ndarray] = []
        q_both = self.forward(self.online, np.concatenate((obs, next_obs)), tape)
        q_all, next_q_online = q_both[:len(obs)], q_both[len(obs):]
        next_q_target = self.forward(self.target, next_obs)
        next_value = next_q_target[rows, next_q_online.argmax(axis=1)] if double_dqn else next_q_target.max(axis=1)
        td_target = batch["reward"] + np.float32(gamma) * (1.0 - batch["terminated"].astype(np.float32)) * next_value
        q_taken = q_all[rows, action]
        error = q_taken - td_target
        if loss == "huber":
            absolute = np.abs(error)
            loss_value = float(np.where(absolute < 1.0, 0.5 * error * error, absolute - 0.5).mean())
            grad_q_taken = np.clip(error, -1.0, 1.0)
        else:
            loss_value = float((error * error).mean())
            grad_q_taken = 2.0 * error
        grad = np.zeros_like(q_all)
        grad[rows, action] = grad_q_taken / np.float32(len(obs))
        self.backward(tape, grad)
        if max_grad_norm is not None:
            scale = max_grad_norm / (float(np.sqrt(np.dot(self.grads, self.grads))) + 1e-6)
            if scale < 1.0:
                self.grads *= np.float32(scale)
                self.clipped_steps += 1
        self.steps += 1
        self.exp_avg *= np.float32(0.9)
        self.exp_avg += np.float32(1.0 - 0.9) * self.grads
        self.exp_avg_sq *= np.float32(0.999)
        self.exp_avg_sq += np.float32(1.0 - 0.999) * (self.grads * self.grads)
        denominator = np.sqrt(self.exp_avg_sq) * np.float32(1.0 / (1.0 - 0.999 ** self.steps) ** 0.5) + np.float32(1e-8)
        self.online -= self.exp_avg / denominator * np.float32(self.learning_rate / (1.0 - 0.9 ** self.steps))
        if tau is not None:
            self.target += np.float32(tau) * (self.online - self.target)
        return loss_value, float(q_taken.mean()), float(td_target.mean()), None


@pytest.mark.parametrize("hidden_sizes, rows, settings, clips", [
    ((64, 64), 128, dict(gamma=0.95, double_dqn=True, loss="huber", max_grad_norm=10.0, tau=0.005), False),
    ((16,), 37, dict(gamma=0.9, double_dqn=False, loss="mse", max_grad_norm=None, tau=1.0), False),
    ((), 64, dict(gamma=0.99, double_dqn=True, loss="huber", max_grad_norm=0.1, tau=0.5), True),
])
def test_the_compiled_step_repeats_the_numpy_reference_bit_for_bit(hidden_sizes, rows, settings, clips):
    torch.manual_seed(0)
    online, target = QNetwork(12, 5, hidden_sizes), QNetwork(12, 5, hidden_sizes)
    target.load_state_dict(online.state_dict())
    reference = ReferenceStep(online.layers, target.layers, learning_rate=1e-3)
    initial = reference.online.copy()
    compiled = NumpyDQNUpdate(online.layers, target.layers, torch.optim.Adam(online.parameters(), lr=1e-3))
    rng = np.random.default_rng(0)
    for step in range(60):
        batch = {"obs": 3 * rng.normal(size=(rows, 12)).astype(np.float32), "action": rng.integers(0, 5, rows),
                 "reward": 5 * rng.normal(size=rows).astype(np.float32),
                 "next_obs": 3 * rng.normal(size=(rows, 12)).astype(np.float32), "terminated": rng.random(rows) < 0.1}
        options = {**settings, "tau": settings["tau"] if step % 3 else None}  # no target update on some steps
        assert compiled.step(batch, **options) == reference.step(batch, **options)  # loss, mean Q, mean target
    for ours, theirs in ((compiled.online, reference.online), (compiled.target, reference.target),
                         (compiled.exp_avg, reference.exp_avg), (compiled.exp_avg_sq, reference.exp_avg_sq)):
        np.testing.assert_array_equal(ours, theirs)
    assert not np.array_equal(compiled.online, initial)
    assert (reference.clipped_steps > 0) is clips


def test_the_reference_passes_give_autograds_output_and_gradients():
    torch.manual_seed(0)
    network = QNetwork(30, 5, (64, 64))
    x, grad_output = torch.randn(128, 30), torch.randn(128, 5)
    out = network(x)
    out.backward(grad_output)
    reference = ReferenceStep(network.layers, network.layers, learning_rate=1e-3)
    tape: list[np.ndarray] = []
    np.testing.assert_allclose(reference.forward(reference.online, x.numpy(), tape), out.detach().numpy(), rtol=1e-5, atol=1e-5)
    reference.backward(tape, grad_output.numpy())
    expected = np.concatenate([param.grad.numpy().reshape(-1) for param in network.parameters()])
    np.testing.assert_allclose(reference.grads, expected, rtol=1e-4, atol=1e-4)


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


def test_a_step_on_the_replay_draws_and_learns_what_a_step_on_its_sample_does():
    """The compiled step gathers the replay's rows itself: the same draw, rows and update as a step
    on `replay.sample`, to the bit (the DQN's path with no reward bonus)."""
    _, gathered = trained_pair(steps=30)
    sampled = DQNAgent(config(numpy_updates=True), SPACE, gym.spaces.Discrete(4), seed=99)
    sampled.load_state_dict(gathered.state_dict())
    sampled.replay = copy.deepcopy(gathered.replay)
    settings = dict(gamma=0.9, double_dqn=True, loss="huber", max_grad_norm=1.0, tau=0.1)
    for _ in range(20):
        assert (gathered._numpy_update.step_on_replay(gathered.replay, 64, **settings)
                == sampled._numpy_update.step(sampled.replay.sample(64), **settings))
    assert np.array_equal(gathered.replay.rng.integers(1 << 30), sampled.replay.rng.integers(1 << 30))
    for ours, theirs in ((gathered._numpy_update.online, sampled._numpy_update.online),
                         (gathered._numpy_update.exp_avg_sq, sampled._numpy_update.exp_avg_sq)):
        np.testing.assert_array_equal(ours, theirs)


def test_the_compiled_mean_is_numpys_mean_to_the_bit():
    from agent_node.algos.numpy_steps import _numpy_mean

    rng = np.random.default_rng(0)
    for count in [*range(1, 300), 512, 1000, 4097]:
        values = (rng.normal(size=count) * rng.choice([1e-3, 1.0, 1e3])).astype(np.float32)
        assert float(_numpy_mean(values)) == float(values.mean()), count
