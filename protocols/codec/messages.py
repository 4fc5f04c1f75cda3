"""Typed message bodies and the registry that maps `msg_type` strings to them.

Every body that crosses the wire is a frozen dataclass registered under its `msg_type` with the
`register_message` decorator. The codec (`protocols/codec/wire.py`) turns a dataclass into a msgpack
map (numpy arrays travel as separate raw frames) and, on receipt, back into the dataclass after
checking every field against its annotation here: `from_body` is the one place where a body's
field types, dtypes and shapes are validated.

Field annotations may use: int, float, str, bool, bytes, None, `X | None`, list[X],
tuple[X, ...], dict[str, X], np.ndarray and Any (not checked). Unknown extra fields in a
received body are ignored, so a newer sender can add fields without breaking older receivers.

This module holds the messages of the control plane, the environment and membership. Each
protocol engine registers its own messages next to its engine (e.g. `protocols/engines/consensus.py`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from protocols.codec.errors import FieldError, UnknownMessageType

MESSAGE_TYPES: dict[str, type] = {}

# Dtypes allowed on the wire: plain numeric and boolean. No object arrays (they would need pickle).
WIRE_DTYPES = frozenset(
    np.dtype(name).str
    for name in (
        "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
        "float16", "float32", "float64",
    )
)


def register_message(msg_type: str):
    """Class decorator: register a frozen dataclass as the body of `msg_type`."""

    def decorate(cls):
        if not dataclasses.is_dataclass(cls) or not cls.__dataclass_params__.frozen:
            raise TypeError(f"{cls.__name__} must be a frozen dataclass to be a message body")
        if msg_type in MESSAGE_TYPES:
            raise ValueError(f"message type {msg_type!r} registered twice")
        cls.MSG_TYPE = msg_type
        MESSAGE_TYPES[msg_type] = cls
        return cls

    return decorate


def message_class(msg_type: str) -> type:
    try:
        return MESSAGE_TYPES[msg_type]
    except KeyError:
        raise UnknownMessageType(
            f"unknown msg_type {msg_type!r}; known: {sorted(MESSAGE_TYPES)}"
        ) from None


def to_body(message: Any) -> dict[str, Any]:
    """The dataclass as a plain dict (shallow: nested values are left as they are)."""
    cls = type(message)
    names = _FIELD_NAMES.get(cls)
    if names is None:  # once per class: dataclasses.fields() is slow for a per-message call
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(message))
    return {name: getattr(message, name) for name in names}


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def from_body(msg_type: str, body: Any) -> Any:
    """Build and validate the dataclass registered under `msg_type` from a decoded body map."""
    cls = message_class(msg_type)
    if not isinstance(body, dict):
        raise FieldError(f"{msg_type}: body must be a map, got {type(body).__name__}")
    values = {}
    for name, check, required in _field_checkers(cls):
        if name in body:
            try:
                values[name] = check(body[name])
            except _Mismatch as mismatch:
                raise FieldError(mismatch.describe(f"{msg_type}.{name}")) from None
        elif required:
            raise FieldError(f"{msg_type}: required field {name!r} is missing")
    return cls(**values)


# Validation runs on every received message, so each annotation is turned once into a checker
# function, and the path of a bad value ("body.field[3]['key']") is only built when a check
# fails: a checker raises `_Mismatch`, and every container on the way out prepends its part.

Checker = Callable[[Any], Any]
_FIELD_CHECKERS: dict[type, list[tuple[str, Checker, bool]]] = {}
_CHECKERS: dict[Any, Checker] = {}


class _Mismatch(Exception):
    def __init__(self, hint: Any, value: Any) -> None:
        self.hint, self.value, self.path = hint, value, ""

    def describe(self, where: str) -> str:
        return f"{where}{self.path}: expected {_describe(self.hint)}, got {_describe_value(self.value)}"


def _field_checkers(cls: type) -> list[tuple[str, Checker, bool]]:
    if cls not in _FIELD_CHECKERS:
        hints = typing.get_type_hints(cls)
        checkers = []
        for f in dataclasses.fields(cls):
            try:
                check = _checker(hints[f.name])
            except TypeError as error:
                raise TypeError(f"{getattr(cls, 'MSG_TYPE', cls.__name__)}.{f.name}: {error}") from None
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            checkers.append((f.name, check, required))
        _FIELD_CHECKERS[cls] = checkers
    return _FIELD_CHECKERS[cls]


def _checker(hint: Any) -> Checker:
    """The function that returns a value matching `hint` (tuples for tuple hints) or raises."""
    if hint not in _CHECKERS:
        _CHECKERS[hint] = _build_checker(hint)
    return _CHECKERS[hint]


def _build_checker(hint: Any) -> Checker:
    if hint is Any:
        return lambda value: value
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        # A nested typed record (e.g. the task spec inside env.welcome): a map checked field by
        # field like a body, with the field's path in the error.
        fields = _field_checkers(hint)

        def check_record(value):
            if not isinstance(value, dict):
                raise _Mismatch(hint, value)
            values = {}
            for name, check, required in fields:
                if name in value:
                    try:
                        values[name] = check(value[name])
                    except _Mismatch as mismatch:
                        mismatch.path = f".{name}{mismatch.path}"
                        raise
                elif required:
                    raise _Mismatch(hint, value)
            return hint(**values)

        return check_record
    if hint is float:

        def check_float(value):
            # msgpack keeps 1.0 and 1 apart; a float field accepts an int sent by a lax sender.
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            raise _Mismatch(hint, value)

        return check_float
    if hint is int:

        def check_int(value):
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            raise _Mismatch(hint, value)

        return check_int
    if hint in (str, bool, bytes, np.ndarray, type(None)):

        def check_instance(value):
            if isinstance(value, hint):
                return value
            raise _Mismatch(hint, value)

        return check_instance
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        options = [_checker(option) for option in args]
        optional = type(None) in args

        def check_union(value):
            if value is None and optional:  # `X | None` holding None: the common case, without a failed try
                return None
            deepest = None
            for option in options:
                try:
                    return option(value)
                except _Mismatch as mismatch:
                    if mismatch.path and (deepest is None or len(mismatch.path) > len(deepest.path)):
                        deepest = mismatch
            # An option that matched the value's shape and failed inside it says more (the path
            # of the bad entry) than "not any of the options".
            raise deepest if deepest is not None else _Mismatch(hint, value)

        return check_union
    if origin is list or (origin is tuple and len(args) == 2 and args[1] is Ellipsis):
        item = _checker(args[0])
        collect = list if origin is list else tuple

        def check_sequence(value):
            if not isinstance(value, (list, tuple)):
                raise _Mismatch(hint, value)
            checked = []
            for index, element in enumerate(value):
                try:
                    checked.append(item(element))
                except _Mismatch as mismatch:
                    mismatch.path = f"[{index}]{mismatch.path}"
                    raise
            return collect(checked)

        return check_sequence
    if origin is tuple:
        items = [_checker(arg) for arg in args]

        def check_fixed_tuple(value):
            if not isinstance(value, (list, tuple)) or len(value) != len(items):
                raise _Mismatch(hint, value)
            checked = []
            for index, (element, item) in enumerate(zip(value, items)):
                try:
                    checked.append(item(element))
                except _Mismatch as mismatch:
                    mismatch.path = f"[{index}]{mismatch.path}"
                    raise
            return tuple(checked)

        return check_fixed_tuple
    if origin is dict:
        check_key, check_value = _checker(args[0]), _checker(args[1])

        def check_dict(value):
            if not isinstance(value, dict):
                raise _Mismatch(hint, value)
            checked = {}
            for key, element in value.items():
                try:
                    key = check_key(key)
                except _Mismatch as mismatch:
                    mismatch.path = " key"
                    raise
                try:
                    checked[key] = check_value(element)
                except _Mismatch as mismatch:
                    mismatch.path = f"[{key!r}]{mismatch.path}"
                    raise
            return checked

        plain = args[1] in (str, bytes, np.ndarray)
        if args[0] is str and (args[1] is Any or plain):
            # The maps of the lockstep's messages (agent -> array, agent -> anything): checked in
            # one loop and returned as they are (msgpack built them for this message alone); the
            # general path above only runs to name what is wrong.
            value_type = args[1]

            def check_plain_dict(value):
                if type(value) is dict:
                    if plain:
                        for key, element in value.items():
                            if type(key) is not str or not isinstance(element, value_type):
                                break
                        else:
                            return value
                    else:
                        for key in value:
                            if type(key) is not str:
                                break
                        else:
                            return value
                return check_dict(value)

            return check_plain_dict
        return check_dict
    raise TypeError(f"unsupported annotation {hint!r} in a message dataclass")


def _describe(hint: Any) -> str:
    if hint is np.ndarray:
        return "a numpy array"
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "").replace("numpy.ndarray", "ndarray")


def _describe_value(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"array {value.dtype}{list(value.shape)}"
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}"


def require_array(array: np.ndarray, where: str, *, dtype: Any = None, shape: tuple | None = None) -> np.ndarray:
    """Check an array field's dtype and shape (None in `shape` matches any length)."""
    if dtype is not None and array.dtype != np.dtype(dtype):
        raise FieldError(f"{where}: expected dtype {np.dtype(dtype)}, got {array.dtype}")
    if shape is not None:
        if len(shape) != array.ndim or any(s is not None and s != a for s, a in zip(shape, array.shape)):
            expected = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
            raise FieldError(f"{where}: expected shape {expected}, got {tuple(array.shape)}")
    return array


