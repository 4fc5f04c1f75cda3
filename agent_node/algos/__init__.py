"""Off-policy learners, one readable file per algorithm (CleanRL style).

- `config.py`  the typed hyperparameters (`DQNConfig`, `SACConfig`, `LearnerConfig`); no torch.
- `dqn.py`     `DQNAgent`: Double DQN for a Box observation and a Discrete action.
- `sac.py`     `SACAgent`: soft actor-critic for Box observations and Box actions, with an
               optional second (model-generated) sample source.
- `og_marl.py`  `OGMARLAgent`: SAC on imagined rollouts through a consensus-fused world model,
               with an optimism bonus (OG-MARL).
- `pmic.py`     `PMICAgent`: decentralized MADDPG with PMIC's mutual-information shaping
               (`mutual_information.py` holds the two estimators).
- `shared_dqn.py`  `SharedDQNAgent`: DQN on the observation padded to a maximum size plus a
               padded one-hot agent index, portable between runs with different agent counts.
- `mixers.py`   VDN / QMIX mixing networks and `CentralizedMixerLearner`, the update a learner
               node runs over all agents' Q-networks (not an agent-side learner).
- `cql.py`, `bc.py`  offline learners trained from a recorded dataset (`agent_node/offline/datasets.py`).

Each agent is an `Actor`, a `Learner` and a `ParamSource` (see `agent_node/roles.py`) and owns its
`ReplayBuffer` as `agent.replay`.

This package's `__init__` deliberately imports nothing that pulls in torch, so that importing
`agent_node.algos.config` stays fast; `build_learner` imports the chosen algorithm when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from agent_node.algos.config import (
    BCConfig,
    CQLConfig,
    DQNConfig,
    LearnerConfig,
    OGMARLConfig,
    PMICConfig,
    SACConfig,
    SharedDQNConfig,
)

if TYPE_CHECKING:
    import gymnasium as gym

    from agent_node.algos.bc import BCAgent
    from agent_node.algos.cql import CQLAgent
    from agent_node.algos.dqn import DQNAgent
    from agent_node.algos.og_marl import OGMARLAgent
    from agent_node.algos.pmic import PMICAgent
    from agent_node.algos.sac import SACAgent
    from agent_node.algos.shared_dqn import SharedDQNAgent
    from agent_node.world_models.config import EnsembleConfig, SparseGPConfig

__all__ = [
    "BCConfig",
    "CQLConfig",
    "DQNConfig",
    "LearnerConfig",
    "OGMARLConfig",
    "PMICConfig",
    "SACConfig",
    "SharedDQNConfig",
    "build_learner",
]


def build_learner(
    config: DQNConfig | SACConfig | OGMARLConfig | PMICConfig | SharedDQNConfig | CQLConfig | BCConfig,
    observation_space: gym.spaces.Space,
    action_space: gym.spaces.Space,
    seed: int,
    *,
    world_model_config: SparseGPConfig | EnsembleConfig | None = None,
    task_spec: Mapping[str, Any] | None = None,
    state_space: gym.spaces.Space | None = None,
    num_agents: int | None = None,
    agent_index: int | None = None,
) -> DQNAgent | SACAgent | OGMARLAgent | PMICAgent | SharedDQNAgent | CQLAgent | BCAgent:
    """The agent that `config.kind` names, built for these spaces and this seed.

    `world_model_config` (the agent's `world_model` section) and `task_spec` (the reward function
    as data, from the env server's welcome metadata `"task"`) are required by og_marl and ignored
    by the model-free learners. `state_space` (the env's global state space), `num_agents` and
    `agent_index` (this agent's position in `possible_agents`) are required by pmic;
    `agent_index` by shared_dqn.
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
    if isinstance(config, PMICConfig):
        missing = [
            name
            for name, value in (("state_space", state_space), ("num_agents", num_agents), ("agent_index", agent_index))
            if value is None
        ]
        if missing:
            raise ValueError(
                f"learner kind 'pmic' needs the global view: {', '.join(missing)} not given (the env server must "
                "publish the global state and joint action, and the node must know its index in possible_agents)"
            )
        from agent_node.algos.pmic import PMICAgent

        return PMICAgent(
            config, observation_space, action_space, seed,
            state_space=state_space, num_agents=num_agents, agent_index=agent_index,
        )
    if isinstance(config, SharedDQNConfig):
        if agent_index is None:
            raise ValueError("learner kind 'shared_dqn' needs agent_index (this agent's index in possible_agents)")
        from agent_node.algos.shared_dqn import SharedDQNAgent

        return SharedDQNAgent(config, observation_space, action_space, seed, agent_index=agent_index)
    if isinstance(config, CQLConfig):
        from agent_node.algos.cql import CQLAgent

        return CQLAgent(config, observation_space, action_space, seed)
    if isinstance(config, BCConfig):
        from agent_node.algos.bc import BCAgent

        return BCAgent(config, observation_space, action_space, seed)
    raise TypeError(
        "expected a DQNConfig, SACConfig, OGMARLConfig, PMICConfig, SharedDQNConfig, CQLConfig or BCConfig, "
        f"got {type(config).__name__}"
    )
