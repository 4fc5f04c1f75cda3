"""The run's typed configuration: one YAML file in, one validated `RunConfig` out.

Each package owns the schema of its own section and this module composes them:

    run:        RunSection                     protocols/run/settings.py
    env:        EnvConfig                      env_server/config.py
    agents:     AgentsConfig                   agent_node/config.py (learner, world model)
    training:   TrainingConfig                 agent_node/config.py (decentralized | centralized)
    topology:   TopologyConfig                 protocols/engines/topology.py
    protocols:  control, membership, consensus protocols/run/settings.py, protocols/engines/consensus.py
    network:    NetworkConfig                  protocols/run/settings.py (links: protocols/net/links.py)
    faults:     FaultsConfig                   (here)
    launch:     LaunchConfig                   (here)
    capabilities: [{kind, ...}]                a user's capabilities (agent_node/registry.py)
    nodes:      {node id: NodeEntry}           filled by the orchestrator, see below
    runtime:    RunLayout                      filled by the orchestrator, see below

Every model forbids unknown keys and is frozen. Loading never imports torch, pettingzoo or zmq,
so `orchestrate validate` answers in a fraction of a second.

**Resolution.** `orchestrate up` validates the user's file (plus `--set` overrides), then
writes the fully expanded config — every default filled in — to `<run dir>/resolved.yaml`. That
file is the one source of truth every node reads with these same section schemas: a node does
not import the orchestrator, it validates the sections it needs (`protocols/run/node_config.py`: the
shared sections plus its own package's, `EnvConfig` or `AgentsConfig`); `load_resolved` here
reads and validates the whole file.

Two sections exist only in resolved files: `nodes` (each node's index, role and derived seed)
and `runtime` (run id, run dir, socket dir). They are optional in the schema so that user configs leave them out; when
present, `nodes` must match what the orchestrator would derive, so a hand-edited seed cannot
silently disagree with the run seed. `load_resolved` insists on both.

**Node ids.** The env server is `env`; agents are `agent_0 .. agent_{count-1}`, and `agent_i`
drives the environment's i-th possible agent. For seed derivation agents have index i and the
env server has index `count` (after the agents, so adding an env-side index never shifts the
agents' seeds). A capability may add nodes of its own after them (agent_node/registry.py: a run
with `training.mode: centralized` has `learner`, index `count + 1`). The node ids and ipc
endpoint names are defined in `protocols/run/settings.py`.

**Capabilities.** What each capability (consensus, the landmarks, goals, ...: a user's too)
checks against the rest of the config, and the nodes it adds, come from its description
(agent_node/registry.py); this module names none of them. A user's capabilities have their
sections in `capabilities`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent_node.config import AgentsConfig, DecentralizedTraining, TrainingConfig
from agent_node.algos import LEARNERS
from agent_node.plugins import PluginError
from agent_node.registry import CapabilityConfigs, capability_problems, extra_nodes
from agent_node.world_models import WORLD_MODELS
from env_server.config import EnvConfig, static_agent_count
from env_server.positions import positions_reader_path
from orchestrator.backends.hosts import SshHost
from orchestrator.backends.ray_config import RayPlacement
from protocols.run.config_errors import ConfigError, format_validation_error, tagged_member_fields
from protocols.net.links import LinkConfig, group_of_each_node
from orchestrator.overrides import apply_overrides, load_yaml
from orchestrator.reproducibility import owe_nothing_by_default, reproducibility_problems
from protocols.seeds import derive_seed
from protocols.run.settings import (
    ENV_NODE_ID,
    NetworkConfig,
    NodeEntry,
    NodeRole,
    ProtocolsConfig,
    RunLayout,
    RunSection,
    agent_node_ids,
    is_agent_node_id,
)
from protocols.engines.step_links import peer_message_types
from protocols.engines.topology import Topology, TopologyConfig, build_topology

RESOLVED_FILENAME = "resolved.yaml"
# The stream name of a node's base seed; a node derives its other streams itself with
# `derive_seed(run.seed, nodes[id].index, "<stream>")`.
NODE_SEED_STREAM = "node"


# ------------------------------------------------------------------------------------------
# Sections owned by the orchestrator
# ------------------------------------------------------------------------------------------


# The fault kinds the orchestrator executes at run time (orchestrator/faults.py), and those the
# schema knows but `orchestrate up` refuses, with the reason (none at the moment).
EXECUTED_FAULTS = ("kill", "pause", "resume", "restart", "partition", "heal", "link")
REFUSED_FAULTS: dict[str, str] = {}
NETWORK_FAULT_KINDS = ("partition", "heal", "link")


class RandomTargets(BaseModel):
    """`count` nodes drawn without replacement from the nodes of `role`, seeded by
    derive_seed(run.seed, <the event's position in the schedule>, "faults")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    count: int = Field(1, ge=1)
    role: Literal["agent", "env_server"] = "agent"


class FaultEvent(BaseModel):
    """One scheduled fault, `at_s` seconds after the run started (every node ready), or once the
    env server's training step reaches `at_step` (exactly one of the two).

    `at_step` counts the env server's lockstep training steps (the `step` of its metrics and of
    `run.steps`). The env server holds that step's observation until the orchestrator has
    issued the fault (`protocols.control.step_hold_timeout_s` at most), so it hits between step
    `at_step` and the next: no agent acts on the next observation before it (a network fault's
    control message is sent by then; each node applies it when it reads it). Every fault event
    records both the seconds since the start (`run_s`) and the env server's step (`step`; for
    a step fault, the step held, so `late_steps` is 0 unless the server had passed it already).

    Process faults (signals sent by the orchestrator):

    - `kill`: SIGKILL, as a crash; a killed agent stays down unless `faults.restart` brings it
      back (the env server plays its default action, its neighbours see it leave). A killed env
      server is restarted when `faults.restart.roles` lists `env_server`; otherwise it ends the
      run: the agents cannot step without it, so the orchestrator stops every node and
      `orchestrate up` exits 1 with that reason (terminal and events.jsonl);
    - `pause` / `resume`: SIGSTOP / SIGCONT, as a hung or descheduled process;
    - `restart`: SIGKILL if it still runs, then start it again at once. An agent restores its
      checkpoint and replay, joins the env server at the current step and is re-introduced to
      its neighbours: at the same ipc endpoint, or over tcp at its new port (or host), which the
      orchestrator tells each of them (`control.neighbour_moved`); the run-time network faults
      so far are replayed to it. The `learner` node of a centralized run restores its checkpoint and joint replay at
      the same ipc endpoint (agent_node/ctde/learner_node.py). The env server resumes the run at the
      step after its last finished one (same budget and evaluation schedule, fresh episodes:
      env_server/resume.py) at the same ipc endpoint (over tcp at a new port, which
      `control.env_back` gives the agents); meanwhile the agents wait (told over the
      control channel), then join it again and end the episodes it cut as truncated.

    Network faults (control messages; every node applies them to its own outgoing links):

    - `partition`: from now on messages between the `groups` (lists of node ids; nodes in no
      group are unaffected), or between the targets and every other node, are dropped and
      counted as `dropped_partition` on each link. Partitions add up until a heal.
      Cut off from the env server, an agent is treated as a killed one is: the env server
      waits `env.step_deadline_s` once for its action, plays its default action and steps on
      without waiting for it; the agent hears nothing meanwhile and does not count that as the
      env server's silence (`agents.env_silence_timeout_s`), and after the heal it answers the
      next observation and is awaited again. Cut off from its neighbours, membership reports
      them down after `protocols.membership.timeout_s` and consensus goes on without them;
    - `heal`: unblock every link touching the targets, or every link when it names none
      (including `network.partitions` set in the config);
    - `link`: the `link` profile (the fields of `network.default_link`) replaces the profile of
      the `edges` ([a, b]: both directions; each must be a link of the run: a topology edge or
      an agent's link to `env`), or of every link touching the targets. Each link keeps its
      seeded random stream and its counters. `link: {}` makes them ideal.

    Targets: at most one of `nodes` (ids), `role` (every node of that role) or `random`; a
    partition names `groups` or targets, a link change `edges` or targets.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    at_s: float | None = Field(None, ge=0)
    at_step: int | None = Field(None, ge=0)
    kind: Literal["kill", "pause", "resume", "restart", "partition", "heal", "link"]
    nodes: list[str] = []
    role: Literal["agent", "env_server"] | None = None
    random: RandomTargets | None = None
    groups: list[list[str]] = []
    edges: list[tuple[str, str]] = []
    link: LinkConfig | None = None

    @model_validator(mode="after")
    def _targets(self) -> FaultEvent:
        if (self.at_s is None) == (self.at_step is None):
            both = "got both" if self.at_s is not None else "got neither"
            raise ValueError(f"at_s: a fault fires at a time (at_s: seconds after the start) or at the env server's "
                             f"training step (at_step: N), exactly one of the two; {both}")
        given = [name for name, value in (("nodes", self.nodes), ("role", self.role), ("random", self.random)) if value]
        if len(given) > 1:
            raise ValueError(f"{given[0]}: give one of nodes, role or random for a {self.kind!r} fault, got {' and '.join(given)}")
        if len(set(self.nodes)) != len(self.nodes):
            raise ValueError(f"nodes: each node id once, got {self.nodes}")
        if self.kind != "partition" and self.groups:
            raise ValueError(f"groups: only a 'partition' fault takes groups, got a {self.kind!r} fault with groups {self.groups}")
        if self.kind != "link" and self.edges:
            raise ValueError(f"edges: only a 'link' fault takes edges, got a {self.kind!r} fault with edges")
        if self.kind != "link" and self.link is not None:
            raise ValueError(f"link: only a 'link' fault takes a link profile, got a {self.kind!r} fault with one")
        if self.kind == "partition":
            if self.groups and given:
                raise ValueError(f"groups: a partition names groups or targets ({given[0]}: cut off from everyone else), not both")
            if not self.groups and not given:
                raise ValueError("groups: a 'partition' fault needs groups of node ids, or targets (nodes, role or random) "
                                 "to cut off from everyone else; got none")
            if self.groups:
                if len(self.groups) < 2 or any(not group for group in self.groups):
                    raise ValueError(f"groups: expected at least two non-empty groups of node ids, got {self.groups}")
                group_of_each_node(self.groups, "groups")
        elif self.kind == "link":
            if self.link is None:
                raise ValueError("link: a 'link' fault needs the new link profile (network.default_link's fields), got none")
            if self.edges and given:
                raise ValueError(f"edges: a link change names edges or targets ({given[0]}: every link touching them), not both")
            if not self.edges and not given:
                raise ValueError("edges: a 'link' fault needs edges ([a, b] pairs) or targets (nodes, role or random), got none")
            for position, (a, b) in enumerate(self.edges):
                if a == b:
                    raise ValueError(f"edges.{position}: a link joins two different nodes, got {a!r} twice")
        elif not given and self.kind != "heal":
            raise ValueError(f"nodes: a {self.kind!r} fault needs its targets: node ids in nodes, a role, or random; got none")
        if self.kind in ("resume", "heal") and self.random is not None:
            raise ValueError(f"random: a {self.kind!r} names the nodes (or a role) it acts on, not a random draw")
        return self

    def named_nodes(self) -> list[tuple[str, str]]:
        """(field, node id) for every node id this event names, to check them against the run."""
        named = [(f"nodes.{i}", node) for i, node in enumerate(self.nodes)]
        named += [(f"groups.{g}.{i}", node) for g, group in enumerate(self.groups) for i, node in enumerate(group)]
        named += [(f"edges.{e}.{i}", node) for e, edge in enumerate(self.edges) for i, node in enumerate(edge)]
        return named


class RestartPolicy(BaseModel):
    """What happens when a node process of one of `roles` exits before the run is complete.

    - `never`: an unexpected exit fails the run (exit 1); a scheduled kill leaves it down;
    - `on-failure`: a node that exits non-zero (a crash, a kill) is started again after
      `backoff_s`, doubled after each restart, at most `max_restarts` times per node;
    - `always`: also a node that exits 0 before the run is complete.

    `roles`: the nodes the policy applies to; by default the agents and the `learner` node of a
    centralized run (it restores its checkpoint); `supervisor` adds a goal run's external
    supervisor node (it keeps no state: restarted, it draws again from its seed). With `env_server` listed, an env server that
    dies after the run started is restarted too and resumes the run where it stopped
    (env_server/resume.py) while the agents wait for it. An env server the policy does not cover
    ends the run when it exits (and one that dies during start-up always does).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: Literal["never", "on-failure", "always"] = "never"
    max_restarts: int = Field(3, ge=0)
    backoff_s: float = Field(1.0, ge=0)
    roles: list[NodeRole] = ["agent", "learner"]

    @field_validator("roles")
    @classmethod
    def _roles_once(cls, roles: list[str]) -> list[str]:
        if not roles or len(set(roles)) != len(roles):
            valid = ", ".join(repr(role) for role in get_args(NodeRole))
            raise ValueError(f"expected at least one of {valid}, each at most once, got {roles}")
        return roles


class FaultsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # What happens when a node process exits before the run is complete and no restart policy
    # applies. "fail": stop the run and exit 1.
    on_node_exit: Literal["fail"] = "fail"
    restart: RestartPolicy = RestartPolicy()
    schedule: list[FaultEvent] = []


_LATER_BACKENDS: tuple[str, ...] = ()


def _is_loopback(host: str) -> bool:
    """True for an address (or name) that only this machine reaches: 127.0.0.0/8, ::1, localhost."""
    return host == "localhost" or host == "::1" or host.startswith("127.")


class LaunchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["local", "ssh", "ray"] = "local"
    # With backend ssh: the machines and which nodes run on each (orchestrator/backends/hosts.py).
    hosts: list[SshHost] = []
    # With backend ssh or ray: the address of this (the launching) machine that the other
    # machines reach the control channel at.
    control_host: str | None = None
    # With backend ray: the cluster and the placement (orchestrator/backends/ray_config.py).
    ray: RayPlacement | None = None
    # How the local backend starts nodes (orchestrator/launcher.py): "fork_server" forks every
    # node from one process that has imported torch and the node code (shared copy-on-write
    # pages: ~4x less memory per agent, faster start); "spawn" starts each as `python -m ...`.
    start_method: Literal["fork_server", "spawn"] = "fork_server"
    # After control.shutdown, nodes get this long to exit before they are killed.
    shutdown_timeout_s: float = Field(15.0, gt=0)
    # Period of the orchestrator's status line / live view refresh (the nodes' own reports come
    # every protocols.control.status_every_s).
    status_every_s: float = Field(1.0, gt=0)
    # "auto": a live table when stdout is a terminal, plain status lines otherwise.
    live_view: Literal["auto", "on", "off"] = "auto"

    @field_validator("backend", mode="before")
    @classmethod
    def _backend_available(cls, backend: Any) -> Any:
        if backend in _LATER_BACKENDS:
            raise ValueError(f"expected 'local' or 'ssh'; the {backend!r} backend is not implemented yet")
        return backend

    @model_validator(mode="after")
    def _hosts_match_backend(self) -> LaunchConfig:
        if self.backend == "ssh":
            if not self.hosts:
                raise ValueError("launch.hosts: expected at least one host with backend 'ssh', got none")
            if self.control_host is None:
                raise ValueError("launch.control_host: expected the launching machine's address the hosts reach, got none")
            if self.ray is not None:
                raise ValueError("launch.ray: only used with backend 'ray', got a ray section with backend 'ssh'")
        elif self.backend == "ray":
            if self.ray is None:
                raise ValueError("launch.ray: expected the cluster section (address, project_root, ...) with backend 'ray', got none")
            if self.hosts:
                raise ValueError("launch.hosts: only used with backend 'ssh', got hosts with backend 'ray'")
            if self.control_host is None:
                raise ValueError("launch.control_host: expected the launching machine's address the Ray machines reach, got none")
        elif self.hosts:
            spare = " (a spare host stands by for a lost machine of an ssh launch)" if any(h.spare for h in self.hosts) else ""
            raise ValueError(f"launch.hosts: only used with backend 'ssh'{spare}, got backend {self.backend!r}")
        elif self.control_host is not None or self.ray is not None:
            field_name = "control_host" if self.control_host is not None else "ray"
            raise ValueError(f"launch.{field_name}: only used with backend 'ssh' or 'ray', got backend {self.backend!r}")
        return self


# ------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    run: RunSection
    env: EnvConfig
    agents: AgentsConfig
    topology: TopologyConfig
    training: TrainingConfig = DecentralizedTraining()
    protocols: ProtocolsConfig = ProtocolsConfig()
    network: NetworkConfig = NetworkConfig()
    faults: FaultsConfig = FaultsConfig()
    launch: LaunchConfig = LaunchConfig()
    # A user's capabilities, each `{kind: <installed entry point of parley.capabilities, or
    # package.module:NAME>, <its settings>}` (agent_node/registry.py); Parley's own capabilities
    # have their sections above.
    capabilities: CapabilityConfigs = ()
    # Filled by the orchestrator in resolved.yaml; leave them out of your configs.
    nodes: dict[str, NodeEntry] | None = None
    runtime: RunLayout | None = None

    @model_validator(mode="before")
    @classmethod
    def _reproducible_runs_owe_nothing(cls, data: Any) -> Any:
        return owe_nothing_by_default(data)  # run.reproducible: agents.max_pending_gradient_steps defaults to 0

    @model_validator(mode="after")
    def _sections_agree(self) -> RunConfig:
        """What the sections say against each other. Every problem on its own line, each starting
        with its field path; the error formatter turns them into separate entries."""
        count = self.agents.count
        problems: list[str] = []
        known = static_agent_count(self.env)
        if known is not None and known[0] != count:
            problems.append(f"agents.count: expected {known[0]} ({known[1]}), got {count}")
        topology = None
        try:
            topology = build_topology(self.topology, agent_node_ids(count))
        except (ValueError, TypeError, RuntimeError) as error:
            problems.append(f"topology: cannot build a {self.topology.kind!r} topology for agents.count={count}: {error}")
        valid_ids = self.node_ids()
        id_range = _id_range(valid_ids)

        problems += self.network.node_id_problems(valid_ids, id_range)
        problems += self._fault_problems(topology, valid_ids, id_range)
        problems += self._launch_problems(valid_ids, id_range)
        problems += port_range_problems(self)
        problems += self._silence_problems()
        problems += self._talk_problems(topology, valid_ids)
        problems += self._proximity_problems()
        problems += capability_problems(self, topology)  # each capability's own (agent_node/registry.py)
        problems += reproducibility_problems(self)  # run.reproducible: what it cannot pin
        problems += self._resolved_section_problems()
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _fault_problems(self, topology: Topology | None, valid_ids: list[str], id_range: str) -> list[str]:
        """The fault schedule against the run's nodes, links and budget, and restarts against the transport."""
        problems: list[str] = []
        count = self.agents.count
        links = None if topology is None else communication_links(topology, agent_node_ids(count))
        capability_nodes = {node.node_id for node in extra_nodes(self)}  # the learner node, a supervisor
        for position, event in enumerate(self.faults.schedule):
            unknown = [node for node in event.nodes if node not in valid_ids]
            if unknown:
                problems.append(f"faults.schedule.{position}.nodes: expected node ids ({id_range}), got unknown {unknown}")
            for field_path, node in event.named_nodes():  # in nodes, a partition's groups or a link's edges
                if node in capability_nodes and event.kind not in ("kill", "pause", "resume", "restart"):
                    problems.append(
                        f"faults.schedule.{position}.{field_path}: expected a process fault (kill, pause, resume, restart) "
                        f"for the {node} node, got {event.kind!r} (network faults on its links are not supported yet)"
                    )
            for field_path, node in event.named_nodes():
                if node not in valid_ids and not field_path.startswith("nodes."):
                    problems.append(f"faults.schedule.{position}.{field_path}: expected a node id ({id_range}), got unknown {node!r}")
            for index, (a, b) in enumerate(event.edges):
                if links is not None and a in valid_ids and b in valid_ids and (a, b) not in links:
                    problems.append(
                        f"faults.schedule.{position}.edges.{index}: expected a link of the run (a {self.topology.kind} "
                        f"topology edge, or an agent's link to {ENV_NODE_ID}), got [{a}, {b}], which are not linked"
                    )
            if event.at_step is not None and event.at_step >= self.run.steps:
                problems.append(f"faults.schedule.{position}.at_step: expected a training step below run.steps "
                                f"({self.run.steps}), which the env server reaches; got {event.at_step}")
            if event.random is not None:
                pool = count if event.random.role == "agent" else 1
                if event.random.count > pool:
                    problems.append(
                        f"faults.schedule.{position}.random.count: expected at most {pool} "
                        f"(the {event.random.role} nodes), got {event.random.count}"
                    )

        if self.network.transport != "ipc":
            # With tcp a restarted node listens at a new port (or, moved off a lost host, a new
            # address). Its neighbours are told of a restarted agent (control.neighbour_moved) and
            # the agents of a restarted env server (control.env_back); the agents' links to a
            # capability's node (a learner node, a supervisor) have no such message yet.
            policy = self.faults.restart
            restarted = sorted(
                node.node_id for node in extra_nodes(self)
                if (policy.policy != "never" and node.role in policy.roles)
                or any(e.kind == "restart" and node.node_id in e.nodes for e in self.faults.schedule)
            )
            if restarted:
                problems.append(
                    f"faults.restart: expected network.transport 'ipc' to restart {', '.join(restarted)} (with tcp a "
                    f"restarted node gets a new port, and the agents are not told of a new {restarted[0]} endpoint; "
                    "agents and the env server are), got 'tcp'; leave it out of faults.restart.roles and of the schedule's restarts"
                )

        return problems

    def _launch_problems(self, valid_ids: list[str], id_range: str) -> list[str]:
        """Several machines (ssh, Ray): the transport, addresses and where each node runs."""
        problems: list[str] = []
        if self.launch.backend in ("ssh", "ray"):
            backend = self.launch.backend
            if self.network.transport != "tcp":
                problems.append(f"network.transport: expected 'tcp' with launch.backend {backend!r} (ipc is one host only), got {self.network.transport!r}")
            if self.network.advertise_host is not None:
                where = "launch.hosts address" if backend == "ssh" else "Ray machine's IP"
                problems.append(
                    f"network.advertise_host: expected none with launch.backend {backend!r} (each node is advertised at its "
                    f"{where}), got {self.network.advertise_host!r}"
                )
            if _is_loopback(self.network.bind_host) and (
                backend == "ray" or not all(_is_loopback(host.address) for host in self.launch.hosts)
            ):
                # Each node is advertised at its machine's address; bound to loopback it would
                # not be listening there, and its peers would stay connecting.
                problems.append(
                    f"network.bind_host: expected 0.0.0.0 or an interface the other machines reach with launch.backend "
                    f"{backend!r}, got the loopback address {self.network.bind_host!r}"
                )
        if self.launch.backend == "ray":
            problems += self.launch.ray.check_nodes(list(valid_ids))
            if self.launch.ray.shared_workdir and self.faults.restart.policy == "never":
                problems.append(
                    "launch.ray.shared_workdir: a shared workdir lets the restart policy start a lost machine's node on "
                    "another machine; expected faults.restart.policy 'on-failure' or 'always', got 'never' (it would do nothing)"
                )
        if self.launch.backend == "ssh":
            placed: dict[str, int] = {}
            for position, host in enumerate(self.launch.hosts):
                for node in host.nodes:
                    if node not in valid_ids:
                        problems.append(f"launch.hosts.{position}.nodes: expected node ids ({id_range}), got unknown {node!r}")
                    elif node in placed:
                        problems.append(f"launch.hosts.{position}.nodes: {node!r} is already placed on launch.hosts.{placed[node]}")
                    else:
                        placed[node] = position
            missing = [node for node in valid_ids if node not in placed]
            if missing:
                problems.append(f"launch.hosts: expected every node placed on a host, missing {missing}")
            problems += self._spare_problems()

        return problems

    def _spare_problems(self) -> list[str]:
        """A spare host is used by the restart policy, and only where checkpoints outlive their machine."""
        hosts = self.launch.hosts
        spares = [position for position, host in enumerate(hosts) if host.spare]
        if not spares:
            return []
        problems = []
        first = spares[0]
        if self.faults.restart.policy == "never":
            problems.append(
                f"launch.hosts.{first}.spare: a spare host takes the nodes of a lost host when the restart policy "
                "restarts them; expected faults.restart.policy 'on-failure' or 'always', got 'never' (the spare would never be used)"
            )
        workdir = hosts[0].workdir.rstrip("/")
        for position, host in enumerate(hosts):
            if host.workdir.rstrip("/") != workdir:
                problems.append(
                    f"launch.hosts.{position}.workdir: with a spare host (launch.hosts.{first}) every host's workdir must "
                    "be the one directory all hosts share (a network file system mounted at the same path), so that a node "
                    f"moved off a lost host finds its checkpoints; got {host.workdir!r}, and {hosts[0].workdir!r} on launch.hosts.0"
                )
                break
        return problems

    def _silence_problems(self) -> list[str]:
        """How long an agent may hear nothing from the env server, against how long the server waits."""
        if self.agents.env_silence_timeout_s <= self.env.step_deadline_s:
            return [
                f"agents.env_silence_timeout_s: expected more than env.step_deadline_s ({self.env.step_deadline_s}), "
                f"got {self.agents.env_silence_timeout_s}: an agent would give up on a server that is waiting for a slow agent"
            ]
        return []

    def _resolved_section_problems(self) -> list[str]:
        """The sections the orchestrator fills in resolved.yaml (nodes, runtime) against the run."""
        problems: list[str] = []
        if self.nodes is not None:
            expected = derive_nodes(self)
            if self.nodes != expected:
                problems.append(
                    "nodes: does not match the run (it is derived from agents.count and run.seed; "
                    f"delete the section to re-derive it): expected {_nodes_summary(expected)}, got {_nodes_summary(self.nodes)}"
                )
        if self.runtime is not None and self.network.transport == "ipc" and self.runtime.socket_dir is None:
            problems.append("runtime.socket_dir: expected a directory for network.transport 'ipc', got null")

        return problems

    def _talk_problems(self, topology: Topology | None, valid_ids: list[str]) -> list[str]:
        """Links whose delay counts env steps (`delay_steps`) need a run that talks in env steps,
        and only peer links between agents can count steps (the env link is the clock itself); a
        run that talks in env steps needs every peer protocol it runs to talk that way."""
        problems = []
        talk_in_steps = self.protocols.talk == "env_steps"
        if self.network.default_link.counts_steps:
            problems.append(
                "network.default_link.delay_steps: the default link is every env link too, and the env link is the "
                "clock that env-step delays count; set delay_steps on a link override with role: peer_links instead"
            )
        if self.network.default_link.messages is not None:
            problems.append(
                "network.default_link.messages: the default link is every env link too, whose messages are the env's, "
                "not the protocols'; set messages on a link override with role: peer_links instead")
        for position, override in enumerate(self.network.links):
            if override.link.messages is not None:
                problems += _message_filter_problems(f"network.links.{position}.link.messages", override.link.messages,
                                                     talk_in_steps, [(a, b) for a in valid_ids for b in valid_ids
                                                                     if a != b and override.matches(a, b)])
            if not override.link.counts_steps:
                continue
            field = f"network.links.{position}.link.delay_steps"
            if not talk_in_steps:
                problems.append(f"{field}: counts delay in env steps, which needs protocols.talk: env_steps "
                                "(got free: talking is free in env time)")
            pairs = [(a, b) for a in valid_ids for b in valid_ids if a != b and override.matches(a, b)]
            not_peers = sorted({f"{a} -> {b}" for a, b in pairs if not (is_agent_node_id(a) and is_agent_node_id(b))})
            if not_peers:
                problems.append(f"{field}: only links between two agents can count env steps, but this override also "
                                f"selects {', '.join(not_peers[:3])}{' ...' if len(not_peers) > 3 else ''} (select role: peer_links)")
        for position, event in enumerate(self.faults.schedule):
            if event.link is None or event.link.messages is None:
                continue
            field = f"faults.schedule.{position}.link.messages"
            problems += _message_filter_problems(field, event.link.messages, talk_in_steps, event.edges)
            if not event.edges:
                problems.append(f"{field}: a link change that limits its faults to message types names its edges "
                                "(between two agents), not targets, whose links to env it would change too")
            elif not event.link.counts_steps:
                # Without delay_steps the node's wall-clock links would take the profile too
                # (protocols/run/control.py `apply_network_fault`), and they cannot filter by type.
                problems.append(f"{field}: a link change that limits its faults to message types needs delay_steps "
                                "in its link profile (1: the next step), so only the env-step link takes it")
        if not talk_in_steps:
            return problems
        if topology is not None:
            wall_fields = ("delay_s", "jitter_s", "reorder", "in_order", "bandwidth_bytes_per_s")
            for src, dst in topology.edge_list():
                link = self.network.link_between(src, dst)
                given = [name for name in wall_fields if not link.counts_steps and getattr(link, name) != LinkConfig.model_fields[name].default]
                if given:
                    problems.append(
                        f"network: the peer link {src} -> {dst} sets {', '.join(given)}, wall-clock settings, but "
                        "protocols.talk: env_steps counts peer delays in steps: set delay_steps on it instead")
                    break
        return problems

    def _proximity_problems(self) -> list[str]:
        """Links that follow positions (topology.kind: proximity, protocols/engines/proximity.py)
        gate each peer message by the positions of the env step it was sent at: they need the
        env-step clock and positions from the env. Any number of env copies: each copy has its
        own graph (the rules for messages about copies and about none are proximity.py's)."""
        if self.topology.kind != "proximity":
            if self.env.positions is not None:
                return [f"env.positions: names where the agents are for links that follow them, which only "
                        f"topology.kind proximity uses; got {self.env.positions!r} with kind {self.topology.kind!r}"]
            return []
        problems = []
        if self.protocols.talk != "env_steps":
            problems.append(f"protocols.talk: topology.kind proximity delivers a peer message only if its agents were in "
                            f"range at the env step it was sent at, which needs env_steps; got {self.protocols.talk!r}")
            if self.topology.delay_steps_per_unit is not None:
                problems.append(f"topology.delay_steps_per_unit: a delay counted in env steps needs protocols.talk: "
                                f"env_steps (talk {self.protocols.talk!r} has no step clock to delay messages in); got "
                                f"{self.topology.delay_steps_per_unit} with talk {self.protocols.talk!r}")
        if positions_reader_path(self.env.name, self.env.positions) is None:
            problems.append(f"env.positions: topology.kind proximity needs every agent's position, and {self.env.name} "
                            f"has no built-in reader (the MPE environments have one); expected an import path "
                            "'package.module:function' returning {agent: position}, got none")
        if self.env.num_workers != 1:
            problems.append(f"env.num_workers: positions are read by the env server's own copies (env_server/__main__.py "
                            f"make_copies), not by forked workers; expected 1 with topology.kind proximity, got "
                            f"{self.env.num_workers}")
        return problems

    # -------------------------------------------------------------- derived views

    def build_topology(self) -> Topology:
        """The agents' communication graph (validated buildable when the config was loaded)."""
        return build_topology(self.topology, agent_node_ids(self.agents.count))

    def node_ids(self) -> list[str]:
        """`env`, then `agent_0 .. agent_{count-1}`, then the nodes the run's capabilities add (the
        learner node of a centralized run, an external goal supervisor: agent_node/registry.py)."""
        return [ENV_NODE_ID, *agent_node_ids(self.agents.count), *(node.node_id for node in extra_nodes(self))]


def listeners_per_machine(config: RunConfig) -> dict[str, int]:
    """How many tcp listening sockets of the run are known to share each machine: one per node
    (the env server's, an agent's peer inbox, the learner's) and the orchestrator's control
    socket on the launching machine. Ray's spread placement is only known at launch; nodes it
    places freely are not counted (a range too small for them fails at the node's bind)."""
    nodes = config.node_ids()
    backend = config.launch.backend
    if backend == "local":
        return {"this machine": len(nodes) + 1}
    machines: dict[str, int] = {}
    if backend == "ssh":
        for host in config.launch.hosts:
            machines[host.address] = machines.get(host.address, 0) + len(host.nodes)
    elif config.launch.ray.strategy in ("pack", "strict_pack"):  # every bundle may land on one machine
        machines["one Ray machine"] = len(nodes)
    else:
        for machine in config.launch.ray.pin.values():
            machines[machine] = machines.get(machine, 0) + 1
    control = config.launch.control_host
    machines[control] = machines.get(control, 0) + 1
    return machines


def port_range_problems(config: RunConfig) -> list[str]:
    """`network.port_range` must hold every listener of the busiest machine."""
    size = config.network.port_range_size()
    if size is None:
        return []
    machine, listeners = max(listeners_per_machine(config).items(), key=lambda item: item[1])
    if listeners <= size:
        return []
    low, high = config.network.port_range
    return [
        f"network.port_range: expected at least {listeners} ports ({machine} runs {listeners} tcp listeners: one per "
        f"node placed there, plus the orchestrator's control socket on the launching machine), got "
        f"[{low}, {high}] ({size} port{'s' if size != 1 else ''})"
    ]


def communication_links(topology: Topology, agent_ids: list[str]) -> set[tuple[str, str]]:
    """Every directed link nodes of the run talk over: both directions of each topology edge
    and of each agent's link to the env server (the control links are not emulated)."""
    links: set[tuple[str, str]] = set()
    for a, b in topology.edge_list():
        links |= {(a, b), (b, a)}
    for agent in agent_ids:
        links |= {(agent, ENV_NODE_ID), (ENV_NODE_ID, agent)}
    return links


def _id_range(node_ids: list[str]) -> str:
    agents = [node for node in node_ids if is_agent_node_id(node)]
    others = [node for node in node_ids if not is_agent_node_id(node)]
    shown = others[:1] + ([f"{agents[0]} .. {agents[-1]}"] if len(agents) > 1 else agents) + others[1:]
    return ", ".join(shown)


def _nodes_summary(nodes: dict[str, NodeEntry]) -> str:
    return "{" + ", ".join(f"{node}: {entry.role}#{entry.index} seed {entry.seed}" for node, entry in nodes.items()) + "}"


# ------------------------------------------------------------------------------------------
# Seeds and nodes
# ------------------------------------------------------------------------------------------


def derive_nodes(config: RunConfig) -> dict[str, NodeEntry]:
    """Every node of the run with its index, role and base seed: env first, then agents, then
    the nodes of the run's capabilities (a centralized run's learner node at `count + 1`, then an
    external goal supervisor)."""
    count = config.agents.count
    nodes = {
        ENV_NODE_ID: NodeEntry(
            index=count, role="env_server", seed=derive_seed(config.run.seed, count, NODE_SEED_STREAM)
        )
    }
    for index, node in enumerate(agent_node_ids(count)):
        nodes[node] = NodeEntry(index=index, role="agent", seed=derive_seed(config.run.seed, index, NODE_SEED_STREAM))
    for extra in extra_nodes(config):  # the nodes of the run's capabilities, after the agents and the env server
        index = len(nodes)
        nodes[extra.node_id] = NodeEntry(index=index, role=extra.role, seed=derive_seed(config.run.seed, index, NODE_SEED_STREAM))
    return nodes


# ------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------


def validate_config(data: Any, source: str | None = None) -> RunConfig:
    """A RunConfig from plain data (a parsed YAML tree), or a ConfigError listing every problem."""
    if not isinstance(data, dict):
        raise ConfigError([f"expected a mapping of sections (run, env, agents, topology, ...) at the top level, got {_kind(data)}"], source)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, RunConfig), source) from None


