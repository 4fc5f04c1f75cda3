"""Centralized training as the run sees it (agent_node/registry.py): its section `training`,
what the centralized learner does not implement for a run, and the learner node it adds to the
plan (its endpoint handed to the agents as `Directory.services["ctde"]`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent_node.ctde.config import TrainingConfig
from agent_node.registry import CapabilityDescription, ExtraNode
from protocols.run.settings import LEARNER_NODE_ID

if TYPE_CHECKING:
    from protocols.engines.topology import Topology

# The service the learner node advertises and the agents connect to (an endpoint purpose).
SERVICE = "ctde"


def problems(run: Any, topology: Topology | None) -> list[str]:
    """What the centralized learner does not implement for this run, one message per problem
    (each starts with its field path); [] when the combination runs."""
    training, agents = run.training, run.agents
    if training.mode != "centralized":
        return []
    found = []
    if agents.learner.kind != "dqn":
        found.append(
            f"agents.learner.kind: centralized training trains the agents' DQN Q-networks through a mixer; expected "
            f"'dqn', got {agents.learner.kind!r} (only decentralized training runs other learners)"
        )
    elif agents.learner.target_tau != 1.0:
        found.append(
            "agents.learner.target_tau: the centralized learner copies its target networks every "
            f"target_update_period steps (tau 1.0); got {agents.learner.target_tau}"
        )
    if training.mixer == "vdn" and training.qmix_settings():
        found.append(f"training: {', '.join(training.qmix_settings())} set QMIX's mixing network; mixer 'vdn' has none")
    if not agents.learning:
        found.append("agents.learning: centralized training needs learning agents (they stream what they learn from); got false")
    if agents.world_model is not None:
        found.append("agents.world_model: not implemented with centralized training; expected null")
    if agents.record_dataset:
        found.append("agents.record_dataset: not implemented with centralized training yet; expected false")
    if run.protocols.consensus.enabled:
        found.append(
            "protocols.consensus.enabled: the learner node sets every agent's parameters; averaging them too "
            "is not implemented with centralized training"
        )
    if run.env.clock == "realtime":
        found.append(
            "env.clock: expected 'lockstep' with training.mode 'centralized', got 'realtime': the learner node "
            "trains on joint rows, every agent's transition of each step with the action the env played, and a "
            "realtime clock replaces a late agent's action, so the rows would pair observations with actions "
            "that were not played (train decentralized, or keep the lockstep)"
        )
    if run.run.reproducible:
        found.append(
            "training.mode: expected 'decentralized' with run.reproducible: true, got 'centralized': the learner node "
            "trains on its own clock and the agents act with whichever parameters arrived last"
        )
    return found


def extra_nodes(run: Any) -> list[ExtraNode]:
    """The learner node, in a run that trains centrally."""
    if run.training.mode != "centralized":
        return []
    return [ExtraNode(node_id=LEARNER_NODE_ID, role="learner", module="agent_node.ctde.learner_node", service=SERVICE,
                      torch_threads=run.training.torch_threads,
                      preload=("torch", "agent_node.algos.mixers", "agent_node.ctde.learner"))]


def for_evaluation(run: Any, data: dict[str, Any]) -> list[str]:
    if run.training.mode == "centralized":
        return ["training.mode: evaluating a centrally trained run is not implemented (its agents act with the "
                "learner node's Q-networks); expected 'decentralized', got 'centralized'"]
    return []


CAPABILITY = CapabilityDescription(
    name="ctde",
    section="training",
    config_model=TrainingConfig,
    node_side="agent_node.ctde.capability:build",
    problems=problems,
    extra_nodes=extra_nodes,
    for_evaluation=for_evaluation,
    summary=lambda run: f"trained centrally ({run.training.mixer} in a learner node)" if run.training.mode == "centralized" else None,
)
