"""K copies of a PettingZoo ParallelEnv stepped together, with per-agent batched arrays.

The env server talks to agents in batches: every observation, reward and flag an agent receives
has a leading axis of length K (one row per copy), and every action it sends has one too. This
module owns that batching and nothing else (no sockets, no clocks), so it is tested directly.

Agents that are not part of a copy's current step (PettingZoo removes agents that are done
before the others) are marked inactive; their rows hold zeros and their actions are ignored.
With `autoreset`, a copy whose episode ended is reset inside `step`: the result then holds the
first observation of the new episode, the last observation of the old one in
`final_observations`, and `episode_start` marks that copy.

Infos: PettingZoo's per-agent `infos` are dropped unless `forward_infos` names keys to keep
(the env section's `forward_infos`), so the lockstep hot path pays nothing for them, or is
`"all"` (`ALL_INFOS`): every key whose value is a number or a numeric array, as a local env would
hand them over (the standalone server's default, for `RemoteParallelEnv`); keys holding anything
else (strings, nested dicts) are left out and named once in the log. A kept key
must hold a number or a numeric array; it is batched per agent as `infos[agent][key]`:

- an array shaped (K, ...) when every copy reported it for the agent with one shape and dtype
  (e.g. goal_lines' `landmark`, one int per copy), else
- a list of K entries, each the copy's value as an array or None where the agent did not report it
  (inactive in that copy), e.g. goal_lines' `achieved_goals`, whose length varies per copy.

Both are msgpack-safe (arrays travel as raw frames). With autoreset, a copy that just reset carries
the infos of the step that ended its episode (like its rewards), not those of the new reset.
A named key no agent reports at the first reset (or, if the env reports no infos at reset, at
the first step) is refused there with a ValueError naming it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Union

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

from env_server.positions import PositionsReader, read_positions
from protocols.codec.packed import PackedLayout
from protocols.codec.wire import MAX_PACKED_BODY_BYTES

log = logging.getLogger(__name__)

# `forward_infos` either names the keys to keep or is ALL_INFOS: every numeric key.
ALL_INFOS = "all"
InfoKeys = Union[tuple[str, ...], Literal["all"]]


def info_keys(setting: Any) -> InfoKeys:
    """The env section's `forward_infos` (a list of names, or "all") as the vector env takes it."""
    return ALL_INFOS if setting == ALL_INFOS else tuple(setting)


@dataclass
class BatchedStep:
    """Per-agent batched arrays of one lockstep step over K copies."""

    observations: dict[str, Any]
    rewards: dict[str, np.ndarray]
    terminated: dict[str, np.ndarray]
    truncated: dict[str, np.ndarray]
    active: dict[str, np.ndarray]
    final_observations: dict[str, Any]
    episode_start: np.ndarray
    episode_returns: list[float] = field(default_factory=list)  # mean-over-agents returns of episodes that just ended
    infos: dict[str, dict[str, Any]] = field(default_factory=dict)  # agent -> key -> batched (see the module docstring)
    # Each agent's return in each episode of `episode_returns`, same order; filled by the copies of
    # this process (VectorizedParallelEnv: the evaluation copies always are), empty from workers.
    episode_agent_returns: list[dict[str, float]] = field(default_factory=list)
    # Every agent's position in each copy after this step, (K, agents, dims), when the env server
    # publishes them (topology.kind: proximity; env_server/positions.py), else None.
    positions: np.ndarray | None = None


