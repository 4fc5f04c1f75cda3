"""The landmarks as the run sees them (agent_node/registry.py): their section, their checks
against the env, the training mode and the topology, and their part of the report."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent_node.landmarks.config import LandmarksConfig
from agent_node.landmarks.report import REPORT
from agent_node.registry import CapabilityDescription

if TYPE_CHECKING:
    from protocols.engines.topology import Topology


def problems(run: Any, topology: Topology | None) -> list[str]:
    """agents.landmarks conditions a DQN learner, reads simple_spread's observations and acts with
    discrete actions, and its agreement floods over a connected topology with every agent
    learning on its own."""
    if run.agents.landmarks is None:
        return []
    found = []
    if run.agents.learner.kind != "dqn":
        found.append(
            "agents.landmarks: the landmark-conditioned agents learn with learner kind 'dqn' (its input gets the "
            f"landmark's one-hot); got learner kind {run.agents.learner.kind!r}"
        )
    if run.agents.goals is not None:
        found.append("agents.landmarks: give landmarks or goals (landmarks is simple_spread's, goals is goal_lines'), got both")
    if not run.env.name.endswith("simple_spread_v3") or run.env.kwargs.get("continuous_actions", False):
        found.append(
            "agents.landmarks: expected env mpe2.simple_spread_v3 with continuous_actions: false (its observation "
            f"layout and discrete moves), got {run.env.name} with kwargs {dict(run.env.kwargs)}"
        )
    if run.training.mode != "decentralized":
        found.append(f"agents.landmarks: expected training.mode 'decentralized', got {run.training.mode!r}")
    if topology is not None and not topology.is_connected():
        found.append("agents.landmarks: the topology must be connected for the team to agree (flooding)")
    found += _reproducible_rows_problems(run, topology)
    return found


def _reproducible_rows_problems(run: Any, topology: Topology | None) -> list[str]:
    """Talking free in env time, a partner's hindsight rows are learned from the team's next
    agreement on, which a reproducible run can count on only if they arrive before the partner's
    agreement table: its peer links must keep order (agent_node/landmarks/session.py)."""
    config = run.agents.landmarks
    if not (run.run.reproducible and run.protocols.talk == "free" and config.share_hindsight
            and config.assignment == "negotiated" and topology is not None):  # fmt: skip
        return []
    for a, b in topology.edge_list():
        for src, dst in ((a, b), (b, a)):
            if not run.network.link_between(src, dst).keeps_order:
                return [f"agents.landmarks.share_hindsight with run.reproducible while talking free in env time: the peer "
                        f"link {src} -> {dst} may reorder messages (jitter, reordering, a delay distribution or "
                        "duplicates), so a partner's rows could come after its agreement table; give peer links "
                        "in_order: true, or protocols.talk: env_steps"]  # fmt: skip
    return []


CAPABILITY = CapabilityDescription(
    name="landmarks",
    section="agents.landmarks",
    config_model=LandmarksConfig,
    node_side="agent_node.landmarks.capability:build",
    problems=problems,
    report=REPORT,
    hparams=("agents.landmarks",),
)
