"""Typed configuration of the world models (torch-free, so the CLI validates configs fast).

Two kinds, told apart by `kind` in YAML:

- `sparse_gp`: the OG-MARL world model, a sparse Gaussian process in weight space whose natural
  parameters are averaged by consensus (see `sparse_gp.py`).
- `ensemble`: a probabilistic neural-network ensemble whose weights are averaged by consensus
  (see `ensemble.py`).

Every agent must build the *same* inducing points for the GP from this config alone: there is no
central step that could pool the agents' data to choose them. So the known state-action box lives
here, and the grid that covers it is computed by a pure function of the config
(`inducing_grid_shape`), which the CLI can also call to show the effective number of points.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SparseGPConfig(BaseModel):
    """Sparse GP world model with shared inducing points (ALGORITHMS.md section 1).

    Defaults follow the reference (RBF lengthscale 2 plus a linear kernel, noise variance 0.01,
    about 1000 inducing points). `input_low` / `input_high` are the known state-action box, one
    entry per input dimension in the order `concat(state, action)`; for reward collection that is
    positions `[-10, 10]^2` then actions `[-1, 1]^2`. They may be left unset in YAML only if the
    config resolution fills them from the environment's spaces before any node starts: the world
    model refuses to build without them, because the inducing points are derived from them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["sparse_gp"] = "sparse_gp"

    # Inducing points. "grid" (the default) places the largest regular grid that fits the budget
    # `num_inducing` over the box: even coverage, no near-duplicate points (which would make the
    # prior precision K_ZZ nearly singular) and no random number generator to keep in sync.
    # "seeded_uniform" draws exactly `num_inducing` points uniformly over the box from
    # `inducing_seed`, identical on every agent that shares the config.
    num_inducing: int = Field(default=1000, ge=1)
    inducing: Literal["grid", "seeded_uniform"] = "grid"
    inducing_seed: int = Field(default=0, ge=0)
    input_low: list[float] | None = None
    input_high: list[float] | None = None

    # Kernel: outputscale * RBF(lengthscale) + linear_variance * <x, z> + linear_constant, fixed
    # hyperparameters.
    # `lengthscale` is always in raw input units. With input_scaling="box" the kernel sees inputs
    # mapped affinely from the box to [-1, 1]^d (the RBF lengthscale is converted per dimension so
    # the RBF part is unchanged); the linear part then weighs a position and an action on the
    # same footing instead of letting positions of size 10 dominate, which keeps the posterior
    # precision about 3 orders of magnitude better conditioned (measured: condition number
    # 7e6 against 2e10 at M = 100). "none" feeds raw inputs (the reference's form).
    lengthscale: float = Field(default=2.0, gt=0)
    rbf_outputscale: float = Field(default=1.0, gt=0)
    linear_variance: float = Field(default=1.0, ge=0)  # 0 drops the linear kernel
    # The constant term of the reference's linear kernel, x^T z + 0.1 (`ManuelWendl/OG-MARL`,
    # odmar.py:93 and :127). 0 (the default) leaves it out. It adds the same 0.1 to every k(x, x),
    # so it matters to the reference-form variance k(x,x) - k(x,Z) S k(Z,x), not to the mean.
    linear_constant: float = Field(default=0.0, ge=0)
    input_scaling: Literal["box", "none"] = "box"

    noise_variance: float = Field(default=0.01, gt=0)
    jitter: float = Field(default=1e-6, ge=0)  # added to K_ZZ, the prior precision

    # "refit": each fit replaces the local statistics with those of the batch it is given (the
    # reference: 256 transitions sampled afresh from the replay buffer every refresh).
    # "accumulate": each fit adds the new batch to the statistics so far (natural parameters are
    # additive, so this is the exact posterior on all data passed so far at O(M^2) memory).
    fit_mode: Literal["refit", "accumulate"] = "refit"

    # The solves need double precision; there is deliberately no single-precision option.
    dtype: Literal["float64"] = "float64"

    @model_validator(mode="after")
    def _check_box(self) -> "SparseGPConfig":
        if (self.input_low is None) != (self.input_high is None):
            raise ValueError(
                "input_low and input_high must be given together (the state-action box); "
                f"got input_low={self.input_low!r}, input_high={self.input_high!r}"
            )
        if self.input_low is not None and self.input_high is not None:
            if len(self.input_low) != len(self.input_high) or not self.input_low:
                raise ValueError(
                    "input_low and input_high must be non-empty and of equal length; got lengths "
                    f"{len(self.input_low)} and {len(self.input_high)}"
                )
            for dim, (low, high) in enumerate(zip(self.input_low, self.input_high)):
                if not (math.isfinite(low) and math.isfinite(high) and low < high):
                    raise ValueError(
                        f"input box dimension {dim}: expected finite input_low < input_high, "
                        f"got [{low}, {high}]"
                    )
            if self.inducing == "grid" and self.num_inducing < 2 ** len(self.input_low):
                raise ValueError(
                    f"num_inducing={self.num_inducing} is too small for a grid over a "
                    f"{len(self.input_low)}-dimensional box: a grid needs at least "
                    f"2^{len(self.input_low)} = {2 ** len(self.input_low)} points"
                )
        return self

    def effective_num_inducing(self) -> int:
        """The number of inducing points the model will use (a grid may use fewer than the budget)."""
        if self.inducing == "seeded_uniform":
            return self.num_inducing
        if self.input_low is None or self.input_high is None:
            raise ValueError("the grid size depends on the state-action box: set input_low and input_high")
        return math.prod(inducing_grid_shape(self.input_low, self.input_high, self.num_inducing))


