"""Settings every node shares: membership timing, the network section, node ids and endpoints.

The orchestrator composes the run's schema (`orchestrator/config.py`), but a node process must
be able to read the parts it needs from `resolved.yaml` without importing the orchestrator or
the other node package. So the pieces that both sides of a connection have to agree on live
here, in `protocols/`, which every package may import:

- `RunSection`: the run's name, seed and budget (every node needs the seed and the budget);
- `ProtocolsConfig`: the peer protocols' settings (control reports, membership, consensus);
- `NetworkConfig`: transport (ipc or tcp), hosts, zmq heartbeats, and the per-link emulation;
- `NodeEntry` and `RunLayout`: the two sections the orchestrator adds when it resolves a run
  (`nodes:` and `runtime:` in `resolved.yaml`); user configs leave them out;
- node ids (`env`, `agent_0`, ...) and the naming of ipc endpoints.

No torch, no zmq here: importing this module is as cheap as pydantic.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from protocols.net.auth import LimitsConfig
from protocols.engines.consensus import ConsensusConfig
from protocols.net.links import LinkConfig, LinkTable, PartitionTable, group_of_each_node

# ------------------------------------------------------------------------------------------
# Node ids
# ------------------------------------------------------------------------------------------

ENV_NODE_ID = "env"
ORCHESTRATOR_ID = "orchestrator"
# The centralized learner node of a run that trains centrally (`training.mode: centralized`).
LEARNER_NODE_ID = "learner"
# The external goal supervisor of a goal run (`agents.goals.selection: supervisor`, external).
SUPERVISOR_NODE_ID = "supervisor"
NodeRole = Literal["env_server", "agent", "learner", "supervisor"]


def agent_node_id(index: int) -> str:
    """Agent node `index` drives the environment's `index`-th possible agent."""
    return f"agent_{index}"


def is_agent_node_id(node_id: str) -> bool:
    return re.fullmatch(r"agent_\d+", node_id) is not None


def agent_node_ids(count: int) -> list[str]:
    return [agent_node_id(i) for i in range(count)]


def node_ids(count: int, with_learner: bool = False, with_supervisor: bool = False) -> list[str]:
    """Every node of a run with `count` agents: the env server first, then the agents in order,
    then the learner node when the run trains centrally, then the goal supervisor when it has one."""
    return [ENV_NODE_ID, *agent_node_ids(count), *([LEARNER_NODE_ID] if with_learner else []),
            *([SUPERVISOR_NODE_ID] if with_supervisor else [])]


# ------------------------------------------------------------------------------------------
# Endpoints
# ------------------------------------------------------------------------------------------

# The unix socket path limit is 108 bytes including the NUL (`sun_path`); an ipc endpoint
# `ipc://PATH` of at most 100 bytes leaves a margin for the prefix and platform differences.
IPC_ENDPOINT_MAX_BYTES = 100

# What a socket is for; the ipc file is named `<node id>.<purpose>`. Kept to a fixed list so the
# orchestrator can check, before launching, that every socket path of the run fits the limit.
ENDPOINT_PURPOSES = ("control", "env", "peer", "ctde", "goals")
# `network.port_range` starts here at the lowest: below it a bind needs root, and Parley's nodes
# do not run as root.
MIN_PORT_RANGE_PORT = 1024


def ipc_endpoint(socket_dir: str, node_id: str, purpose: str) -> str:
    """The ipc address node `node_id` binds for `purpose` inside the run's socket directory."""
    if purpose not in ENDPOINT_PURPOSES:
        raise ValueError(f"endpoint purpose must be one of {', '.join(ENDPOINT_PURPOSES)}, got {purpose!r}")
    return f"ipc://{socket_dir.rstrip('/')}/{node_id}.{purpose}"


def longest_ipc_endpoint(socket_dir: str, count: int) -> str:
    """The longest ipc address a run of `count` agents may bind in `socket_dir`.

    `agent_10` is always included so that a run dir that fits for 3 agents also fits when an
    override raises the count to a two-digit number.
    """
    candidates = [*node_ids(count, with_learner=True, with_supervisor=True), ORCHESTRATOR_ID, agent_node_id(max(10, count - 1))]
    return max(
        (ipc_endpoint(socket_dir, node, purpose) for node in candidates for purpose in ENDPOINT_PURPOSES),
        key=lambda endpoint: len(endpoint.encode()),
    )


def ipc_dir_fits(socket_dir: str, count: int) -> bool:
    return len(longest_ipc_endpoint(socket_dir, count).encode()) <= IPC_ENDPOINT_MAX_BYTES


# ------------------------------------------------------------------------------------------
# Config sections
# ------------------------------------------------------------------------------------------


