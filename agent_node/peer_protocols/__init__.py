"""Peer protocols that Parley does not ship: a user's sans-IO engine, run by every agent node.

`agents.protocols` lists them, each `{kind: ..., <its config>}`; `kind` is resolved by
`PROTOCOLS`, the same `Registry` (agent_node/plugins.py) as learners and world models: an
installed entry point of the group `parley.protocols`, or an import path `package.module:Class`.

A protocol class is an engine of `protocols/engines/engine.py`'s interface, sans-IO like Parley's own
(consensus, negotiation, membership): messages and time go in, `(neighbour, message)` pairs come
out, so the node loop and the deterministic simulator (`protocols/sim/netsim.py`) drive the same
object. On top of the engine interface it has

- `config_model`: its `PluginConfig` subclass (unknown keys refused, like every config section);
- `message_types`: the frozen dataclasses it sends and receives, each registered with
  `protocols.codec.messages.register_message`, so the wire validates their fields and the envelope's
  signature covers them like any other message; no two protocols may claim one type;
- a constructor `Class(config, spec)`, `spec` a `ProtocolSpec` (its node, its neighbours, a seed);
- optionally the learner hook, two methods the node calls (agent_node/peer_protocols/capability.py):
  - `request(view) -> request | None`: while the engine is idle (never started, or `done`),
    after each training observation: what to `start` a run with now, or None for not now.
    `view` is a `LearnerView`: the lockstep step, the returns of the episodes that ended since
    the last call, and the learner;
  - `give(learner, result)`: once a run is `done`, its `result`, for the protocol to hand to
    the learner (set a coefficient, load parameters), or to keep.
- optionally `state_dict()` / `load_state_dict(state)`, saved in the node's checkpoint;
- optionally `talks_in_env_steps = True` (a class attribute): it runs in a run whose peer messages
  take env steps (`protocols.talk: env_steps`), where the node passes it env steps as `now`
  (`spec.clock` says which unit it gets), hands it its messages at the step starts they are due
  and checks its deadline there. A class without it is refused in such a run, naming
  `agents.protocols.<i>.kind`: its deadlines are presumably in seconds.

The node writes the engine's `metrics()` to the agent's metrics when a run finishes. Resolving
a kind imports its module, at `orchestrate validate`, `up` and in each node; a wrong path, a
class that lacks the interface or declares an unregistered message type, or a bad config is a
config error (exit 2) naming `agents.protocols[i]`, before any process starts.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, SerializeAsAny

from agent_node.plugins import PluginConfig, PluginError, Registry, check_list_entry, validate_each

# What a protocol engine has (protocols/engines/engine.py: Engine), besides `message_types`, `done`
# and `result`, which are checked as attributes.
PROTOCOL_METHODS = ("start", "on_message", "on_timer", "on_neighbour_down", "on_neighbour_up", "next_deadline", "metrics")
# Optional: the learner hook.
LEARNER_HOOK_METHODS = ("request", "give")

# Modules whose message types are Parley's own: a plugin protocol declares its own types.
_PARLEY_PACKAGES = ("protocols", "agent_node", "env_server", "orchestrator")


@dataclass(frozen=True)
class ProtocolSpec:
    """What the runtime knows when it builds a node's protocol engine (when the node is made).

    - `node_id`: this agent node (`agent_3`);
    - `neighbours`: its topology neighbours, the nodes it may send to and hear from;
    - `seed`: `derive_seed(run.seed, node index, "protocol/<kind>")`, for the engine's randomness;
    - `num_agents`: the agent nodes of the run;
    - `clock`: the unit of every `now` the node passes: "seconds" (a monotonic clock), or
      "env_steps" (the lockstep step, when peer messages take env steps).
    """

    node_id: str
    neighbours: tuple[str, ...]
    seed: int
    num_agents: int
    clock: Literal["seconds", "env_steps"] = "seconds"


@dataclass(frozen=True)
class LearnerView:
    """What `request` reads: the lockstep `step` of the observation just handled, the returns of
    this agent's episodes that ended since the last `request` call (in the order they ended),
    and the node's `learner` (its `counters()`, its parameters: read it, change it in `give`)."""

    step: int
    episode_returns: tuple[float, ...] = ()
    learner: Any = field(default=None, repr=False)


def _check_protocol_class(kind: str, cls: type) -> None:
    """What `Registry` checks of a protocol class beyond its methods and `config_model`."""
    from protocols.codec.messages import MESSAGE_TYPES

    for attribute in ("done", "result"):
        if not hasattr(cls, attribute):
            raise PluginError(f"{kind!r}: class {cls.__name__} does not implement the peer protocol interface: missing {attribute}")
    types = getattr(cls, "message_types", None)
    if not isinstance(types, tuple) or not types:
        raise PluginError(
            f"{kind!r}: class {cls.__name__}.message_types must be a non-empty tuple of the message classes it "
            f"receives, got {types!r}"
        )
    for message_type in types:
        msg_type = getattr(message_type, "MSG_TYPE", None)
        if not inspect.isclass(message_type) or MESSAGE_TYPES.get(msg_type) is not message_type:
            raise PluginError(
                f"{kind!r}: message type {getattr(message_type, '__name__', repr(message_type))} of {cls.__name__} "
                "is not a registered wire message; "
                "decorate its frozen dataclass with @protocols.codec.messages.register_message('<package>.<name>')"
            )
        if message_type.__module__.split(".")[0] in _PARLEY_PACKAGES:
            raise PluginError(
                f"{kind!r}: message type {message_type.__name__} ({msg_type!r}) is Parley's own "
                f"({message_type.__module__}); a protocol receives message types it declares itself"
            )
    hooks = [name for name in LEARNER_HOOK_METHODS if callable(getattr(cls, name, None))]
    if hooks and len(hooks) != len(LEARNER_HOOK_METHODS):
        missing = sorted(set(LEARNER_HOOK_METHODS) - set(hooks))
        raise PluginError(
            f"{kind!r}: class {cls.__name__} has the learner hook's {', '.join(hooks)} but not {', '.join(missing)}; "
            "give both (request: what to start a run with, give: what a finished run hands the learner) or neither"
        )


# Every peer protocol a run may add: entry points of `parley.protocols`, then import paths.
# Parley's own protocols (membership, consensus, the goals' negotiation, the landmarks) are not
# in this table: each has its own config section and capability (agent_node/capability.py).
PROTOCOLS = Registry("peer protocol", "parley.protocols", PROTOCOL_METHODS, {}, check_class=_check_protocol_class)


def _validate_one(item: Any, section: str) -> PluginConfig:
    if isinstance(item, PluginConfig):
        return item
    check_list_entry(item, section, "protocol", PROTOCOLS.group, "Class")
    return PROTOCOLS.validate(item, lambda data: PluginConfig.model_validate(data), section)


def _validate_protocols(value: Any) -> Any:
    """`agents.protocols`: each entry resolved and checked by its own config model; every
    problem is one line naming `protocols.<i>` (the run's formatter puts `agents.` before it)."""
    return validate_each(value, "protocols", _validate_one)


def talks_in_env_steps(config: PluginConfig) -> bool:
    """Whether the protocol `config` names declares it runs with env steps as its clock."""
    builder = PROTOCOLS.resolve(config.kind).load_builder()
    return bool(getattr(builder, "talks_in_env_steps", False))


# The type of `agents.protocols`: each entry the protocol's own config model, after resolution,
# dumped with its own fields (so the resolved config names the protocol and its settings again).
ProtocolConfigs = Annotated[tuple[SerializeAsAny[PluginConfig], ...], BeforeValidator(_validate_protocols)]
