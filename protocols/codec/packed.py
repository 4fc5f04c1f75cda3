"""Packed bodies for the lockstep's hot messages: env.observation and env.action (and the env
server's copy-worker requests and results).

Every lockstep step sends each client one env.observation and gets one env.action back. As
msgpack bodies these are maps of small arrays whose names, dtypes and shapes never change within
a run, and building and checking those maps was most of the per-message cost of the lockstep
(bench/PROFILE.md, round 5). So a client may ask for packed bodies when it joins
(`EnvJoin.packed`), and the server grants them (`EnvWelcome.packed`) when every space of the
client's agents has a fixed byte layout (`PackedLayout.refusal`) and nothing else travels with
an observation (no forwarded infos, no global view). Both sides then build the same
`PackedLayout` from what the welcome says (the client's agents and their spaces, the env's
possible agents), and the two messages travel as raw bytes behind a fixed struct:

    env.observation  step i64, copies K u32, flags u8 (evaluation, run_finished, finals),
                     missing: one bit per possible agent, episode_start: K bytes,
                     per agent of the client, in the welcome's order:
                         observations (K, *obs_shape), rewards (K,) f32,
                         terminated, truncated, active (K,) bool
                     then, with the finals flag, per agent: final_observations (K, *obs_shape)
    env.action       step i64, copies K u32, flags u8 (evaluation),
                     per agent: actions (K, *action_shape)

K travels in each body because evaluation copies may differ in number from training copies.

The env server's copy workers (env_server/workers.py) use the same layout over every agent for
their two hot messages:

    env.worker_step    copies K u32, per agent: actions (K, *action_shape)
    env.worker_result  copies K u32, flags u8 (all_finished, finals), n u32 episode returns,
                       episode_start: K bytes, the observation's per-agent arrays (finals too),
                       then the n episode returns as f64

The transport packs a message of these types for a peer it has a layout for
(`Channel.use_packed`; protocols/codec/wire.py gives the envelope: one frame, the same magic and
signature, a struct header instead of msgpack, then this body) and unpacks it back into the
same message class, so no handler sees the difference. A body of the wrong size is a `FieldError` and
the message is dropped like any malformed one; action values are checked where msgpack ones are
(the server's barrier: ranges, finiteness). Received arrays are read-only views of the frame.
"""

from __future__ import annotations

import struct
from typing import Any

import gymnasium.spaces as spaces
import numpy as np

from protocols.codec import messages as m
from protocols.codec.errors import FieldError

_HEAD = struct.Struct("<qIB")  # step, copies, flags
_WORKER_STEP_HEAD = struct.Struct("<I")  # copies
_WORKER_RESULT_HEAD = struct.Struct("<IBI")  # copies, flags, episode returns
_EVALUATION, _RUN_FINISHED, _FINALS, _ALL_FINISHED = 1, 2, 4, 8
# What a packed observation carries besides its arrays (step, flags, the missing-agent mask,
# episode returns' count), generously: `largest_observation_bytes` is a bound, not a count.
_FIXED_BODY_ALLOWANCE = 256
_MAX_PLANS = 16  # observation plans kept per layout (see `_observation_plan`)
_RETURN = np.dtype(np.float64)
_BOOL = np.dtype(bool)
_REWARD = np.dtype(np.float32)


def row_layout(space: spaces.Space) -> tuple[np.dtype, tuple[int, ...]] | None:
    """The dtype and shape of one copy's value in `space`, as the env server batches it
    (env_server/vector.py), or None when the space has no fixed layout (Dict, Tuple, ...)."""
    if isinstance(space, spaces.Box):
        return np.dtype(space.dtype), tuple(space.shape)
    if isinstance(space, spaces.Discrete):
        return np.dtype(np.int64), ()
    if isinstance(space, spaces.MultiDiscrete):
        return np.dtype(np.int64), tuple(space.shape)
    if isinstance(space, spaces.MultiBinary):
        return np.dtype(np.int8), tuple(space.shape)
    return None


class _Field:
    """One array of a body: whose, which, where and how it is shaped for K copies."""

    __slots__ = ("agent", "name", "dtype", "row_shape", "row_bytes")

    def __init__(self, agent: str, name: str, dtype: np.dtype, row_shape: tuple[int, ...]) -> None:
        self.agent, self.name, self.dtype, self.row_shape = agent, name, dtype, row_shape
        self.row_bytes = dtype.itemsize * int(np.prod(row_shape, dtype=np.int64))


