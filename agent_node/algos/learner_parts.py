"""Small pieces every learner of this package shares, so that each algorithm file holds its method
and not another copy of the bookkeeping around it.

- `update_counters`: the update-ratio contract of `roles.Learner.counters` (gradient steps taken,
  pending, owed, rows observed), under the learner's metric prefix.
- `steps_to_take`: how many gradient steps one `update(max_gradient_steps)` call runs.
- `run_gradient_steps`: run them and average each metric over them.
- `trainable_rows`: the observed rows that count towards gradient steps (online learners).
- `OwesGradientSteps`: the gradient steps taken, and forgiving those whose rows were lost.
- `check_algorithm`: a state dict handed to `load_state_dict` is of this learner.
- `load_optimizer`: restore an optimizer from a checkpoint, with the learning rate the config
  (not the checkpoint) sets, so a resumed run can change its rate.
- `StateLayout`: what a learner's checkpoint holds (networks, optimizers, counters, random
  generators, by attribute name), saved and restored in one place.
- `scheduled_learning_rate` / `set_learning_rate`: a learning rate decayed linearly over gradient
  steps (DQN's and the centralized mixer learner's `learning_rate_end`).
- `checked_obs`: a batch of observations has the shape (K, *obs_shape).
- `check_seed`: a learner's seed is a non-negative int (a bool is not one).
- `check_config` / `check_space`: a constructor refuses another learner's config, or a space of
  a kind the algorithm cannot handle, with a TypeError naming what it needs.

No torch import: these only call methods of the objects they are given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np


def update_counters(prefix: str, gradient_steps: int, steps_pending: int, rows_observed: int = 0) -> dict[str, float]:
    """`<prefix>/gradient_steps` taken, `<prefix>/steps_pending` owed and not yet taken,
    `<prefix>/steps_owed` (their sum) and `<prefix>/rows_observed`, cumulative since the start.
    Offline learners observe no rows online: their `rows_observed` stays 0."""
    return {
        f"{prefix}/gradient_steps": float(gradient_steps),
        f"{prefix}/steps_pending": float(steps_pending),
        f"{prefix}/steps_owed": float(gradient_steps + steps_pending),
        f"{prefix}/rows_observed": float(rows_observed),
    }


def steps_to_take(steps_due: int, max_gradient_steps: int | None) -> int:
    """The gradient steps one `update` call runs: those due, at most `max_gradient_steps`."""
    if max_gradient_steps is None:
        return steps_due
    if not isinstance(max_gradient_steps, int) or max_gradient_steps < 0:
        raise ValueError(f"max_gradient_steps must be None or a non-negative int, got {max_gradient_steps!r}")
    return min(steps_due, max_gradient_steps)


def run_gradient_steps(gradient_step: Callable[[], dict[str, float]], steps: int) -> dict[str, float]:
    """Call `gradient_step` `steps` times; each metric it returns, averaged over the calls
    (nothing when `steps` is 0: no loss was computed, so none is reported)."""
    totals: dict[str, float] = {}
    for _ in range(steps):
        for key, value in gradient_step().items():
            totals[key] = totals.get(key, 0.0) + value
    return {key: total / steps for key, total in totals.items()}


def trainable_rows(rows_observed: int, learning_starts: int, batch_size: int) -> int:
    """The observed rows past the first trainable one: learning waits for `learning_starts` rows,
    and for at least one batch in the buffer. Each learner turns them into steps its own way
    (DQN, PMIC: one per `train_every` rows; SAC: `updates_per_step` per row)."""
    return max(0, rows_observed - max(learning_starts, batch_size))


class OwesGradientSteps:
    """An online learner that counts the gradient steps it took in `gradient_steps`: it owes those
    its observed rows earn (its `gradient_steps_due`) less those taken."""

    gradient_steps: int

    def forgive_gradient_steps(self, steps: int) -> None:
        """Owe `steps` fewer gradient steps: the rows they were owed for were lost with the
        replay buffer (a restart from a checkpoint newer than the buffer's last save)."""
        self.gradient_steps += steps


def check_algorithm(state: Mapping[str, Any], algorithm: str, name: str) -> None:
    """Refuse a state dict of another learner: "expected a DQN state dict (algorithm 'dqn'), ..."."""
    if state.get("algorithm") != algorithm:
        article = "an" if name[:1].upper() in "AEIOU" else "a"
        raise ValueError(f"expected {article} {name} state dict (algorithm {algorithm!r}), got algorithm {state.get('algorithm')!r}")


def load_optimizer(optimizer: Any, state: Mapping[str, Any], learning_rate: float) -> None:
    """`optimizer.load_state_dict(state)`, then the config's learning rate on every group."""
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        group["lr"] = learning_rate  # the config, not the checkpoint, sets the rate


@dataclass(frozen=True)
class StateLayout:
    """The parts of a learner's checkpoint, each named by the learner's attribute:

    - `modules`: torch modules, saved with `state_dict()` under their own name;
    - `optimizers`: optimizers, restored with the config's learning rate (`load_optimizer`);
    - `counters`: ints (rows observed, gradient steps, ...);
    - `generators`: random generators, saved under `<name>_state`: a numpy `Generator`'s bit
      generator state, or a torch `Generator`'s `get_state()`.

    The dict starts with `"algorithm": algorithm`, which `load` checks first (`check_algorithm`,
    `name` in its message). A learner with more to save adds its own keys around these.
    """

    algorithm: str
    name: str
    modules: tuple[str, ...] = ()
    optimizers: tuple[str, ...] = ()
    counters: tuple[str, ...] = ()
    generators: tuple[str, ...] = ()

    def save(self, learner: Any) -> dict[str, Any]:
        state: dict[str, Any] = {"algorithm": self.algorithm}
        for name in self.modules + self.optimizers:
            state[name] = getattr(learner, name).state_dict()
        for name in self.counters:
            state[name] = getattr(learner, name)
        for name in self.generators:
            generator = getattr(learner, name)
            state[f"{name}_state"] = generator.bit_generator.state if hasattr(generator, "bit_generator") else generator.get_state()
        return state

    def load(self, learner: Any, state: Mapping[str, Any], learning_rates: Mapping[str, float]) -> None:
        """Restore every part; `learning_rates` gives each optimizer's rate (from the config)."""
        check_algorithm(state, self.algorithm, self.name)
        for name in self.modules:
            getattr(learner, name).load_state_dict(state[name])
        for name in self.optimizers:
            load_optimizer(getattr(learner, name), state[name], learning_rates[name])
        for name in self.counters:
            setattr(learner, name, int(state[name]))
        for name in self.generators:
            generator = getattr(learner, name)
            if hasattr(generator, "bit_generator"):
                generator.bit_generator.state = state[f"{name}_state"]
            else:
                generator.set_state(state[f"{name}_state"])


def linear_schedule(start: float, end: float, duration: int, step: int) -> float:
    """`start` at step 0, moving linearly to `end` at `duration`, then staying at `end` (exploration
    rates, exploration noise, learning rates)."""
    fraction = min(step / duration, 1.0)
    return start + fraction * (end - start)


def scheduled_learning_rate(start: float, end: float | None, decay_steps: int | None, gradient_steps: int) -> float:
    """The rate for the next gradient step: linear from `start` to `end` over the first
    `decay_steps` gradient steps, then `end`; `start` throughout when `end` is None (no schedule).
    A decaying rate lets a stochastic-gradient fit settle where the loss is least, instead of
    jittering around it with an amplitude set by the constant rate and the batch's noise."""
    if end is None or decay_steps is None:
        return start
    return linear_schedule(start, end, decay_steps, gradient_steps)


def set_learning_rate(optimizer: Any, learning_rate: float) -> None:
    """Put `learning_rate` on every parameter group of `optimizer`."""
    for group in optimizer.param_groups:
        group["lr"] = learning_rate


def checked_obs(obs: np.ndarray, obs_shape: tuple[int, ...], name: str = "obs") -> np.ndarray:
    """`obs` as an array of shape (K, *obs_shape), or a ValueError naming `name` and both shapes."""
    obs = np.asarray(obs)
    if obs.ndim != len(obs_shape) + 1 or obs.shape[1:] != tuple(obs_shape):
        raise ValueError(f"{name} must have shape (K, {', '.join(map(str, obs_shape))}), got {obs.shape}")
    return obs


def check_seed(seed: object) -> None:
    """Refuse a seed that is not a non-negative int (numpy ints count; bools do not)."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")


def check_config(config: object, config_type: type) -> None:
    """Refuse a config of another learner: "config must be a DQNConfig, got SACConfig"."""
    if not isinstance(config, config_type):
        article = "an" if config_type.__name__[:1].upper() in "AEIOU" else "a"
        raise TypeError(f"config must be {article} {config_type.__name__}, got {type(config).__name__}")


def check_tanh_bounds(action_space: Any, learner: str) -> None:
    """Refuse a Box whose bounds a tanh actor cannot be scaled to: an infinite bound, or a
    dimension with high <= low. `learner` names the learner in the message ("SAC", "PMIC")."""
    if not (np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))):
        raise ValueError(f"{learner} maps tanh to the action bounds, which must be finite; got {action_space!r}")
    if not np.all(action_space.high > action_space.low):
        raise ValueError(f"{learner} needs high > low in every action dimension, got {action_space!r}")


def check_space(space: object, space_type: type, needs: str) -> None:
    """Refuse a space that is not a `space_type`; `needs` says what the learner needs, e.g.
    "DQN needs a Box observation space" (the message goes on ", got <the space>")."""
    if not isinstance(space, space_type):
        raise TypeError(f"{needs}, got {space!r}")