# --------------------------------------------------------------------------- generic replies


@register_message("error")
@dataclass(frozen=True)
class ErrorReply:
    """Answer to a request that could not be served; `code` is a stable machine-readable tag."""

    code: str
    message: str


# --------------------------------------------------------------------------- control plane
# Node <-> orchestrator. Nodes connect a DEALER to the orchestrator's ROUTER.


@register_message("control.register")
@dataclass(frozen=True)
class Register:
    """A node announces itself and the endpoints it has bound (purpose -> advertised address)."""

    node_id: str
    role: str  # "env_server" | "agent"
    endpoints: dict[str, str]
    pid: int
    host: str
    incarnation: int = 0  # bumped by each restart of the same node id


@register_message("control.directory")
@dataclass(frozen=True)
class Directory:
    """The rendezvous answer: where the env server and this node's topology neighbours listen."""

    env_endpoint: str
    neighbours: dict[str, str]  # neighbour node id -> its peer endpoint
    num_agents: int
    # Where the nodes a capability added to the run answer, by the capability's service name
    # (agent_node/registry.py `ExtraNode`): "ctde" for a centralized run's learner node (the
    # learner itself is told its own), "goals" for a goal run's external supervisor.
    services: dict[str, str] = field(default_factory=dict)


@register_message("control.ready")
@dataclass(frozen=True)
class Ready:
    node_id: str
    # A restarted env server that took the run up again: the lockstep step it resumed at
    # (env_server/resume.py). None for every other node and for a first start.
    resumed_step: int | None = None
    # A node that restored an older generation of its saved state because the newest failed
    # verification: one line naming the files, why, and what was lost (protocols/storage/durable_state.py).
    state_damaged: str | None = None
    # True when no good generation was left and the node started from scratch instead of
    # stopping (run.on_corrupt_state: start_fresh); `state_damaged` says which files.
    state_started_fresh: bool = False


