"""The task's true reward function, rebuilt on the agent side from a plain-data task spec.

Why this module exists: a model-based learner (OG-MARL) scores imagined transitions with the
task's *true* reward function, but an agent node must never import the env server's code (the two
run as separate processes, possibly on separate hosts, and share only `protocols/`). So an
environment that supports model-based agents describes its reward as data, a JSON/msgpack-able
dict (`task_spec()`), the env server sends it in the `env.welcome` metadata under `"task"`, and
this module turns that dict back into a reward function with numpy alone.

One kind of task is known today:

    {"kind": "site_collection",
     "sites": [[x, y], ...],          reward sites, one row per site
     "values": [v, ...],              what a site pays per agent per step
     "radius": 0.5,                   a site pays an agent strictly closer than this
     "action_penalty": False,         subtract a penalty on the action magnitude?
     "action_penalty_coef": 1.0,      its weight
     "action_bounds": [-1.0, 1.0],    actions are clipped to this range before the penalty
     "bounds": [-10.0, 10.0]}         the world square (informational: positions live in it)

This is the reward of `reward_collection_v0` (env_server/envs/reward_collection.py): the shared
reward of a step is the sum over agents of what the sites pay each agent at its position after the
move, minus the penalty summed over agents. A test checks this module against the environment's
own `collection_reward` on random inputs.

A shared reward is a sum of per-agent terms, and an agent knows only its own position. So
`contribution` gives each row's *own term* of that sum (what the sites pay at that position, minus
that agent's own action penalty): the reward an agent can compute for an imagined step of its own.
`team_reward` is the full shared reward given every agent's position, for tests and analysis.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

SITE_COLLECTION_FIELDS = (
    "kind",
    "sites",
    "values",
    "radius",
    "action_penalty",
    "action_penalty_coef",
    "action_bounds",
    "bounds",
)
KNOWN_TASK_KINDS = ("site_collection",)


class TaskSpecError(ValueError):
    """A task spec is missing a field, has an unknown one, or a field of the wrong type or value."""


@dataclass(frozen=True)
class SiteCollectionReward:
    """Reward of standing on reward sites, optionally minus an action penalty (see the module doc).

    Build it with `reward_model_from_spec`; the arrays are read-only copies.
    """

    sites: np.ndarray  # (S, 2) float64
    values: np.ndarray  # (S,) float64
    radius: float
    action_penalty: bool
    action_penalty_coef: float
    action_low: float
    action_high: float
    world_low: float
    world_high: float

    def site_values(self, positions: np.ndarray) -> np.ndarray:
        """What the sites pay at each position, shape `(..., 2)` -> `(...)`.

        Strictly within `radius` pays (a site exactly `radius` away pays nothing); overlapping
        sites all pay.
        """
        positions = _finite_array("positions", positions)
        if positions.ndim < 1 or positions.shape[-1] != 2:
            raise ValueError(f"positions: expected shape (..., 2), got {positions.shape}")
        distances = np.linalg.norm(positions[..., np.newaxis, :] - self.sites, axis=-1)  # (..., S)
        return np.where(distances < self.radius, self.values, 0.0).sum(axis=-1)

    def contribution(self, positions: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """Each row's own term of the shared reward, shape (K,), from positions after the move (K, 2)
        and the actions that led there (K, 2)."""
        positions = _finite_array("positions", positions)
        actions = _finite_array("actions", actions)
        if positions.ndim != 2 or positions.shape[1] != 2:
            raise ValueError(f"positions: expected shape (K, 2), got {positions.shape}")
        if actions.shape != positions.shape:
            raise ValueError(f"actions: expected the shape of positions {positions.shape}, got {actions.shape}")
        reward = self.site_values(positions)
        if self.action_penalty:
            clipped = np.clip(actions, self.action_low, self.action_high)
            reward = reward - self.action_penalty_coef * np.abs(clipped).sum(axis=1)
        return reward

    def check_shapes(self, observation_shape: tuple[int, ...], action_shape: tuple[int, ...] | None, learner: str) -> None:
        """Refuse a learner whose rows `contribution` cannot score: it reads positions from the
        observation and moves from the action, so both must be 2-D vectors (the agent's own
        position and its displacement command, as in reward_collection_v0)."""
        if tuple(observation_shape) != (2,) or action_shape is None or tuple(action_shape) != (2,):
            raise ValueError(
                f"the site_collection reward scores 2-D positions reached by 2-D moves: {learner} needs "
                f"observation shape (2,) and action shape (2,), got {tuple(observation_shape)} and {action_shape}"
            )

    def team_reward(self, positions: np.ndarray, actions: np.ndarray) -> float:
        """The shared reward of one step: every agent's position after the move (N, 2) and action (N, 2)."""
        return float(self.contribution(positions, actions).sum())


