"""Conservative Q-learning for discrete actions, trained offline from a recorded dataset.

References, to check this file against:
- Kumar, Zhou, Tucker, Levine 2020, "Conservative Q-Learning for Offline Reinforcement Learning":
  CQL(H), eq. 4, whose regularizer for discrete actions is a log-sum-exp over the actions
  (their Atari experiments, appendix F, use it on a QR-DQN backbone).
- van Hasselt et al. 2016 (Double DQN) for the bootstrapped target, as in `dqn.py`.

The loss, per gradient step on a batch (s, a, r, s', terminated) drawn uniformly from the dataset:

    y     = r + gamma * (1 - terminated) * Q'(s', argmax_a' Q(s', a'))
    L_TD  = Huber (or squared) error between Q(s, a) and y
    L_CQL = alpha * E_s[ log sum_a exp Q(s, a) - Q(s, a_data) ]
    L     = L_TD + L_CQL

The second term pushes down the values of every action in proportion to their softmax weight and
pushes up the action the data took: actions the dataset never shows in a state end up valued
below the ones it does, so the greedy policy does not chase values that were never checked
against data (the failure of plain offline Q-learning). With alpha = 0 this is offline Double DQN.

Not taken over from the marl-offline-coordination code (`marlkit/torch/dqn/cql.py:68-70`): it
applies the log-sum-exp to the Q-values already masked to the taken action (`self.qf(obs) *
actions`), so its regularizer sees zeros for every other action; here it runs over all actions.

How it is used: `load_dataset(arrays)` with one agent's columns (`agent_node/offline/datasets.py`;
checked by `params.transitions_for_learning`), then `update()` until `gradient_steps_due()` is 0; no env server is
needed. `act` is greedy. `get_params` names the Q-network `q_network.*` like `DQNAgent`, so a
trained network loads into a DQN agent node for evaluation with `set_params`. An offline learner
takes no online transitions: `observe` refuses them.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from agent_node.algos.config import CQLConfig
from agent_node.algos.dqn import QNetwork
from agent_node.algos.learner_parts import (
    StateLayout,
    checked_obs,
    run_gradient_steps,
    steps_to_take,
)
from agent_node.algos.params import OfflineLearner, transitions_for_learning


class CQLAgent(OfflineLearner):
    """Actor, offline Learner and ParamSource for discrete CQL (see the module docstring)."""

    # What a checkpoint holds (agent_node/algos/learner_parts.py), and the network whose
    # parameters consensus averages (get_params / set_params, agent_node/algos/params.py).
    STATE = StateLayout("cql", "CQL", modules=("q_network", "target_network"), optimizers=("optimizer",),
                        counters=("gradient_steps",), generators=("sample_rng",))
    PARAMS = "q_network"
    CONFIG = CQLConfig
    NAME, PREFIX = "CQL", "cql"

    def build_networks(self) -> None:
        self.num_actions = int(self.action_space.n)
        obs_dim = int(np.prod(self.obs_shape))
        self.q_network = QNetwork(obs_dim, self.num_actions, self.config.hidden_sizes)
        self.target_network = QNetwork(obs_dim, self.num_actions, self.config.hidden_sizes)
        self.target_network.load_state_dict(self.q_network.state_dict())
        self.target_network.requires_grad_(False)

    # ------------------------------------------------------------------ data and training

    def load_dataset(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Take one agent's dataset columns (obs, action, reward, next_obs, terminated)."""
        converted = transitions_for_learning(arrays, self.observation_space, self.action_space)
        self.data = {name: torch.as_tensor(values) for name, values in converted.items()}

    def update(self, max_gradient_steps: int | None = None) -> dict[str, float]:
        steps = steps_to_take(self.gradient_steps_due(), max_gradient_steps)
        metrics = run_gradient_steps(self._gradient_step, steps)
        metrics["cql/gradient_steps"] = float(steps)
        metrics["cql/steps_pending"] = float(self.gradient_steps_due())
        return metrics

    def _gradient_step(self) -> dict[str, float]:
        cfg = self.config
        assert self.data is not None
        indices = torch.as_tensor(self.sample_rng.integers(0, len(self.data["reward"]), cfg.batch_size))
        obs, action = self.data["obs"][indices], self.data["action"][indices]
        reward, next_obs = self.data["reward"][indices], self.data["next_obs"][indices]
        terminated = self.data["terminated"][indices].float()

        with torch.no_grad():
            next_action = self.q_network(next_obs).argmax(dim=1, keepdim=True)
            next_value = self.target_network(next_obs).gather(1, next_action).squeeze(1)
            target = reward + cfg.gamma * (1.0 - terminated) * next_value
        q_all = self.q_network(obs)
        q_data = q_all.gather(1, action.unsqueeze(1)).squeeze(1)
        td_loss = F.smooth_l1_loss(q_data, target) if cfg.loss == "huber" else F.mse_loss(q_data, target)
        logsumexp = torch.logsumexp(q_all, dim=1)
        conservative_loss = (logsumexp - q_data).mean()
        loss = td_loss + cfg.cql_alpha * conservative_loss

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.q_network.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        self.gradient_steps += 1
        if self.gradient_steps % cfg.target_update_period == 0:
            self.target_network.load_state_dict(self.q_network.state_dict())
        return {
            "cql/td_loss": td_loss.item(),
            "cql/conservative_gap": conservative_loss.item(),
            "cql/q_data_mean": q_data.mean().item(),
            "cql/target_mean": target.mean().item(),
        }

    # ------------------------------------------------------------------ Actor

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        obs = checked_obs(obs, self.obs_shape)
        with torch.inference_mode():
            return self.q_network(torch.as_tensor(obs, dtype=torch.float32)).numpy()

    action_scores = q_values  # `act` is greedy