class PackedLayout:
    """The byte layout of one client's packed bodies, or of the copy workers' over every agent
    (module docstring)."""

    def __init__(
        self,
        agents: list[str],
        observation_spaces: dict[str, spaces.Space],
        action_spaces: dict[str, spaces.Space],
        possible_agents: list[str],
    ) -> None:
        refusal = self.refusal(agents, observation_spaces, action_spaces)
        if refusal is not None:
            raise ValueError(refusal)
        self.agents = list(agents)
        self.possible_agents = list(possible_agents)
        self._agent_bit = {agent: index for index, agent in enumerate(self.possible_agents)}
        self._mask_bytes = (len(self.possible_agents) + 7) // 8
        self._no_missing = bytes(self._mask_bytes)
        observed = {agent: row_layout(observation_spaces[agent]) for agent in self.agents}
        self._step_fields = [
            _Field(agent, name, dtype, shape)
            for agent in self.agents
            for name, (dtype, shape) in (("observations", observed[agent]), ("rewards", (_REWARD, ())),
                                         ("terminated", (_BOOL, ())), ("truncated", (_BOOL, ())), ("active", (_BOOL, ())))
        ]
        self._final_fields = [_Field(agent, "final_observations", *observed[agent]) for agent in self.agents]
        self._action_fields = [_Field(agent, "actions", *row_layout(action_spaces[agent])) for agent in self.agents]
        self._observation_plans: dict[tuple[int, int, bool], tuple[int, list[tuple]]] = {}  # see _observation_plan
        self._packers = {m.EnvObservation: self.pack_observation, m.EnvAction: self.pack_action,
                         m.EnvWorkerStep: self.pack_worker_step, m.EnvWorkerResult: self.pack_worker_result}
        self._unpackers = {m.EnvObservation.MSG_TYPE: self.unpack_observation, m.EnvAction.MSG_TYPE: self.unpack_action,
                           m.EnvWorkerStep.MSG_TYPE: self.unpack_worker_step, m.EnvWorkerResult.MSG_TYPE: self.unpack_worker_result}

    @staticmethod
    def refusal(agents: list[str], observation_spaces: dict[str, spaces.Space],
                action_spaces: dict[str, spaces.Space]) -> str | None:
        """Why these agents' messages cannot be packed, or None when they can."""
        for agent in agents:
            for what, space in (("observation", observation_spaces[agent]), ("action", action_spaces[agent])):
                if row_layout(space) is None:
                    return f"{agent}'s {what} space {space} has no fixed byte layout (Box, Discrete, MultiDiscrete, MultiBinary)"
        return None

    @staticmethod
    def largest_observation_bytes(agents: list[str], observation_spaces: dict[str, spaces.Space], copies: int) -> int:
        """An upper bound on a packed env.observation's body for `copies` copies: every copy's
        observation and final observation, reward and flags, per agent, plus the fixed part."""
        per_copy = 0
        for agent in agents:
            dtype, shape = row_layout(observation_spaces[agent])
            per_copy += 2 * dtype.itemsize * int(np.prod(shape, dtype=np.int64)) + _REWARD.itemsize + 3 * _BOOL.itemsize
        return _FIXED_BODY_ALLOWANCE + copies * (per_copy + _RETURN.itemsize)

    # ------------------------------------------------------------------ every message

    def fits(self, message: Any) -> bool:
        """Whether `message` has the layout's fields and no others: actions for each of the
        layout's agents (RemoteParallelEnv leaves out agents that are done: such an action goes as
        msgpack), observations without infos, global view or positions, with finals for all or none."""
        kind = type(message)
        if kind is m.EnvAction or kind is m.EnvWorkerStep:
            return len(message.actions) == len(self.agents) and all(agent in message.actions for agent in self.agents)
        if kind is m.EnvObservation:
            if message.global_state is not None or message.joint_action is not None or message.positions is not None:
                return False
        elif kind is not m.EnvWorkerResult:
            return False
        finals = message.final_observations
        return not message.infos and (not finals or all(agent in finals for agent in self.agents))

    def pack(self, message: Any) -> bytes:
        """The body of a message that `fits`."""
        return self._packers[type(message)](message)

    def largest_action_bytes(self, copies: int) -> int:
        """A packed env.action's body for `copies` copies (the shared-memory slot's capacity)."""
        return _HEAD.size + copies * sum(field.row_bytes for field in self._action_fields)

    def unpack(self, msg_type: str, data: Any) -> Any:
        if type(data) is not bytes:  # a zmq frame's memory (CURVE): received arrays must be read-only
            data = bytes(data)
        return self._unpackers[msg_type](data)

    # ------------------------------------------------------------------ env.observation

    def pack_observation(self, observation: m.EnvObservation) -> bytes:
        return self.pack_step_result(observation, step=observation.step, missing=observation.missing,
                                     run_finished=observation.run_finished, evaluation=observation.evaluation)

    def pack_step_result(self, result: Any, *, step: int, missing: list[str], run_finished: bool, evaluation: bool) -> bytes:
        """The env.observation body of `result`'s rows for the layout's agents. `result` is an
        `EnvObservation`, or the env server's whole `BatchedStep` (same field names, every agent's
        rows): the server's write into a client's shared-memory slot packs straight from the
        step, without the per-client message (`Channel.write_packed`). Either gives the same bytes."""
        copies = len(result.episode_start)
        finals = result.final_observations
        flags = (_EVALUATION if evaluation else 0) | (_RUN_FINISHED if run_finished else 0) | (_FINALS if finals else 0)
        parts = [_HEAD.pack(step, copies, flags), self._missing_mask(missing)]
        self._append_step_arrays(parts, result, copies)
        return b"".join(parts)

    def _append_step_arrays(self, parts: list[Any], message: Any, copies: int) -> None:
        """episode_start and every agent's arrays of an observation or worker result, in layout order."""
        parts.append(_raw(message.episode_start, _BOOL, copies, "episode_start"))
        for field in self._step_fields:
            parts.append(_raw(getattr(message, field.name)[field.agent], field.dtype, copies * field.row_bytes, field.name))
        if message.final_observations:
            for field in self._final_fields:
                parts.append(_raw(message.final_observations[field.agent], field.dtype, copies * field.row_bytes, field.name))

    def unpack_observation(self, data: Any) -> m.EnvObservation:
        step, copies, flags = self._head(data, "env.observation")
        start = _HEAD.size + self._mask_bytes
        size, fields = self._read_step_arrays(data, start, copies, bool(flags & _FINALS))
        if len(data) != size:
            raise FieldError(f"packed env.observation for {copies} copies of {self.agents}: expected {size} bytes, got {len(data)}")
        mask = data[_HEAD.size : start]
        missing = [] if not any(mask) else [
            agent for agent, bit in self._agent_bit.items() if mask[bit >> 3] & (1 << (bit & 7))
        ]
        return m.EnvObservation(step=step, missing=missing, evaluation=bool(flags & _EVALUATION),
                                run_finished=bool(flags & _RUN_FINISHED), **fields)

    def _read_step_arrays(self, data: bytes, start: int, copies: int, finals: bool) -> tuple[int, dict[str, Any]]:
        """(where the arrays end, the message fields they fill) for a body whose episode_start
        begins at `start`. Only reads within `data`: the caller then checks the body's size."""
        end, plan = self._observation_plan(start, copies, finals)
        if len(data) < end:
            return end, {}
        fields: dict[str, Any] = {
            "observations": {}, "rewards": {}, "terminated": {}, "truncated": {}, "active": {}, "final_observations": {},
            "episode_start": np.frombuffer(data, _BOOL, copies, start),
        }
        for name, agent, dtype, count, offset, shape in plan:
            array = np.frombuffer(data, dtype, count, offset)
            fields[name][agent] = array if shape is None else array.reshape(shape)
        return end, fields

    def _observation_plan(self, start: int, copies: int, finals: bool) -> tuple[int, list[tuple]]:
        """(where the arrays end, where each lies) for `copies` copies after episode_start at
        `start`, computed once per K: the receiving side reads every body with it."""
        plan = self._observation_plans.get((start, copies, finals))
        if plan is None:
            if len(self._observation_plans) >= _MAX_PLANS:
                # A run uses one or two K (training and evaluation copies); a body claiming ever
                # new ones (signed, yet wrong) must not grow this cache without bound.
                self._observation_plans.clear()
            offset = start + copies  # after episode_start
            arrays = []
            for field in (self._step_fields + self._final_fields) if finals else self._step_fields:
                shape = (copies, *field.row_shape) if field.row_shape else None
                arrays.append((field.name, field.agent, field.dtype, copies * field.row_bytes // field.dtype.itemsize, offset, shape))
                offset += copies * field.row_bytes
            plan = self._observation_plans[(start, copies, finals)] = (offset, arrays)
        return plan

    def _missing_mask(self, missing: list[str]) -> bytes:
        if not missing:
            return self._no_missing
        mask = bytearray(self._mask_bytes)
        for agent in missing:
            bit = self._agent_bit[agent]
            mask[bit >> 3] |= 1 << (bit & 7)
        return bytes(mask)

    # ------------------------------------------------------------------ env.action

    def pack_action(self, action: m.EnvAction) -> bytes:
        copies = self._copies_of(action.actions)
        return b"".join([_HEAD.pack(action.step, copies, _EVALUATION if action.evaluation else 0), *self._action_arrays(action.actions, copies)])

    def unpack_action(self, data: Any) -> m.EnvAction:
        return m.EnvAction(*self.unpack_action_fields(data))

    def unpack_action_fields(self, data: Any) -> tuple[int, dict[str, np.ndarray], bool]:
        """An env.action body's step, actions and evaluation flag, without the message object."""
        step, copies, flags = self._head(data, "env.action")
        return step, self._read_actions(data, _HEAD.size, copies, "env.action"), bool(flags & _EVALUATION)

    def _copies_of(self, actions: dict[str, Any]) -> int:
        first = np.asarray(actions[self.agents[0]])
        if first.ndim == 0:
            raise ValueError(f"actions[{self.agents[0]!r}]: expected a batch shaped (K, ...), got a scalar")
        return len(first)

    def _action_arrays(self, actions: dict[str, Any], copies: int) -> list[Any]:
        return [_raw(actions[f.agent], f.dtype, copies * f.row_bytes, f"actions[{f.agent!r}]") for f in self._action_fields]

    def _read_actions(self, data: bytes, start: int, copies: int, what: str) -> dict[str, np.ndarray]:
        expected = start + copies * sum(f.row_bytes for f in self._action_fields)
        if len(data) != expected:
            raise FieldError(f"packed {what} for {copies} copies of {self.agents}: expected {expected} bytes, got {len(data)}")
        actions, offset = {}, start
        for field in self._action_fields:
            count = copies * field.row_bytes // field.dtype.itemsize
            array = np.frombuffer(data, field.dtype, count, offset)
            actions[field.agent] = array.reshape(copies, *field.row_shape) if field.row_shape else array
            offset += copies * field.row_bytes
        return actions

    # ------------------------------------------------------------------ the copy workers' messages

    def pack_worker_step(self, request: m.EnvWorkerStep) -> bytes:
        copies = self._copies_of(request.actions)
        return b"".join([_WORKER_STEP_HEAD.pack(copies), *self._action_arrays(request.actions, copies)])

    def unpack_worker_step(self, data: Any) -> m.EnvWorkerStep:
        (copies,) = _unpack_head(_WORKER_STEP_HEAD, data, "env.worker_step")
        return m.EnvWorkerStep(actions=self._read_actions(data, _WORKER_STEP_HEAD.size, copies, "env.worker_step"))

    def pack_worker_result(self, result: m.EnvWorkerResult) -> bytes:
        copies = len(result.episode_start)
        flags = (_ALL_FINISHED if result.all_finished else 0) | (_FINALS if result.final_observations else 0)
        parts = [_WORKER_RESULT_HEAD.pack(copies, flags, len(result.episode_returns))]
        self._append_step_arrays(parts, result, copies)
        parts.append(np.asarray(result.episode_returns, dtype=_RETURN))
        return b"".join(parts)

    def unpack_worker_result(self, data: Any) -> m.EnvWorkerResult:
        copies, flags, returns = _unpack_head(_WORKER_RESULT_HEAD, data, "env.worker_result")
        end, fields = self._read_step_arrays(data, _WORKER_RESULT_HEAD.size, copies, bool(flags & _FINALS))
        if len(data) != end + returns * _RETURN.itemsize:
            raise FieldError(f"packed env.worker_result for {copies} copies and {returns} episode returns: "
                             f"expected {end + returns * _RETURN.itemsize} bytes, got {len(data)}")
        return m.EnvWorkerResult(**fields, episode_returns=np.frombuffer(data, _RETURN, returns, end).tolist(),
                                 all_finished=bool(flags & _ALL_FINISHED))

    @staticmethod
    def _head(data: Any, what: str) -> tuple[int, int, int]:
        return _unpack_head(_HEAD, data, what)


def _unpack_head(head: struct.Struct, data: Any, what: str) -> tuple:
    if len(data) < head.size:
        raise FieldError(f"packed {what}: {len(data)} bytes, shorter than its {head.size}-byte header")
    return head.unpack_from(data)


def _raw(value: Any, dtype: np.dtype, nbytes: int, what: str) -> Any:
    """`value` as contiguous bytes of `dtype` (no copy when it already is), checked to be `nbytes` long."""
    array = value if type(value) is np.ndarray and value.dtype == dtype else _converted(value, dtype, what)
    if array.nbytes != nbytes:
        raise ValueError(f"{what}: {array.shape} of {dtype} is {array.nbytes} bytes, the layout expects {nbytes}")
    return array if array.flags.c_contiguous else np.ascontiguousarray(array)


def _converted(value: Any, dtype: np.dtype, what: str) -> np.ndarray:
    array = np.asarray(value)
    if not np.can_cast(array.dtype, dtype, "same_kind"):
        raise ValueError(f"{what}: expected {dtype} values, got {array.dtype}")
    return array.astype(dtype, copy=False)
