"""Off-policy learners, one readable file per algorithm (CleanRL style).

- `config.py`  the typed hyperparameters (`DQNConfig`, `SACConfig`, `LearnerConfig`); no torch.
- `dqn.py`     `DQNAgent`: Double DQN for a Box observation and a Discrete action.
- `sac.py`     `SACAgent`: soft actor-critic for Box observations and Box actions, with an
               optional second (model-generated) sample source.
- `og_marl.py`  `OGMARLAgent`: SAC on imagined rollouts through a consensus-fused world model,
               with an optimism bonus (OG-MARL).

Each agent is an `Actor`, a `Learner` and a `ParamSource` (see `agent_node/roles.py`) and owns its
`ReplayBuffer` as `agent.replay`.

This package's `__init__` deliberately imports nothing that pulls in torch, so that importing
`agent_node.algos.config` stays fast; `build_learner` imports the chosen algorithm when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from agent_node.algos.config import DQNConfig, LearnerConfig, OGMARLConfig, SACConfig

if TYPE_CHECKING:
    import gymnasium as gym

    from agent_node.algos.dqn import DQNAgent
    from agent_node.algos.og_marl import OGMARLAgent
    from agent_node.algos.sac import SACAgent
    from agent_node.world_models.config import EnsembleConfig, SparseGPConfig

__all__ = ["DQNConfig", "LearnerConfig", "OGMARLConfig", "SACConfig", "build_learner"]


def build_learner(
    config: DQNConfig | SACConfig | OGMARLConfig,
    observation_space: gym.spaces.Space,
    action_space: gym.spaces.Space,
    seed: int,
    *,
    world_model_config: SparseGPConfig | EnsembleConfig | None = None,
    task_spec: Mapping[str, Any] | None = None,
) -> DQNAgent | SACAgent | OGMARLAgent:
    """The agent that `config.kind` names, built for these spaces and this seed.

    `world_model_config` (the agent's `world_model` section) and `task_spec` (the reward function
    as data, from the env server's welcome metadata `"task"`) are required by og_marl and ignored
    by the model-free learners.
    """
    # Imported here, not at module level, so that validating configs never imports torch.
    if isinstance(config, DQNConfig):
        from agent_node.algos.dqn import DQNAgent

        return DQNAgent(config, observation_space, action_space, seed)
    if isinstance(config, SACConfig):
        from agent_node.algos.sac import SACAgent

        return SACAgent(config, observation_space, action_space, seed)
    if isinstance(config, OGMARLConfig):
        if world_model_config is None:
            raise ValueError(
                "learner kind 'og_marl' needs a world model: set the agent's `world_model` section "
                "(e.g. kind: sparse_gp); got none"
            )
        if task_spec is None:
            raise ValueError(
                "learner kind 'og_marl' needs the task's reward function (task_spec), which the env "
                "server sends as metadata['task'] in env.welcome; this environment sent none"
            )
        from agent_node.algos.og_marl import OGMARLAgent

        return OGMARLAgent(
            config,
            observation_space,
            action_space,
            seed,
            world_model_config=world_model_config,
            task_spec=task_spec,
        )
    raise TypeError(f"expected a DQNConfig, SACConfig or OGMARLConfig, got {type(config).__name__}")
