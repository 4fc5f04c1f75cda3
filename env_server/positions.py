"""Where the agents are: the positions the env server publishes for links that follow them.

With `topology.kind: proximity` (protocols/engines/proximity.py) a peer message is delivered only
between agents within a radius of each other, so every agent must know where every agent is at
each step. The env server reads each agent's position after every reset and step and sends them
all with each training observation (`EnvObservation.positions`, (K, agents, dims), agents in
`possible_agents` order). A few floats per agent, but they are not part of the packed lockstep
layout: a run that publishes them sends its observations as msgpack (`packing_refusal`).

A positions reader is a function `reader(env) -> {agent: position}` called with the env as its
factory built it (a PettingZoo ParallelEnv); a position is a sequence of floats, the same length
for every agent and step. An agent it leaves out (one that is not in the episode) has NaN, which
the range rule reads as out of everyone's range. The MPE environments have one built in (their
agents' `state.p_pos`); a user's env names its own with `env.positions: package.module:function`.

This module imports neither pettingzoo nor the environments: the config's validation asks it
whether an env has positions without building one.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from protocols.run.import_path import ImportPathError, import_object

PositionsReader = Callable[[Any], Mapping[str, Any]]

MPE_POSITIONS = "env_server.positions:mpe_positions"
# Environments of the registry (env_server/registry.py) whose positions Parley reads itself:
# registry name, alias or import path of the factory -> the reader's import path.
BUILTIN_POSITIONS: dict[str, str] = {
    name: MPE_POSITIONS
    for scenario in ("simple_spread_v3", "simple_tag_v3", "simple_reference_v3")
    for name in (f"mpe2.{scenario}", f"mpe2.{scenario}:parallel_env", scenario)
}


def mpe_positions(env: Any) -> dict[str, np.ndarray]:
    """Each MPE agent's position in the plane (`world.agents[i].state.p_pos`), by agent name."""
    world = getattr(getattr(env, "unwrapped", env), "world", None)
    if world is None:
        raise ValueError(f"{type(env).__name__} has no MPE world (env.unwrapped.world); it is not an MPE environment")
    return {agent.name: agent.state.p_pos for agent in world.agents}


def positions_reader_path(env_name: str, positions: str | None) -> str | None:
    """The import path of the reader for an env section (`env.name`, `env.positions`): the
    configured one, else a built-in one, else None (the env has no positions Parley knows of)."""
    return positions if positions is not None else BUILTIN_POSITIONS.get(env_name)


def load_positions_reader(path: str) -> PositionsReader:
    """The function at `package.module:function`; errors name env.positions."""
    try:
        reader = import_object(path)
    except ImportPathError as error:
        raise ValueError(f"env.positions {path!r}: {error}") from None
    if not callable(reader):
        raise ValueError(f"env.positions {path!r}: expected a function, got {type(reader).__name__}")
    return reader


def read_positions(reader: PositionsReader, env: Any, agents: Sequence[str]) -> np.ndarray:
    """(agents, dims) float64: every agent's position as `reader` gives it, NaN for one it leaves out."""
    given = reader(env)
    if not isinstance(given, Mapping):
        raise ValueError(f"env.positions: expected the reader to return a mapping agent -> position, got {type(given).__name__}")
    unknown = sorted(set(given) - set(agents))
    if unknown:
        raise ValueError(f"env.positions: the reader names agents {unknown}, which are not among the env's {list(agents)}")
    rows = {agent: np.asarray(value, dtype=float).reshape(-1) for agent, value in given.items()}
    sizes = {row.size for row in rows.values()}
    if len(sizes) > 1 or 0 in sizes:
        raise ValueError(f"env.positions: expected one position of the same length for every agent, got lengths "
                         f"{ {agent: row.size for agent, row in rows.items()} }")
    dims = sizes.pop() if sizes else 1
    result = np.full((len(agents), dims), np.nan)
    for index, agent in enumerate(agents):
        if agent in rows:
            result[index] = rows[agent]
    return result