def read_yaml(path: str | Path) -> Any:
    """The parsed YAML tree of `path`; a ConfigError names the file (and line) otherwise."""
    path = Path(path)
    if not path.exists():
        raise ConfigError([f"config file not found: {path}"])
    if not path.is_file():
        raise ConfigError([f"expected a YAML file, got a directory: {path}"])
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError([f"cannot read {path}: {error.strerror}"]) from None
    try:
        data = load_yaml(text)  # YAML 1.2 booleans: `live_view: off` stays "off"
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(error, "problem", None) or str(error)
        context = getattr(error, "context", None)
        context_mark = getattr(error, "context_mark", None)
        if context and context_mark is not None and mark is not None and context_mark.line != mark.line:
            context = f"{context} (from line {context_mark.line + 1})"
        detail = f"{context}, {problem}" if context else problem
        raise ConfigError([f"{where}: YAML syntax error: {detail}"]) from None
    return {} if data is None else data


def _message_filter_problems(field: str, messages: tuple[str, ...], talk_in_steps: bool,
                             links: list[tuple[str, str]]) -> list[str]:
    """`messages` on a link (LinkConfig: faults on these message types only) needs links between
    agents that talk in env steps, and names of message types that peer links carry."""
    problems = []
    if not talk_in_steps:
        problems.append(f"{field}: limits a link's faults to message types, which only links that count env steps "
                        "do (protocols.talk: env_steps); wall-clock links (talk: free) do not implement it; got talk free")
    not_peers = sorted({f"{a} -> {b}" for a, b in links if not (is_agent_node_id(a) and is_agent_node_id(b))})
    if not_peers:
        problems.append(f"{field}: only links between two agents carry the protocols' messages, but this link also "
                        f"selects {', '.join(not_peers[:3])}{' ...' if len(not_peers) > 3 else ''} (select role: peer_links)")
    known = peer_message_types()
    unknown = [name for name in messages if name not in known]
    if unknown:
        problems.append(f"{field}: expected message types that peer links carry ({', '.join(known)}), "
                        f"got unknown {', '.join(map(repr, unknown))}")
    return problems


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML run config, apply `--set` overrides, validate. Raises ConfigError."""
    data = read_yaml(path)
    if overrides:
        if not isinstance(data, dict):
            raise ConfigError([f"expected a mapping at the top level, got {_kind(data)}"], str(path))
        notes: list[str] = []
        data = apply_overrides(data, list(overrides), kind_fields=run_kind_fields, notes=notes)
        for note in notes:  # a swapped kind dropped keys of the file: say which
            print(f"note: {note}", file=sys.stderr)
    return validate_config(data, str(path))


def run_kind_fields(path: list[str], kind: Any) -> tuple[str, ...] | None:
    """The keys of the run config's section at `path` when its kind (or mode) is `kind`; for a
    learner or world model from a plugin, the keys of the plugin's config model."""
    fields = tagged_member_fields(RunConfig, path, kind)
    registry = {("agents", "learner"): LEARNERS, ("agents", "world_model"): WORLD_MODELS}.get(tuple(path))
    if fields is None and registry is not None and isinstance(kind, str):
        try:
            return tuple(registry.resolve(kind).config_model.model_fields)
        except PluginError:
            return None  # the schema names what is wrong with the kind when it validates
    return fields


