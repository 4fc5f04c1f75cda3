"""A user's peer protocols as the run sees them (agent_node/registry.py): the section
`agents.protocols` (agent_node/peer_protocols/__init__.py), and which of them talk in env steps."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent_node.peer_protocols import talks_in_env_steps
from agent_node.registry import CapabilityDescription

if TYPE_CHECKING:
    from protocols.engines.topology import Topology


def problems(run: Any, topology: Topology | None) -> list[str]:
    """With protocols.talk: env_steps, each protocol must say it runs with env steps as its clock."""
    if run.protocols.talk != "env_steps":
        return []
    return [f"agents.protocols.{position}.kind: {protocol.kind!r} does not say it runs with env steps as its "
            "clock (a class attribute talks_in_env_steps = True; its deadlines are presumably in seconds); "
            "use protocols.talk: free with it"
            for position, protocol in enumerate(run.agents.protocols) if not talks_in_env_steps(protocol)]


CAPABILITY = CapabilityDescription(
    name="peer_protocols",
    section="agents.protocols",
    node_side="agent_node.peer_protocols.capability:build",
    problems=problems,
    summary=lambda run: f"protocols {', '.join(protocol.kind for protocol in run.agents.protocols)}" if run.agents.protocols else None,
)
