"""The hand-written MLP passes and `adam_step` give autograd's and `optimizer.step()`'s bits exactly,
and DQN through them trains exactly as through autograd."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn as nn

from agent_node.algos.config import DQNConfig
from agent_node.algos.dqn import DQNAgent, QNetwork
from agent_node.algos.lean_steps import MLPPasses, adam_step
from agent_node.roles import Transition

torch.set_num_threads(1)


@pytest.mark.parametrize("layers, fits", [
    (nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2)), True),
    (nn.Sequential(nn.Linear(3, 2)), True),
    (nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)), False),
    (nn.Sequential(nn.Linear(3, 8), nn.ReLU()), False),
    (nn.Sequential(nn.Linear(3, 8, bias=False), nn.ReLU(), nn.Linear(8, 2)), False),
    (nn.Linear(3, 2), False),
])
def test_fits_only_linear_relu_stacks_with_biases(layers, fits):
    assert MLPPasses.fits(layers) is fits
    if not fits:
        with pytest.raises(ValueError, match="Linear"):
            MLPPasses(layers)


@pytest.mark.parametrize("hidden_sizes", [(64, 64), (16,), ()])
def test_passes_give_autograds_output_and_gradients_bit_for_bit(hidden_sizes):
    torch.manual_seed(0)
    network = QNetwork(30, 5, hidden_sizes)
    x = torch.randn(128, 30)
    grad_output = torch.randn(128, 5)

    out = network(x)
    out.backward(grad_output)
    autograd_grads = [param.grad.clone() for param in network.parameters()]
    network.zero_grad(set_to_none=True)

    passes = MLPPasses(network.layers)
    hand_out, tape = passes.forward_with_tape(x)
    hand_grads = passes.backward(tape, grad_output)
    assert torch.equal(hand_out, out.detach())
    assert torch.equal(passes.forward(x), out.detach())
    assert len(hand_grads) == len(autograd_grads)
    for grad, expected in zip(hand_grads, autograd_grads):
        assert grad.shape == expected.shape
        assert torch.equal(grad, expected)


def test_passes_see_parameters_loaded_in_place():
    network = QNetwork(4, 2, (8,))
    passes = MLPPasses(network.layers)
    other = QNetwork(4, 2, (8,))
    network.load_state_dict(other.state_dict())
    x = torch.randn(5, 4)
    assert torch.equal(passes.forward(x), other(x).detach())


@pytest.mark.parametrize("settings", [dict(fused=True), dict(fused=True, weight_decay=0.01), dict(fused=False),
                                      dict(fused=True, amsgrad=True)])
def test_adam_step_is_optimizer_step_bit_for_bit(settings):
    torch.manual_seed(1)
    networks = [QNetwork(6, 3, (16, 16)) for _ in range(2)]
    networks[1].load_state_dict(networks[0].state_dict())
    optimizers = [torch.optim.Adam(n.parameters(), lr=1e-3, **settings) for n in networks]
    for step in range(6):
        grads = [torch.randn_like(param) for param in networks[0].parameters()]
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                group["lr"] = 1e-3 / (step + 1)  # a scheduled rate reaches the kernel too
        for param, grad in zip(networks[0].parameters(), grads):
            param.grad = grad.clone()
        optimizers[0].step()
        adam_step(optimizers[1], [grad.clone() for grad in grads])  # the first call makes the state through step()
    for a, b in zip(networks[0].parameters(), networks[1].parameters()):
        assert torch.equal(a, b)
    for a, b in zip(optimizers[0].state.values(), optimizers[1].state.values()):
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def random_rows(rng: np.random.Generator, rows: int) -> Transition:
    return Transition(obs=rng.normal(size=(rows, 10)).astype(np.float32), action=rng.integers(0, 4, rows),
                      reward=rng.normal(size=rows).astype(np.float32),
                      next_obs=rng.normal(size=(rows, 10)).astype(np.float32),
                      terminated=rng.random(rows) < 0.1, truncated=np.zeros(rows, bool))


@pytest.mark.parametrize("loss, double_dqn, max_grad_norm", [("huber", True, 10.0), ("mse", False, None)])
def test_dqn_trains_the_same_bits_with_or_without_autograd(loss, double_dqn, max_grad_norm):
    config = DQNConfig(hidden_sizes=(32, 32), batch_size=64, buffer_size=2_000, learning_starts=100,
                       target_update_period=1, target_tau=0.01, loss=loss, double_dqn=double_dqn,
                       max_grad_norm=max_grad_norm, learning_rate_end=1e-5, learning_rate_decay_steps=200)
    space = gym.spaces.Box(-np.inf, np.inf, (10,), np.float32)
    by_hand, by_autograd = (DQNAgent(config, space, gym.spaces.Discrete(4), seed=5) for _ in range(2))
    by_autograd._online_passes = by_autograd._target_passes = None  # what a network with an encoder takes
    rng = np.random.default_rng(0)
    for _ in range(40):
        rows = random_rows(rng, 8)
        for agent in (by_hand, by_autograd):
            agent.observe(rows)
        assert by_hand.update() == by_autograd.update()
    assert by_hand.gradient_steps == by_autograd.gradient_steps > 100
    for network in ("q_network", "target_network"):
        for a, b in zip(getattr(by_hand, network).parameters(), getattr(by_autograd, network).parameters()):
            assert torch.equal(a, b)
    obs = rng.normal(size=(3, 10)).astype(np.float32)
    np.testing.assert_array_equal(by_hand.q_values(obs), by_autograd.q_values(obs))
