"""One registry of environments the env server can host.

An environment is named either by a registry name (`mpe2.simple_spread_v3`, `pursuit_v5`, …)
or by an import path `package.module:factory`; either way the factory is called with the
config's `kwargs` and must return a PettingZoo `ParallelEnv`.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from pettingzoo import ParallelEnv

# Registry name -> import path of a factory returning a ParallelEnv.
BUILTIN_ENVS: dict[str, str] = {
    "mpe2.simple_spread_v3": "mpe2.simple_spread_v3:parallel_env",
    "mpe2.simple_tag_v3": "mpe2.simple_tag_v3:parallel_env",
    "mpe2.simple_reference_v3": "mpe2.simple_reference_v3:parallel_env",
    "pettingzoo.pursuit_v5": "pettingzoo.sisl.pursuit_v5:parallel_env",
    "pettingzoo.multiwalker_v9": "pettingzoo.sisl.multiwalker_v9:parallel_env",
    "pettingzoo.pistonball_v6": "pettingzoo.butterfly.pistonball_v6:parallel_env",
    "reward_collection_v0": "env_server.envs.reward_collection:parallel_env",
}
# Short names people type.
ALIASES: dict[str, str] = {
    "simple_spread_v3": "mpe2.simple_spread_v3",
    "pursuit_v5": "pettingzoo.pursuit_v5",
    "multiwalker_v9": "pettingzoo.multiwalker_v9",
    "pistonball_v6": "pettingzoo.pistonball_v6",
}


class EnvNotFound(ValueError):
    pass


def resolve_factory(name: str) -> Callable[..., ParallelEnv]:
    """The factory behind a registry name or a `package.module:factory` path."""
    path = BUILTIN_ENVS.get(ALIASES.get(name, name))
    if path is None:
        if ":" not in name:
            known = sorted(BUILTIN_ENVS) + sorted(ALIASES)
            raise EnvNotFound(
                f"env.name {name!r} is neither a registered environment ({', '.join(known)}) "
                "nor an import path of the form 'package.module:factory'"
            )
        path = name
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise EnvNotFound(f"env.name {name!r}: cannot import module {module_name!r}: {error}") from error
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise EnvNotFound(f"env.name {name!r}: module {module_name!r} has no attribute {attribute!r}") from None


def make_env(name: str, kwargs: dict[str, Any]) -> ParallelEnv:
    env = resolve_factory(name)(**kwargs)
    if not isinstance(env, ParallelEnv):
        raise EnvNotFound(f"env.name {name!r} built a {type(env).__name__}, expected a pettingzoo ParallelEnv")
    return env
