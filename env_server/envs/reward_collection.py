"""# Reward collection (`reward_collection_v0`)

| | |
| --- | --- |
| Import | `from env_server.envs.reward_collection import parallel_env` |
| Actions | continuous |
| Parallel API | yes (`ParallelEnv`; there is no AEC version) |
| Agents | `agents = ["agent_0", ..., "agent_{N-1}"]`, `N = 5` by default |
| Action space | `Box(-1, 1, (2,), float32)` per agent: a displacement command `(dx, dy)` |
| Observation space | `Box(-10, 10, (2,), float32)` per agent: the agent's own position |
| State space | `Box(-10, 10, (2N,), float32)`: all positions, agent 0 first, flattened |
| Reward | one shared number per step, the same for every agent |
| Episode | exactly `max_cycles = 100` steps, then truncation; never terminated |

The environment of OG-MARL (optimistic gossiping, distributed model-based MARL; public code
`ManuelWendl/OG-MARL`, `env.py`), rebuilt as a PettingZoo `ParallelEnv` so that Parley's env
server can serve it to one process per agent.

## Why it looks like this

Each agent is a point that moves on a square plane and is rewarded for standing on reward sites.
The only thing an agent has to learn about the world is its own motion model, and that model
differs from agent to agent: each agent's commands are scaled by a gain of its own, per axis. This
is the point of the benchmark. Agents that pool their transition data (OG-MARL fuses sparse-GP
statistics by consensus) learn faster, but what they pool is not the same function for everybody,
so sharing a world model is useful and not trivial.

## World and dynamics

- The world is the square `[-10, 10]^2`.
- Agent `i` has a fixed gain `eta_i` per axis, `eta_i ~ N(1, 0.1)`, drawn once when the
  environment object is built, from `numpy.random.default_rng(dynamics_seed)` (an `(N, 2)`
  draw), and kept across every reset. Two objects with the same `dynamics_seed` and `num_agents`
  have the same gains; a different `dynamics_seed` gives different ones.
- A step first clips every action to `[-1, 1]` elementwise, then moves every agent at once:
  `p_i <- clip(p_i + a_i * eta_i + d(p_i), -10, 10)` (elementwise product, elementwise clip).
  Agents do not collide or interact; they only share the reward.
- `d` is a shared drift field, off by default (`drift_amplitude = 0`, then `d = 0` and a step is
  exactly the reference's). With amplitude `A > 0`, evaluated at the position *before* the move:

      d(p) = A * (sin(pi * p_y / 5), sin(pi * p_x / 5))

  It is the same for every agent, smooth, and position-dependent, so an agent's dynamics are no
  longer the 2-parameter map `a -> eta_i * a` that a handful of its own rows pin: a model must
  learn the field where the agent goes, and the field differs across the map (its wavelength is
  10, half the world's width, so one agent's region says little about another's). Its spatial
  scale suits the OG-MARL GP (an RBF of lengthscale 2 on raw positions). The field is
  divergence-free (`d_x` depends only on `y`, `d_y` only on `x`): it circulates and has no sink
  where agents would pile up. At `A = 0.5` (the `_drift` regimes of `bench/og_marl.py`) an agent
  can still hold any position against the field: that takes a command `|d| / eta_i <= 1` per
  axis, true for every gain above 0.5, five standard deviations below the gains' mean. The
  field is not in `task_spec()`: like the gains, it is what the agents have to learn.
  `drift_at` computes it.
- Reset puts the agents evenly on a circle of radius 6 around the origin, agent `k` at angle
  `2 * pi * k / N`, so agent 0 starts at `(6, 0)`. Reset has no randomness: every episode starts
  from the same positions, and the gains stay as they are.

## Reward sites

Ten sites on a grid of four columns `x in {-6, -2, 2, 6}` and three rows `y in {-5, 0, 5}`,
filled row by row from the bottom row up (row-major) until ten are placed, so the top row holds
only two. Their values cycle `0.1, 0.5, 1.0` in fill order:

```
   y =  5 :  (-6, 5) 1.0   (-2, 5) 0.1
   y =  0 :  (-6, 0) 0.5   (-2, 0) 1.0   ( 2, 0) 0.1   ( 6, 0) 0.5
   y = -5 :  (-6,-5) 0.1   (-2,-5) 0.5   ( 2,-5) 1.0   ( 6,-5) 0.1
```

The three 1.0-sites are `(2, -5)`, `(-2, 0)` and `(-6, 5)`. Agent 0 starts on the 0.5-site
`(6, 0)`. The sites are module constants (`SITE_POSITIONS`, `SITE_VALUES`, `SITE_RADIUS`)
because model-based agents evaluate the true reward function on imagined states.

## Reward

Computed by `collection_reward` (the environment calls the same function; there is one source
of truth) from the positions *after* the move of the current step:

    r = sum over agents i of  sum over sites s with |p_i - site_s| < 0.5 of value_s
        - [action_penalty] * action_penalty_coef * sum over agents i of (|a_i,x| + |a_i,y|)

- "Within 0.5" is strict (`< 0.5`), as in the reference code; a site exactly 0.5 away pays nothing.
- Sites are never consumed: a site pays every step for every agent standing on it, and several
  agents on one site each collect its value.
- The penalty uses the clipped actions. It is off by default (as in the reference's
  `MultiAgentEnvironment(action_penalty=False)`); its weight is 1.0 by default.
- Every agent receives the same `r` (a fully cooperative team reward).

With five agents and the penalty off, a step pays at most 5.0 (every agent on a 1.0-site), so an
episode returns at most 500; the walk from the start circle to the 1.0-sites costs a few steps,
which is why good policies return roughly 480-495.

### The size of the action penalty

`action_penalty_coef` defaults to `ACTION_PENALTY_COEF = 1.0`, the reference's: its `env.py`
subtracts the plain `np.sum(np.abs(actions))` when the penalty is on (`env.py`, lines 142-144,
commit dc6f4a7 of `ManuelWendl/OG-MARL`), and the reference's published runs switch it on
(`odmar.py` line 26, `ACTION_PENALTY = True`). At 1.0 uniformly random actions in `[-1, 1]^2`
(what the learners play during their random phase) cost `5 agents * 2 axes * 0.5 * 100 steps =
500` per episode in expectation, so random play scores about -495 (agent 0 starts on a 0.5-site
and collects a little before it wanders off). Keep the coefficient configurable for ablations,
and label every return with it: returns at different coefficients are not comparable.

## Episodes

An episode lasts exactly `max_cycles` steps (100 by default). The step that reaches `max_cycles`
reports `truncations[agent] = True` for every agent (bootstrap from the final observation) and
`terminations[agent] = False`; after it `env.agents` is empty, as PettingZoo requires, and the
next call must be `reset()`. No episode ends early.

## Arguments

```python
parallel_env(num_agents=5, max_cycles=100, action_penalty=False,
             action_penalty_coef=ACTION_PENALTY_COEF, dynamics_seed=0, eta_std=ETA_STD,
             drift_amplitude=0.0, render_mode=None)
```

- `num_agents`: how many agents (at least 1).
- `max_cycles`: steps per episode (at least 1).
- `action_penalty`: subtract `action_penalty_coef * sum |a|` from the shared reward.
- `action_penalty_coef`: the penalty's weight (non-negative), 1.0 by default (see above).
- `dynamics_seed`: seeds the per-agent gains `eta` (a non-negative integer). The env server
  fills it from the run seed when the config leaves it out (`env_server/registry.py`,
  `CONSTRUCTION_SEED_KWARGS`): the reference draws `eta` afresh per seed, and every copy of one
  run (training and evaluation) must see the same gains.
- `eta_std`: the standard deviation of the gains around 1 (0.1, the reference's `noise_scale`,
  `env.py` line 13). 0 gives every agent the gain 1 on both axes: the same dynamics for all,
  the regime in which pooling the agents' data can only help a world model.
- `drift_amplitude`: the amplitude `A` of the shared drift field `d` (finite, >= 0; 0, the
  default, switches it off and leaves the dynamics exactly the reference's). Not the
  reference's: a variant in which the agents' data about one shared, position-dependent part of
  the dynamics complement each other (see "World and dynamics").
- `render_mode`: must be `None`; nothing is rendered.

`reset(seed=None, options=None)` accepts a seed and options because PettingZoo's API requires
the signature, but neither has an effect: nothing in a reset is random. Use `dynamics_seed` to
choose the gains.

`task_spec()` returns the reward function as plain data (sites, values, radius, penalty), which
the env server hands to model-based agents so they can score imagined steps.

`infos` are empty dictionaries. The gains are available as `env.eta` (and the drift's amplitude as
`env.drift_amplitude`) for tests and analysis, but they are not given to agents: learning the
dynamics is the task.

## Differences from the reference code

- PettingZoo `ParallelEnv` with per-agent observations and a shared reward, instead of one object
  that takes an `(N, 2)` action array and returns the global state.
- The gains come from a dedicated seeded generator (`dynamics_seed`) instead of NumPy's global
  random state (`env.py` line 59).
- The penalty is computed on clipped actions; the reference uses the actions as given, which
  is the same for the tanh policies that play it.
- Actions are clipped to the action space before use (the reference trusts its callers to send
  actions in `[-1, 1]`).
- With one agent, the reference starts it at the origin; here it starts at `(6, 0)` like agent 0
  of any team.

## Version history

- v0: first version. The default `action_penalty_coef` was 0.1 until it was found that the
  reference subtracts the unweighted sum; it is 1.0 now (same environment name: only a
  default changed, and every shipped config states its coefficient). `drift_amplitude` came
  later, off by default (a run that does not set it is unchanged bit for bit), so the name stayed.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np
from gymnasium.spaces import Box
from pettingzoo import ParallelEnv

from env_server.envs.arguments import check_seed, require_int

WORLD_LOW = -10.0
WORLD_HIGH = 10.0
START_RADIUS = 6.0
ETA_MEAN = 1.0
ETA_STD = 0.1
ACTION_PENALTY_COEF = 1.0  # the reference's env.py:144, np.sum(np.abs(actions))
SITE_RADIUS = 0.5
# The drift field's half-wavelength in world units (see `drift_at`): sin(pi * p / 5) has period 10.
DRIFT_HALF_WAVELENGTH = 5.0


def _grid_sites() -> tuple[np.ndarray, np.ndarray]:
    """Place the ten sites the way the reference derives them: fill a 4 x 3 grid row by row."""
    column_xs = (-6.0, -2.0, 2.0, 6.0)
    row_ys = (-5.0, 0.0, 5.0)
    value_cycle = (0.1, 0.5, 1.0)
    number_of_sites = 10
    positions = []
    for y in row_ys:
        for x in column_xs:
            if len(positions) < number_of_sites:
                positions.append((x, y))
    values = [value_cycle[index % len(value_cycle)] for index in range(number_of_sites)]
    positions_array = np.array(positions, dtype=np.float64)
    values_array = np.array(values, dtype=np.float64)
    # Shared module constants: freeze them so no caller can move a site for everybody else.
    positions_array.setflags(write=False)
    values_array.setflags(write=False)
    return positions_array, values_array


SITE_POSITIONS, SITE_VALUES = _grid_sites()


def site_value_at(positions: np.ndarray) -> np.ndarray:
    """Value collected at each given position: the sum of the values of the sites within 0.5.

    `positions` has shape `(..., 2)`; the result has shape `(...)`. Vectorized over any leading
    axes, so a model-based learner can score a whole batch of imagined positions at once.
    """
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim < 1 or positions.shape[-1] != 2:
        raise ValueError(
            f"positions must have shape (..., 2) (x, y per row), got shape {positions.shape}"
        )
    if not np.all(np.isfinite(positions)):
        raise ValueError("positions must be finite, got NaN or infinity")
    offsets = positions[..., np.newaxis, :] - SITE_POSITIONS  # (..., sites, 2)
    distances = np.linalg.norm(offsets, axis=-1)  # (..., sites)
    return np.sum(np.where(distances < SITE_RADIUS, SITE_VALUES, 0.0), axis=-1)


def collection_reward(
    positions: np.ndarray,
    actions: np.ndarray | None,
    action_penalty: bool,
    *,
    penalty_coef: float = ACTION_PENALTY_COEF,
) -> float:
    """The shared reward of one step, from all agents' positions after the move.

    `positions` and `actions` have shape `(N, 2)`, one row per agent. Actions are clipped to
    `[-1, 1]` before the penalty, as the environment clips them before moving; they may be `None`
    when `action_penalty` is off.
    """
    if not isinstance(action_penalty, (bool, np.bool_)):
        raise TypeError(f"action_penalty must be a bool, got {type(action_penalty).__name__}")
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != 2:
        raise ValueError(
            f"positions must have shape (N, 2) (one row per agent), got shape {positions.shape}"
        )
    reward = float(np.sum(site_value_at(positions)))
    if actions is None:
        if action_penalty:
            raise ValueError("action_penalty is on, so actions are needed, got None")
        return reward
    actions = np.asarray(actions, dtype=np.float64)
    if actions.shape != positions.shape:
        raise ValueError(
            f"actions must have the shape of positions {positions.shape}, got {actions.shape}"
        )
    if not np.all(np.isfinite(actions)):
        raise ValueError("actions must be finite, got NaN or infinity")
    if action_penalty:
        reward -= penalty_coef * float(np.sum(np.abs(np.clip(actions, -1.0, 1.0))))
    return reward


def drift_at(positions: np.ndarray, amplitude: float) -> np.ndarray:
    """The shared drift `d(p) = A * (sin(pi * p_y / 5), sin(pi * p_x / 5))` at each position.

    `positions` has shape `(..., 2)`; the result has the same shape. See the module documentation.
    """
    positions = np.asarray(positions, dtype=np.float64)
    # Reversed to (p_y, p_x): each axis drifts by the other coordinate.
    phase = np.pi * positions[..., ::-1] / DRIFT_HALF_WAVELENGTH
    return amplitude * np.sin(phase)


def start_positions(num_agents: int) -> np.ndarray:
    """Reset positions `(num_agents, 2)`: evenly on the radius-6 circle, agent 0 at (6, 0)."""
    angles = 2.0 * np.pi * np.arange(num_agents) / num_agents
    return START_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1)


class RewardCollectionEnv(ParallelEnv):
    """OG-MARL's reward collection task; see the module documentation."""

    metadata = {"name": "reward_collection_v0", "render_modes": [], "is_parallelizable": True}

    def __init__(
        self,
        num_agents: int = 5,
        max_cycles: int = 100,
        action_penalty: bool = False,
        action_penalty_coef: float = ACTION_PENALTY_COEF,
        dynamics_seed: int = 0,
        eta_std: float = ETA_STD,
        drift_amplitude: float = 0.0,
        render_mode: str | None = None,
    ):
        # `num_agents` is a read-only ParallelEnv property (the number of live agents), so the
        # team size is kept as `n_agents`.
        self.n_agents = require_int("num_agents", num_agents, minimum=1)
        self.max_cycles = require_int("max_cycles", max_cycles, minimum=1)
        if not isinstance(action_penalty, (bool, np.bool_)):
            raise TypeError(
                f"action_penalty must be a bool, got {type(action_penalty).__name__}"
            )
        self.action_penalty = bool(action_penalty)
        if isinstance(action_penalty_coef, bool) or not isinstance(
            action_penalty_coef, numbers.Real
        ):
            raise TypeError(
                f"action_penalty_coef must be a number, got {type(action_penalty_coef).__name__}"
            )
        if not (np.isfinite(action_penalty_coef) and action_penalty_coef >= 0):
            raise ValueError(
                f"action_penalty_coef must be finite and >= 0, got {action_penalty_coef}"
            )
        self.action_penalty_coef = float(action_penalty_coef)
        self.dynamics_seed = require_int("dynamics_seed", dynamics_seed, minimum=0)
        if isinstance(eta_std, bool) or not isinstance(eta_std, numbers.Real):
            raise TypeError(f"eta_std must be a number, got {type(eta_std).__name__}")
        if not (np.isfinite(eta_std) and eta_std >= 0):
            raise ValueError(f"eta_std must be finite and >= 0, got {eta_std}")
        self.eta_std = float(eta_std)
        if isinstance(drift_amplitude, bool) or not isinstance(drift_amplitude, numbers.Real):
            raise TypeError(
                f"drift_amplitude must be a number, got {type(drift_amplitude).__name__}"
            )
        if not (np.isfinite(drift_amplitude) and drift_amplitude >= 0):
            raise ValueError(f"drift_amplitude must be finite and >= 0, got {drift_amplitude}")
        self.drift_amplitude = float(drift_amplitude)
        if render_mode is not None:
            raise ValueError(
                "render_mode must be None (reward_collection_v0 renders nothing), "
                f"got {render_mode!r}"
            )
        self.render_mode = None

        self.possible_agents = [f"agent_{index}" for index in range(self.n_agents)]
        self.agents = []  # empty until the first reset

        # Drawn once here and never again: the gains are the environment, not the episode.
        dynamics_rng = np.random.default_rng(self.dynamics_seed)
        self._eta = dynamics_rng.normal(ETA_MEAN, self.eta_std, size=(self.n_agents, 2))

        self._start_positions = start_positions(self.n_agents)
        self._positions = self._start_positions.copy()
        self._steps_taken = 0

        # One space object per agent, built once: PettingZoo's API test (and space seeding)
        # needs `observation_space(agent)` to return the same object every time.
        self.observation_spaces = {
            agent: Box(WORLD_LOW, WORLD_HIGH, shape=(2,), dtype=np.float32)
            for agent in self.possible_agents
        }
        self.action_spaces = {
            agent: Box(-1.0, 1.0, shape=(2,), dtype=np.float32) for agent in self.possible_agents
        }
        self.state_space = Box(WORLD_LOW, WORLD_HIGH, shape=(2 * self.n_agents,), dtype=np.float32)

    def observation_space(self, agent: str) -> Box:
        return self.observation_spaces[self._known_agent(agent)]

    def action_space(self, agent: str) -> Box:
        return self.action_spaces[self._known_agent(agent)]

    @property
    def eta(self) -> np.ndarray:
        """The per-agent, per-axis gains, shape `(N, 2)` (a copy)."""
        return self._eta.copy()

    @property
    def positions(self) -> np.ndarray:
        """Current positions, shape `(N, 2)`, float64 (a copy)."""
        return self._positions.copy()

    # --- episode ------------------------------------------------------------------------------

    def reset(
        self, seed: int | None = None, options: dict | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
        # Both arguments are part of PettingZoo's signature; a reset here has nothing random
        # to seed and no options, so they are checked for type and otherwise unused.
        check_seed(seed)
        if options is not None and not isinstance(options, Mapping):
            raise TypeError(f"options must be a mapping or None, got {type(options).__name__}")
        self.agents = list(self.possible_agents)
        self._positions = self._start_positions.copy()
        self._steps_taken = 0
        return self._observations(), {agent: {} for agent in self.agents}

    def step(self, actions: Mapping[str, Any]) -> tuple[
        dict[str, np.ndarray],
        dict[str, float],
        dict[str, bool],
        dict[str, bool],
        dict[str, dict],
    ]:
        if not self.agents:
            raise RuntimeError(
                "step() called with no live agents: call reset() first "
                f"(an episode ends after max_cycles={self.max_cycles} steps)"
            )
        action_array = self._action_array(actions)
        clipped_actions = np.clip(action_array, -1.0, 1.0)

        moved = self._positions + clipped_actions * self._eta
        if self.drift_amplitude > 0:
            # Skipped when off, so that the reference's dynamics stay bit for bit what they were.
            moved = moved + drift_at(self._positions, self.drift_amplitude)
        self._positions = np.clip(moved, WORLD_LOW, WORLD_HIGH)
        # The reward is paid for where the agents are after this step's move.
        reward = collection_reward(
            self._positions,
            clipped_actions,
            self.action_penalty,
            penalty_coef=self.action_penalty_coef,
        )
        self._steps_taken += 1
        out_of_time = self._steps_taken >= self.max_cycles

        observations = self._observations()
        rewards = {agent: reward for agent in self.agents}
        terminations = {agent: False for agent in self.agents}
        truncations = {agent: out_of_time for agent in self.agents}
        infos = {agent: {} for agent in self.agents}
        if out_of_time:
            self.agents = []
        return observations, rewards, terminations, truncations, infos

    def state(self) -> np.ndarray:
        """All positions, agent 0 first, flattened to shape `(2N,)`, float32."""
        return self._positions.astype(np.float32).reshape(-1)

    def task_spec(self) -> dict[str, Any]:
        """The reward function as plain data (JSON/msgpack-able), for model-based agents.

        The env server sends it to agents in the `env.welcome` metadata (`"task"`); an agent
        rebuilds the reward from it (`agent_node/reward_models.py`) without importing this module.
        It holds everything `collection_reward` uses, and nothing about the dynamics: the gains
        `eta` and the drift field are what the agents have to learn.
        """
        return {
            "kind": "site_collection",
            "sites": SITE_POSITIONS.tolist(),
            "values": SITE_VALUES.tolist(),
            "radius": SITE_RADIUS,
            "action_penalty": self.action_penalty,
            "action_penalty_coef": self.action_penalty_coef,
            "action_bounds": [-1.0, 1.0],
            "bounds": [WORLD_LOW, WORLD_HIGH],
        }

    # --- helpers ------------------------------------------------------------------------------

    def _known_agent(self, agent: str) -> str:
        if agent not in self.observation_spaces:
            raise ValueError(f"unknown agent {agent!r}; expected one of {self.possible_agents}")
        return agent

    def _observations(self) -> dict[str, np.ndarray]:
        return {
            agent: self._positions[index].astype(np.float32)
            for index, agent in enumerate(self.possible_agents)
            if agent in self.agents
        }

    def _action_array(self, actions: Mapping[str, Any]) -> np.ndarray:
        """Validate the action dict and stack it into an `(N, 2)` array in agent order."""
        if not isinstance(actions, Mapping):
            raise TypeError(
                f"actions must be a dict from agent name to action, got {type(actions).__name__}"
            )
        missing = [agent for agent in self.agents if agent not in actions]
        unexpected = [agent for agent in actions if agent not in self.agents]
        if missing or unexpected:
            raise ValueError(
                "actions must hold exactly one action per live agent "
                f"{self.agents}; missing {missing}, unexpected {unexpected}"
            )
        rows = []
        for agent in self.possible_agents:
            try:
                action = np.asarray(actions[agent], dtype=np.float64)
            except (TypeError, ValueError) as error:
                raise TypeError(
                    f"action of {agent} must be numeric with shape (2,), got {actions[agent]!r}"
                ) from error
            if action.shape != (2,):
                raise ValueError(f"action of {agent} must have shape (2,), got {action.shape}")
            if not np.all(np.isfinite(action)):
                raise ValueError(f"action of {agent} must be finite, got {action}")
            rows.append(action)
        return np.stack(rows)


# PettingZoo's factory convention: `parallel_env(**kwargs)` builds the environment. The class is the
# factory, so its signature (what env.kwargs may name, and the defaults) is stated once.
parallel_env = RewardCollectionEnv