def load_resolved(path: str | Path) -> RunConfig:
    """The config of a resolved run (`<run dir>/resolved.yaml`), as a node process reads it."""
    config = validate_config(read_yaml(path), str(path))
    missing = [name for name in ("nodes", "runtime") if getattr(config, name) is None]
    if missing:
        raise ConfigError(
            [f"{name}: required in a resolved config (written by `orchestrate up`), got nothing" for name in missing],
            str(path),
        )
    return config


def _kind(value: Any) -> str:
    return "a list" if isinstance(value, list) else f"{type(value).__name__} {value!r:.40}"


# ------------------------------------------------------------------------------------------
# Resolution
# ------------------------------------------------------------------------------------------


def with_nodes(config: RunConfig) -> RunConfig:
    """The config with its `nodes` section derived (idempotent)."""
    return config.model_copy(update={"nodes": derive_nodes(config)})


def with_runtime(config: RunConfig, layout: RunLayout) -> RunConfig:
    """The config with its `runtime` section set, validated again (ipc needs a socket dir)."""
    return validate_config(resolve_data(config.model_copy(update={"runtime": layout})))


def _plain(value: Any) -> Any:
    """model_dump output as YAML-friendly builtins (tuples -> lists, paths -> strings)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def resolve_data(config: RunConfig) -> dict[str, Any]:
    """The config as plain data, every default filled, in schema order (no nodes derivation)."""
    return _plain(config.model_dump(mode="python"))


def resolve(config: RunConfig) -> dict[str, Any]:
    """The fully expanded config: every default filled and the `nodes` section derived.

    Loading the result gives back an equal config: `validate_config(resolve(c)) == with_nodes(c)`.
    """
    return resolve_data(with_nodes(config))


def write_resolved(config: RunConfig, run_dir: str | Path) -> Path:
    """Write `<run_dir>/resolved.yaml` and return its path."""
    path = Path(run_dir) / RESOLVED_FILENAME
    header = (
        "# Resolved by `orchestrate up`: every default filled in, node seeds derived.\n"
        "# Every node of this run reads this file; edit the source config, not this one.\n"
    )
    path.write_text(header + yaml.safe_dump(resolve(config), sort_keys=False, default_flow_style=False, width=100))
    return path