def batch_infos(per_copy: list[dict[str, dict]], agents: list[str], keys: InfoKeys,
                skipped: set[str] | None = None) -> dict[str, dict[str, Any]]:
    """`infos[agent][key]` over K copies: an array (K, ...) if every copy has one shape and dtype,
    else a list of K arrays (None where the agent did not report the key). With `keys` ALL_INFOS,
    every key some copy reports for the agent; one that holds anything but numbers is left out
    and added to `skipped` (a named key must be numeric: ValueError)."""
    batched: dict[str, dict[str, Any]] = {}
    for agent in agents:
        entries: dict[str, Any] = {}
        agent_keys = keys
        if keys == ALL_INFOS:
            agent_keys = sorted({key for copy_infos in per_copy for key in copy_infos.get(agent, {})})
        for key in agent_keys:
            rows = []
            for copy_infos in per_copy:
                value = copy_infos.get(agent, {}).get(key)
                if value is not None and keys == ALL_INFOS and not is_numeric_info(value):
                    if skipped is not None:
                        skipped.add(key)
                    rows = [None]
                    break
                rows.append(None if value is None else numeric_info(value, agent, key))
            if all(r is None for r in rows):
                continue
            first = rows[0]
            if first is not None and all(r is not None and r.shape == first.shape and r.dtype == first.dtype for r in rows):
                entries[key] = np.stack(rows)
            else:
                entries[key] = rows
        if entries:
            batched[agent] = entries
    return batched


def is_numeric_info(value: Any) -> bool:
    try:
        return np.asarray(value).dtype.kind in "biuf"
    except (ValueError, TypeError):  # ragged nested lists
        return False


def numeric_info(value: Any, agent: str, key: str) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise ValueError(
            f"env.forward_infos: infos[{agent!r}][{key!r}] must be a number or a numeric array, "
            f"got {type(value).__name__} (dtype {array.dtype})"
        )
    return array


def check_info_keys(per_copy: list[dict[str, dict]], keys: InfoKeys) -> None:
    """Refuse forwarded keys that no agent of any copy reports (at the first reset)."""
    if keys == ALL_INFOS:
        return
    reported = {key for copy_infos in per_copy for agent_infos in copy_infos.values() for key in agent_infos}
    unknown = [key for key in keys if key not in reported]
    if unknown:
        raise ValueError(
            f"env.forward_infos names {unknown}, which the environment does not report in its infos; "
            f"it reports {sorted(reported)}"
        )


def zeros_like_space(space: spaces.Space) -> Any:
    if isinstance(space, spaces.Dict):
        return {key: zeros_like_space(sub) for key, sub in space.spaces.items()}
    if isinstance(space, spaces.Box):
        return np.clip(np.zeros(space.shape, dtype=space.dtype), space.low, space.high)
    if isinstance(space, spaces.Discrete):
        return np.asarray(space.start, dtype=np.int64)
    if isinstance(space, spaces.MultiDiscrete):
        return np.asarray(space.start, dtype=np.int64) if hasattr(space, "start") else np.zeros(space.shape, np.int64)
    if isinstance(space, spaces.MultiBinary):
        return np.zeros(space.shape, dtype=np.int8)
    raise TypeError(f"unsupported space for batching: {space}")


def stack(space: spaces.Space, rows: list[Any]) -> Any:
    """Stack K per-copy values (None for an inactive agent) into one batched value."""
    if isinstance(space, spaces.Dict):
        return {
            key: stack(sub, [None if row is None else row[key] for row in rows])
            for key, sub in space.spaces.items()
        }
    filler = zeros_like_space(space)
    return np.stack([np.asarray(filler if row is None else row, dtype=np.asarray(filler).dtype) for row in rows])


def row(batched: Any, index: int) -> Any:
    """The value of copy `index` in a batched value."""
    if isinstance(batched, dict):
        return {key: row(value, index) for key, value in batched.items()}
    value = batched[index]
    return value.item() if isinstance(value, np.ndarray) and value.ndim == 0 else value


def packing_refusal(envs: Any, agents: list[str], copies: int | None = None, *, shared_memory: bool = False) -> str | None:
    """Why these agents' lockstep messages from `envs` (a vector env, or copies split over
    workers) cannot travel packed (protocols/codec/packed.py), or None: forwarded infos have no fixed
    layout, nor have some spaces. The env server and its copy workers both ask it.

    `shared_memory`: the client may have the shared-memory path (protocols/net/shm_lockstep.py),
    whose slots hold a body of any size: no bound on the size then (a body too large for a
    packed frame that cannot go through the segment goes as msgpack, protocols/net/transport.py)."""
    if envs.forward_infos:
        return "infos are forwarded (env.forward_infos)"
    if getattr(envs, "positions_reader", None) is not None:
        return "positions are published (topology.kind: proximity)"
    refusal = PackedLayout.refusal(agents, envs.observation_spaces, envs.action_spaces)
    if refusal is not None:
        return refusal
    # A packed body travels inside the message's head frame, which a receiver refuses past
    # MAX_HEAD_BYTES (protocols/codec/wire.py); msgpack bodies carry large arrays in frames of their own.
    copies = envs.num_copies if copies is None else copies
    size = PackedLayout.largest_observation_bytes(agents, envs.observation_spaces, copies)
    if size > MAX_PACKED_BODY_BYTES and not shared_memory:
        return (f"an observation of {copies} copies takes up to {size} bytes, over the "
                f"{MAX_PACKED_BODY_BYTES} a packed frame may carry (image observations, say)")
    return None