_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class RunSection(BaseModel):
    """`run`: what the run is called, its seed, and how many lockstep steps it lasts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Names the run's directory: runs/<name>/<timestamp>/.
    name: str
    # Every random stream of the run derives from it: derive_seed(seed, node index, stream).
    seed: int = Field(0, ge=0)
    # Lockstep environment steps of the whole run (each step advances all K env copies).
    steps: int = Field(gt=0)
    # Directory under which runs/<name>/<timestamp>/ is created, relative to the working dir.
    root: str = Field("runs", min_length=1)
    # true: the run is a function of its seed, whatever the timing (machine load, slices, link
    # delays). Every agent finishes the gradient steps it owes before it acts, so each gradient
    # step samples the same buffer at the same point; a run that mixes in anything timing-decided
    # is refused (push-sum, centralized training, goal negotiation, random drops on links, fault
    # schedules: orchestrator/reproducibility.py says why for each). What can still intervene at
    # run time (a step deadline or a consensus round that ran out, a restart from a checkpoint)
    # is written as `reproducibility/broken` in the node's metrics. It lives in `run`, beside the
    # seed it makes binding, because it constrains several sections and every node reads `run`.
    reproducible: bool = False
    # What a node does when it restarts and no good copy of its saved state is left (every
    # generation of its checkpoint, replay buffer, supervisor state or resume point fails its
    # check; protocols/storage/durable_state.py). "stop": it exits with code 3 naming the file, and no
    # restart policy restarts it. "start_fresh": it renames the damaged files `<name>.damaged`
    # (kept, never written over), starts that node from scratch and says so (a `state_damaged`
    # event, the terminal, `state_started_fresh` in the report's headline). A damaged newest copy
    # beside a good older one is always restored from the older one, whatever this says.
    on_corrupt_state: Literal["stop", "start_fresh"] = "stop"

    @field_validator("name")
    @classmethod
    def _usable_as_directory_name(cls, name: str) -> str:
        if not _RUN_NAME.match(name):
            raise ValueError(
                "expected a name usable as a directory (letters, digits, '_', '-', '.'; "
                f"starting with a letter or digit), got {name!r}"
            )
        return name


class ControlConfig(BaseModel):
    """`protocols.control`: the conversation of every node with the orchestrator."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Period of each node's control.status report; it doubles as the node's heartbeat to the
    # orchestrator, so the live view and liveness checks are only as fresh as this.
    status_every_s: float = Field(1.0, gt=0)
    # Every node must have registered and be ready within this long after launch; the
    # orchestrator fails the run otherwise, and a node gives up waiting for its directory or
    # the start signal after as long.
    startup_timeout_s: float = Field(120.0, gt=0)
    # A fault scheduled at a training step (faults.schedule, at_step) holds the env server at that
    # step until the orchestrator has issued it; past this long without the orchestrator's
    # go-ahead the server steps on by itself (an orchestrator that died must not stall the run).
    step_hold_timeout_s: float = Field(10.0, gt=0)


class MembershipConfig(BaseModel):
    """`protocols.membership`: how often a node says it is alive, and when silence means dead."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    heartbeat_every_s: float = Field(0.5, gt=0)
    # A peer is declared down after this long without any message from it.
    timeout_s: float = Field(5.0, gt=0)

    @model_validator(mode="after")
    def _timeout_exceeds_heartbeat(self) -> MembershipConfig:
        if self.timeout_s <= self.heartbeat_every_s:
            raise ValueError(
                f"timeout_s ({self.timeout_s}) must exceed heartbeat_every_s ({self.heartbeat_every_s}), "
                "else a live peer is declared down between two heartbeats"
            )
        return self


class ProtocolsConfig(BaseModel):
    """`protocols`: settings of the control channel and of the peer-protocol engines."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    control: ControlConfig = ControlConfig()
    membership: MembershipConfig = MembershipConfig()
    consensus: ConsensusConfig = ConsensusConfig()
    limits: LimitsConfig = LimitsConfig()
    # What talking between agents costs in the world's time:
    # "free": talking is free in env time. A protocol holds the agent's answer until it is done
    #   (the landmark agreement, a synchronous consensus session) and the env server waits for it
    #   (up to env.step_deadline_s), so delay costs wall time, never return.
    # "env_steps": talking takes env steps. A peer message sent while its sender handles step t
    #   reaches the receiver at the start of step t + d (the link's delay_steps, 1 when unset),
    #   whatever the machines' speed (protocols/engines/step_links.py), and no protocol holds the env:
    #   each agent acts on what it knows now and applies a decision when it lands.
    talk: Literal["free", "env_steps"] = "free"


LinkSelectorRole = Literal["env_links", "peer_links"]


