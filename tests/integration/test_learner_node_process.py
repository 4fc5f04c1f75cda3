"""`python -m agent_node.ctde.learner_node` as a real process: two agent DEALERs stream transitions of a
one-step cooperative game over real sockets, each gets its own Q-network parameters back, and the
parameters it got make it play the game; the node's final metrics count its gradient steps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import gymnasium as gym
import numpy as np

from agent_node.algos.config import DQNConfig
from agent_node.algos.dqn import DQNAgent
from protocols.codec.ctde import CTDEParams, CTDETransitions
from tests.conftest import read_line_with_deadline


def test_learner_node_trains_from_streamed_transitions_and_sends_params_back(spawn, hub):
    process = spawn(
        [sys.executable, "-m", "agent_node.ctde.learner_node", "--mixer", "qmix", "--num-agents", "2", "--obs-dim", "2",
         "--num-actions", "2", "--state-dim", "2", "--batch-size", "32", "--learning-starts", "32",
         "--gradient-steps-per-row", "1", "--params-every", "50"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    line = read_line_with_deadline(process, 120)
    assert line.startswith("READY "), line
    endpoint = line.split(" ", 1)[1]
    agents = [hub.connect_dealer(endpoint, name=f"learner:{i}", identity=f"agent_{i}") for i in range(2)]

    rng = np.random.default_rng(0)
    received: dict[int, list[CTDEParams]] = {0: [], 1: []}
    for step in range(600):
        bit = int(rng.integers(2))
        onehot = np.eye(2, dtype=np.float32)[bit][None]
        actions = rng.integers(2, size=2)
        for agent, channel in enumerate(agents):
            channel.send(CTDETransitions(
                agent_index=agent, env_step=step, copy_index=np.array([0]), obs=onehot, action=actions[agent : agent + 1],
                reward=np.array([float(actions[agent] == bit)], np.float32), next_obs=onehot, terminated=np.array([True]),
                global_state=onehot, next_global_state=onehot, rows_sent=step + 1,
            ))
        for agent, channel in enumerate(agents):
            for envelope in channel.recv_all():
                if envelope.message.params:  # (bare acknowledgements carry none)
                    received[agent].append(envelope.message)

    # 600 rows, training from the 32nd, one step per row: 569 gradient steps, params every 50 -> 11 each.
    deadline = time.monotonic() + 180
    while min(len(v) for v in received.values()) < 11 and time.monotonic() < deadline:
        hub.wait(1.0)
        for agent, channel in enumerate(agents):
            for envelope in channel.recv_all():
                if envelope.message.params:  # (bare acknowledgements carry none)
                    received[agent].append(envelope.message)
    for agent in (0, 1):
        assert [m.gradient_step for m in received[agent]] == list(range(50, 551, 50)), (agent, [m.gradient_step for m in received[agent]])

    os.kill(process.pid, signal.SIGTERM)
    metrics_line = read_line_with_deadline(process, 60)
    assert metrics_line.startswith("METRICS "), metrics_line
    metrics = json.loads(metrics_line.split(" ", 1)[1])
    assert metrics["learner/gradient_steps"] == 569 and metrics["learner/joint_rows"] == 600
    assert process.wait(timeout=30) == 0

    box = gym.spaces.Box(0, 1, (2,), np.float32)
    for agent in (0, 1):
        dqn = DQNAgent(DQNConfig(hidden_sizes=(64, 64)), box, gym.spaces.Discrete(2), seed=3)
        dqn.set_params(received[agent][-1].params)
        np.testing.assert_array_equal(dqn.act(np.eye(2, dtype=np.float32), explore=False), [0, 1])
