"""`run.reproducible`: which runs can be a function of their seed, and why the others cannot.

A run is reproducible when every input of every learner is decided by the seed and the config,
never by the clock. What the mode itself fixes (agent_node/node.py): an agent acts only once its
learner owes no gradient step, so each gradient step samples the replay buffer at the same point
of the run whatever the load; its learner metrics are averaged per gradient step, not per slice;
torch runs its deterministic kernels and the global generators are seeded per node
(agent_node/__main__.py); a stop from the orchestrator waits for the env server's last
observation. What is deterministic without it:

- the random streams: every node, learner, world model, env copy and link draws from
  `derive_seed(run.seed, node index, stream)` (protocols/seeds.py);
- the lockstep: the env server steps when every agent answered, so the env sees the same actions
  in the same order; evaluation episodes start at fixed lockstep steps (`env.eval_every_steps`) on
  their own seeded copies, when no agent owes an update;
- synchronous consensus: it starts at a lockstep step, each agent's tensors are taken before
  that step's updates (the same point in every run), and a round that has every share mixes the
  same numbers in the same (sender) order, so its float sums do not depend on which share came
  first (protocols/engines/consensus.py `_finish_round`). A round that runs out (`round_timeout_s`)
  mixes without the missing share: that is timing, and the node writes it as broken
  reproducibility;
- link delay, jitter, reordering and bandwidth: they change when a message arrives, never what
  it says or whether it arrives; the lockstep and the consensus rounds wait for it (unless a
  deadline runs out, which the node records);
- the main job's hindsight rows, talking free in env time: a partner's rows come by the wall
  clock, and are learned from the team's next landmark agreement on, which cannot complete before
  the partner's table, sent after its rows (agent_node/landmarks/session.py). That needs peer
  links that keep order (the landmarks' check refuses others); with `assignment: nearest` no
  agreement orders them, and the node records broken reproducibility once rows come.

What cannot be made reproducible is refused here, one line per problem (`reproducibility_problems`),
and by each capability's own checks for what is its own (agent_node/registry.py: push-sum
consensus, centralized training and goal negotiation each run on wall-clock time).
What can still go wrong at run time (an agent slower than `env.step_deadline_s`, a consensus round
without every share, an agent restarted from its last checkpoint, a last observation that never
came) is written to that agent's metrics as
`reproducibility/broken` with the cause, and to the run's events as `reproducibility_broken`, so
a user sees that this run's seed no longer pins it.
"""

from __future__ import annotations

from typing import Any, Protocol

from protocols.net.links import LinkConfig


class RunSections(Protocol):
    """The sections of a run config (orchestrator/config.py `RunConfig`, which imports this
    module to validate itself) that reproducibility reads."""

    run: Any
    env: Any
    agents: Any
    training: Any
    protocols: Any
    network: Any
    faults: Any

_WHY = "run.reproducible: true"


def owe_nothing_by_default(data: Any) -> Any:
    """The plain config data, with `agents.max_pending_gradient_steps: 0` where a reproducible
    run leaves it out: the update-ratio contract with no slack is what makes an agent finish its
    owed gradient steps before acting (agent_node/node.py `_act`). Written into resolved.yaml like
    every default, so the agents read the bound they run with."""
    if not isinstance(data, dict):
        return data
    run, agents = data.get("run"), data.get("agents")
    if isinstance(run, dict) and run.get("reproducible") is True and isinstance(agents, dict):
        if "max_pending_gradient_steps" not in agents:
            return {**data, "agents": {**agents, "max_pending_gradient_steps": 0}}
    return data


def reproducibility_problems(config: RunSections) -> list[str]:
    """Every section setting a reproducible run cannot honour, each naming why; [] when not asked."""
    if not config.run.reproducible:
        return []
    problems: list[str] = []
    for field in ("clock", "eval_clock"):
        if getattr(config.env, field) == "realtime":
            problems.append(
                f"env.{field}: expected 'lockstep' with {_WHY}, got 'realtime': the env steps at its own rate, so "
                "which agents' actions are late, and what is played instead, is decided by timing"
            )
    if config.agents.max_pending_gradient_steps != 0:
        problems.append(
            f"agents.max_pending_gradient_steps: expected 0 (its default with {_WHY}), got "
            f"{config.agents.max_pending_gradient_steps}: a reproducible agent acts only once it owes no gradient step"
        )
    if config.faults.schedule:
        problems.append(
            f"faults.schedule: expected no scheduled faults with {_WHY}, got {len(config.faults.schedule)}: a kill "
            "or pause lands between whatever steps the clock decides, a restarted agent resumes from its last "
            "checkpoint, and partitions and link changes make deadlines run out"
        )
    if config.network.partitions:
        problems.append(
            f"network.partitions: expected none with {_WHY}: a partitioned neighbour's consensus shares never "
            "arrive, so every round runs out on its deadline"
        )
    links = [("network.default_link", config.network.default_link)]
    links += [(f"network.links.{position}.link", override.link) for position, override in enumerate(config.network.links)]
    for path, link in links:
        problems.extend(_link_problems(path, link))
    return problems


def _link_problems(path: str, link: LinkConfig) -> list[str]:
    """Drops and duplicates change what arrives, and timing decides which message they hit. Not
    on a link whose delay counts env steps: its draws are made in the step clock, for the
    protocols' messages only (protocols/engines/step_links.py)."""
    if link.counts_steps:
        return []
    shared_draws = (
        "the link draws it from its own seeded stream, but heartbeats sent on a clock take draws from that "
        "stream too, so which message it hits depends on timing"
    )
    reasons = {
        "loss": (link.loss > 0, shared_draws),
        "loss_model": (link.loss_model == "gilbert_elliott", shared_draws),
        "duplicate": (link.duplicate > 0, shared_draws),
        "queue_limit_bytes": (
            link.queue_limit_bytes is not None,
            "a full queue drops whatever the clock put in it (heartbeats included)",
        ),
    }
    allowed = "(delay, jitter, reorder and bandwidth are allowed: they change only when a message arrives)"
    return [
        f"{path}.{field}: expected no drops or duplicates with {_WHY}, got {getattr(link, field)!r}: {why} {allowed}"
        for field, (present, why) in reasons.items()
        if present
    ]
