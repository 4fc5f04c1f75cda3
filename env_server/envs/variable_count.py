"""# Variable agent count (`variable_count_v0`)

| | |
| --- | --- |
| Import | `from env_server.envs.variable_count import parallel_env` |
| Actions | those of the wrapped environment |
| Parallel API | yes (`ParallelEnv`) |
| Agents | `possible_agents` of the wrapped environment at the largest count; `agents` holds the first n |
| Action space | the wrapped environment's, which must be the same at every count |
| Observation space | the wrapped environment's at the largest count; a flat Box that grows with the count is zero-padded at its end |
| State space | likewise (zero-padded when it grows with the count) |
| Episode | the wrapped environment's episode at the drawn count |

A wrapper that makes any PettingZoo `ParallelEnv` whose number of agents is a constructor argument
(pursuit's `n_pursuers`, simple_spread's `N`) draw that number anew at every reset, from a
configured set. It serves the agent-count transfer experiments of ALGORITHMS.md section 5: train
with 2 pursuers and run with 4, or train on a mix of counts.

## Why it looks like this

- **`possible_agents` is fixed at the largest count**, so the env server, the orchestrator and the
  agent nodes see one stable set of agent names (one node per possible agent). In an episode with
  n agents, `agents` holds the first n names and the others are simply absent, the PettingZoo way
  of saying an agent is not part of this episode: they get no observation, reward or info, and the
  env server marks them inactive for that episode (its nodes idle until an episode includes them).
- **One wrapped environment per count, built once** and reused; each is built with
  `base_kwargs`, the count under `count_kwarg`, and the count's own `per_count_kwargs` (pursuit:
  `{2: {n_evaders: 8}, 4: {n_evaders: 15}}` to keep the evader density, as the marl-offline-
  coordination code scales its evaders with its pursuers, `experiment/env.py:143-151`).
- **The smaller counts' agents must be the first names of the largest count's** (pursuer_0, …):
  the wrapper checks this when it is built, so agent i always means the same node.
- **Spaces.** An agent's action space must be the same at every count. Its observation space may
  differ only as a `Box`: in its bounds (pursuit's observation bound is the larger of its evader
  and pursuer counts; the wrapper declares the union of the bounds), or, for a flat `Box`, in its
  size, growing with the count; the observation is then zero-padded at the end to the largest
  size (with 0 bounds for the padding). This changes the meaning of slots
  across counts (simple_spread's landmark block moves), so prefer kwargs that fix the size where
  the environment has them: simple_spread's `num_agent_neighbors` / `num_landmark_neighbors`, and
  pursuit, whose 7x7x3 view does not depend on the count at all. `state()` follows the same rule.
- **Seeding.** `reset(seed=s)` seeds the draw of counts and the wrapped environment; a reset
  without a seed (the env server's autoreset) draws the count from the same generator and reseeds
  the wrapped environment from it, so one seed fixes every later episode, whichever copy of the
  wrapped environment it runs in. `reset(options={"agent_count": n})` forces the count n (any
  other options are passed on).

## Arguments

```python
parallel_env(base="pettingzoo.pursuit_v5", count_kwarg="n_pursuers", counts=[2, 4],
             base_kwargs={"max_cycles": 500}, per_count_kwargs={2: {"n_evaders": 8}, 4: {"n_evaders": 15}})
```

`base`: a registry name or import path, resolved like `env.name` (env_server/registry.py).
`count_kwarg`: the wrapped factory's argument that sets the agent count.
`counts`: the counts drawn uniformly at each reset (at least one; duplicates weight a count).
`base_kwargs`: passed to the wrapped factory at every count. `per_count_kwargs`: extra kwargs per count.

Known limitation, PettingZoo's `parallel_api_test` warns "No agents present but not all
possible_agents are terminated or truncated" at the end of an episode with fewer agents than the
maximum: the absent agents never ran, so they never terminate. That is the intended meaning.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

from env_server.registry import resolve_factory

COUNT_OPTION = "agent_count"


def parallel_env(
    base: str,
    count_kwarg: str,
    counts: Sequence[int],
    base_kwargs: Mapping[str, Any] | None = None,
    per_count_kwargs: Mapping[int | str, Mapping[str, Any]] | None = None,
) -> VariableCountEnv:
    """The wrapper around the registered environment `base` (see the module documentation)."""
    return VariableCountEnv(resolve_factory(base), count_kwarg, counts, base_kwargs, per_count_kwargs, base_name=base)


class VariableCountEnv(ParallelEnv):
    metadata = {"name": "variable_count_v0", "is_parallelizable": True, "render_modes": []}

    def __init__(
        self,
        factory: Callable[..., ParallelEnv],
        count_kwarg: str,
        counts: Sequence[int],
        base_kwargs: Mapping[str, Any] | None = None,
        per_count_kwargs: Mapping[int | str, Mapping[str, Any]] | None = None,
        base_name: str = "the wrapped environment",
    ) -> None:
        counts = list(counts)
        if not counts or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in counts):
            raise ValueError(f"counts must be a non-empty list of positive ints, got {counts!r}")
        per_count = {int(key): dict(value) for key, value in (per_count_kwargs or {}).items()}
        unknown = sorted(set(per_count) - set(counts))
        if unknown:
            raise ValueError(f"per_count_kwargs names counts {unknown} that are not in counts {sorted(set(counts))}")
        base_kwargs = dict(base_kwargs or {})
        if count_kwarg in base_kwargs:
            raise ValueError(f"base_kwargs must not set {count_kwarg!r}: the wrapper sets it from counts")
        self.counts = counts
        self.count_kwarg = count_kwarg
        self.envs: dict[int, ParallelEnv] = {}
        for count in sorted(set(counts)):
            kwargs = {**base_kwargs, **per_count.get(count, {}), count_kwarg: count}
            env = factory(**kwargs)
            if not isinstance(env, ParallelEnv):
                raise TypeError(f"{base_name} built a {type(env).__name__} with {kwargs}, expected a pettingzoo ParallelEnv")
            if len(env.possible_agents) != count:
                raise ValueError(
                    f"{base_name} with {count_kwarg}={count} has {len(env.possible_agents)} possible agents, "
                    f"expected {count}: is {count_kwarg!r} its agent-count argument?"
                )
            self.envs[count] = env
        largest = self.envs[max(self.envs)]
        self.possible_agents = list(largest.possible_agents)
        for count, env in self.envs.items():
            if list(env.possible_agents) != self.possible_agents[:count]:
                raise ValueError(
                    f"{base_name} with {count_kwarg}={count} names its agents {env.possible_agents}, expected the first "
                    f"{count} of {self.possible_agents}"
                )
        self._observation_spaces = {agent: self._common_space(agent, "observation") for agent in self.possible_agents}
        self._action_spaces = {agent: self._common_space(agent, "action") for agent in self.possible_agents}
        self.state_space = self._common_state_space()
        self.render_mode = None
        self.active_env: ParallelEnv = largest
        self.agents: list[str] = []
        self.count_rng = np.random.default_rng()

    # ------------------------------------------------------------------ spaces

    def _common_space(self, agent: str, kind: str) -> spaces.Space:
        per_count = [
            getattr(env, f"{kind}_space")(agent) for count, env in sorted(self.envs.items()) if agent in env.possible_agents
        ]
        return _padded_union(per_count, f"{kind} space of {agent}", allow_padding=kind == "observation")

    def _common_state_space(self) -> spaces.Space | None:
        if not all(hasattr(env, "state_space") for env in self.envs.values()):
            return None
        return _padded_union([env.state_space for _, env in sorted(self.envs.items())], "state space", allow_padding=True)

    @functools.lru_cache(maxsize=None)
    def observation_space(self, agent: str) -> spaces.Space:
        return self._observation_spaces[agent]

    @functools.lru_cache(maxsize=None)
    def action_space(self, agent: str) -> spaces.Space:
        return self._action_spaces[agent]

    # ------------------------------------------------------------------ API

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        options = dict(options or {})
        if seed is not None:
            self.count_rng = np.random.default_rng(seed)
        forced = options.pop(COUNT_OPTION, None)
        if forced is not None:
            if forced not in self.envs:
                raise ValueError(f"reset option {COUNT_OPTION}={forced!r} is not one of the configured counts {sorted(self.envs)}")
            count = int(forced)
        else:
            count = int(self.counts[self.count_rng.integers(len(self.counts))])
        inner_seed = seed if seed is not None else int(self.count_rng.integers(2**31 - 1))
        self.active_env = self.envs[count]
        observations, infos = self.active_env.reset(seed=inner_seed, options=options or None)
        self.agents = list(self.active_env.agents)
        return self._padded_observations(observations), dict(infos)

    def step(self, actions: dict) -> tuple[dict, dict, dict, dict, dict]:
        unknown = sorted(set(actions) - set(self.possible_agents))
        if unknown:
            raise ValueError(f"actions for unknown agents {unknown}; possible agents are {self.possible_agents}")
        # Actions of agents that are not in this episode are dropped, as for agents already done.
        live = {agent: action for agent, action in actions.items() if agent in self.active_env.agents}
        observations, rewards, terminated, truncated, infos = self.active_env.step(live)
        self.agents = list(self.active_env.agents)
        return self._padded_observations(observations), dict(rewards), dict(terminated), dict(truncated), dict(infos)

    def state(self) -> np.ndarray:
        state = np.asarray(self.active_env.state())
        if self.state_space is None or state.shape == self.state_space.shape:
            return state
        return _pad_flat(state, self.state_space)

    def render(self) -> Any:
        return self.active_env.render()

    def close(self) -> None:
        for env in self.envs.values():
            env.close()

    def _padded_observations(self, observations: dict) -> dict:
        padded = {}
        for agent, observation in observations.items():
            space = self._observation_spaces[agent]
            observation = np.asarray(observation)
            padded[agent] = observation if observation.shape == space.shape else _pad_flat(observation, space)
        return padded


def _padded_union(per_count: list[spaces.Space], what: str, allow_padding: bool) -> spaces.Space:
    """The one space covering every count: the space itself if all agree, else the largest of
    flat Boxes with zero-padded bounds."""
    first = per_count[0]
    if all(space == first for space in per_count):
        return per_count[-1]
    boxes = all(isinstance(space, spaces.Box) for space in per_count)
    if boxes and allow_padding and all(space.shape == first.shape and space.dtype == first.dtype for space in per_count):
        # Same shape, other bounds (pursuit's counts go up to max(n_evaders, n_pursuers)): the union.
        return spaces.Box(
            np.min([space.low for space in per_count], axis=0),
            np.max([space.high for space in per_count], axis=0),
            dtype=first.dtype,
        )
    flat_boxes = boxes and all(len(space.shape) == 1 for space in per_count)
    if not (allow_padding and flat_boxes):
        raise ValueError(
            f"the {what} differs between agent counts ({', '.join(map(str, per_count))}); only a flat Box observation "
            "or state may differ (it is zero-padded), so fix its size with the environment's kwargs where it has them"
        )
    if len({space.dtype for space in per_count}) != 1:
        raise ValueError(f"the {what} changes dtype between agent counts: {per_count}")
    size = max(space.shape[0] for space in per_count)
    # Each count's bounds, with 0 in the slots it pads; the union takes the widest bound per slot.
    lows = [np.concatenate([space.low, np.zeros(size - space.shape[0], space.dtype)]) for space in per_count]
    highs = [np.concatenate([space.high, np.zeros(size - space.shape[0], space.dtype)]) for space in per_count]
    return spaces.Box(np.min(lows, axis=0), np.max(highs, axis=0), dtype=per_count[0].dtype)


def _pad_flat(value: np.ndarray, space: spaces.Box) -> np.ndarray:
    padded = np.zeros(space.shape, space.dtype)
    padded[: value.shape[0]] = value
    return padded
