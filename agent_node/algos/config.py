"""Hyperparameters of the off-policy learners, as typed and frozen config models.

This module must not import torch: the CLI validates a whole run config through these schemas in
a fraction of a second, long before any learner is built.

Counting convention shared by both learners: an **environment step** means one transition *row*.
An agent served by K vectorized environment copies observes K rows per `observe` call, so
`learning_starts`, `random_steps`, the epsilon schedule and the update ratio all count rows. That
keeps the replay ratio (gradient steps per collected transition) independent of K.

The YAML section of an agent picks its learner with `kind`:

    learner:
      kind: sac
      batch_size: 256
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PositiveInt = Annotated[int, Field(gt=0)]
HiddenSizes = Annotated[tuple[PositiveInt, ...], Field(min_length=1)]


class DQNConfig(BaseModel):
    """Deep Q-learning (Mnih et al. 2015) with Double-DQN targets (van Hasselt et al. 2016).

    Defaults suit small observation vectors and a few discrete actions.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["dqn"] = "dqn"
    hidden_sizes: HiddenSizes = (64, 64)
    learning_rate: float = Field(5e-4, gt=0)
    gamma: float = Field(0.99, ge=0, le=1)
    batch_size: PositiveInt = 64
    buffer_size: PositiveInt = 100_000
    # No gradient step before this many rows have been observed (and never before the buffer
    # holds one batch).
    learning_starts: int = Field(1_000, ge=0)
    # One gradient step per `train_every` observed rows (after learning_starts).
    train_every: PositiveInt = 1
    # Every `target_update_period` gradient steps: target <- tau * online + (1 - tau) * target.
    # tau = 1 is the classic hard copy.
    target_update_period: PositiveInt = 500
    target_tau: float = Field(1.0, gt=0, le=1)
    # Epsilon-greedy exploration, linear from start to end over the first decay_steps rows.
    epsilon_start: float = Field(1.0, ge=0, le=1)
    epsilon_end: float = Field(0.05, ge=0, le=1)
    epsilon_decay_steps: PositiveInt = 10_000
    double_dqn: bool = True
    # "huber" is the smooth L1 loss with threshold 1 (the DQN paper's error clipping).
    loss: Literal["huber", "mse"] = "huber"
    # Clip the global gradient norm; None disables clipping.
    max_grad_norm: Annotated[float, Field(gt=0)] | None = 10.0

    @model_validator(mode="after")
    def _buffer_holds_a_batch(self) -> DQNConfig:
        if self.buffer_size < self.batch_size:
            raise ValueError(f"buffer_size ({self.buffer_size}) must be at least batch_size ({self.batch_size})")
        return self


class SACConfig(BaseModel):
    """Soft actor-critic (Haarnoja et al. 2018, "SAC: Algorithms and Applications").

    Defaults are the paper's and OG-MARL's: tanh-Gaussian actor, twin critics 256x256,
    lr 3e-4, gamma 0.99, tau 0.005, batch 256, automatic entropy tuning with target -|A|.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["sac"] = "sac"
    hidden_sizes: HiddenSizes = (256, 256)
    actor_lr: float = Field(3e-4, gt=0)
    critic_lr: float = Field(3e-4, gt=0)
    alpha_lr: float = Field(3e-4, gt=0)
    gamma: float = Field(0.99, ge=0, le=1)
    # Polyak averaging of the target critics after every gradient step.
    tau: float = Field(0.005, gt=0, le=1)
    batch_size: PositiveInt = 256
    buffer_size: PositiveInt = 1_000_000
    # Uniformly random actions (when exploring) for the first random_steps rows.
    random_steps: int = Field(5_000, ge=0)
    # No gradient step before this many rows have been observed (and never before the buffer
    # holds one batch).
    learning_starts: int = Field(5_000, ge=0)
    # Gradient steps per observed row after learning_starts (OG-MARL's model-based agents use 10).
    updates_per_step: PositiveInt = 1
    # Entropy temperature: tuned automatically towards target_entropy (None means -|A|), starting
    # from initial_alpha; with autotune_alpha false it stays at initial_alpha.
    autotune_alpha: bool = True
    initial_alpha: float = Field(1.0, gt=0)
    target_entropy: float | None = None

    @model_validator(mode="after")
    def _buffer_holds_a_batch(self) -> SACConfig:
        if self.buffer_size < self.batch_size:
            raise ValueError(f"buffer_size ({self.buffer_size}) must be at least batch_size ({self.batch_size})")
        return self


LearnerConfig = Annotated[DQNConfig | SACConfig, Field(discriminator="kind")]
