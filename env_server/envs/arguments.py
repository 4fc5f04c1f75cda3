"""Checks of the arguments Parley's own environments are built with.

The env server passes `env.kwargs` from YAML to an environment's factory: a `3.0` or a `true`
where an int belongs must fail at construction, naming the argument, not later in an array shape.
"""

from __future__ import annotations

import numbers
from typing import Any


def require_int(name: str, value: Any, minimum: int) -> int:
    """`value` as an int of at least `minimum`; TypeError / ValueError naming `name` otherwise."""
    # bool is an int subclass; `num_agents=True` is a mistake, not one agent.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)
