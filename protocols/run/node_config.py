"""What a node process reads from its run's `resolved.yaml`: typed, validated once, at start.

Every node is started as

    python -m env_server|agent_node --config RUN_DIR/resolved.yaml --node-id ID --control ENDPOINT

`resolved.yaml` is the run's one source of truth. The orchestrator validated it with the run's
schema (`orchestrator/config.py`), which composes the very section models a node validates here:
the sections every node needs (`NodeSections`: run, topology, protocols, network, and the
`nodes` / `runtime` sections the orchestrator filled in) plus its own package's section, which
each package adds by subclassing (`agent_node/config.py`: `agents`; `env_server/config.py`: `env`).
A node ignores the sections of other roles (an env server has no use for `agents`); inside a
section unknown keys are errors, as everywhere. No section is read a second time, untyped, and no
default lives anywhere but in its model.

`NodeIdentity` is who this process is in the run: its id, role and index, its files, and the
seed of any random stream it needs, `derive_seed(run.seed, index, stream)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from protocols.net.auth import KeyFileError, NodeKeys, load_node_keys
from protocols.run.config_errors import ConfigError, format_validation_error
from protocols.seeds import derive_seed
from protocols.run.settings import (
    ENDPOINT_PURPOSES,
    NetworkConfig,
    NodeEntry,
    NodeRole,
    ProtocolsConfig,
    RunLayout,
    RunSection,
    ipc_endpoint,
)
from protocols.engines.topology import TopologyConfig


if TYPE_CHECKING:
    from protocols.net.transport import Hub

class NodeSections(BaseModel):
    """The sections of a resolved config that every node reads."""

    # The other top-level sections belong to other roles; each section's own model still
    # forbids unknown keys.
    model_config = ConfigDict(extra="ignore", frozen=True)

    run: RunSection
    topology: TopologyConfig
    protocols: ProtocolsConfig
    network: NetworkConfig
    nodes: dict[str, NodeEntry]
    runtime: RunLayout


Sections = TypeVar("Sections", bound=NodeSections)


@dataclass(frozen=True)
class NodeIdentity:
    """Who this process is in the run, and where its files go."""

    node_id: str
    role: NodeRole
    index: int  # seed-derivation index: agents 0..n-1, the env server n
    run_seed: int
    run_id: str
    run_dir: Path
    node_dir: Path  # <run dir>/nodes/<node id>: log, metrics, checkpoints, replay

    def seed(self, stream: str) -> int:
        """The seed of this node's random stream `stream` ("learner", "env", "eval_env", ...)."""
        return derive_seed(self.run_seed, self.index, stream)


def load_node_config(path: str | Path, node_id: str, sections: type[Sections]) -> tuple[Sections, NodeIdentity]:
    """Read and validate `path` with `sections`; raise ConfigError naming what is wrong."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError([f"resolved config {path} does not exist"]) from None
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError([f"cannot read resolved config {path}: {error}"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"expected a YAML mapping of sections at the top level, got {type(data).__name__}"], str(path))
    try:
        config = sections.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, sections), str(path)) from None
    entry = config.nodes.get(node_id)
    if entry is None:
        raise ConfigError([f"nodes: expected an entry for this node {node_id!r}, got only {sorted(config.nodes)}"], str(path))
    if config.runtime.keys_dir is not None:
        try:  # the keys are read again by `node_keys`; a missing or foreign key file fails here, named
            load_node_keys(config.runtime.keys_dir, node_id)
        except KeyFileError as error:
            raise ConfigError([f"runtime.keys_dir: {error}"], str(path)) from None
    run_dir = Path(config.runtime.run_dir)
    identity = NodeIdentity(
        node_id=node_id,
        role=entry.role,
        index=entry.index,
        run_seed=config.run.seed,
        run_id=config.runtime.run_id,
        run_dir=run_dir,
        node_dir=run_dir / "nodes" / node_id,
    )
    return config, identity


def bind_address(config: NodeSections, node_id: str, purpose: str) -> str:
    """Where node `node_id` binds its `purpose` socket: an ipc file in the run's socket
    directory, or a free tcp port on `network.bind_host` (within `network.port_range` if set)."""
    if purpose not in ENDPOINT_PURPOSES:
        raise ValueError(f"endpoint purpose must be one of {', '.join(ENDPOINT_PURPOSES)}, got {purpose!r}")
    if config.network.transport == "tcp":
        return config.network.tcp_bind_address()
    if config.runtime.socket_dir is None:
        raise ValueError("runtime.socket_dir: required with network.transport 'ipc', got null")
    return ipc_endpoint(config.runtime.socket_dir, node_id, purpose)


def node_hub(config: NodeSections, identity: NodeIdentity) -> Hub:
    """The transport hub of a node process (agent, env server, learner node): its identity on the
    wire, the run's zmq heartbeats, keys and message limits, and its emulated links."""
    from protocols.net.transport import Hub, SocketOptions  # zmq: only where a node starts, not in config checks

    return Hub(
        sender=identity.node_id,
        run_id=identity.run_id,
        options=SocketOptions(config.network.zmq_heartbeat_ivl_s, config.network.zmq_heartbeat_timeout_s),
        keys=node_keys(config, identity.node_id),
        limits=config.protocols.limits,
        links=config.network.link_table(identity.node_id, identity.run_seed,  # network: link emulation
                                         talk_in_steps=config.protocols.talk == "env_steps"),
    )


def node_keys(config: NodeSections, node_id: str) -> NodeKeys | None:
    """This node's keys of the run (for `Hub(keys=...)`), or None when the run has none."""
    if config.runtime.keys_dir is None:
        return None
    return load_node_keys(config.runtime.keys_dir, node_id)