def inducing_grid_shape(input_low: list[float], input_high: list[float], budget: int) -> tuple[int, ...]:
    """Points per dimension of the largest near-isotropic grid over the box with at most `budget` points.

    All dimensions share one spacing (so the grid is as fine in position as in action, in raw
    units), every dimension gets at least its two end points, and among spacings whose grid fits the
    budget the finest is chosen. For the reward-collection box `[-10,10]^2 x [-1,1]^2` and a budget
    of 1000 this is 15 x 15 x 2 x 2 = 900 points (spacing 20/14 ~ 1.43, below the lengthscale 2);
    16 x 16 x 2 x 2 = 1024 would exceed the budget.
    """
    widths = [high - low for low, high in zip(input_low, input_high)]
    if budget < 2 ** len(widths):
        raise ValueError(
            f"a grid over {len(widths)} dimensions needs a budget of at least {2 ** len(widths)}, got {budget}"
        )

    def shape_for(spacing: float) -> tuple[int, ...]:
        # The small tolerance keeps `width / (width / k)` from rounding down to k - 1.
        return tuple(max(2, 1 + math.floor(width / spacing + 1e-9)) for width in widths)

    # The grid only changes at spacings width_d / k, so those are the only candidates to try,
    # from coarse to fine; the product grows as the spacing shrinks.
    candidates = sorted({width / k for width in widths for k in range(1, budget + 1)}, reverse=True)
    best = tuple(2 for _ in widths)
    for spacing in candidates:
        shape = shape_for(spacing)
        if math.prod(shape) > budget:
            break
        best = shape
    return best


class EnsembleConfig(BaseModel):
    """Probabilistic neural-network ensemble (Gaussian heads), in the spirit of PETS / MBPO.

    Members share one initialization seed (`init_seed`) across agents: averaging the weights of
    independently initialized networks mixes unrelated hidden units and gives a useless model,
    while averaging networks that started from the same point behaves like federated averaging.
    Members still differ from each other (each has its own initialization draw and minibatch order).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["ensemble"] = "ensemble"

    ensemble_size: int = Field(default=5, ge=1)
    num_elites: int = Field(default=3, ge=1)
    hidden_size: int = Field(default=200, ge=1)
    num_hidden_layers: int = Field(default=4, ge=1)
    activation: Literal["silu", "relu"] = "silu"

    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=5e-5, ge=0)  # on the linear layers' weights only
    batch_size: int = Field(default=256, ge=1)
    # A fit stops at whichever comes first: `epochs_per_fit` passes over the training split,
    # `max_steps_per_fit` gradient steps, or `early_stop_patience` epochs in a row in which no
    # member improved its holdout error by more than `early_stop_min_improvement` (relative).
    # Each member keeps its best weights.
    epochs_per_fit: int = Field(default=20, ge=0)
    max_steps_per_fit: int = Field(default=500, ge=0)
    early_stop_patience: int = Field(default=5, ge=1)
    # A member "improves" when its holdout MSE drops below (1 - this) x its best so far. 1 %:
    # smaller changes are within the noise of a holdout split of a few hundred rows, and counting
    # them as progress keeps a fit running for its whole step budget without a better model.
    early_stop_min_improvement: float = Field(default=0.01, ge=0, lt=1)
    holdout_fraction: float = Field(default=0.2, ge=0, lt=1)

    # Soft bounds on the predicted log-variance, learned, with a small penalty that keeps them
    # tight (they stop the variance head from exploding or collapsing off-distribution).
    min_logvar_init: float = -10.0
    max_logvar_init: float = 0.5
    logvar_bound_penalty: float = Field(default=0.01, ge=0)

    init_seed: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _check_elites(self) -> "EnsembleConfig":
        if self.num_elites > self.ensemble_size:
            raise ValueError(
                f"num_elites must be at most ensemble_size; got num_elites={self.num_elites}, "
                f"ensemble_size={self.ensemble_size}"
            )
        if self.min_logvar_init >= self.max_logvar_init:
            raise ValueError(
                f"min_logvar_init must be below max_logvar_init; got {self.min_logvar_init} >= {self.max_logvar_init}"
            )
        return self


WorldModelConfig = Annotated[SparseGPConfig | EnsembleConfig, Field(discriminator="kind")]


def check_model_arguments(config: Any, config_type: type, state_dim: Any, action_dim: Any) -> None:
    """What a world model's constructor checks: its own config type, and positive int dimensions."""
    if not isinstance(config, config_type):
        raise TypeError(f"config: expected {config_type.__name__}, got {type(config).__name__}")
    for name, value in (("state_dim", state_dim), ("action_dim", action_dim)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
