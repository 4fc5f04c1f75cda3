"""The hyperparameters of the IPPO learner, as a typed config (no torch here).

Defaults are CleanRL's `ppo.py` for discrete actions (lr 2.5e-4, gamma 0.99, GAE lambda 0.95,
clip 0.2, 4 epochs over 4 minibatches, entropy 0.01, value 0.5, gradient norm 0.5, advantages
normalized per minibatch, 64x64 tanh networks) unless a comment says otherwise.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from agent_node.plugins import PluginConfig

PositiveInt = Annotated[int, Field(gt=0)]


class IPPOConfig(PluginConfig):
    """Independent PPO: each agent learns its own actor and critic from its own rollouts."""

    hidden_sizes: Annotated[tuple[PositiveInt, ...], Field(min_length=1)] = (64, 64)
    learning_rate: float = Field(2.5e-4, gt=0)
    gamma: float = Field(0.99, ge=0, le=1)
    gae_lambda: float = Field(0.95, ge=0, le=1)
    # Transition rows (over all env copies) per rollout: one update follows each rollout. CleanRL
    # collects 128 steps of 4 envs (512 rows).
    rollout_rows: PositiveInt = 512
    epochs: PositiveInt = 4
    minibatches: PositiveInt = 4
    clip_coef: float = Field(0.2, gt=0)
    entropy_coef: float = Field(0.01, ge=0)
    value_coef: float = Field(0.5, ge=0)
    max_grad_norm: float = Field(0.5, gt=0)
    normalize_advantages: bool = True

    @model_validator(mode="after")
    def _minibatches_fit(self) -> IPPOConfig:
        if self.minibatches > self.rollout_rows:
            raise ValueError(
                f"minibatches: expected at most rollout_rows ({self.rollout_rows}), every minibatch needs a row; "
                f"got {self.minibatches}"
            )
        return self
