"""The one interface through which a capability plugs into an agent node.

A capability is one thing an agent does beside acting and learning: average with its
neighbours (consensus), agree who covers which landmark, negotiate goals, train through a
learner node (CTDE), record its transitions. The node (agent_node/node.py) is a loop, a state
table and a dispatch table; it names no capability. Each capability is an object of a
`Capability` subclass that declares what it needs from the loop, and the node drives every one
the same way. Each capability is described once (agent_node/registry.py: its config section,
its checks, the nodes it adds, its report section), and the description names its node-side
`build` by import path; `load_capabilities` builds those of the run, Parley's own and a user's
alike.

Writing one
-----------

A module with a `Capability` subclass, a `build(run, node)` function that makes it, and the
capability's description:

    from dataclasses import dataclass
    from agent_node.capability import PEERS, Capability
    from agent_node.registry import CapabilityConfig, CapabilityDescription, settings
    from protocols.codec.messages import register_message

    @register_message("gossip.best_return")                # a typed wire message
    @dataclass(frozen=True)
    class BestReturn:
        value: float

    class Gossip(Capability):
        name = "gossip"
        handles = {BestReturn: (PEERS,)}                    # message type -> the sources it may come from

        def __init__(self, node, every_s):
            self.node, self.every_s, self.due_at, self.best = node, every_s, 0.0, float("-inf")

        def next_deadline(self):
            return self.due_at

        def on_timer(self, now):
            if now >= self.due_at:
                self.due_at = now + self.every_s
                topology = self.node.topology
                me = topology.index_of(self.node.identity.node_id)
                self.node.send_peers([(topology.nodes[j], BestReturn(self.best)) for j in topology.neighbours(me)])

        def on_message(self, sender, message, now):
            self.best = max(self.best, message.value)
            self.node.write_metrics({"gossip/best_heard": self.best})

    class GossipConfig(CapabilityConfig):                   # its section: {kind: ..., every_s: 2.0}
        every_s: float = 1.0

    CAPABILITY = CapabilityDescription(name="gossip", section="capabilities", config_model=GossipConfig,
                                       node_side="my_package.gossip:build")

    def build(run, node):
        config = settings(run, CAPABILITY)                  # its entry in the run's `capabilities`
        return Gossip(node, config.every_s) if run.agents.count > 1 else None   # None: not in this run

The description (agent_node/registry.py) is what makes it part of a run: the run names it in its
`capabilities` list (by import path `my_package.gossip:CAPABILITY`, or by an entry point of the
group `parley.capabilities`), and through it the capability can have its own config section,
checks before launch and a section of the report (examples/parley_ippo/parley_ippo/best_return.py
has all three).

`build` is called once, when the node is made, with the run's typed config (`AgentNodeConfig`;
a user's capability finds its own section with `agent_node.registry.settings(run, CAPABILITY)`)
and the node's services (`NodeServices`: what a capability may call on the node); it returns
the capability, None when the run does not use it, or a list of several (one per entry of
`agents.protocols`: agent_node/peer_protocols/capability.py). Message types must be registered wire
messages (`protocols/codec/messages.py`, `@register_message`), so the wire validates and signs them.

Lifecycle, in the order the node calls it
-----------------------------------------

1. `connect(directory)`: the orchestrator's directory is known; open the channels the
   capability needs (`node.open_channel`), e.g. to the learner node or the goal supervisor.
2. `observation_space(welcome, space)`: the env server's welcome; return the observation space
   the learner sees (the landmarks append their one-hot; most return `space` unchanged).
3. `build_learner(welcome, observation_space, action_space)`: a capability that owns the
   learner (goals: a goal-conditioned one; CTDE: an actor whose learning happens in the learner
   node) returns it; the first capability that returns one wins, else the node builds
   `agents.learner`.
4. `attach(learner, welcome, observation_space, action_space)`: the learner exists (consensus
   chooses what it averages, recording opens its dataset shard).
5. The loop: `next_deadline` / `on_timer` (every iteration: the node sleeps until the nearest
   deadline of all), `on_message` (a message of a type in `handles`, from an allowed source),
   `on_neighbour_down` / `on_neighbour_up` (membership).
6. Each training observation (`EnvObservation`, not an evaluation one) is handed on like this:
   the transition it closes goes to the learner (`feed_learner`: a capability that feeds the
   learner itself returns True, e.g. CTDE streams it to the learner node, the landmarks add
   relabelled rows), then `on_transition(message, transition)` for each capability (recording),
   then the episode metrics, then `after_observation(message, now)` (goals: goal rewards,
   episode ends). Then the observation is answered, unless a capability holds it (below): the
   learner acts on the observation as each capability's `condition(obs, evaluation)` passes it
   on (the landmarks append the agreed landmark's one-hot).
7. `drain()` when the node stops: close files, let the last messages out.
8. `state_dict()` / `load_state_dict(state)`: saved in the node's checkpoint (under
   `capabilities/<name>`) and restored from it when the agent restarts; None saves nothing.
9. `metrics()`: a record written at each periodic metrics flush (`agents.metrics_every_steps`).

Holding an observation
----------------------

While an observation is held, the env server waits for this agent's action (up to its
`env.step_deadline_s`), so every agent can do something at the same lockstep step: average
(consensus), agree on landmarks. The node asks each capability in turn, in registration order,
`wants_to_hold(message)`; for the first that says True, the node enters its `hold_state` and
calls `begin_hold(message, now)`. The capability keeps `held` set to the message, and when it
is done it calls `node.release(self, message)` (it may do so inside `begin_hold` already): the
node asks the same capability again and then the ones after it (a capability can begin again:
consensus catching up with a newer tick), and acts when none holds. `hold_state` names the
node's state while it holds (consensus: "averaging", no learning meanwhile); None keeps the node
running (learning goes on).

Evaluation observations are offered too (`message.evaluation`: the landmarks hold them,
consensus does not), and so is the env server's last observation of the run (`run_finished`,
never answered): a capability that holds it (the final average) runs before the node drains,
which it does on the release. `waits_for_last_observation` makes the node wait for that
observation when the orchestrator's stop overtakes it. If the env server steps on while an
observation is held (its deadline passed and it played a default action),
`on_newer_observation(message, now)` is called before the node records the newer one: return
True to keep holding (the newer observation replaces the held one), False to let go (set `held`
to None) so that the node answers the newer one.

Talking in env steps
--------------------

With `protocols.talk: env_steps` (ARCHITECTURE.md, "Time") talking takes env time and nothing
holds the env. A capability that supports it says so with `talks_in_env_steps`; the node then
holds the peer messages it handles until the step they are due at (agent_node/step_talk.py) and
hands them, at the start of that step and before the observation is recorded or answered, to
`on_env_step(message, delivered)`, never to `on_message`; its protocol's clock is the step
(`message.step`, of training or of the evaluation under way), so its timers fire there too, not
in `on_timer`. It must not hold observations: it answers with what it knows now and applies what
its protocol decides when it lands. What it sends during a step leaves when the node answers
it. A run that talks in env steps refuses capabilities with peer messages that do not support it.

The update-ratio contract (`agents.max_pending_gradient_steps`) is the node's: an observation
waits while the learner owes gradient steps. A capability whose learner learns elsewhere says
when it is behind with `behind()` and asks to catch up with `catch_up()` (CTDE); it calls
`node.retry_waiting()` when it may have caught up.

The node's own services (`NodeServices`) a capability may use: its identity and config, the
topology, `send_peers`, `send_env`, `write_metrics`, `accumulate_metrics`,
`reproducibility_broken`, `open_channel`, `release`, `retry_waiting`, `fail`, and the
current `step`, `env_agent`, `learner`. Nothing else of the node is an interface.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Mapping, Protocol

import numpy as np

from protocols.run.import_path import ImportPathError, import_object

if TYPE_CHECKING:
    from agent_node.config import AgentNodeConfig
    from agent_node.roles import NodeLearner, Transition
    from protocols.codec import messages as m
    from protocols.engines.engine import Outgoing
    from protocols.run.node_config import NodeIdentity
    from protocols.engines.topology import Topology
    from protocols.net.transport import Channel, Hub

# Where a message came from: the channel it arrived on (the node's three, and the ones
# capabilities open with `NodeServices.open_channel`).
ENV, PEERS, CONTROL = "env server", "neighbour", "orchestrator"

class NodeServices(Protocol):
    """What an agent node offers its capabilities (agent_node/node.py implements it)."""

    identity: NodeIdentity
    run_config: AgentNodeConfig
    topology: Topology
    hub: Hub
    step: int  # the lockstep step of the last observation
    env_agent: str  # the env's agent this node drives (known from the welcome on)
    learner: NodeLearner | None  # built after the welcome
    env: Channel | None  # the env server's channel (None while the env server restarts)

    def send_peers(self, outgoing: Iterable[Outgoing]) -> None:
        """Send `(neighbour, message)` pairs over the peer mesh."""

    def send_env(self, message: Any) -> None:
        """Send a message to the env server (dropped while it restarts)."""

    def write_metrics(self, record: Mapping[str, float]) -> None:
        """Write a metrics record at the current step."""

    def accumulate_metrics(self, record: Mapping[str, float]) -> None:
        """Add to the means written at the next periodic flush."""

    def reproducibility_broken(self, cause: str, what: str) -> None:
        """Timing decided something in a `run.reproducible` run (said once per cause)."""

    def open_channel(self, endpoint: str, *, name: str, source: str, identity: str, peer: str,
                     close_linger_s: float = 0.0) -> Channel:
        """Connect a DEALER to `endpoint`; what arrives on it is dispatched as from `source`."""

    def release(self, capability: Capability, message: m.EnvObservation) -> None:
        """The capability stopped holding `message`: hand it on (see "Holding an observation")."""

    def retry_waiting(self) -> None:
        """Answer the observation waiting on the update-ratio contract if it no longer has to wait."""

    def fail(self, why: str) -> None:
        """The node cannot go on: raises, the node drains and exits non-zero."""

    def range_graph(self) -> Any:
        """Links that follow positions (topology.kind proximity): the team's in-range graph of the
        step being handled, an (n, n) boolean array in the topology's node order; None otherwise."""