def copy_rows(batched: Any, num_copies: int) -> list[Any]:
    """The K per-copy values of a batched action, as `row` gives them; a batch of integers
    (Discrete) as Python ints in one call, not K numpy scalars (it runs per agent and step)."""
    if type(batched) is np.ndarray and batched.ndim == 1 and batched.dtype.kind in "iu":
        return batched.tolist()
    return [row(batched, index) for index in range(num_copies)]


def check_batched(space: spaces.Space, batched: Any, num_copies: int, where: str) -> None:
    """Raise ValueError naming what was expected if `batched` is not K valid actions.

    Runs for every action the env server receives: a Discrete batch, the common case, is
    checked on its K Python ints (for the few copies of a lockstep, cheaper than numpy's
    comparisons, ~0.3 against ~2 us)."""
    if type(space) is spaces.Discrete and type(batched) is np.ndarray and batched.shape == (num_copies,):
        if batched.dtype.kind not in "iu":
            raise ValueError(f"{where}: expected integer actions, got dtype {batched.dtype}")
        (low, high), values = _integer_bounds(space), batched.tolist()
        if min(values) < low or max(values) > high:
            index = next(i for i, value in enumerate(values) if not low <= value <= high)
            raise ValueError(f"{where}[{index}]: {batched[index]} is outside {space}")
        return
    if isinstance(space, spaces.Dict):
        if not isinstance(batched, dict) or set(batched) != set(space.spaces):
            raise ValueError(f"{where}: expected a map with keys {sorted(space.spaces)}")
        for key, sub in space.spaces.items():
            check_batched(sub, batched[key], num_copies, f"{where}.{key}")
        return
    if not isinstance(batched, np.ndarray):
        raise ValueError(f"{where}: expected an array, got {type(batched).__name__}")
    expected_shape = (num_copies, *space.shape)
    if batched.shape != expected_shape:
        raise ValueError(f"{where}: expected shape {expected_shape}, got {batched.shape}")
    if isinstance(space, (spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)):
        if batched.dtype.kind not in "iu":
            raise ValueError(f"{where}: expected integer actions, got dtype {batched.dtype}")
        # Vectorized over the K rows (gymnasium's `contains` per row costs ~1 us each).
        low, high = _integer_bounds(space)
        outside = (batched < low) | (batched > high)
        if outside.any():
            index = int(np.nonzero(outside.reshape(num_copies, -1).any(axis=1))[0][0])
            raise ValueError(f"{where}[{index}]: {batched[index]} is outside {space}")
    elif not np.isfinite(batched).all():
        raise ValueError(f"{where}: actions must be finite")


def _integer_bounds(space: spaces.Space) -> tuple[Any, Any]:
    """Inclusive bounds of one row of an integer space (arrays broadcast over the K rows)."""
    if isinstance(space, spaces.Discrete):
        return int(space.start), int(space.start) + int(space.n) - 1
    if isinstance(space, spaces.MultiDiscrete):
        start = getattr(space, "start", np.zeros_like(space.nvec))
        return start, start + space.nvec - 1
    return 0, 1  # MultiBinary


