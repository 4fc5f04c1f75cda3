"""The small role interfaces an agent node is assembled from.

An agent node owns one of each role it needs. Each role is a `typing.Protocol`, so an
algorithm file implements it by having the methods, without inheriting from anything:

- `Actor`        picks actions for K vectorized observations.
- `Learner`      updates itself from what the node feeds it (transitions, then `update`).
- `ParamSource`  exposes named parameter tensors as numpy arrays, for consensus averaging.
- `WorldModel`   fits a dynamics model, predicts mean and variance, and exports / imports the
                 statistics that consensus averages.
- `ModelBasedLearner` a learner with its own world model (OG-MARL): it says when its model is
                 due for a refresh, fits it, and adopts the averaged statistics.
- `ReplayLearner` a learner whose replay buffer others may read through its public methods
                 (persistence saves it, a world model trained beside the learner samples it).
- `NodeLearner`  what an agent node drives: an `Actor` and a `Learner` in one object.
- (`GoalModule`, how a goal agent picks each episode's goal, lives with its implementations in
  `agent_node/goals/modules.py`; the goal session, `agent_node/goals/session.py`, drives it.)

Arrays cross these interfaces as numpy, never torch: the node's event loop, the replay buffer
and the protocol engines stay free of torch, and the learner converts at its own boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class Transition:
    """K vectorized transitions of one agent, one row per environment copy.

    `terminated` is a true end of the episode (no bootstrapping); `truncated` is a cut by a
    time limit (bootstrap from `next_obs`). `next_obs` is the observation the action led to,
    also for copies whose episode just ended (the env server sends the final observation
    separately from the first observation of the next episode).

    The optional fields are filled only for learners that need a centralized view (PMIC, a
    centralized critic, dataset recording); the replay buffer and the independent learners ignore
    them:

    - `global_state` / `next_global_state`: the env's global state before and after the step
      (the env's `state()`, or the concatenated observations where it has none), (K, *state_shape).
      For a copy whose episode just ended, `next_global_state` is the final state, like `next_obs`.
    - `joint_action`: the actions every possible agent sent for this step, flattened and
      concatenated in `possible_agents` order (Box actions as they are, Discrete ones one-hot),
      (K, joint_action_dim). This agent's own action is one slice of it.
    - `copy_index`: which of the env server's K copies each row came from, (K,) int64. The node
      drops rows where the agent did not take part, so row i is not always copy i; learners that
      follow whole episodes (PMIC's episode-return buffers) group rows by this index.
    """

    obs: np.ndarray  # (K, *obs_shape)
    action: np.ndarray  # (K, *action_shape)
    reward: np.ndarray  # (K,) float32
    next_obs: np.ndarray  # (K, *obs_shape)
    terminated: np.ndarray  # (K,) bool
    truncated: np.ndarray  # (K,) bool
    global_state: np.ndarray | None = None  # (K, *state_shape)
    next_global_state: np.ndarray | None = None  # (K, *state_shape)
    joint_action: np.ndarray | None = None  # (K, joint_action_dim) float32
    copy_index: np.ndarray | None = None  # (K,) int64


@runtime_checkable
class Actor(Protocol):
    def act(self, obs: np.ndarray, explore: bool = True) -> np.ndarray:
        """Actions for a batch of observations, shape (K, *obs_shape) -> (K, *action_shape)."""


@runtime_checkable
class Learner(Protocol):
    def observe(self, transition: Transition) -> None:
        """Record K transitions (into the learner's replay buffer)."""

    def gradient_steps_due(self) -> int:
        """Gradient steps owed for the transitions observed so far (the node learns while > 0)."""

    def update(self, max_gradient_steps: int | None = None) -> dict[str, float]:
        """Run the gradient steps due now, at most `max_gradient_steps`; return scalar metrics
        (namespaced, e.g. `dqn/loss`).

        The node calls it between network events with a small cap, so that one call never
        delays a heartbeat or an answer to the env server by more than a few gradient steps.
        """

    def counters(self) -> dict[str, float]:
        """The update-ratio contract, cumulative since the start: `<kind>/gradient_steps` taken,
        `<kind>/steps_pending` owed and not yet taken, `<kind>/steps_owed` (their sum) and
        `<kind>/rows_observed`. The node logs them at every evaluation and when it stops, so a
        run shows whether every update it owed was done."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (networks, optimizers, counters), torch-serializable."""

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


@runtime_checkable
class NodeLearner(Actor, Learner, Protocol):
    """What an agent node drives (agent_node/node.py): it acts on observations and learns from
    the transitions they make. Every learner `agent_node.algos.build_learner` returns is one."""


class ReplaySource(Protocol):
    """The public side of a replay buffer (agent_node/replay.py) that other parts use."""

    def sample(self, batch_size: int, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]: ...

    def __len__(self) -> int: ...


@runtime_checkable
class ReplayLearner(Protocol):
    """A learner with a replay buffer: a world model trained beside it samples the buffer
    (with the world model's own random stream), persistence saves and restores it."""

    replay: ReplaySource


@runtime_checkable
class ParamSource(Protocol):
    def get_params(self) -> dict[str, np.ndarray]:
        """Named parameter tensors (copies), e.g. for consensus averaging."""

    def set_params(self, params: Mapping[str, np.ndarray]) -> None:
        """Overwrite parameters by name; shapes and dtypes must match `get_params`."""


@runtime_checkable
class WorldModel(Protocol):
    """A learned dynamics model `(state, action) -> next state`, with its uncertainty."""

    def fit(self, states: np.ndarray, actions: np.ndarray, next_states: np.ndarray) -> dict[str, float]:
        """(Re)fit on local data; return scalar metrics."""

    def predict(self, states: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance of the next state, each shaped like `states`."""

    def export_statistics(self) -> dict[str, np.ndarray]:
        """The named tensors consensus averages (GP natural parameters, or ensemble weights)."""

    def import_statistics(self, stats: Mapping[str, np.ndarray], num_agents: int) -> None:
        """Adopt averaged statistics. `num_agents` lets a GP rescale an average back to a sum."""


@runtime_checkable
class ModelBasedLearner(Learner, Protocol):
    """A learner that owns a world model and learns from it (OG-MARL, agent_node/algos/og_marl.py).
    The node drives the model's consensus (agent_node/consensus_subjects.OGMARLWorldModel): the
    learner sets the refresh ticks on a row clock the node gives it, fits on fresh local data, and
    adopts the average."""

    def refresh_tick(self, rows: int | None = None) -> int | None:
        """The latest refresh tick at or before the row clock `rows` (None before the first)."""

    def model_refresh_due(self, rows: int | None = None) -> bool:
        """Has the row clock reached a refresh tick not refreshed yet?"""

    def fit_world_model(self, rows: int | None = None) -> dict[str, np.ndarray]:
        """Refit on local data; return the named statistics consensus averages."""

    def adopt_world_model(self, averaged: Mapping[str, np.ndarray] | None, num_agents: int) -> dict[str, float]:
        """Use the averaged statistics (None: consensus is off, keep the local model); return
        scalar metrics of the refresh."""
