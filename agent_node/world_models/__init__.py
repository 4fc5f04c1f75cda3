"""World models: learned dynamics with uncertainty, shared between agents by consensus.

- `sparse_gp.SparseGPWorldModel`: sparse GP in weight space; consensus averages its natural
  parameters, and at exact consensus every agent holds the centralized posterior.
- `ensemble.EnsembleWorldModel`: probabilistic neural-network ensemble; consensus averages its
  weights.

This package's import stays torch-free (only the config schemas are imported here) so that the CLI
can validate configs quickly; `build_world_model` imports the torch-backed module it needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent_node.world_models.config import (
    EnsembleConfig,
    SparseGPConfig,
    WorldModelConfig,
    inducing_grid_shape,
)

if TYPE_CHECKING:
    from agent_node.world_models.ensemble import EnsembleWorldModel
    from agent_node.world_models.sparse_gp import SparseGPWorldModel


def build_world_model(
    config: SparseGPConfig | EnsembleConfig, state_dim: int, action_dim: int, seed: int
) -> "SparseGPWorldModel | EnsembleWorldModel":
    """The world model a config describes, for states of `state_dim` and actions of `action_dim`.

    `seed` is this node's derived seed for local randomness (the ensemble's holdout split and
    minibatch order). The GP is deterministic given its data and ignores it; what must agree across
    agents (inducing points, the ensemble's initial weights) is seeded from the config instead.
    """
    if isinstance(config, SparseGPConfig):
        from agent_node.world_models.sparse_gp import SparseGPWorldModel

        return SparseGPWorldModel(config, state_dim, action_dim)
    if isinstance(config, EnsembleConfig):
        from agent_node.world_models.ensemble import EnsembleWorldModel

        return EnsembleWorldModel(config, state_dim, action_dim, seed=seed)
    raise TypeError(f"config: expected SparseGPConfig or EnsembleConfig, got {type(config).__name__}")


__all__ = [
    "EnsembleConfig",
    "SparseGPConfig",
    "WorldModelConfig",
    "build_world_model",
    "inducing_grid_shape",
]