class Capability:
    """One capability of an agent node. Every method has a default that does nothing, so a
    subclass writes only what it uses. See the module docstring for the lifecycle."""

    name: ClassVar[str] = ""
    # message type -> the sources it may come from (ENV, PEERS, CONTROL, or a channel's source)
    handles: ClassVar[Mapping[type, tuple[str, ...]]] = {}
    # The node's state while this capability holds an observation (None: stays running).
    hold_state: ClassVar[str | None] = None
    # How long the peer links may linger on close for this capability's last messages.
    peer_linger_s: float = 0.0
    # The transitions carry the global state and joint action (agents.global_view).
    needs_global_view: bool = False
    # The learner keeps its replay buffer in this process (saved with the checkpoints).
    keeps_replay_here: bool = True
    # Wait for the env server's last observation when the orchestrator's stop overtakes it.
    waits_for_last_observation: bool = False
    # The observation this capability holds, or None.
    held: m.EnvObservation | None = None
    # Its peer protocol runs on the env-step clock when the run talks in env steps (see above).
    talks_in_env_steps: ClassVar[bool] = False

    # -- wiring
    def connect(self, directory: m.Directory) -> None:
        pass

    def observation_space(self, welcome: m.EnvWelcome, space: Any) -> Any:
        return space

    def build_learner(self, welcome: m.EnvWelcome, observation_space: Any, action_space: Any) -> NodeLearner | None:
        return None

    def attach(self, learner: NodeLearner, welcome: m.EnvWelcome, observation_space: Any, action_space: Any) -> None:
        pass

    # -- the loop
    def next_deadline(self) -> float | None:
        return None

    def on_timer(self, now: float) -> None:
        pass

    def on_message(self, sender: str, message: Any, now: float) -> None:
        pass

    def on_neighbour_down(self, peer: str, now: float) -> None:
        pass

    def on_neighbour_up(self, peer: str, now: float) -> None:
        pass

    # -- observations
    def condition(self, obs: np.ndarray, evaluation: bool) -> np.ndarray:
        """The observation as the learner acts on it."""
        return obs

    def feed_learner(self, message: m.EnvObservation, transition: Transition) -> bool:
        """Give the learner this transition yourself (True), or leave it to the node (False)."""
        return False

    def on_transition(self, message: m.EnvObservation, transition: Transition) -> None:
        pass

    def after_observation(self, message: m.EnvObservation, now: float) -> None:
        pass

    def wants_to_hold(self, message: m.EnvObservation) -> bool:
        return False

    def begin_hold(self, message: m.EnvObservation, now: float) -> None:
        pass

    def on_newer_observation(self, message: m.EnvObservation, now: float) -> bool:
        return False

    def on_env_step(self, message: m.EnvObservation, delivered: list[tuple[str, Any]]) -> None:
        """protocols.talk: env_steps only: the start of `message`'s step; `delivered` are the
        `(sender, message)` pairs due by now, in delivery order (see "Talking in env steps")."""

    def behind(self) -> bool:
        return False

    def catch_up(self) -> None:
        pass

    # -- the end, checkpoints, metrics
    def drain(self) -> None:
        pass

    def state_dict(self) -> dict[str, Any] | None:
        return None

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass

    def metrics(self) -> dict[str, float]:
        return {}