@register_message("control.start")
@dataclass(frozen=True)
class Start:
    """Every node is ready: the run begins."""


@register_message("control.status")
@dataclass(frozen=True)
class Status:
    """Periodic report; doubles as the node's heartbeat to the orchestrator."""

    node_id: str
    state: str
    step: int
    episode: int
    last_return: float | None = None
    msgs_per_s: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


@register_message("control.env_restarting")
@dataclass(frozen=True)
class EnvServerRestarting:
    """To every running agent: the env server exited and the orchestrator is restarting it
    (faults.restart, or a scheduled restart). Keep running, do not take its silence for its
    death, end the episodes in flight, and wait for `control.env_back`."""

    restarts: int  # restarts of the env server before this one


@register_message("control.env_back")
@dataclass(frozen=True)
class EnvServerBack:
    """To every running agent: the restarted env server is ready at `env_endpoint` and resumed
    the run at `step`; join it again (env.join, then env.reset) on a fresh connection."""

    env_endpoint: str
    step: int


@register_message("control.neighbour_moved")
@dataclass(frozen=True)
class NeighbourMoved:
    """To every running agent one of whose topology neighbours was restarted and listens at a
    new peer endpoint (tcp gives a restarted node a new port, and a node moved to another host a
    new address): send to `neighbour` at `endpoint` from now on, on a fresh connection."""

    neighbour: str
    endpoint: str


