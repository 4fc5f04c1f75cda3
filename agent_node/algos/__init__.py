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

`LEARNERS` is the one registry of learner kinds (agent_node/plugins.py): the built-ins below and
a user's learners (installed entry points of `parley.learners`, or `package.module:Class` import
paths) are resolved, validated and built the same way. Each built-in's builder is a function here
that takes `(config, spec)` like a plugin class's constructor does.

This package's `__init__` deliberately imports nothing that pulls in torch, so that importing
`agent_node.algos.config` stays fast; `build_learner` imports the chosen algorithm when called.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Mapping

from agent_node.algos.config import (
    LEARNER_ACTION_SPACE,
    BCConfig,
    CQLConfig,
    DQNConfig,
    GoalDQNConfig,
    LearnerConfig,
    OGMARLConfig,
    PMICConfig,
    SACConfig,
    SharedDQNConfig,
)
from agent_node.plugins import LEARNER_METHODS, LearnerSpec, Registry, builtin

if TYPE_CHECKING:
    import gymnasium as gym

    from agent_node.algos.goal_dqn import GoalDQNAgent
    from agent_node.algos.og_marl import OGMARLAgent
    from agent_node.algos.pmic import PMICAgent
    from agent_node.algos.shared_dqn import SharedDQNAgent
    from agent_node.roles import NodeLearner

__all__ = [
    "BCConfig",
    "CQLConfig",
    "DQNConfig",
    "LearnerConfig",
    "OGMARLConfig",
    "PMICConfig",
    "SACConfig",
    "SharedDQNConfig",
    "LEARNERS",
    "LearnerSpec",
    "PluggableLearnerConfig",
    "build_learner",
]


# The learners built from their spaces and seed alone: kind -> module and class, imported when
# one is built (so that importing this package pulls in no torch).
_SPACES_AND_SEED = {
    "dqn": ("agent_node.algos.dqn", "DQNAgent"),
    "cql": ("agent_node.algos.cql", "CQLAgent"),
    "bc": ("agent_node.algos.bc", "BCAgent"),
}


def _build_from_spaces(config: DQNConfig | CQLConfig | BCConfig, spec: LearnerSpec) -> Any:
    """DQN, CQL or BC (by `config.kind`): `Agent(config, observation space, action space, seed)`."""
    module, name = _SPACES_AND_SEED[config.kind]
    agent_class = getattr(importlib.import_module(module), name)
    if spec.init_seed is not None:
        if config.kind != "dqn":
            raise ValueError(f"a shared initial policy (init_seed) is for learner kind 'dqn', got {config.kind!r}")
        return agent_class(config, spec.observation_space, spec.action_space, spec.seed, init_seed=spec.init_seed)
    return agent_class(config, spec.observation_space, spec.action_space, spec.seed)


def _build_sac(config: SACConfig, spec: LearnerSpec) -> Any:
    """SAC; with `reward: own_contribution`, scoring its real rows with the task's reward model
    (the one og_marl scores imagined rows with, rebuilt from the env's task_spec)."""
    from agent_node.algos.sac import SACAgent

    reward_model = None
    if config.reward == "own_contribution":
        if spec.task_spec is None:
            raise ValueError(
                "learner.reward 'own_contribution' needs the task's reward function (task_spec), which the env "
                "server sends as metadata['task'] in env.welcome; this environment sent none (use reward: team)"
            )
        from agent_node.reward_models import reward_model_from_spec

        reward_model = reward_model_from_spec(spec.task_spec)
    return SACAgent(config, spec.observation_space, spec.action_space, spec.seed, reward_model=reward_model)


def _build_og_marl(config: OGMARLConfig, spec: LearnerSpec) -> OGMARLAgent:
    if spec.world_model_config is None:
        raise ValueError(
            "learner kind 'og_marl' needs a world model: set the agent's `world_model` section "
            "(e.g. kind: sparse_gp); got none"
        )
    if spec.task_spec is None:
        raise ValueError(
            "learner kind 'og_marl' needs the task's reward function (task_spec), which the env "
            "server sends as metadata['task'] in env.welcome; this environment sent none"
        )
    from agent_node.algos.og_marl import OGMARLAgent

    return OGMARLAgent(
        config,
        spec.observation_space,
        spec.action_space,
        spec.seed,
        world_model_config=spec.world_model_config,
        task_spec=spec.task_spec,
    )


