"""The landmarks as the run sees them (agent_node/registry.py): their section, their checks
against the env, the training mode and the topology, and their part of the report."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent_node.landmarks.config import LandmarksConfig
from agent_node.landmarks.report import REPORT
from agent_node.registry import CapabilityDescription

if TYPE_CHECKING:
    from protocols.topology import Topology


def problems(run: Any, topology: Topology | None) -> list[str]:
    """agents.landmarks reads simple_spread's observations and acts with discrete actions, and
    its agreement floods over a connected topology with every agent learning on its own."""
    if run.agents.landmarks is None:
        return []
    found = []
    if not run.env.name.endswith("simple_spread_v3") or run.env.kwargs.get("continuous_actions", False):
        found.append(
            "agents.landmarks: expected env mpe2.simple_spread_v3 with continuous_actions: false (its observation "
            f"layout and discrete moves), got {run.env.name} with kwargs {dict(run.env.kwargs)}"
        )
    if run.training.mode != "decentralized":
        found.append(f"agents.landmarks: expected training.mode 'decentralized', got {run.training.mode!r}")
    if topology is not None and not topology.is_connected():
        found.append("agents.landmarks: the topology must be connected for the team to agree (flooding)")
    return found


CAPABILITY = CapabilityDescription(
    name="landmarks",
    section="agents.landmarks",
    config_model=LandmarksConfig,
    node_side="agent_node.landmarks.capability:build",
    problems=problems,
    report=REPORT,
    hparams=("agents.landmarks",),
)
