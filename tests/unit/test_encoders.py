"""Image observations get a convolutional torso (agent_node/algos/encoders.py): chosen by
`encoder: auto` for uint8 images, refused by `encoder: cnn` for anything else, small where the
flattened MLP is huge, and able to learn where the answer is in the picture."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from agent_node.algos.config import DQNConfig
from agent_node.algos.dqn import DQNAgent
from agent_node.algos.encoders import choose_encoder, is_image_space
from agent_node.roles import Transition

torch.set_num_threads(1)

PISTONBALL = gym.spaces.Box(0, 255, (457, 120, 3), np.uint8)  # one pistonball piston's view
VECTOR = gym.spaces.Box(-1.0, 1.0, (24,), np.float32)


def parameters(agent: DQNAgent) -> int:
    return sum(p.numel() for p in agent.q_network.parameters())


def test_auto_takes_the_cnn_for_images_only() -> None:
    assert is_image_space(PISTONBALL) and not is_image_space(VECTOR)
    assert choose_encoder("auto", PISTONBALL) == "cnn" and choose_encoder("auto", VECTOR) == "mlp"
    # Too small for the DQN paper's torso: flattened, as before.
    assert choose_encoder("auto", gym.spaces.Box(0, 255, (8, 8, 3), np.uint8)) == "mlp"
    with pytest.raises(ValueError, match="encoder 'cnn' needs image observations"):
        choose_encoder("cnn", VECTOR)
    with pytest.raises(ValueError, match="at least 36 pixels"):
        choose_encoder("cnn", gym.spaces.Box(0, 255, (20, 80, 3), np.uint8))


def test_the_cnn_is_a_fraction_of_the_flattened_mlp_on_pistonball() -> None:
    actions = gym.spaces.Discrete(3)
    cnn = DQNAgent(DQNConfig(buffer_size=64), PISTONBALL, actions, seed=0)
    mlp = DQNAgent(DQNConfig(buffer_size=64, encoder="mlp"), PISTONBALL, actions, seed=0)
    assert cnn.encoder == "cnn" and mlp.encoder == "mlp"
    assert parameters(mlp) > 10_000_000  # 164,580 inputs x 64: the first layer alone
    assert parameters(cnn) < parameters(mlp) / 4
    image = np.random.default_rng(0).integers(0, 256, (2, 457, 120, 3), dtype=np.uint8)
    assert cnn.act(image, explore=False).shape == (2,)


def test_the_cnn_learns_where_the_bright_spot_is() -> None:
    """One-step episodes: a 36 x 36 grey image with a bright 4 x 4 spot in its left or right half;
    action 0 pays 1 when the spot is left, action 1 when it is right."""
    space = gym.spaces.Box(0, 255, (36, 36, 1), np.uint8)
    config = DQNConfig(batch_size=32, buffer_size=2_000, learning_starts=64, train_every=1, hidden_sizes=(32,),
                       learning_rate=1e-3, epsilon_decay_steps=200, target_update_period=50)
    agent = DQNAgent(config, space, gym.spaces.Discrete(2), seed=0)
    assert agent.encoder == "cnn"
    rng = np.random.default_rng(1)

    def images(count: int) -> tuple[np.ndarray, np.ndarray]:
        right = rng.integers(0, 2, count)
        batch = np.full((count, 36, 36, 1), 40, np.uint8)
        for i, side in enumerate(right):
            row, col = rng.integers(0, 32), rng.integers(0, 14) + 18 * side
            batch[i, row : row + 4, col : col + 4] = 255
        return batch, right

    for _ in range(100):  # 8 rows per call, like 8 env copies
        obs, right = images(8)
        action = agent.act(obs)
        reward = (action == right).astype(np.float32)
        done = np.ones(8, bool)
        agent.observe(Transition(obs, action, reward, obs, done, np.zeros(8, bool)))
        agent.update()
    obs, right = images(200)
    accuracy = float(np.mean(agent.act(obs, explore=False) == right))
    assert accuracy >= 0.9, accuracy  # chance is 0.5
