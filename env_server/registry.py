"""One registry of environments the env server can host.

An environment is named either by a registry name (`mpe2.simple_spread_v3`, `pursuit_v5`, …)
or by an import path `package.module:factory`; either way the factory is called with the
config's `kwargs` and must return a PettingZoo `ParallelEnv`.

Construction seeds. Some environments draw part of the *task* when they are built, not when
they reset: `reward_collection_v0` draws every agent's gains `eta` from its `dynamics_seed`. That
draw must follow the run seed (the reference draws `eta` afresh for every seed), and it must be the
same for every copy the env server builds in one run (K training copies and the evaluation
copies), or the agents would learn one world and be scored in another. So `make_env` takes a
`construction_seed` (the env server passes `derive_seed(run.seed, env_index, "env_construction")`,
the same value for every copy) and, for the environments listed in `CONSTRUCTION_SEED_KWARGS`,
fills that environment's seed argument with it, unless the config sets the argument itself
(an explicit value always wins, e.g. to hold the task fixed across seeds). Environments not in
the table draw nothing at construction and ignore the construction seed; their randomness comes
from the per-copy reset seeds.
"""

from __future__ import annotations

import difflib
from collections import defaultdict
from typing import Any, Callable

from pettingzoo import ParallelEnv
from pettingzoo.utils.conversions import aec_to_parallel_wrapper
from pettingzoo.utils.wrappers import AssertOutOfBoundsWrapper, OrderEnforcingWrapper

from protocols.run.import_path import ImportPathError, import_object

# Registry name -> import path of a factory returning a ParallelEnv. Every entry builds with the
# declared dependencies (tests/unit/test_env_registry.py builds each one). PettingZoo's butterfly
# envs (pistonball) need pymunk, which only the `butterfly` and `test` extras install: they are not
# listed; an import path (`pettingzoo.butterfly.pistonball_v6:parallel_env`) works where pymunk is
# installed (tests/integration/test_image_observations.py runs pistonball that way).
BUILTIN_ENVS: dict[str, str] = {
    "mpe2.simple_spread_v3": "mpe2.simple_spread_v3:parallel_env",
    "mpe2.simple_tag_v3": "mpe2.simple_tag_v3:parallel_env",
    "mpe2.simple_reference_v3": "mpe2.simple_reference_v3:parallel_env",
    "pettingzoo.pursuit_v5": "pettingzoo.sisl.pursuit_v5:parallel_env",
    "pettingzoo.multiwalker_v9": "pettingzoo.sisl.multiwalker_v9:parallel_env",
    "reward_collection_v0": "env_server.envs.reward_collection:parallel_env",
    "goal_lines_v0": "env_server.envs.goal_lines:parallel_env",
    "treasure_room_v0": "env_server.envs.treasure_room:parallel_env",
    # needs the minigrid package (make setup installs it; env_server/envs/minigrid_task.py says why --no-deps)
    "minigrid_v0": "env_server.envs.minigrid_task:parallel_env",
    # The matrix games where a learner's answer is known (bench/ctde_games.py).
    "two_step_v0": "env_server.envs.two_step:parallel_env",
    "nonmonotonic_matrix_v0": "env_server.envs.nonmonotonic:parallel_env",
    "climbing_v0": "env_server.envs.climbing:parallel_env",
}
# Environments that draw part of the task at construction: registry name -> the factory argument
# that seeds that draw (see the module docstring). Import paths of the same factories count too.
CONSTRUCTION_SEED_KWARGS: dict[str, str] = {
    "reward_collection_v0": "dynamics_seed",
}
# Short names people type.
ALIASES: dict[str, str] = {
    "simple_spread_v3": "mpe2.simple_spread_v3",
    "pursuit_v5": "pettingzoo.pursuit_v5",
    "multiwalker_v9": "pettingzoo.multiwalker_v9",
}


class EnvNotFound(ValueError):
    pass


def resolve_factory(name: str) -> Callable[..., ParallelEnv]:
    """The factory behind a registry name or a `package.module:factory` path."""
    path = BUILTIN_ENVS.get(ALIASES.get(name, name))
    if path is None:
        if ":" not in name:
            known = sorted(BUILTIN_ENVS) + sorted(ALIASES)
            hint = difflib.get_close_matches(name, known, n=1)
            raise EnvNotFound(
                f"env.name {name!r} is neither a registered environment ({', '.join(known)}) "
                "nor an import path of the form 'package.module:factory'"
                + (f" (did you mean '{hint[0]}'?)" if hint else "")
            )
        path = name
    try:
        return import_object(path)
    except ImportPathError as error:
        raise EnvNotFound(f"env.name {name!r}: {error}") from error


