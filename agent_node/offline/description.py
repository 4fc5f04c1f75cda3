"""Recording a dataset as the run sees it (agent_node/registry.py): `agents.record_dataset`,
a switch; its checks against centralized training are CTDE's (agent_node/ctde/description.py)."""

from __future__ import annotations

from agent_node.registry import CapabilityDescription

CAPABILITY = CapabilityDescription(
    name="offline",
    section="agents.record_dataset",
    node_side="agent_node.offline.capability:build",
)
