"""Behaviour cloning for discrete actions: the baseline an offline RL learner has to beat.

A policy network outputs one logit per action; training maximizes the log-likelihood of the
dataset's actions (cross-entropy), per gradient step on a batch drawn uniformly from the dataset:

    L = -E_(s,a)~D[ log softmax(f(s))[a] ]

It learns what the behaviour policy did, good or bad: it cannot do better than the data on
average, which is what an offline RL learner (`cql.py`) is measured against. Acting is greedy
(the most likely action).

Same interface as `CQLAgent`: `load_dataset(arrays)`, then `update()` while `gradient_steps_due()`
is positive; no env server needed; `observe` refuses online transitions.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from agent_node.algos.config import BCConfig
from agent_node.algos.dqn import QNetwork
from agent_node.algos.learner_parts import (
    StateLayout,
    checked_obs,
    steps_to_take,
)
from agent_node.algos.params import OfflineLearner, transitions_for_learning


class BCAgent(OfflineLearner):
    """Actor, offline Learner and ParamSource for behaviour cloning."""

    # What a checkpoint holds (agent_node/algos/learner_parts.py), and the network whose
    # parameters consensus averages (get_params / set_params, agent_node/algos/params.py).
    STATE = StateLayout("bc", "BC", modules=("policy",), optimizers=("optimizer",), counters=("gradient_steps",),
                        generators=("sample_rng",))
    PARAMS = "policy"
    CONFIG = BCConfig
    NAME, PREFIX = "behaviour cloning", "bc"

    def build_networks(self) -> None:
        # An MLP from observation to one output per action; here the outputs are logits.
        self.policy = QNetwork(int(np.prod(self.obs_shape)), int(self.action_space.n), self.config.hidden_sizes)

    def load_dataset(self, arrays: Mapping[str, np.ndarray]) -> None:
        converted = transitions_for_learning(arrays, self.observation_space, self.action_space)
        self.data = {"obs": torch.as_tensor(converted["obs"]), "action": torch.as_tensor(converted["action"])}

    def update(self, max_gradient_steps: int | None = None) -> dict[str, float]:
        steps = steps_to_take(self.gradient_steps_due(), max_gradient_steps)
        loss_total, accuracy_total = 0.0, 0.0
        for _ in range(steps):
            assert self.data is not None
            indices = torch.as_tensor(self.sample_rng.integers(0, len(self.data["action"]), self.config.batch_size))
            logits = self.policy(self.data["obs"][indices])
            action = self.data["action"][indices]
            loss = F.cross_entropy(logits, action)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.gradient_steps += 1
            loss_total += loss.item()
            accuracy_total += (logits.argmax(dim=1) == action).float().mean().item()
        metrics = {"bc/gradient_steps": float(steps), "bc/steps_pending": float(self.gradient_steps_due())}
        if steps:
            metrics.update({"bc/loss": loss_total / steps, "bc/accuracy": accuracy_total / steps})
        return metrics

    def action_probabilities(self, obs: np.ndarray) -> np.ndarray:
        obs = checked_obs(obs, self.obs_shape)
        with torch.inference_mode():
            return torch.softmax(self.policy(torch.as_tensor(obs, dtype=torch.float32)), dim=1).numpy()

    action_scores = action_probabilities  # `act` takes the most likely action

