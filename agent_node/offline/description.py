"""Recording a dataset as the run sees it (agent_node/registry.py): `agents.record_dataset`,
a switch; its checks against centralized training are CTDE's (agent_node/ctde/description.py)."""

from __future__ import annotations

from typing import Any

from agent_node.registry import CapabilityDescription


def for_evaluation(run: Any, data: dict[str, Any]) -> list[str]:
    data["agents"]["record_dataset"] = False  # an evaluation records no dataset
    return []


CAPABILITY = CapabilityDescription(
    name="offline",
    section="agents.record_dataset",
    node_side="agent_node.offline.capability:build",
    for_evaluation=for_evaluation,
)