class LinkOverride(BaseModel):
    """Emulated properties of some directed links, chosen by exactly one selector:

    - `src` and `dst`: the one directed link src -> dst;
    - `between: [a, b]`: both directions between a and b;
    - `node: agent_3`: every link to or from that node (its peer links and its env links);
    - `role: env_links` (every agent <-> env server link) or `role: peer_links` (every agent <->
      agent link).

    `link` replaces `default_link` entirely on the links it matches (fields left out take the
    LinkConfig defaults, not the default link's values). When several overrides match a link,
    the last one listed wins.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    src: str | None = None
    dst: str | None = None
    between: tuple[str, str] | None = None
    node: str | None = None
    role: LinkSelectorRole | None = None
    link: LinkConfig

    @model_validator(mode="after")
    def _one_selector(self) -> LinkOverride:
        chosen = [
            name
            for name, given in (
                ("src/dst", self.src is not None or self.dst is not None),
                ("between", self.between is not None),
                ("node", self.node is not None),
                ("role", self.role is not None),
            )
            if given
        ]
        if len(chosen) != 1:
            raise ValueError(
                "expected exactly one link selector (src and dst, between, node, or role), "
                f"got {', '.join(chosen) if chosen else 'none'}"
            )
        if chosen == ["src/dst"] and (self.src is None or self.dst is None):
            raise ValueError(f"src and dst go together, got src={self.src!r}, dst={self.dst!r}")
        pair = (self.src, self.dst) if self.src is not None else self.between
        if pair is not None and pair[0] == pair[1]:
            raise ValueError(f"a link joins two different nodes, got {pair[0]!r} twice")
        return self

    def named_nodes(self) -> list[tuple[str, str]]:
        """(field, node id) for each node this override names, to check them against the run."""
        if self.src is not None:
            return [("src", self.src), ("dst", self.dst)]
        if self.between is not None:
            return [(f"between.{i}", node) for i, node in enumerate(self.between)]
        return [("node", self.node)] if self.node is not None else []

    def matches(self, src: str, dst: str) -> bool:
        if self.src is not None:
            return (src, dst) == (self.src, self.dst)
        if self.between is not None:
            return {src, dst} == set(self.between)
        if self.node is not None:
            return self.node in (src, dst)
        touches_env = ENV_NODE_ID in (src, dst)
        return touches_env if self.role == "env_links" else not touches_env


class NetworkConfig(BaseModel):
    """`network`: how nodes reach each other and how the links between them are emulated.

    With `ipc` every socket is a file in the run's socket directory (one host only; the 0700
    directory keeps other users out). With `tcp` every node binds `bind_host` on a free port (one
    of `port_range` when it is set) and advertises `advertise_host` (default: `bind_host`) to the
    orchestrator's directory.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    transport: Literal["ipc", "tcp"] = "ipc"
    bind_host: str = Field("127.0.0.1", min_length=1)
    advertise_host: str | None = None
    # `[low, high]` (inclusive): with tcp, every listening socket of the run (the env server's,
    # each agent's peer inbox, the learner's, the orchestrator's control socket) binds the lowest
    # free port of this range on its machine, so a firewall needs only this range open between
    # the machines (and from them to the launching one). One range for every machine: the same
    # rule goes into every host's firewall. None: any free (ephemeral) port.
    port_range: tuple[int, int] | None = None
    # zmq's own heartbeats on every connection (ZMQ_HEARTBEAT_IVL / _TIMEOUT): a frozen or
    # vanished TCP peer is detected at the socket level after the timeout, even when the
    # application has nothing to send it. The membership engine does the same for the protocols.
    zmq_heartbeat_ivl_s: float = Field(1.0, gt=0)
    zmq_heartbeat_timeout_s: float = Field(5.0, gt=0)
    # Link emulation (protocols/net/links.py): every directed link between two nodes (agent <-> agent
    # and agent <-> env server; never the control links to the orchestrator) behaves like
    # `default_link` unless an entry of `links` selects it. Each link draws from its own seed,
    # derived from run.seed and the two node ids.
    default_link: LinkConfig = LinkConfig()
    links: list[LinkOverride] = []
    # Groups of node ids cut off from each other from the start of the run (nodes in no group
    # are unaffected); messages between groups are dropped and counted as `dropped_partition`.
    partitions: list[list[str]] = []

    @model_validator(mode="after")
    def _one_override_per_selector(self) -> NetworkConfig:
        seen: dict[str, int] = {}
        for position, override in enumerate(self.links):
            key = repr(override.model_dump(exclude={"link"}))
            if key in seen:
                raise ValueError(
                    f"links[{position}] repeats the selector of links[{seen[key]}]; give each selector once"
                )
            seen[key] = position
        return self

    @model_validator(mode="after")
    def _disjoint_partition_groups(self) -> NetworkConfig:
        group_of_each_node(self.partitions, "partitions")
        return self

    @model_validator(mode="after")
    def _port_range_valid(self) -> NetworkConfig:
        if self.port_range is None:
            return self
        if self.transport != "tcp":
            raise ValueError(f"port_range: only used with transport 'tcp' (ipc binds files, not ports), got transport {self.transport!r}")
        low, high = self.port_range
        if not MIN_PORT_RANGE_PORT <= low <= high <= 65535:
            raise ValueError(
                f"port_range: expected [low, high] with {MIN_PORT_RANGE_PORT} <= low <= high <= 65535 (ports below "
                f"{MIN_PORT_RANGE_PORT} need root), got [{low}, {high}]"
            )
        return self

    @model_validator(mode="after")
    def _heartbeat_timeout_exceeds_interval(self) -> NetworkConfig:
        if self.zmq_heartbeat_timeout_s <= self.zmq_heartbeat_ivl_s:
            raise ValueError(
                f"zmq_heartbeat_timeout_s ({self.zmq_heartbeat_timeout_s}) must exceed "
                f"zmq_heartbeat_ivl_s ({self.zmq_heartbeat_ivl_s})"
            )
        return self

    def advertised_host(self) -> str:
        return self.advertise_host if self.advertise_host is not None else self.bind_host

    def tcp_bind_address(self) -> str:
        """What every tcp listener of the run binds: `tcp://<bind_host>:0` (any free port), or
        `tcp://<bind_host>:LOW-HIGH` with a port range (the transport takes the lowest free one)."""
        if self.port_range is None:
            return f"tcp://{self.bind_host}:0"
        low, high = self.port_range
        return f"tcp://{self.bind_host}:{low}-{high}"

    def port_range_size(self) -> int | None:
        return None if self.port_range is None else self.port_range[1] - self.port_range[0] + 1

    def link_between(self, src: str, dst: str) -> LinkConfig:
        """The emulated link `src -> dst`: the last override that selects it, else the default."""
        chosen = self.default_link
        for override in self.links:
            if override.matches(src, dst):
                chosen = override.link
        return chosen

    def link_in_steps_between(self, src: str, dst: str) -> LinkConfig:
        """`link_between` for a run that talks in env steps (protocols.talk: env_steps): a link
        between two agents counts its delay in steps, one step when it names no delay_steps."""
        link = self.link_between(src, dst)
        return link.counting_steps() if is_agent_node_id(src) and is_agent_node_id(dst) else link

    def node_id_problems(self, valid_ids: list[str], expected: str | None = None) -> list[str]:
        """Messages for every node id in `links` and `partitions` that is not one of `valid_ids`
        (`expected` describes them in the message; default: the list)."""
        expected = expected or ", ".join(valid_ids)
        problems = []
        for position, override in enumerate(self.links):
            for field, node in override.named_nodes():
                if node not in valid_ids:
                    problems.append(f"network.links.{position}.{field}: expected a node id ({expected}), got {node!r}")
        for position, group in enumerate(self.partitions):
            for node in group:
                if node not in valid_ids:
                    problems.append(f"network.partitions.{position}: expected node ids ({expected}), got {node!r}")
        return problems

    def link_table(self, node_id: str, run_seed: int, talk_in_steps: bool = False) -> LinkTable:
        """The outgoing links of node `node_id`, for its transport hub (`talk_in_steps`: the run's
        protocols.talk is env_steps, so the links between agents count steps)."""
        partitions = PartitionTable()
        if self.partitions:
            partitions.partition(self.partitions)
        return LinkTable(node_id, run_seed, self.link_in_steps_between if talk_in_steps else self.link_between, partitions)


class NodeEntry(BaseModel):
    """One node of a resolved run: its index (for seed derivation), role and base seed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    index: int = Field(ge=0)
    role: NodeRole
    seed: int = Field(ge=0)


class RunLayout(BaseModel):
    """Where this run lives on disk: the `runtime:` section the orchestrator writes into `resolved.yaml`.

    `socket_dir` is `<run_dir>/sock` unless the run dir path is so long that an ipc socket path
    would exceed the unix limit; then it is a fresh `/tmp/parley-XXXX` directory
    (`socket_dir_is_temp`), which the orchestrator removes at the end of the run. It is None
    with the tcp transport.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: str = Field(min_length=1)
    run_dir: str = Field(min_length=1)
    socket_dir: str | None = None
    socket_dir_is_temp: bool = False
    # The run's keys (protocols/net/auth.py): `<run dir>/keys` as written by `orchestrate up`. None:
    # nodes run without authentication (only configs written by hand, for tests).
    keys_dir: str | None = None