@register_message("control.hold_at_steps")
@dataclass(frozen=True)
class HoldAtSteps:
    """To the env server: faults are scheduled at these training steps (faults.schedule, at_step).
    After each of them it holds the step's observation, says `control.step_held`, and sends it
    out once told `control.release_step` (or after `protocols.control.step_hold_timeout_s`), so
    the faults take effect between two steps, exactly at their step. Replaces earlier marks."""

    steps: list[int]


@register_message("control.step_held")
@dataclass(frozen=True)
class StepHeld:
    """From the env server: training step `step` (one of the marks) is done and its observation
    held; the orchestrator issues the faults of that step, then releases it."""

    step: int


@register_message("control.fault_applied")
@dataclass(frozen=True)
class FaultApplied:
    """From a node: it applied the network fault at `position` of faults.schedule (a
    control.partition, control.heal or control.set_link) to its own links. A step held for its
    faults is released only once every node the fault went to has said so."""

    position: int


@register_message("control.agents_gone")
@dataclass(frozen=True)
class AgentsGone:
    """To a restarted env server: the agent nodes at these indices (the env agents they drove)
    are down for good (killed by the schedule, no restart coming), so it starts without waiting
    `env.join_deadline_s` for them to join."""

    indices: list[int]


@register_message("control.release_step")
@dataclass(frozen=True)
class ReleaseStep:
    """To the env server: the faults of `step` are issued; send the held observation."""

    step: int


@register_message("control.run_complete")
@dataclass(frozen=True)
class RunComplete:
    """The env server has stepped the run's budget of lockstep steps."""

    steps: int


@register_message("control.shutdown")
@dataclass(frozen=True)
class Shutdown:
    reason: str


@register_message("control.partition")
@dataclass(frozen=True)
class Partition:
    """A run-time partition (faults.schedule): drop every message between nodes of different
    `groups` from now on (adds to the blocks in force; nodes in no group are not affected).
    Sent to every node in a group; each applies it to its own outgoing links."""

    groups: list[list[str]]
    position: int = -1  # the fault's position in faults.schedule (for the node's log)


@register_message("control.heal")
@dataclass(frozen=True)
class Heal:
    """End run-time partitions: every blocked link touching one of `nodes`, or every blocked
    link when `nodes` is empty."""

    nodes: list[str] = field(default_factory=list)
    position: int = -1


@register_message("control.set_link")
@dataclass(frozen=True)
class SetLink:
    """A link-profile change (faults.schedule, kind `link`): from now on the directed links
    `edges` ([src, dst] pairs) behave like `link`, a `LinkConfig` (protocols/net/links.py) as plain
    data. Each node changes the edges it is the source of; the link's seeded stream continues."""

    edges: list[list[str]]
    link: dict[str, Any]
    position: int = -1


@register_message("control.goodbye")
@dataclass(frozen=True)
class Goodbye:
    """A node is exiting on purpose (sent just before it closes its sockets)."""

    node_id: str
    reason: str


# --------------------------------------------------------------------------- environment
# Agent (DEALER) <-> env server (ROUTER). Per-agent dicts let one client drive one env agent
# (an agent node) or all of them (the remote-env proxy).


@register_message("env.join")
@dataclass(frozen=True)
class EnvJoin:
    """Claim env agents by name or by index into `possible_agents` (an agent node claims its
    own index before it knows the env's agent names); neither given means 'all agents'."""

    client_id: str
    agents: list[str] = field(default_factory=list)
    agent_indices: list[int] = field(default_factory=list)
    # Ask for the global state and joint action on every observation (env_server/global_view.py).
    global_view: bool = False
    # Ask for packed env.observation / env.action bodies (protocols/codec/packed.py); the welcome says
    # whether the server granted them.
    packed: bool = False
    # This machine's shared memory (protocols/net/shm_lockstep.py `host_key`), offered with `packed`:
    # an env server on the same host may then pass the lockstep's bodies through shared memory.
    # Empty: zmq only.
    shm_host: str = ""


