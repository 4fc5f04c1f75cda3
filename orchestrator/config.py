"""The run's typed configuration: one YAML file in, one validated `RunConfig` out.

Each package owns the schema of its own section and this module composes them:

    run:        RunSection                     protocols/settings.py
    env:        EnvConfig                      env_server/config.py
    agents:     AgentsConfig                   agent_node/config.py (learner, world model)
    training:   TrainingConfig                 agent_node/training_config.py (decentralized | centralized)
    topology:   TopologyConfig                 protocols/topology.py
    protocols:  control, membership, consensus protocols/settings.py, protocols/consensus.py
    network:    NetworkConfig                  protocols/settings.py (links: protocols/links.py)
    faults:     FaultsConfig                   (here)
    launch:     LaunchConfig                   (here)
    nodes:      {node id: NodeEntry}           filled by the orchestrator, see below
    runtime:    RunLayout                      filled by the orchestrator, see below

Every model forbids unknown keys and is frozen. Loading never imports torch, pettingzoo or zmq,
so `orchestrate validate` answers in a fraction of a second.

**Resolution.** `orchestrate up` validates the user's file (plus `--set` overrides), then
writes the fully expanded config — every default filled in — to `<run dir>/resolved.yaml`. That
file is the one source of truth every node reads with these same section schemas: a node does
not import the orchestrator, it validates the sections it needs (`protocols/node_config.py`: the
shared sections plus its own package's, `EnvConfig` or `AgentsConfig`); `load_resolved` here
reads and validates the whole file.

Two sections exist only in resolved files: `nodes` (each node's index, role and derived seed)
and `runtime` (run id, run dir, socket dir). They are optional in the schema so that user configs leave them out; when
present, `nodes` must match what the orchestrator would derive, so a hand-edited seed cannot
silently disagree with the run seed. `load_resolved` insists on both.

**Node ids.** The env server is `env`; agents are `agent_0 .. agent_{count-1}`, and `agent_i`
drives the environment's i-th possible agent. For seed derivation agents have index i and the
env server has index `count` (after the agents, so adding an env-side index never shifts the
agents' seeds). A run with `training.mode: centralized` has one more node, `learner`, index
`count + 1`. The node ids and ipc endpoint names are defined in `protocols/settings.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent_node.config import AgentsConfig
from agent_node.training_config import DecentralizedTraining, TrainingConfig, training_problems
from env_server.config import EnvConfig, static_agent_count
from orchestrator.backends.hosts import SshHost
from protocols.config_errors import ConfigError, format_validation_error
from orchestrator.overrides import apply_overrides, load_yaml
from protocols.seeds import derive_seed
from protocols.settings import (
    ENV_NODE_ID,
    LEARNER_NODE_ID,
    NetworkConfig,
    NodeEntry,
    ProtocolsConfig,
    RunLayout,
    RunSection,
    agent_node_ids,
)
from protocols.settings import node_ids as run_node_ids
from protocols.topology import Topology, TopologyConfig, build_topology

RESOLVED_FILENAME = "resolved.yaml"
# The stream name of a node's base seed; a node derives its other streams itself with
# `derive_seed(run.seed, nodes[id].index, "<stream>")`.
NODE_SEED_STREAM = "node"


# ------------------------------------------------------------------------------------------
# Sections owned by the orchestrator
# ------------------------------------------------------------------------------------------


# The fault kinds the orchestrator executes at run time (orchestrator/faults.py), and those the
# schema knows but `orchestrate up` refuses, with the reason.
EXECUTED_FAULTS = ("kill", "pause", "resume", "restart")
REFUSED_FAULTS = {
    "partition": "partitions need link emulation in the transport, which the orchestrator does not drive yet",
    "heal": "partitions need link emulation in the transport, which the orchestrator does not drive yet",
}


class RandomTargets(BaseModel):
    """`count` nodes drawn without replacement from the nodes of `role`, seeded by
    derive_seed(run.seed, <the event's position in the schedule>, "faults")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    count: int = Field(1, ge=1)
    role: Literal["agent", "env_server"] = "agent"


class FaultEvent(BaseModel):
    """One scheduled fault, `at_s` seconds after the run started (every node ready).

    - `kill`: SIGKILL, as a crash; the killed node stays down (the run goes on without it: the
      env server plays its default action, its neighbours see it leave);
    - `pause` / `resume`: SIGSTOP / SIGCONT, as a hung or descheduled process;
    - `restart`: SIGKILL if it still runs, then start it again at once (agents only: it
      restores its checkpoint and replay, joins the env server at the current step and is
      re-introduced to its neighbours at the same ipc endpoint);
    - `partition`, `heal`: known, refused by `orchestrate up` (see REFUSED_FAULTS).

    Targets: exactly one of `nodes` (ids), `role` (every node of that role) or `random`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    at_s: float = Field(ge=0)
    kind: Literal["kill", "pause", "resume", "restart", "partition", "heal"]
    nodes: list[str] = []
    role: Literal["agent", "env_server"] | None = None
    random: RandomTargets | None = None

    @model_validator(mode="after")
    def _targets(self) -> FaultEvent:
        given = [name for name, value in (("nodes", self.nodes), ("role", self.role), ("random", self.random)) if value]
        if len(given) > 1:
            raise ValueError(f"{given[0]}: give one of nodes, role or random for a {self.kind!r} fault, got {' and '.join(given)}")
        if not given and self.kind != "heal":
            raise ValueError(f"nodes: a {self.kind!r} fault needs its targets: node ids in nodes, a role, or random; got none")
        if len(set(self.nodes)) != len(self.nodes):
            raise ValueError(f"nodes: each node id once, got {self.nodes}")
        if self.kind == "resume" and self.random is not None:
            raise ValueError("random: a 'resume' names the nodes (or a role) it continues, not a random draw")
        return self


class RestartPolicy(BaseModel):
    """What happens when an agent process exits before the run is complete.

    - `never`: an unexpected exit fails the run (exit 1); a scheduled kill leaves it down;
    - `on-failure`: an agent that exits non-zero (a crash, a kill) is started again after
      `backoff_s`, doubled after each restart, at most `max_restarts` times per agent;
    - `always`: also an agent that exits 0 before the run is complete.

    Agents only: the env server's exit always ends the run (the agents cannot rejoin a new one).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: Literal["never", "on-failure", "always"] = "never"
    max_restarts: int = Field(3, ge=0)
    backoff_s: float = Field(1.0, ge=0)


class FaultsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # What happens when a node process exits before the run is complete and no restart policy
    # applies. "fail": stop the run and exit 1.
    on_node_exit: Literal["fail"] = "fail"
    restart: RestartPolicy = RestartPolicy()
    schedule: list[FaultEvent] = []


_LATER_BACKENDS = ("ray",)


class LaunchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["local", "ssh"] = "local"
    # With backend ssh: the machines and which nodes run on each (orchestrator/backends/hosts.py),
    # and the address of this (the launching) machine that those hosts reach the control
    # channel at.
    hosts: list[SshHost] = []
    control_host: str | None = None
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
        elif self.hosts or self.control_host is not None:
            raise ValueError(f"launch.hosts / launch.control_host are only used with backend 'ssh', got backend {self.backend!r}")
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
    # Filled by the orchestrator in resolved.yaml; leave them out of your configs.
    nodes: dict[str, NodeEntry] | None = None
    runtime: RunLayout | None = None

    @model_validator(mode="after")
    def _sections_agree(self) -> RunConfig:
        # Every problem on its own line, each starting with its field path; the error
        # formatter turns them into separate entries.
        problems: list[str] = []
        count = self.agents.count

        known = static_agent_count(self.env)
        if known is not None and known[0] != count:
            problems.append(f"agents.count: expected {known[0]} ({known[1]}), got {count}")

        topology = None
        try:
            topology = build_topology(self.topology, agent_node_ids(count))
        except (ValueError, TypeError, RuntimeError) as error:
            problems.append(f"topology: cannot build a {self.topology.kind!r} topology for agents.count={count}: {error}")

        centralized = self.training.mode == "centralized"
        valid_ids = run_node_ids(count, with_learner=centralized)
        problems.extend(training_problems(self.training, self.agents, self.protocols.consensus))
        problems.extend(self.network.node_id_problems(valid_ids, _id_range(count, centralized)))
        for position, event in enumerate(self.faults.schedule):
            unknown = [node for node in event.nodes if node not in valid_ids]
            if unknown:
                problems.append(f"faults.schedule.{position}.nodes: expected node ids ({_id_range(count, centralized)}), got unknown {unknown}")
            if LEARNER_NODE_ID in event.nodes:
                problems.append(
                    f"faults.schedule.{position}.nodes: the learner node cannot be a fault target (the agents do not "
                    "survive its loss yet: a learner that dies fails the run)"
                )
            if event.kind == "restart" and (ENV_NODE_ID in event.nodes or event.role == "env_server"
                                            or (event.random is not None and event.random.role == "env_server")):
                problems.append(f"faults.schedule.{position}: expected agents to restart, got the env server "
                                "(agents cannot rejoin a new env server)")
            if event.random is not None:
                pool = count if event.random.role == "agent" else 1
                if event.random.count > pool:
                    problems.append(
                        f"faults.schedule.{position}.random.count: expected at most {pool} "
                        f"(the {event.random.role} nodes), got {event.random.count}"
                    )

        restarts = self.faults.restart.policy != "never" or any(e.kind == "restart" for e in self.faults.schedule)
        if restarts and self.network.transport != "ipc":
            problems.append(
                "faults.restart: expected network.transport 'ipc' for restarts (a restarted agent must come back "
                f"at the endpoint its neighbours know; with tcp it gets a new port), got {self.network.transport!r}"
            )

        if self.launch.backend == "ssh":
            if self.network.transport != "tcp":
                problems.append(f"network.transport: expected 'tcp' with launch.backend 'ssh' (ipc is one host only), got {self.network.transport!r}")
            if self.network.advertise_host is not None:
                problems.append(
                    "network.advertise_host: expected none with launch.backend 'ssh' (each node is advertised at its "
                    f"launch.hosts address), got {self.network.advertise_host!r}"
                )
            placed: dict[str, int] = {}
            for position, host in enumerate(self.launch.hosts):
                for node in host.nodes:
                    if node not in valid_ids:
                        problems.append(f"launch.hosts.{position}.nodes: expected node ids ({_id_range(count, centralized)}), got unknown {node!r}")
                    elif node in placed:
                        problems.append(f"launch.hosts.{position}.nodes: {node!r} is already placed on launch.hosts.{placed[node]}")
                    else:
                        placed[node] = position
            missing = [node for node in valid_ids if node not in placed]
            if missing:
                problems.append(f"launch.hosts: expected every node placed on a host, missing {missing}")

        if self.agents.env_silence_timeout_s <= self.env.step_deadline_s:
            problems.append(
                f"agents.env_silence_timeout_s: expected more than env.step_deadline_s ({self.env.step_deadline_s}), "
                f"got {self.agents.env_silence_timeout_s}: an agent would give up on a server that is waiting for a slow agent"
            )

        consensus = self.protocols.consensus
        if consensus.enabled and consensus.what.startswith("world_model") and self.agents.world_model is None:
            problems.append(
                f"protocols.consensus.what: {consensus.what!r} averages the world model, but agents.world_model is null"
            )
        if consensus.enabled and consensus.weights == "uniform" and topology is not None and count > 1:
            degrees = sorted(set(topology.degrees().tolist()))
            if len(degrees) > 1:
                problems.append(
                    "protocols.consensus.weights: expected 'metropolis' for a topology whose nodes have different "
                    f"degrees ({degrees}); 'uniform' is only doubly stochastic on regular graphs"
                )

        if self.nodes is not None:
            expected = derive_nodes(self)
            if self.nodes != expected:
                problems.append(
                    "nodes: does not match the run (it is derived from agents.count and run.seed; "
                    f"delete the section to re-derive it): expected {_nodes_summary(expected)}, got {_nodes_summary(self.nodes)}"
                )
        if self.runtime is not None and self.network.transport == "ipc" and self.runtime.socket_dir is None:
            problems.append("runtime.socket_dir: expected a directory for network.transport 'ipc', got null")

        if problems:
            raise ValueError("\n".join(problems))
        return self

    # -------------------------------------------------------------- derived views

    def build_topology(self) -> Topology:
        """The agents' communication graph (validated buildable when the config was loaded)."""
        return build_topology(self.topology, agent_node_ids(self.agents.count))

    def node_ids(self) -> list[str]:
        """`env`, then `agent_0 .. agent_{count-1}`, then `learner` when training centrally."""
        return run_node_ids(self.agents.count, with_learner=self.training.mode == "centralized")


def _id_range(count: int, with_learner: bool = False) -> str:
    agents = f"agent_0 .. agent_{count - 1}" if count > 1 else "agent_0"
    return f"{ENV_NODE_ID}, {agents}" + (f", {LEARNER_NODE_ID}" if with_learner else "")


def _nodes_summary(nodes: dict[str, NodeEntry]) -> str:
    return "{" + ", ".join(f"{node}: {entry.role}#{entry.index} seed {entry.seed}" for node, entry in nodes.items()) + "}"


# ------------------------------------------------------------------------------------------
# Seeds and nodes
# ------------------------------------------------------------------------------------------


def derive_nodes(config: RunConfig) -> dict[str, NodeEntry]:
    """Every node of the run with its index, role and base seed: env first, then agents, then
    the learner node of a centralized run."""
    count = config.agents.count
    nodes = {
        ENV_NODE_ID: NodeEntry(
            index=count, role="env_server", seed=derive_seed(config.run.seed, count, NODE_SEED_STREAM)
        )
    }
    for index, node in enumerate(agent_node_ids(count)):
        nodes[node] = NodeEntry(index=index, role="agent", seed=derive_seed(config.run.seed, index, NODE_SEED_STREAM))
    if config.training.mode == "centralized":
        nodes[LEARNER_NODE_ID] = NodeEntry(
            index=count + 1, role="learner", seed=derive_seed(config.run.seed, count + 1, NODE_SEED_STREAM)
        )
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


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML run config, apply `--set` overrides, validate. Raises ConfigError."""
    data = read_yaml(path)
    if overrides:
        if not isinstance(data, dict):
            raise ConfigError([f"expected a mapping at the top level, got {_kind(data)}"], str(path))
        data = apply_overrides(data, list(overrides))
    return validate_config(data, str(path))


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

