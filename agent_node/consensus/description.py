"""Consensus as the run sees it (agent_node/registry.py): its section `protocols.consensus`, its
checks against the world model, the topology, the shutdown timeout, how the run talks and
`run.reproducible`, and its part of the report."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent_node.consensus.report import REPORT
from agent_node.registry import CapabilityDescription
from agent_node.world_models import WORLD_MODELS
from protocols.engines.consensus import ConsensusConfig

if TYPE_CHECKING:
    from protocols.engines.topology import Topology


def world_model_only_for_consensus(run: Any) -> bool:
    """A world model beside a model-free learner: it is built and trained only when consensus
    averages it (agent_node/consensus/subjects.py); the learner reads it only for an exploration
    bonus (`agents.world_model_bonus`)."""
    return run.agents.world_model is not None and run.agents.learner.kind != "og_marl"


def problems(run: Any, topology: Topology | None) -> list[str]:
    """The world model against the learner and what consensus averages; consensus weights
    against the topology; the final average against the shutdown timeout and the env-step clock;
    push-sum against `run.reproducible`."""
    found: list[str] = []
    count = run.agents.count
    consensus = run.protocols.consensus
    if world_model_only_for_consensus(run) and not (consensus.enabled and consensus.what.startswith("world_model")):
        # With nothing averaging it, no node would ever train it.
        found.append(
            "agents.world_model: a world model beside learner kind "
            f"{run.agents.learner.kind!r} is trained only for consensus to average it, but "
            + ("protocols.consensus.enabled is false" if not consensus.enabled else f"protocols.consensus.what is {consensus.what!r}")
            + "; set agents.world_model: null, or enable consensus over world_model_parameters or world_model_statistics"
        )
    found += _world_model_plugin_problems(run)
    found += _world_model_bonus_problems(run)
    if consensus.enabled and consensus.what.startswith("world_model") and run.agents.world_model is None:
        found.append(f"protocols.consensus.what: {consensus.what!r} averages the world model, but agents.world_model is null")
    if consensus.same_initial_policy and run.agents.learner.kind != "dqn":
        found.append(
            "protocols.consensus.same_initial_policy: expected learner kind 'dqn' (the learner that draws its initial "
            f"policy from a seed it is given), got {run.agents.learner.kind!r}"
        )
    if consensus.enabled and consensus.mode == "sync" and consensus.weights != "metropolis" and run.topology.kind == "proximity":
        found.append(f"protocols.consensus.weights: synchronous rounds on a graph that follows positions mix with "
                     f"Metropolis weights recomputed on each step's graph (uniform weights need a regular graph); "
                     f"expected metropolis, got {consensus.weights!r}")
    elif consensus.enabled and consensus.weights == "uniform" and topology is not None and count > 1:
        degrees = sorted(set(topology.degrees().tolist()))
        if len(degrees) > 1:
            found.append(
                "protocols.consensus.weights: expected 'metropolis' for a topology whose nodes have different "
                f"degrees ({degrees}); 'uniform' is only doubly stochastic on regular graphs"
            )
    if consensus.average_at_end and consensus.longest_run_s() >= run.launch.shutdown_timeout_s:
        # The final average runs after the orchestrator has asked the nodes to stop; it must
        # end (and the checkpoints be written) before the orchestrator's signals come.
        found.append(
            f"protocols.consensus.average_at_end: expected the final average's bound ({consensus.longest_run_s():g} s: "
            f"{'rounds x round_timeout_s' if consensus.mode == 'sync' else 'push_sum_duration_s'}) below "
            f"launch.shutdown_timeout_s ({run.launch.shutdown_timeout_s:g} s); raise launch.shutdown_timeout_s"
        )
    if run.protocols.talk == "env_steps" and consensus.average_at_end:
        found.append("protocols.consensus.average_at_end: the final average runs after the last env step, when "
                     "no step is left to carry its messages; with protocols.talk: env_steps turn it off")
    if run.run.reproducible and consensus.enabled and consensus.mode == "push_sum" and run.protocols.talk != "env_steps":
        found.append(
            "protocols.consensus.mode: expected 'sync' with run.reproducible: true, got 'push_sum': push-sum is "
            "asynchronous (each node pushes every push_sum_period_s for push_sum_duration_s of wall time), so how "
            "many exchanges an average mixes, and in which order, is decided by timing"
        )
    return found


def _world_model_plugin_problems(run: Any) -> list[str]:
    """A world model (a built-in or a plugin, agent_node/plugins.py) where the run needs more
    of it than it has: what consensus averages, and og_marl's use of a built-in's internals."""
    world_model = run.agents.world_model
    if world_model is None:
        return []
    found = []
    if run.agents.learner.kind == "og_marl" and world_model.kind not in WORLD_MODELS.builtins:
        found.append(
            f"agents.world_model.kind: learner kind 'og_marl' imagines rollouts through a built-in world model "
            f"(sparse_gp or ensemble: their variances, inducing points and checkpoints), got the plugin {world_model.kind!r}"
        )
    consensus = run.protocols.consensus
    entry = WORLD_MODELS.resolve(world_model.kind)
    if consensus.enabled and consensus.what == "world_model_statistics" and not entry.has_statistics:
        found.append(
            f"protocols.consensus.what: 'world_model_statistics' averages the model's sufficient statistics, and "
            f"world model {world_model.kind!r} has no export_statistics / import_statistics; average "
            "world_model_parameters instead"
        )
    if consensus.enabled and consensus.what == "world_model_parameters" and not entry.has_params:
        found.append(
            f"protocols.consensus.what: 'world_model_parameters' averages the model's parameters, and "
            f"world model {world_model.kind!r} has no get_params / set_params; average world_model_statistics instead"
        )
    return found


def _world_model_bonus_problems(run: Any) -> list[str]:
    """`agents.world_model_bonus` needs a DQN learner (the one that adds it to its rewards) and an
    ensemble beside it (the disagreement of its members), which consensus trains and averages."""
    if run.agents.world_model_bonus == 0:
        return []
    found = []
    world_model = run.agents.world_model
    if run.agents.learner.kind != "dqn":
        found.append(f"agents.world_model_bonus: expected learner kind 'dqn' (the learner that adds the bonus to "
                     f"its rewards), got {run.agents.learner.kind!r}")
    if world_model is None or world_model.kind != "ensemble":
        found.append("agents.world_model_bonus: the bonus is the disagreement of an ensemble's members; expected "
                     f"agents.world_model.kind 'ensemble', got {'null' if world_model is None else repr(world_model.kind)}")
    return found


def for_evaluation(run: Any, data: dict[str, Any]) -> list[str]:
    """No consensus in an evaluation (averaging would move the weights being evaluated, and the
    agents load theirs, so where they started does not matter); a world model only consensus
    trained is not built."""
    data["protocols"]["consensus"].update(enabled=False, average_at_end=False, same_initial_policy=False)
    if world_model_only_for_consensus(run):
        data["agents"]["world_model"] = None
        data["agents"]["world_model_bonus"] = 0.0  # (it shapes training rewards only)
    return []


CAPABILITY = CapabilityDescription(
    name="consensus",
    section="protocols.consensus",
    config_model=ConsensusConfig,
    node_side="agent_node.consensus.capability:build",
    problems=problems,
    report=REPORT,
    for_evaluation=for_evaluation,
    summary=lambda run: f"consensus {'on (' + run.protocols.consensus.mode + ')' if run.protocols.consensus.enabled else 'off'}",
    hparams=("protocols.consensus",),
)