@dataclass(frozen=True)
class SiteCollectionTask:
    """The reward function of a site-collection task as data (reward_collection_v0's
    `task_spec()`), so model-based agents score imagined transitions without importing the
    environment. `agent_node/reward_models.py` rebuilds the reward from it."""

    kind: str  # "site_collection"
    sites: list[list[float]]  # (M, 2) site positions
    values: list[float]  # (M,) value of each site
    radius: float
    action_penalty: bool
    action_penalty_coef: float
    action_bounds: list[float]  # [low, high]
    bounds: list[float]  # [world low, world high]

    def as_spec(self) -> dict[str, Any]:
        """The plain mapping `reward_model_from_spec` takes."""
        return dataclasses.asdict(self)


@register_message("env.welcome")
@dataclass(frozen=True)
class EnvWelcome:
    env_name: str
    num_copies: int
    agents: list[str]  # the agents this client drives
    possible_agents: list[str]
    observation_spaces: dict[str, dict[str, Any]]  # encoded with protocols.codec.spaces
    action_spaces: dict[str, dict[str, Any]]
    autoreset: bool
    max_steps: int | None
    step: int = 0  # the training step the lockstep is at (a rejoining client catches up)
    task: SiteCollectionTask | None = None  # the reward function, for environments that describe it
    # Only for a client that joined with `global_view=True` (env_server/global_view.py): the global
    # state space (encoded with protocols.codec.spaces), where it comes from, and the joint action width.
    global_view: dict[str, Any] | None = None
    # The env's own `state_space` (encoded with protocols.codec.spaces), to every client, where the env
    # has `state()` and its copies run in the server's process; `env.state` then asks for the
    # state. None: the server cannot compute it (`state_unavailable` says why).
    state_space: dict[str, Any] | None = None
    state_unavailable: str = ""  # why `state_space` is None, in words (empty when it is given)
    # The keyword arguments the env was built with (`env.kwargs`, validated by the server's typed
    # `EnvConfig`): a client that records a dataset writes them into its manifest, so it never
    # reads the env section of resolved.yaml itself.
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    # The lockstep's bodies are packed from now on (the client asked, and protocols/codec/packed.py can
    # lay out its agents' spaces; never with forwarded infos or a global view).
    packed: bool = False
    # The shared-memory path (protocols/net/shm_lockstep.py), when granted: the segment to map (its
    # wake-up pipes are named after it), and its two slots' capacities in bytes (down, up).
    shm_segment: str = ""
    shm_capacities: list[int] = field(default_factory=list)


@register_message("env.reset")
@dataclass(frozen=True)
class EnvReset:
    seed: int | None = None


@register_message("env.action")
@dataclass(frozen=True)
class EnvAction:
    """Actions of this client's agents for lockstep step `step`, each shaped (K, *action_shape)."""

    step: int
    actions: dict[str, Any]  # agent -> array (or dict of arrays for Dict action spaces)
    evaluation: bool = False  # answers an evaluation observation (see EnvObservation)


@register_message("env.observation")
@dataclass(frozen=True)
class EnvObservation:
    """What the client's agents see after reset or step `step - 1`; answer it with step `step`.

    Every array has a leading axis of length K (one row per environment copy). With autoreset,
    a copy whose episode ended has already been reset: `observations` holds the first
    observation of the new episode, `final_observations` the last one of the old episode, and
    `episode_start` marks that copy.
    """

    step: int
    observations: dict[str, Any]
    rewards: dict[str, np.ndarray]
    terminated: dict[str, np.ndarray]
    truncated: dict[str, np.ndarray]
    active: dict[str, np.ndarray]  # agent takes part in this copy's current step
    final_observations: dict[str, Any]
    episode_start: np.ndarray
    missing: list[str] = field(default_factory=list)  # agents whose action was defaulted
    run_finished: bool = False
    # Evaluation episodes run on separate copies between training steps: act deterministically,
    # learn nothing, answer with `EnvAction(evaluation=True)`. Their `step` counts separately.
    evaluation: bool = False
    # Only the keys the env section's `forward_infos` names, for this client's agents that report
    # them: agent -> key -> an array (K, ...) when every copy reported one shape and dtype, else a
    # list of K arrays (None for a copy where the agent did not report it). See env_server/vector.py.
    infos: dict[str, Any] = field(default_factory=dict)
    # Only for clients that joined with `global_view=True` (env_server/global_view.py), else None.
    global_state: np.ndarray | None = None  # (K, *state_shape) after this step
    final_global_state: np.ndarray | None = None  # (K, *state_shape); the ended episode's last state where episode_start
    joint_action: np.ndarray | None = None  # (K, joint_action_dim) of step `step - 1`; None after a reset
    # Only in a run whose links follow positions (topology.kind: proximity), on training
    # observations: every agent's position after this step, (K, agents, dims) float64, agents in
    # the welcome's `possible_agents` order (NaN where the env has none). env_server/positions.py.
    positions: np.ndarray | None = None


