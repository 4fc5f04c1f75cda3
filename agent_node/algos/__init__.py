"""Off-policy learners, one readable file per algorithm (CleanRL style).

- `config.py`  the typed hyperparameters (`DQNConfig`, `SACConfig`, `LearnerConfig`); no torch.
- `dqn.py`     `DQNAgent`: Double DQN for a Box observation and a Discrete action.
- `sac.py`     `SACAgent`: soft actor-critic for Box observations and Box actions, with an
               optional second (model-generated) sample source.

Each agent is an `Actor`, a `Learner` and a `ParamSource` (see `agent_node/roles.py`) and owns its
`ReplayBuffer` as `agent.replay`.

This package's `__init__` deliberately imports nothing that pulls in torch, so that importing
`agent_node.algos.config` stays fast; `build_learner` imports the chosen algorithm when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent_node.algos.config import DQNConfig, LearnerConfig, SACConfig

if TYPE_CHECKING:
    import gymnasium as gym

    from agent_node.algos.dqn import DQNAgent
    from agent_node.algos.sac import SACAgent

__all__ = ["DQNConfig", "LearnerConfig", "SACConfig", "build_learner"]


def build_learner(
    config: DQNConfig | SACConfig,
    observation_space: gym.spaces.Space,
    action_space: gym.spaces.Space,
    seed: int,
) -> DQNAgent | SACAgent:
    """The agent that `config.kind` names, built for these spaces and this seed."""
    # Imported here, not at module level, so that validating configs never imports torch.
    if isinstance(config, DQNConfig):
        from agent_node.algos.dqn import DQNAgent

        return DQNAgent(config, observation_space, action_space, seed)
    if isinstance(config, SACConfig):
        from agent_node.algos.sac import SACAgent

        return SACAgent(config, observation_space, action_space, seed)
    raise TypeError(f"expected a DQNConfig or SACConfig, got {type(config).__name__}")
