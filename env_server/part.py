"""The one interface through which a part plugs into the env server's lockstep core.

The core (env_server/server.py) holds the barrier, the vector env and the step: it admits
clients, resets, collects actions, steps the copies and broadcasts what they give. Everything
else a run may ask of the server is a part beside it, an object of a `ServerPart` subclass:

- `Pacing` (pacing.py): the barrier the rules ask for (the lockstep, or the real-time clock of
  realtime.py), `env.max_steps_per_s`, and the clock's metrics;
- `Evaluator` (evaluator.py): when to evaluate, the evaluation copies, their baselines and their
  metrics; it drives a `Rendering` (rendering.py) that keeps the frames of each evaluation;
- `GoalSupport` (goal_support.py): episode starts held for the agents' goal negotiation, and the
  goals the env pays;
- `Resumption` (resumption.py): the resume point, saved and taken up;
- `FaultHold` (fault_hold.py): training steps held while the orchestrator issues a fault;
- `StateQueries` (state_queries.py): `env.state` and the global view;
- `ClientBodies` (client_bodies.py): which clients get packed bodies and shared memory;
- `LockstepReport` (reporting.py): the defaulted actions and the status report's figures.

The core drives every part the same way, as an agent node drives its capabilities
(agent_node/capability.py):

- `handles`: the message types the part answers. They join the core's own in one dispatch
  table (`dispatch_table`), so a message reaches its handler the same way whoever handles it;
  every message but `env.join` is refused from a client that has not joined. The part's
  `on_message(identity, envelope)` gets it; a `Refused` it raises becomes the client's error
  reply, counted in `env/rejected_requests`.
- `next_deadline()` / `on_timer(now)`: the loop sleeps until the nearest deadline of all
  (barrier, parts, join) and then calls every part's `on_timer`, in the order of `parts` (a
  part that overrides neither is left out of both, on the lockstep's hot path).
- `metrics()`: a record written every status period and when the server stops.
- `close()`: when the server closes.

What a part does in the lockstep itself (hold an episode start, take over the stepping for an
evaluation, wait for a paced step's time) is its own method, named after what it does, that the
core calls at that point of the step: the part's docstring says which. A part reaches the core
only through `ServerServices`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Mapping, Protocol

if TYPE_CHECKING:
    from env_server.barrier import LockstepBarrier, Outgoing
    from env_server.global_view import GlobalView
    from env_server.rules import LockstepRules
    from env_server.vector import BatchedStep, VectorizedParallelEnv
    from protocols.net.transport import Channel
    from protocols.codec.wire import Envelope


@dataclass
class ServerCounters:
    """The core's counters, which parts read (status reports) and the resume point keeps."""

    steps: int = 0  # lockstep steps (each steps K copies)
    rejected_requests: int = 0
    episodes: int = 0
    last_return: float | None = None
    started_at: float = field(default_factory=time.monotonic)


class ServerServices(Protocol):
    """What the env server's core offers its parts (env_server/server.py implements it)."""

    envs: VectorizedParallelEnv  # the training copies
    env_name: str
    rules: LockstepRules
    barrier: LockstepBarrier
    channel: Channel  # the server's one socket
    global_view: GlobalView
    counters: ServerCounters
    step: int  # the training step whose actions are being collected
    seed: int  # the seed of the training resets (`resets_since_seed`: how many drew from it)
    resets_since_seed: int
    run_finished: bool
    evaluating: bool

    def clock(self) -> float:
        """The server's monotonic clock."""

    def send(self, outgoing: list[Outgoing]) -> None:
        """Send `(routing id, message)` pairs to clients."""

    def broadcast(self, result: BatchedStep, missing: list[str]) -> None:
        """Send every client its observation of `result` (training or evaluation, as the server is)."""

    def after_training_step(self, result: BatchedStep, missing: list[str]) -> None:
        """Go on with a training step's result (evaluate if due, else broadcast or hold it)."""

    def save_resume_point(self) -> None:
        """Save where the run stands (nothing without a resume file)."""

    def write_metrics(self, values: Mapping[str, float]) -> None:
        """Write a metrics record at the current training step."""

    def recent_metric(self, key: str) -> float | None:
        """`key`'s value in the newest of the last metrics records written that has it (None:
        none has, or the server writes no metrics)."""


class ServerPart:
    """One part of the env server. Every method has a default that does nothing, so a subclass
    writes only what it uses. See the module docstring."""

    name: ClassVar[str] = ""
    # The message types this part answers with `on_message`.
    handles: ClassVar[tuple[type, ...]] = ()

    def on_message(self, identity: bytes, envelope: Envelope) -> None:
        pass

    def next_deadline(self) -> float | None:
        return None

    def on_timer(self, now: float) -> None:
        pass

    def metrics(self) -> dict[str, float]:
        return {}

    def close(self) -> None:
        pass

    @property
    def has_timer(self) -> bool:
        """Whether this part has deadlines or timers (the loop asks only those, every poll)."""
        own = type(self)
        return own.next_deadline is not ServerPart.next_deadline or own.on_timer is not ServerPart.on_timer


def dispatch_table(parts: Iterable[ServerPart], core: Mapping[type, Any]) -> dict[type, Any]:
    """message type -> its handler, `(identity, envelope)`: the core's own and each part's
    `on_message`; a type claimed twice is an error naming both."""
    table = dict(core)
    owners = {message_type: "the core" for message_type in core}
    for part in parts:
        for message_type in part.handles:
            if message_type in table:
                raise ValueError(f"{message_type.__name__} is handled by {owners[message_type]} and by part {part.name!r}")
            table[message_type], owners[message_type] = part.on_message, f"part {part.name!r}"
    return table