@register_message("env.state")
@dataclass(frozen=True)
class EnvStateRequest:
    """Ask for the env's global state now: the server calls `state()` of every copy for this
    request (and at no other time for a client that did not join with `global_view`).

    Answered with `env.state_reply`, or an `error`: `state_unavailable` (the env has no
    `state()`, or its copies run in worker processes), `state_failed` (the env's `state()`
    raised; the message names the exception, and the server goes on serving)."""


@register_message("env.state_reply")
@dataclass(frozen=True)
class EnvStateReply:
    """The answer to `env.state`: each copy's `state()` as the env returned it, stacked."""

    step: int  # the lockstep step the copies are at (the evaluation's step while one runs)
    evaluation: bool  # the state is of the evaluation copies
    state: np.ndarray  # (K, *state_shape), in the env's dtype


@register_message("env.episode_start")
@dataclass(frozen=True)
class EnvEpisodeStart:
    """Sent only with `env.episode_start_hold_s` > 0, before the observation of `step` in which
    the copies marked in `episode_start` begin an episode: who plays in each of them, so agents can
    negotiate goals with their partners first. That observation is held until every agent active
    in a starting copy sent `goal.ready(step)`, or until `hold_s` passed."""

    step: int  # the step of the held observation; answer with goal.ready(step=step)
    episode_start: np.ndarray  # (K,) bool: copies whose episode starts
    active: dict[str, np.ndarray]  # every possible agent -> (K,) bool, active in a starting copy
    hold_s: float


@register_message("goal.ready")
@dataclass(frozen=True)
class GoalReady:
    """A client's agents have finished negotiating for the episode that starts at `step`."""

    step: int
    agents: list[str]
    # The goal of each of `agents`, for the env to pay (`agents.goals.paid_by: env`; the env must
    # take goals: goal_lines' `assign_goals`); empty when the agents compute their rewards.
    goals: list[int] = field(default_factory=list)


# Env server <-> its own copy workers (env_server/workers.py): a server that splits its K copies
# over worker processes sends each worker its slice of the actions and gets its slice back.


@register_message("env.worker_reset")
@dataclass(frozen=True)
class EnvWorkerReset:
    seed: int | None  # the seed of the worker's first copy (copy i gets seed + i)


@register_message("env.worker_step")
@dataclass(frozen=True)
class EnvWorkerStep:
    actions: dict[str, Any]  # agent -> this worker's rows of the batched action


@register_message("env.worker_result")
@dataclass(frozen=True)
class EnvWorkerResult:
    """A worker's copies after a reset or step: env_server.vector.BatchedStep's fields."""

    observations: dict[str, Any]
    rewards: dict[str, np.ndarray]
    terminated: dict[str, np.ndarray]
    truncated: dict[str, np.ndarray]
    active: dict[str, np.ndarray]
    final_observations: dict[str, Any]
    episode_start: np.ndarray
    episode_returns: list[float]
    all_finished: bool
    infos: dict[str, Any] = field(default_factory=dict)  # BatchedStep.infos of the worker's copies


# --------------------------------------------------------------------------- membership


@register_message("membership.heartbeat")
@dataclass(frozen=True)
class Heartbeat:
    node_id: str
    incarnation: int
    state: str
