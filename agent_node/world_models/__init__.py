"""World models: learned dynamics with uncertainty, shared between agents by consensus.

- `sparse_gp.SparseGPWorldModel`: sparse GP in weight space; consensus averages its natural
  parameters, and at exact consensus every agent holds the centralized posterior.
- `ensemble.EnsembleWorldModel`: probabilistic neural-network ensemble; consensus averages its
  weights.

`WORLD_MODELS` is the one registry of world-model kinds (agent_node/plugins.py): these two and a
user's (entry points of `parley.world_models`, or `package.module:Class` import paths) are
resolved, validated and built the same way.

This package's import stays torch-free (only the config schemas are imported here) so that the CLI
can validate configs quickly; `build_world_model` imports the torch-backed module it needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent_node.world_models.config import (
    EnsembleConfig,
    SparseGPConfig,
    WorldModelConfig,
    inducing_grid_shape,
)
from agent_node.plugins import WORLD_MODEL_METHODS, Registry, WorldModelSpec, builtin

if TYPE_CHECKING:
    from agent_node.world_models.ensemble import EnsembleWorldModel
    from agent_node.world_models.sparse_gp import SparseGPWorldModel


def _build_sparse_gp(config: SparseGPConfig, spec: WorldModelSpec) -> SparseGPWorldModel:
    from agent_node.world_models.sparse_gp import SparseGPWorldModel

    return SparseGPWorldModel(config, spec.state_dim, spec.action_dim)


def _build_ensemble(config: EnsembleConfig, spec: WorldModelSpec) -> EnsembleWorldModel:
    from agent_node.world_models.ensemble import EnsembleWorldModel

    return EnsembleWorldModel(config, spec.state_dim, spec.action_dim, seed=spec.seed)


# Every world-model kind a run may name: these built-ins, then the entry points of
# `parley.world_models`, then import paths.
WORLD_MODELS = Registry(
    "world model",
    "parley.world_models",
    WORLD_MODEL_METHODS,
    {
        # The GP is averaged through its natural parameters only; the ensemble both ways.
        "sparse_gp": builtin("sparse_gp", SparseGPConfig, "agent_node.world_models:_build_sparse_gp", has_params=False),
        "ensemble": builtin("ensemble", EnsembleConfig, "agent_node.world_models:_build_ensemble"),
    },
)

# The type of `agents.world_model`: the built-ins' discriminated union, opened to plugins.
PluggableWorldModelConfig = WORLD_MODELS.config_type(WorldModelConfig)


def build_world_model(config: Any, state_dim: int, action_dim: int, seed: int) -> Any:
    """The world model `config.kind` names (a built-in or a plugin), for states of `state_dim`
    and actions of `action_dim`, through `WORLD_MODELS`.

    `seed` is this node's derived seed for local randomness (the ensemble's holdout split and
    minibatch order). The GP is deterministic given its data and ignores it; what must agree across
    agents (inducing points, the ensemble's initial weights) is seeded from the config instead.
    """
    return WORLD_MODELS.build(config, WorldModelSpec(state_dim=state_dim, action_dim=action_dim, seed=seed))


__all__ = [
    "EnsembleConfig",
    "SparseGPConfig",
    "WorldModelConfig",
    "WORLD_MODELS",
    "PluggableWorldModelConfig",
    "build_world_model",
    "inducing_grid_shape",
]
