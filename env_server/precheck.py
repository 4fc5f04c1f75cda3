"""Check, before a run launches, that its environment can be built with the config's kwargs.

A wrong `env.name`, an import path that does not import, or a keyword the factory does not take
(`max_cyles`) would otherwise surface only when the env server starts, some seconds after every
process of the run has been launched. `orchestrate validate` and `up` run this module in a
subprocess (importing an environment pulls in pygame, Box2D, ...; the orchestrator must not
import environment code, and a factory's import side effects stay out of its process):

    python -m env_server.precheck '{"name": "mpe2.simple_spread_v3", "kwargs": {"N": 3}}'

It prints one JSON object and exits 0 or 2: `{"ok": false, "field": "env.kwargs.max_cyles",
"error": "..."}`, or `{"ok": true, "agents": [...], "observation_spaces": {...}, "action_spaces":
{...}, "task": "site_collection" or null}`, the facts about the built env that the orchestrator
holds the rest of the config against (`orchestrator/prelaunch.py`: one agent node per possible
agent, a learner that fits the action space, a checkpoint for every agent, a reward function as
data for the learners that score rows with it). A space is summarised as `{"kind": "box",
"shape": [18]}`, `{"kind": "discrete", "n": 5}`, or `{"kind": "<other kind>"}` (the kind names of
protocols/codec/spaces.py). `env_facts` and `check_env` are the same check in-process.

How: the factory's signature is checked without calling it when it names its parameters; most
PettingZoo factories take `**kwargs` and pass them on, so for those the env is built once (with
the construction kwargs the server would use) and closed. The env is built in any case, since
only a built env knows its agents and spaces. A factory that builds an AEC (turn-based) env is
refused here, with the way to a ParallelEnv where there is one, rather than when the env server
starts.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
from typing import Any

from gymnasium import spaces
from pettingzoo import AECEnv, ParallelEnv

from env_server.registry import EnvNotFound, construction_kwargs, resolve_factory
from protocols.codec.spaces import is_image_space

_UNEXPECTED_KEYWORD = re.compile(r"unexpected keyword argument '([^']+)'")


class EnvCheckFailed(Exception):
    """The env cannot be served as configured: `field` is the config field at fault."""

    def __init__(self, field: str, error: str) -> None:
        super().__init__(f"{field}: {error}")
        self.field = field
        self.error = error


def check_env(name: str, kwargs: dict[str, Any]) -> tuple[str, str] | None:
    """None when `name` builds a ParallelEnv with `kwargs`; else (the config field at fault, the problem)."""
    try:
        env_facts(name, kwargs)
    except EnvCheckFailed as failed:
        return failed.field, failed.error
    return None


def env_facts(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The possible agents and their spaces of the env `name` builds with `kwargs`.

    Raises EnvCheckFailed naming the config field when it cannot be built or is not a ParallelEnv.
    """
    env = _build(name, kwargs)
    try:
        if not isinstance(env, ParallelEnv):
            raise EnvCheckFailed("env.name", _not_parallel(name, env))
        try:
            return {
                "agents": [str(agent) for agent in env.possible_agents],
                "observation_spaces": {str(a): space_summary(env.observation_space(a)) for a in env.possible_agents},
                "action_spaces": {str(a): space_summary(env.action_space(a)) for a in env.possible_agents},
                # The kind of reward function the env describes as data (`task_spec()`, what the
                # server sends model-based agents), or None: learners that score rows with it need one.
                "task": _task_kind(env),
            }
        except Exception as error:  # a ParallelEnv that breaks its own API
            raise EnvCheckFailed("env.name", f"{name}: cannot read its possible agents and their spaces: "
                                             f"{type(error).__name__}: {error}") from None
    finally:
        try:
            env.close()
        except Exception:
            pass


def _task_kind(env: Any) -> str | None:
    """The `kind` of the env's task spec (as env_server/vector.py reads it), or None without one."""
    if not hasattr(env, "task_spec"):
        return None
    spec = env.task_spec()
    return str(spec.get("kind")) if isinstance(spec, dict) else None


def space_summary(space: spaces.Space) -> dict[str, Any]:
    """What the pre-launch checks need of a space: its kind, and a Box's shape (and whether it holds
    images) or a Discrete's n."""
    if isinstance(space, spaces.Box):
        return {"kind": "box", "shape": [int(n) for n in space.shape], "image": is_image_space(space)}
    if isinstance(space, spaces.Discrete):
        return {"kind": "discrete", "n": int(space.n)}
    kinds = {spaces.MultiDiscrete: "multi_discrete", spaces.MultiBinary: "multi_binary", spaces.Dict: "dict", spaces.Tuple: "tuple"}
    return {"kind": next((kind for cls, kind in kinds.items() if isinstance(space, cls)), type(space).__name__)}


def _not_parallel(name: str, env: Any) -> str:
    """Why a non-ParallelEnv cannot be served, and the way to a ParallelEnv where there is one."""
    if not isinstance(env, AECEnv):
        return f"{name} built a {type(env).__name__}, expected a pettingzoo ParallelEnv"
    what = (f"{name} builds an AEC env ({type(env).__name__}), whose agents act in turns; the env server runs a "
            "pettingzoo ParallelEnv, whose agents all act at every step")
    module_name = name.partition(":")[0] if ":" in name else None
    module = sys.modules.get(module_name) if module_name else None
    if module is not None and callable(getattr(module, "parallel_env", None)):
        return f"{what}: this module has one, set env.name to '{module_name}:parallel_env'"
    if env.metadata.get("is_parallelizable", False):
        return (f"{what}: its metadata says it is parallelizable, so name a factory of your own that returns "
                "pettingzoo.utils.conversions.aec_to_parallel(<the AEC env>)")
    return (f"{what}: this one cannot be wrapped (its metadata is_parallelizable is not true), the server cannot "
            "run a turn-based game")


def _build(name: str, kwargs: dict[str, Any]) -> Any:
    try:
        factory = resolve_factory(name)
    except EnvNotFound as error:
        raise EnvCheckFailed("env.name", str(error).removeprefix("env.name ")) from None
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        signature = None
    if signature is not None and not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        takes = [p.name for p in signature.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        unknown = [key for key in kwargs if key not in takes]
        if unknown:
            raise EnvCheckFailed(f"env.kwargs.{unknown[0]}", f"{name} does not take {unknown[0]!r}; it takes {takes}")
    try:
        return factory(**construction_kwargs(name, kwargs, construction_seed=0))
    except TypeError as error:
        match = _UNEXPECTED_KEYWORD.search(str(error))
        if match:
            raise EnvCheckFailed(f"env.kwargs.{match.group(1)}", f"{name} does not take {match.group(1)!r} ({error})") from None
        raise EnvCheckFailed("env.kwargs", f"{name} cannot be built with {kwargs}: {type(error).__name__}: {error}") from None
    except Exception as error:  # whatever a factory raises for a bad value
        raise EnvCheckFailed("env.kwargs", f"{name} cannot be built with {kwargs}: {type(error).__name__}: {error}") from None


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(json.dumps({"ok": False, "field": "env", "error": "usage: python -m env_server.precheck JSON"}))
        return 2
    request = json.loads(argv[0])
    try:
        facts = env_facts(request["name"], request.get("kwargs") or {})
    except EnvCheckFailed as failed:
        print(json.dumps({"ok": False, "field": failed.field, "error": failed.error}))
        return 2
    print(json.dumps({"ok": True, **facts}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