def load_entry_point(path: str) -> Any:
    """The object at `package.module:name`; errors name the path and what was wrong with it."""
    try:
        return import_object(path)
    except ImportPathError as error:
        raise ValueError(f"capability entry point {path!r}: {error}") from error


def load_capabilities(run: AgentNodeConfig, node: NodeServices, paths: Iterable[str] | None = None) -> list[Capability]:
    """Build every capability this run uses, in the order of `paths`: by default the node-side
    builds of the run's capabilities, in their registration order (agent_node/registry.py)."""
    if paths is None:
        from agent_node.registry import node_builds

        paths = node_builds(run)
    capabilities: list[Capability] = []
    for path in paths:
        built = load_entry_point(path)(run, node)
        # None: the run does not use it; a list: several of a kind (one per plugin protocol).
        for capability in built if isinstance(built, list) else [] if built is None else [built]:
            if not isinstance(capability, Capability):
                raise TypeError(f"capability entry point {path!r} built a {type(capability).__name__}, not a Capability")
            names = [other.name for other in capabilities]
            if not capability.name or capability.name in names:
                raise ValueError(f"capability entry point {path!r}: its name {capability.name!r} is empty or taken ({names})")
            capabilities.append(capability)
    return capabilities


def dispatch_table(capabilities: Iterable[Capability], core: Mapping[type, Any]) -> dict[type, tuple[tuple[str, ...], Any]]:
    """message type -> (sources, the capability that handles it); a type claimed twice, or one
    the node handles itself, is an error naming both."""
    table: dict[type, tuple[tuple[str, ...], Any]] = {}
    for capability in capabilities:
        for message_type, sources in capability.handles.items():
            owner = table[message_type][1].name if message_type in table else ("the node" if message_type in core else None)
            if owner is not None:
                raise ValueError(f"{message_type.__name__} is handled by {owner} and by capability {capability.name!r}")
            table[message_type] = (tuple(sources), capability)
    return table
