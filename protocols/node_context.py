"""What a node process learns about itself from the run's `resolved.yaml`.

Every node is started as `python -m <package> --config RUN_DIR/resolved.yaml --node-id ID
--control ENDPOINT`. The resolved file is the one source of truth; this module reads the parts
every node needs regardless of its role (who am I, my seed, where my files and sockets go, how
to bind) so that env_server and agent_node do not each parse them their own way. Each package
then validates its own config section with its own schema.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class NodeConfigError(ValueError):
    pass


@dataclass(frozen=True)
class NodeContext:
    node_id: str
    role: str
    index: int
    seed: int
    run_seed: int
    run_id: str
    run_dir: Path
    node_dir: Path
    socket_dir: Path | None  # None with tcp
    transport: str  # "ipc" | "tcp"
    bind_host: str
    advertise_host: str
    steps: int

    def bind_address(self, purpose: str) -> str:
        """Where this node binds its `purpose` socket (port 0: any free port)."""
        if self.transport == "ipc":
            return f"ipc://{self.socket_dir}/{self.node_id}.{purpose}"
        return f"tcp://{self.bind_host}:0"


def load_resolved(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with path.open() as handle:
            resolved = yaml.safe_load(handle)
    except FileNotFoundError:
        raise NodeConfigError(f"resolved config {path} does not exist") from None
    if not isinstance(resolved, dict):
        raise NodeConfigError(f"{path}: expected a YAML map at the top level")
    return resolved


def node_context(resolved: dict[str, Any], config_path: str | Path, node_id: str) -> NodeContext:
    try:
        node = resolved["nodes"][node_id]
    except KeyError:
        known = sorted(resolved.get("nodes", {}))
        raise NodeConfigError(f"node id {node_id!r} is not in the resolved config's nodes: {known}") from None
    run_dir = Path(config_path).resolve().parent
    runtime = resolved.get("runtime", {})
    network = resolved.get("network", {})
    bind_host = network.get("bind_host", "127.0.0.1")
    return NodeContext(
        node_id=node_id,
        role=node["role"],
        index=int(node["index"]),
        seed=int(node["seed"]),
        run_seed=int(resolved["run"]["seed"]),
        run_id=str(runtime.get("run_id", f"{resolved['run']['name']}/{run_dir.name}")),
        run_dir=run_dir,
        node_dir=run_dir / "nodes" / node_id,
        socket_dir=Path(runtime["socket_dir"]) if runtime.get("socket_dir") else None,
        transport=network.get("transport", "ipc"),
        bind_host=bind_host,
        advertise_host=network.get("advertise_host") or bind_host,
        steps=int(resolved["run"]["steps"]),
    )