class VectorizedParallelEnv:
    def __init__(self, factory: Callable[[], ParallelEnv], num_copies: int, *, autoreset: bool,
                 forward_infos: Any = (), positions_reader: PositionsReader | None = None) -> None:
        if num_copies < 1:
            raise ValueError(f"num_copies must be >= 1, got {num_copies}")
        self.copies = [factory() for _ in range(num_copies)]
        self.num_copies = num_copies
        self.autoreset = autoreset
        self.forward_infos = info_keys(forward_infos)
        # Publish every agent's position with each step (topology.kind: proximity), read by this.
        self.positions_reader = positions_reader
        self._info_keys_checked = False
        self._skipped_infos: set[str] = set()  # non-numeric keys left out under ALL_INFOS, logged once each
        first = self.copies[0]
        self.possible_agents: list[str] = list(first.possible_agents)
        self.observation_spaces = {a: first.observation_space(a) for a in self.possible_agents}
        self.action_spaces = {a: first.action_space(a) for a in self.possible_agents}
        self.metadata = dict(getattr(first, "metadata", {}))
        # An environment may describe its reward function (`task_spec()`), so model-based
        # agents can score imagined transitions without importing the environment.
        self.task_spec = first.task_spec() if hasattr(first, "task_spec") else None
        self._agent_index = {agent: i for i, agent in enumerate(self.possible_agents)}
        # Filled in once: `_batch` runs every step for every agent.
        self._fillers = {a: zeros_like_space(space) for a, space in self.observation_spaces.items()}
        # Per copy, per agent: the return of the running episode (Python floats: added to per agent and step).
        self._returns = [[0.0] * len(self.possible_agents) for _ in range(num_copies)]
        self._finished = [False] * num_copies
        self._last_obs: list[dict[str, Any]] = [{} for _ in range(num_copies)]

    @property
    def all_finished(self) -> bool:
        return all(self._finished)

    def copy_running(self, index: int) -> bool:
        """Whether copy `index`'s episode is still going (without autoreset, a copy that ended
        waits for the next reset)."""
        return not self._finished[index]

    def assign_goals(self, index: int, goals: dict[str, int]) -> None:
        """Give copy `index`'s env the goals to pay in its running episode (goal_lines'
        `assign_goals`); ValueError when the env takes no goals or refuses these."""
        env = getattr(self.copies[index], "unwrapped", self.copies[index])
        if not hasattr(env, "assign_goals"):
            raise ValueError(f"{type(env).__name__} takes no goals to pay (it has no assign_goals method)")
        env.assign_goals(goals)

    def reset(self, seed: int | None) -> BatchedStep:
        per_copy, infos = [], []
        for index, env in enumerate(self.copies):
            observations, copy_infos = env.reset(seed=None if seed is None else seed + index)
            per_copy.append(observations)
            infos.append(copy_infos)
        # Many envs report nothing at reset: then the keys are checked at the first step.
        if self.forward_infos and not self._info_keys_checked and any(any(c.values()) for c in infos):
            check_info_keys(infos, self.forward_infos)
            self._info_keys_checked = True
        self._returns = [[0.0] * len(self.possible_agents) for _ in range(self.num_copies)]
        self._finished = [False] * self.num_copies
        self._last_obs = per_copy
        starts = np.ones(self.num_copies, dtype=bool)
        result = self._batch(per_copy, [{}] * self.num_copies, [{}] * self.num_copies, [{}] * self.num_copies,
                             [{}] * self.num_copies, starts, [])
        if self.forward_infos:
            result.infos = self._batch_infos(infos)
        result.positions = self._positions()
        return result

    def _batch_infos(self, infos: list[dict[str, dict]]) -> dict[str, dict[str, Any]]:
        skipped: set[str] = set()
        batched = batch_infos(infos, self.possible_agents, self.forward_infos, skipped)
        if skipped - self._skipped_infos:
            log.warning("forward_infos: all: info keys %s hold values other than numbers and are not forwarded",
                        sorted(skipped - self._skipped_infos))
            self._skipped_infos |= skipped
        return batched

    def step(self, actions: dict[str, Any]) -> BatchedStep:
        observations, rewards, terminated, truncated, finals, infos = [], [], [], [], [], []
        starts = np.zeros(self.num_copies, dtype=bool)
        ended_returns: list[float] = []
        ended_agent_returns: list[dict[str, float]] = []
        rows = {agent: copy_rows(value, self.num_copies) for agent, value in actions.items()}
        for index, env in enumerate(self.copies):
            if self._finished[index]:  # only without autoreset: wait for an explicit reset
                observations.append({}), rewards.append({}), terminated.append({}), truncated.append({}), finals.append({})
                infos.append({})
                continue
            copy_actions = {agent: rows[agent][index] for agent in env.agents}
            obs, rew, term, trunc, copy_infos = env.step(copy_actions)
            infos.append(copy_infos)
            returns = self._returns[index]
            for agent, value in rew.items():
                returns[self._agent_index[agent]] += value
            final = {}
            if not env.agents:  # the episode of this copy is over
                ended_returns.append(float(np.mean(returns)))
                ended_agent_returns.append({agent: float(returns[i]) for i, agent in enumerate(self.possible_agents)})
                self._returns[index] = [0.0] * len(returns)
                if self.autoreset:
                    final = obs
                    obs, _ = env.reset()
                    starts[index] = True
                else:
                    self._finished[index] = True
            self._last_obs[index] = obs
            observations.append(obs), rewards.append(rew), terminated.append(term), truncated.append(trunc)
            finals.append(final)
        result = self._batch(observations, rewards, terminated, truncated, finals, starts, ended_returns)
        result.episode_agent_returns = ended_agent_returns
        if self.forward_infos:
            if not self._info_keys_checked:
                check_info_keys(infos, self.forward_infos)
                self._info_keys_checked = True
            result.infos = self._batch_infos(infos)
        result.positions = self._positions()
        return result

    def _positions(self) -> np.ndarray | None:
        """Every copy's agent positions now (after its autoreset, like its observations), or None
        when they are not published."""
        if self.positions_reader is None:
            return None
        return np.stack([read_positions(self.positions_reader, env, self.possible_agents) for env in self.copies])

    def _batch(self, observations, rewards, terminated, truncated, finals, starts, ended_returns) -> BatchedStep:
        """The copies' per-agent dicts as per-agent arrays with a leading axis of K.

        Runs once per lockstep step on the server's critical path, so the scalars of every agent
        and copy are written into one fresh (N, K) array per field and each agent gets a row of
        it (a view), instead of one small array built from a list per agent and field. Fresh
        arrays every step: a held result (evaluation, episode hold) must not change under it."""
        agents, index, copies = self.possible_agents, self._agent_index, self.num_copies
        reward = np.zeros((len(agents), copies), dtype=np.float32)
        flags = np.zeros((3, len(agents), copies), dtype=bool)  # terminated, truncated, active
        for copy in range(copies):
            for agent, value in rewards[copy].items():
                reward[index[agent], copy] = value
            for field, per_copy in ((0, terminated), (1, truncated)):
                for agent, value in per_copy[copy].items():
                    if value:
                        flags[field, index[agent], copy] = True
            for agent in observations[copy]:
                flags[2, index[agent], copy] = True
        result = BatchedStep(self._stack_observations(observations), {}, {}, {}, {}, {}, starts, ended_returns)
        for position, agent in enumerate(agents):
            result.rewards[agent] = reward[position]
            result.terminated[agent] = flags[0, position]
            result.truncated[agent] = flags[1, position]
            result.active[agent] = flags[2, position]
        if any(final for final in finals):
            result.final_observations = self._stack_observations(finals)
        return result

    def _stack_observations(self, per_copy: list[dict[str, Any]]) -> dict[str, Any]:
        """agent -> its K rows stacked; an agent absent from a copy gets its space's zeros there."""
        stacked = {}
        for agent in self.possible_agents:
            rows = [obs.get(agent) for obs in per_copy]
            filler = self._fillers[agent]
            if type(filler) is np.ndarray and all(type(r) is np.ndarray and r.dtype == filler.dtype for r in rows):
                stacked[agent] = np.array(rows)  # the common case: a copy, ~6x cheaper than np.stack
            else:
                stacked[agent] = stack(self.observation_spaces[agent], rows)
        return stacked

    def close(self) -> None:
        for env in self.copies:
            env.close()