def _build_pmic(config: PMICConfig, spec: LearnerSpec) -> PMICAgent:
    missing = [
        name
        for name, value in (("state_space", spec.state_space), ("num_agents", spec.num_agents), ("agent_index", spec.agent_index))
        if value is None
    ]
    if missing:
        raise ValueError(
            f"learner kind 'pmic' needs the global view: {', '.join(missing)} not given (the env server must "
            "publish the global state and joint action, and the node must know its index in possible_agents)"
        )
    from agent_node.algos.pmic import PMICAgent

    return PMICAgent(
        config, spec.observation_space, spec.action_space, spec.seed,
        state_space=spec.state_space, num_agents=spec.num_agents, agent_index=spec.agent_index,
    )


def _build_shared_dqn(config: SharedDQNConfig, spec: LearnerSpec) -> SharedDQNAgent:
    if spec.agent_index is None:
        raise ValueError("learner kind 'shared_dqn' needs agent_index (this agent's index in possible_agents)")
    from agent_node.algos.shared_dqn import SharedDQNAgent

    return SharedDQNAgent(config, spec.observation_space, spec.action_space, spec.seed, agent_index=spec.agent_index)


def _build_goal_dqn(config: GoalDQNConfig, spec: LearnerSpec) -> GoalDQNAgent:
    # Conditioned on the goals its goal session draws: the session (agent_node/goals/session.py,
    # agent_node/amigo/session.py) gives the goal space and wraps the agent in the learner the node drives.
    if spec.goals is None:
        raise ValueError(
            "learner kind 'goal_dqn' needs the goal space that its goal session gives (agents.goals); got none"
        )
    from agent_node.algos.goal_dqn import GoalDQNAgent

    return GoalDQNAgent(
        config, int(spec.observation_space.shape[0]), int(spec.action_space.n), spec.goals.num_goals,
        spec.goals.reward_fn, seed=spec.seed, goal_features=spec.goals.goal_features,
    )


# What goal_dqn's agent has: its goal session wraps it into the learner the node drives (it
# observes whole episodes, relabelled, rather than the node's transitions).
GOAL_LEARNER_METHODS = ("act", "observe_episode", "gradient_steps_due", "update", "counters", "state_dict", "load_state_dict")

_BUILDERS = {
    "dqn": (DQNConfig, "_build_from_spaces"),
    "sac": (SACConfig, "_build_sac"),
    "og_marl": (OGMARLConfig, "_build_og_marl"),
    "pmic": (PMICConfig, "_build_pmic"),
    "shared_dqn": (SharedDQNConfig, "_build_shared_dqn"),
    "cql": (CQLConfig, "_build_from_spaces"),
    "bc": (BCConfig, "_build_from_spaces"),
    "goal_dqn": (GoalDQNConfig, "_build_goal_dqn"),
}

# Every learner kind a run may name: these built-ins, then the entry points of `parley.learners`,
# then import paths (agent_node/plugins.py).
LEARNERS = Registry(
    "learner",
    "parley.learners",
    LEARNER_METHODS,
    {
        name: builtin(name, config_model, f"agent_node.algos:{function}", action_space=LEARNER_ACTION_SPACE[name],
                      **({"methods": GOAL_LEARNER_METHODS} if name == "goal_dqn" else {}))
        for name, (config_model, function) in _BUILDERS.items()
    },
)

# The type of `agents.learner`: the built-ins' discriminated union, opened to plugins.
PluggableLearnerConfig = LEARNERS.config_type(LearnerConfig)


def build_learner(
    config: Any,
    observation_space: gym.spaces.Space,
    action_space: gym.spaces.Space,
    seed: int,
    *,
    world_model_config: Any = None,
    task_spec: Mapping[str, Any] | None = None,
    state_space: gym.spaces.Space | None = None,
    num_agents: int | None = None,
    agent_index: int | None = None,
    init_seed: int | None = None,
) -> NodeLearner:
    """The learner that `config.kind` names (a built-in or a plugin), built for these spaces and
    this seed through `LEARNERS`.

    `world_model_config` (the agent's `world_model` section) and `task_spec` (the reward function
    as data, from the env server's welcome metadata `"task"`) are required by og_marl; `task_spec`
    also by sac with `reward: own_contribution`; the other learners ignore them. `state_space`
    (the env's global state space), `num_agents` and `agent_index` (this agent's position in
    `possible_agents`) are required by pmic; `agent_index` by shared_dqn; `init_seed` (one start
    for every agent) is taken by dqn. A plugin gets all of them in its `LearnerSpec`.
    """
    spec = LearnerSpec(
        observation_space=observation_space,
        action_space=action_space,
        seed=seed,
        num_agents=num_agents,
        agent_index=agent_index,
        state_space=state_space,
        task_spec=task_spec,
        world_model_config=world_model_config,
        init_seed=init_seed,
    )
    return LEARNERS.build(config, spec)