def reward_model_from_spec(spec: Mapping[str, Any]) -> SiteCollectionReward:
    """The reward function a task spec describes; raises `TaskSpecError` naming the bad field."""
    if not isinstance(spec, Mapping):
        raise TaskSpecError(f"task spec: expected a mapping (dict), got {type(spec).__name__}")
    kind = spec.get("kind")
    if kind != "site_collection":
        raise TaskSpecError(f"task spec field 'kind': expected one of {list(KNOWN_TASK_KINDS)}, got {kind!r}")
    missing = [name for name in SITE_COLLECTION_FIELDS if name not in spec]
    unknown = sorted(str(name) for name in spec if name not in SITE_COLLECTION_FIELDS)
    if missing or unknown:
        raise TaskSpecError(
            f"task spec of kind 'site_collection': missing fields {missing}, unknown fields {unknown}; "
            f"expected exactly {list(SITE_COLLECTION_FIELDS)}"
        )

    sites = _spec_matrix(spec["sites"], "sites")
    values = _spec_vector(spec["values"], "values")
    if values.shape[0] != sites.shape[0]:
        raise TaskSpecError(
            f"task spec field 'values': expected one value per site ({sites.shape[0]}), got {values.shape[0]}"
        )
    radius = _spec_number(spec["radius"], "radius")
    if radius <= 0:
        raise TaskSpecError(f"task spec field 'radius': expected a positive number, got {radius}")
    action_penalty = spec["action_penalty"]
    if not isinstance(action_penalty, (bool, np.bool_)):
        raise TaskSpecError(f"task spec field 'action_penalty': expected a bool, got {action_penalty!r}")
    penalty_coef = _spec_number(spec["action_penalty_coef"], "action_penalty_coef")
    if penalty_coef < 0:
        raise TaskSpecError(f"task spec field 'action_penalty_coef': expected a number >= 0, got {penalty_coef}")
    action_low, action_high = _spec_interval(spec["action_bounds"], "action_bounds")
    world_low, world_high = _spec_interval(spec["bounds"], "bounds")

    sites.setflags(write=False)
    values.setflags(write=False)
    return SiteCollectionReward(
        sites=sites,
        values=values,
        radius=radius,
        action_penalty=bool(action_penalty),
        action_penalty_coef=penalty_coef,
        action_low=action_low,
        action_high=action_high,
        world_low=world_low,
        world_high=world_high,
    )


# ---------------------------------------------------------------------------------- helpers


def _finite_array(name: str, array: Any) -> np.ndarray:
    array = np.asarray(array, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: expected finite numbers, got NaN or infinity")
    return array


def _spec_number(value: Any, field: str) -> float:
    # bool is an int subclass; `radius: true` is a mistake, not 1.
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TaskSpecError(f"task spec field {field!r}: expected a finite number, got {value!r}")
    return float(value)


def _spec_vector(value: Any, field: str) -> np.ndarray:
    if not isinstance(value, (Sequence, np.ndarray)) or isinstance(value, (str, bytes)):
        raise TaskSpecError(f"task spec field {field!r}: expected a list of numbers, got {type(value).__name__}")
    numbers_ = [_spec_number(item, f"{field}[{index}]") for index, item in enumerate(value)]
    if not numbers_:
        raise TaskSpecError(f"task spec field {field!r}: expected at least one entry, got an empty list")
    return np.array(numbers_, dtype=np.float64)


def _spec_matrix(value: Any, field: str) -> np.ndarray:
    if not isinstance(value, (Sequence, np.ndarray)) or isinstance(value, (str, bytes)) or len(value) == 0:
        raise TaskSpecError(f"task spec field {field!r}: expected a non-empty list of [x, y] pairs, got {value!r}")
    rows = []
    for index, row in enumerate(value):
        pair = _spec_vector(row, f"{field}[{index}]")
        if pair.shape != (2,):
            raise TaskSpecError(f"task spec field '{field}[{index}]': expected an [x, y] pair, got {len(pair)} numbers")
        rows.append(pair)
    return np.stack(rows)


def _spec_interval(value: Any, field: str) -> tuple[float, float]:
    interval = _spec_vector(value, field)
    if interval.shape != (2,) or not interval[0] < interval[1]:
        raise TaskSpecError(f"task spec field {field!r}: expected [low, high] with low < high, got {list(value)}")
    return float(interval[0]), float(interval[1])


__all__ = ["SiteCollectionReward", "TaskSpecError", "reward_model_from_spec"]
