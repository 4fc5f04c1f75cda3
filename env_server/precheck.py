"""Check, before a run launches, that its environment can be built with the config's kwargs.

A wrong `env.name`, an import path that does not import, or a keyword the factory does not take
(`max_cyles`) would otherwise surface only when the env server starts, some seconds after every
process of the run has been launched. `orchestrate validate` and `up` run this module in a
subprocess (importing an environment pulls in pygame, Box2D, ...; the orchestrator must not
import environment code, and a factory's import side effects stay out of its process):

    python -m env_server.precheck '{"name": "mpe2.simple_spread_v3", "kwargs": {"N": 3}}'

It prints one JSON object, `{"ok": true}` or `{"ok": false, "field": "env.kwargs.max_cyles",
"error": "..."}`, and exits 0 or 2. `check_env` is the same check in-process.

How: the factory's signature is checked without calling it when it names its parameters; most
PettingZoo factories take `**kwargs` and pass them on, so for those the env is built once (with
the construction kwargs the server would use) and closed.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
from typing import Any

from env_server.registry import EnvNotFound, construction_kwargs, resolve_factory

_UNEXPECTED_KEYWORD = re.compile(r"unexpected keyword argument '([^']+)'")


def check_env(name: str, kwargs: dict[str, Any]) -> tuple[str, str] | None:
    """None when `name` builds with `kwargs`; else (the config field at fault, the problem)."""
    try:
        factory = resolve_factory(name)
    except EnvNotFound as error:
        return "env.name", str(error).removeprefix("env.name ")
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        signature = None
    if signature is not None and not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        takes = [p.name for p in signature.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        unknown = [key for key in kwargs if key not in takes]
        if unknown:
            return f"env.kwargs.{unknown[0]}", f"{name} does not take {unknown[0]!r}; it takes {takes}"
    try:
        env = factory(**construction_kwargs(name, kwargs, construction_seed=0))
    except TypeError as error:
        match = _UNEXPECTED_KEYWORD.search(str(error))
        if match:
            return f"env.kwargs.{match.group(1)}", f"{name} does not take {match.group(1)!r} ({error})"
        return "env.kwargs", f"{name} cannot be built with {kwargs}: {type(error).__name__}: {error}"
    except Exception as error:  # whatever a factory raises for a bad value
        return "env.kwargs", f"{name} cannot be built with {kwargs}: {type(error).__name__}: {error}"
    try:
        env.close()
    except Exception:
        pass
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(json.dumps({"ok": False, "field": "env", "error": "usage: python -m env_server.precheck JSON"}))
        return 2
    request = json.loads(argv[0])
    problem = check_env(request["name"], request.get("kwargs") or {})
    if problem is None:
        print(json.dumps({"ok": True}))
        return 0
    field, error = problem
    print(json.dumps({"ok": False, "field": field, "error": error}))
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
