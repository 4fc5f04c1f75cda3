"""Goals as the run sees them (agent_node/registry.py): the section `agents.goals`, its checks
against the env, the learner, the topology, how the run talks and `run.reproducible`, and the
external supervisor node it adds to the plan (its endpoint handed to the agents as
`Directory.services["goals"]`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent_node.goals.config import GoalsConfig, goal_run_problems
from agent_node.registry import CapabilityDescription, ExtraNode
from protocols.run.settings import SUPERVISOR_NODE_ID

if TYPE_CHECKING:
    from protocols.engines.topology import Topology

# The service the external supervisor advertises and the agents ask (an endpoint purpose).
SERVICE = "goals"


def has_external_supervisor(run: Any) -> bool:
    """A goal run whose supervisor is a node of its own (agents.goals.supervisor.external)."""
    goals = run.agents.goals
    return goals is not None and goals.selection == "supervisor" and goals.supervisor.external


def problems(run: Any, topology: Topology | None) -> list[str]:
    agents, count = run.agents, run.agents.count
    found = goal_run_problems(
        agents.goals, agents.learner.kind, getattr(agents.learner, "her_strategy", None), run.env,
        topology_diameter=topology.diameter() if topology is not None and topology.is_connected() else None,
        topology_complete=topology is None or len(topology.edges) == count * (count - 1) // 2,
        talk_in_steps=run.protocols.talk == "env_steps",
    )
    if agents.goals is not None and run.run.reproducible and run.protocols.talk != "env_steps":
        found.append(
            "agents.goals: expected none with run.reproducible: true while talking is free in env time: goal "
            "negotiation, the env server's hold of each episode start for it (env.episode_start_hold_s) and hindsight "
            "sharing end at wall-clock deadlines, so which goal an episode gets can depend on timing (with "
            "protocols.talk: env_steps their deadlines count steps)"
        )
    return found


def extra_nodes(run: Any) -> list[ExtraNode]:
    """The supervisor node, in a goal run whose supervisor is external."""
    if not has_external_supervisor(run):
        return []
    return [ExtraNode(node_id=SUPERVISOR_NODE_ID, role="supervisor", module="agent_node.goals.supervisor", service=SERVICE,
                      preload=("agent_node.config", "agent_node.goals.modules", "protocols.engines.supervision"))]


def for_evaluation(run: Any, data: dict[str, Any]) -> list[str]:
    if run.agents.goals is not None:
        return ["agents.goals: evaluating goal-conditioned agents is not implemented (evaluation episodes choose no "
                "goals, and the env pays no reward without them); the run's report holds what they achieved while "
                "training (goals/*); expected a run without a goals section"]
    return []


CAPABILITY = CapabilityDescription(
    name="goals",
    section="agents.goals",
    config_model=GoalsConfig,
    node_side="agent_node.goals.capability:build",
    problems=problems,
    extra_nodes=extra_nodes,
    for_evaluation=for_evaluation,
    hparams=("agents.goals.selection",),
)
