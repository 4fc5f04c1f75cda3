"""Checks of the arguments Parley's own environments are built and called with.

The env server passes `env.kwargs` from YAML to an environment's factory: a `3.0` or a `true`
where an int belongs must fail at construction, naming the argument, not later in an array shape.
A `reset(seed=...)`, an agent name and a grid env's moves are checked the same way in every env
(`check_seed`, `SpacesPerAgent`, `checked_moves`).
"""

from __future__ import annotations

import numbers
from typing import Any, Mapping, Sequence

import numpy as np


def require_int(name: str, value: Any, minimum: int) -> int:
    """`value` as an int of at least `minimum`; TypeError / ValueError naming `name` otherwise."""
    # bool is an int subclass; `num_agents=True` is a mistake, not one agent.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_seed(seed: Any) -> None:
    """A `reset` seed is an int or None (a bool is neither); TypeError otherwise."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")


def checked_moves(live_agents: Sequence[str], actions: Mapping[str, Any], num_moves: int) -> dict[str, int]:
    """The live agents' actions as move indices in [0, num_moves): every live agent must have one
    (ValueError naming the missing), and actions for agents no longer live are left out
    (PettingZoo's API test sends them)."""
    missing = set(live_agents) - set(actions)
    if missing:
        raise ValueError(f"step needs an action for every live agent; missing {sorted(missing)}")
    moves = {}
    for agent, action in actions.items():
        if agent not in live_agents:
            continue
        move = int(np.asarray(action))
        if not 0 <= move < num_moves:
            raise ValueError(f"action of {agent} must be in [0, {num_moves}), got {action!r}")
        moves[agent] = move
    return moves


class SpacesPerAgent:
    """PettingZoo's `observation_space(agent)` / `action_space(agent)` over the env's
    `observation_spaces` / `action_spaces` dicts, refusing an agent the env does not have with a
    KeyError that lists `possible_agents`."""

    observation_spaces: dict[str, Any]
    action_spaces: dict[str, Any]
    possible_agents: list[str]

    def observation_space(self, agent: str) -> Any:
        return self.observation_spaces[self._known_agent(agent)]

    def action_space(self, agent: str) -> Any:
        return self.action_spaces[self._known_agent(agent)]

    def _known_agent(self, agent: str) -> str:
        if agent not in self.observation_spaces:
            raise KeyError(f"unknown agent {agent!r}; agents are {self.possible_agents}")
        return agent
