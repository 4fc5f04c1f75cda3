"""What an agent averages with its neighbours, and when: the `consensus.what` of a run.

The node's loop runs the consensus engine (network, rounds, deadlines); a *subject* supplies
the tensors to average and takes the averaged ones back:

    due(step)          is a consensus run due at this lockstep step?
    prepare()          the named tensors to average (fitting a world model first if needed)
    adopt(averaged, N) use the averaged tensors (None: consensus is off, keep the local ones);
                       returns scalar metrics

Subjects:
- `OGMARLWorldModel`   the OG-MARL learner's GP: refit on fresh data, average the natural
                       parameters, imagine with the fused model (the learner decides when).
- `LocalWorldModel`    a world model the node trains beside a model-free learner on samples of
                       its replay buffer (`world_model_statistics` for a GP, `..._parameters`
                       for an ensemble). The learner does not use it for control; it is the
                       shared model of the dynamics the agents build together.
- `PolicyParameters`   the learner's policy network parameters (`ParamSource`).

Every agent of a run reaches the same lockstep steps, so `due` is true on all of them at the
same step and their consensus runs line up without any extra coordination.
"""

from __future__ import annotations

from typing import Mapping, Protocol

import numpy as np
from gymnasium import spaces

from agent_node.roles import ModelBasedLearner, ParamSource, ReplayLearner
from agent_node.world_models import build_world_model
from agent_node.world_models.config import WorldModelConfig


class ConsensusSubject(Protocol):
    def due(self, step: int) -> bool: ...

    def prepare(self) -> dict[str, np.ndarray]: ...

    def adopt(self, averaged: Mapping[str, np.ndarray] | None, num_agents: int) -> dict[str, float]: ...


class OGMARLWorldModel:
    def __init__(self, learner: ModelBasedLearner) -> None:
        _require_role(learner, ModelBasedLearner, "learner kind og_marl (a model-based learner)")
        self.learner = learner

    def due(self, step: int) -> bool:
        return self.learner.model_refresh_due()

    def prepare(self) -> dict[str, np.ndarray]:
        return self.learner.fit_world_model()

    def adopt(self, averaged, num_agents):
        return self.learner.adopt_world_model(averaged, num_agents)


class PolicyParameters:
    def __init__(self, learner: ParamSource, period_steps: int) -> None:
        _require_role(learner, ParamSource, "consensus.what: policy_parameters")
        self.learner = learner
        self.period_steps = period_steps

    def due(self, step: int) -> bool:
        return step > 0 and step % self.period_steps == 0

    def prepare(self) -> dict[str, np.ndarray]:
        return self.learner.get_params()

    def adopt(self, averaged, num_agents):
        if averaged is not None:
            self.learner.set_params(averaged)
        return {}


class LocalWorldModel:
    """A world model fit on samples of the learner's replay buffer, every `period_steps`."""

    def __init__(
        self,
        learner: ReplayLearner,
        world_model_config: WorldModelConfig,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        *,
        period_steps: int,
        fit_transitions: int,
        average: str,  # "world_model_statistics" | "world_model_parameters"
        seed: int,
        sampler_seed: int,
    ) -> None:
        """`seed` builds the model (its initial weights, its own draws); `sampler_seed` draws the
        replay rows it is fit on. Separate streams: changing how often the model is fit does not
        change the learner's minibatches or the model's initialization."""
        _require_role(learner, ReplayLearner, f"consensus.what: {average} (a world model fit on the replay buffer)")
        if not isinstance(observation_space, spaces.Box):
            raise TypeError(f"a world model needs a Box observation space, got {observation_space}")
        self.learner = learner
        self.action_space = action_space
        self.period_steps = period_steps
        self.fit_transitions = fit_transitions
        self.average = average
        state_dim = int(np.prod(observation_space.shape))
        # Discrete actions enter the model one-hot.
        action_dim = int(action_space.n) if isinstance(action_space, spaces.Discrete) else int(np.prod(action_space.shape))
        self.model = build_world_model(world_model_config, state_dim, action_dim, seed)
        self.sampler = np.random.default_rng(sampler_seed)

    def due(self, step: int) -> bool:
        return step > 0 and step % self.period_steps == 0 and len(self.learner.replay) >= self.fit_transitions

    def _sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        batch = self.learner.replay.sample(self.fit_transitions, rng=self.sampler)
        states = batch["obs"].reshape(len(batch["obs"]), -1)
        next_states = batch["next_obs"].reshape(len(batch["next_obs"]), -1)
        actions = batch["action"]
        if isinstance(self.action_space, spaces.Discrete):
            actions = np.eye(self.action_space.n, dtype=np.float32)[actions.astype(np.int64) - self.action_space.start]
        return states, actions.reshape(len(actions), -1), next_states

    def prepare(self) -> dict[str, np.ndarray]:
        self.fit_metrics = self.model.fit(*self._sample())
        if self.average == "world_model_parameters":
            return self.model.get_params()
        return self.model.export_statistics()

    def adopt(self, averaged, num_agents):
        metrics = {f"world_model/{k.split('/')[-1]}": float(v) for k, v in self.fit_metrics.items()}
        states, actions, next_states = self._sample()  # fresh local data, to score both models
        metrics["world_model/local_mse"] = self._mse(states, actions, next_states)
        if averaged is not None:
            if self.average == "world_model_parameters":
                self.model.set_params(averaged)
            else:
                self.model.import_statistics(averaged, num_agents)
            metrics["world_model/averaged_mse"] = self._mse(states, actions, next_states)
        return metrics

    def _mse(self, states, actions, next_states) -> float:
        mean, _ = self.model.predict(states, actions)
        return float(np.mean((mean - next_states) ** 2))


def _require_role(learner: object, role: type, needed_by: str) -> None:
    if not isinstance(learner, role):
        raise TypeError(f"{needed_by} needs a learner that is a {role.__name__} (agent_node/roles.py); "
                        f"{type(learner).__name__} is not")