def construction_seed_kwarg(name: str) -> str | None:
    """The factory argument that seeds an environment's construction-time draw, or None."""
    registry_name = ALIASES.get(name, name)
    if registry_name not in BUILTIN_ENVS:
        # An import path that names a registered factory is the same environment.
        registry_name = next((key for key, path in BUILTIN_ENVS.items() if path == name), registry_name)
    return CONSTRUCTION_SEED_KWARGS.get(registry_name)


def construction_kwargs(name: str, kwargs: dict[str, Any], construction_seed: int | None) -> dict[str, Any]:
    """The kwargs the factory is called with: `kwargs`, plus the construction seed where the
    environment takes one and the config does not set it. Pure, so the server can log them."""
    if construction_seed is not None and (
        isinstance(construction_seed, bool) or not isinstance(construction_seed, int) or construction_seed < 0
    ):
        raise ValueError(f"construction_seed must be None or a non-negative int, got {construction_seed!r}")
    filled = dict(kwargs)
    seed_kwarg = construction_seed_kwarg(name)
    if seed_kwarg is not None and construction_seed is not None and seed_kwarg not in filled:
        filled[seed_kwarg] = construction_seed
    return filled


def make_env(name: str, kwargs: dict[str, Any], construction_seed: int | None = None) -> ParallelEnv:
    """Build the environment `name` with `kwargs`; see the module docstring for `construction_seed`,
    and `without_call_checks` for what is left out of an AEC env converted to parallel."""
    env = resolve_factory(name)(**construction_kwargs(name, kwargs, construction_seed))
    if not isinstance(env, ParallelEnv):
        raise EnvNotFound(f"env.name {name!r} built a {type(env).__name__}, expected a pettingzoo ParallelEnv")
    return without_call_checks(env)


# PettingZoo's AEC wrappers that check how an env is called and never change what it computes.
_CALL_CHECKS = (OrderEnforcingWrapper, AssertOutOfBoundsWrapper)


def without_call_checks(env: ParallelEnv) -> ParallelEnv:
    """`env` without the call-checking wrappers outside its AEC env, when it is one converted to
    parallel (`parallel_wrapper_fn`, as the MPE and SISL envs are built); any other env as it is.

    The env server is the only caller of the envs it hosts: it checks every client's action
    against its space before a step (the barrier's `check_batched`), draws default actions from
    the spaces, and resets a copy before stepping it, so these wrappers would check again what
    was checked. On simple_spread (N = 4) their attribute forwarding and checks were ~30% of a
    step's CPU. A wrapper that changes the actions (`ClipOutOfBoundsWrapper` of the continuous
    MPE envs) stays, and so does everything inside it: the peeling stops at the first wrapper
    not in the list.

    The converter itself is kept, with whatever a factory set on it: only its AEC env is
    replaced, and its class becomes `ConvertedParallelEnv`, which steps without reading an
    observation it throws away."""
    if type(env) is not aec_to_parallel_wrapper:
        return env
    inner = env.aec_env
    while isinstance(inner, _CALL_CHECKS):
        inner = inner.env
    env.aec_env = inner
    # The same object, so what a factory set on the instance (a patched `step` included) stands.
    env.__class__ = ConvertedParallelEnv
    return env


class ConvertedParallelEnv(aec_to_parallel_wrapper):
    """PettingZoo's AEC-to-parallel converter, whose `step` computes every agent's observation
    once instead of twice.

    PettingZoo's `step` calls `last()` before each agent's AEC step only to discard what it
    returns, and `last()` computes the acting agent's observation: on simple_spread (N = 4) ~12%
    of a step's CPU. An observation is a read of the env's state, so leaving it out changes
    nothing else; tests/unit/test_env_registry.py steps every registered converted env both
    ways and compares every observation, reward and end. The rest is PettingZoo's step as it is
    (pettingzoo 1.27, `pettingzoo/utils/conversions.py`: `step` at line 194, the discarded
    `last()` at 209), with its check that the agents act in a cycle."""

    def step(self, actions):
        aec_env = self.aec_env
        rewards = defaultdict(int)
        for agent in aec_env.agents:
            if agent != aec_env.agent_selection:
                raise AssertionError(f"expected agent {agent} got agent {aec_env.agent_selection}: the parallel "
                                     f"converter expects agents to act in a cycle and to end only at its end")
            aec_env.step(actions[agent])
            for rewarded in aec_env.agents:
                rewards[rewarded] += aec_env.rewards[rewarded]
        terminations = dict(**aec_env.terminations)
        truncations = dict(**aec_env.truncations)
        infos = dict(**aec_env.infos)
        observations = {agent: aec_env.observe(agent) for agent in aec_env.agents}
        while aec_env.agents and (aec_env.terminations[aec_env.agent_selection]
                                  or aec_env.truncations[aec_env.agent_selection]):
            aec_env.step(None)
        self.agents = aec_env.agents
        return observations, rewards, terminations, truncations, infos
