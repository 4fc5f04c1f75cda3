"""The `agents` section of a run config: how many agent nodes, and what each one runs.

The agent side's other sections are composed here too, for the run's schema
(orchestrator/config.py) and the node alike: `training` (agent_node/ctde/config.py) and a user's
`capabilities` (agent_node/registry.py).

Every agent node of a run runs the same learner and world model configuration; they differ by
node id (`agent_i` drives the environment's i-th possible agent) and by their derived seeds.
`AgentNodeConfig` is what an agent process validates from its resolved config: the sections
every node reads (protocols/run/node_config.py) plus this one.
No torch here: the schemas of the learners and world models are torch-free too.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent_node.algos import PluggableLearnerConfig
from agent_node.algos.config import OFFLINE_KINDS
from agent_node.ctde.config import DecentralizedTraining, TrainingConfig
from agent_node.goals.config import GoalsConfig
from agent_node.landmarks.config import LandmarksConfig
from agent_node.peer_protocols import ProtocolConfigs
from agent_node.registry import CapabilityConfigs
from agent_node.world_models import PluggableWorldModelConfig
from protocols.run.config_errors import ConfigError, repeated
from protocols.run.node_config import NodeIdentity, NodeSections, load_node_config
from protocols.run.settings import agent_node_ids

class AgentsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Number of agent nodes; the environment must have exactly this many possible agents.
    count: int = Field(ge=1)
    # The learner, chosen by `kind`: a built-in (dqn | sac | og_marl | pmic | shared_dqn | goal_dqn;
    # cql | bc to evaluate), an installed plugin's entry point, or `package.module:Class`
    # (agent_node/plugins.py).
    learner: PluggableLearnerConfig
    # An optional world model, chosen by `kind` (sparse_gp | ensemble, or a plugin as above); null
    # for model-free runs.
    world_model: PluggableWorldModelConfig | None = None
    # Peer protocols of your own that every agent runs with its topology neighbours, each
    # `{kind: <installed entry point of parley.protocols, or package.module:Class>, <its settings>}`
    # (agent_node/peer_protocols/__init__.py). Parley's own protocols have their sections under
    # `protocols` and the agents' own keys (consensus, landmarks, goals).
    protocols: ProtocolConfigs = ()
    # Transitions sampled from the replay buffer to fit a world model trained beside a
    # model-free learner (the OG-MARL learner has its own `fit_transitions`).
    world_model_fit_transitions: int = Field(512, ge=1)
    # An exploration bonus from an ensemble world model trained beside a DQN learner: each sampled
    # row's reward gets this weight x the members' disagreement on its (observation, action), in
    # units of their mean disagreement on the rows of the model's last refresh. 0: off, and the
    # learner never reads the model (agent_node/consensus/subjects.py, `LocalWorldModel`).
    world_model_bonus: float = Field(0.0, ge=0.0)
    # Stragglers on purpose, an experimental variable (against a realtime clock, say): each agent
    # node named here (agent_0, agent_1, ...) waits this many seconds after choosing each action
    # before it sends it, as an agent on a slower machine would. In a lockstep run it costs only
    # wall time: the env waits for it.
    act_delay_s: dict[str, float] = Field(default_factory=dict)
    # torch.set_num_threads in every agent: many agents share few cores.
    torch_threads: int = Field(1, ge=1)
    # Counted in lockstep environment steps of this agent.
    checkpoint_every_steps: int = Field(5000, ge=1)
    replay_save_every_steps: int = Field(20000, ge=1)
    # How many good saves of each (checkpoint, replay buffer) a node keeps: a restarted node whose
    # newest save is damaged falls back to an older one (agent_node/persistence.py). The same K
    # for the learner node's checkpoint and joint replay and the goal supervisor's checkpoint.
    keep_generations: int = Field(2, ge=1)
    # Gradient steps a node takes between two looks at its sockets: small enough that a message
    # waiting meanwhile (an observation, a heartbeat) is answered within a few steps' time.
    # With `run.reproducible: true` the slices change nothing the seed decides: the steps are the
    # same, and the learner metrics are averaged per gradient step rather than per slice.
    gradient_steps_per_slice: int = Field(4, ge=1)
    # The update-ratio contract: an agent does not answer an observation while its learner owes
    # more than this many gradient steps; it learns first. Without it a learner slower than the
    # lockstep silently skips updates (its ratio of updates to env steps falls below the
    # configured one), and speed comparisons compare unequal work. Every run logs the learner's
    # cumulative counters (`<kind>/gradient_steps`, `<kind>/steps_pending`, `<kind>/steps_owed`)
    # at each evaluation and at the end, and finishes what it owes while draining. A run with
    # `run.reproducible: true` defaults it to 0 and refuses another value (an agent then acts only
    # once it owes nothing, so no gradient step's place in the run depends on timing).
    max_pending_gradient_steps: int = Field(64, ge=0)
    # Learner scalars (losses, epsilon, ...) are averaged and written every this many lockstep
    # steps; episode returns are written as each episode ends.
    metrics_every_steps: int = Field(250, ge=1)
    # A node that has heard nothing from the env server for this long fails. The server steps
    # at the latest env.step_deadline_s after it sent an observation, so this must exceed that
    # (the run's schema checks it).
    env_silence_timeout_s: float = Field(60.0, gt=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Ask the env server for the global state and joint action of every step and put them in the
    # transitions (env_server/global_view.py). Learners that need them (pmic) ask in any case;
    # set it for others to record the global view in a dataset.
    global_view: bool = False
    # Write every transition to an offline dataset under <run dir>/dataset/ (agent_node/offline/recording.py).
    record_dataset: bool = False
    # false: evaluation only. The agents act greedily (no exploration) and never observe or
    # update; with `load_checkpoints` they act with trained weights (e.g. from agent_node.offline).
    learning: bool = True
    # A directory of checkpoints to start from, one per agent (the node's own checkpoint, after a
    # restart, takes precedence): <env agent>/latest.pt (agent_node.offline's --out) or a run's
    # own <run dir>/nodes, with <node id>/checkpoints/latest.pt (`initial_checkpoint`).
    load_checkpoints: str | None = None
    # Goal-conditioned agents (learner kind goal_dqn): how each episode's goal is chosen,
    # negotiated and shared (agent_node/goals/config.py, agent_node/goals/session.py).
    goals: GoalsConfig | None = None
    # The main job's goals (agents on mpe2 simple_spread with learner kind dqn): before each
    # episode the team agrees who covers which landmark, and shares its rows after it
    # (agent_node/landmarks/config.py, agent_node/landmarks/session.py).
    landmarks: LandmarksConfig | None = None
    # One checkpoint file every agent starts from (e.g. <run dir>/nodes/agent_0/checkpoints/latest.pt):
    # a parameter-shared policy (learner kind shared_dqn) moved to a run with another agent count.
    load_shared_checkpoint: str | None = None

    @model_validator(mode="after")
    def _offline_learners_only_evaluate(self) -> AgentsConfig:
        # (Each capability's checks against the learner, e.g. goals' goal_dqn, are its own:
        # agent_node/<capability>/description.py.)
        if self.learner.kind in OFFLINE_KINDS and (self.learning or self.load_checkpoints is None):
            raise ValueError(
                f"learner kind {self.learner.kind!r} trains from a dataset (python -m agent_node.offline), not in a "
                f"run: set learning: false and load_checkpoints: <its --out directory>; got learning={self.learning}, "
                f"load_checkpoints={self.load_checkpoints!r}"
            )
        return self

    @model_validator(mode="after")
    def _act_delays_name_agent_nodes(self) -> AgentsConfig:
        nodes = agent_node_ids(self.count)
        unknown = sorted(set(self.act_delay_s) - set(nodes))
        if unknown:
            raise ValueError(f"act_delay_s: expected agent node ids of this run ({nodes[0]} .. {nodes[-1]}), got {unknown}")
        bad = {node: delay for node, delay in self.act_delay_s.items() if not (math.isfinite(delay) and delay >= 0)}
        if bad:
            raise ValueError(f"act_delay_s: expected a finite number of seconds >= 0 per node, got {bad}")
        return self

    @model_validator(mode="after")
    def _each_protocol_once(self) -> AgentsConfig:
        kinds = repeated([protocol.kind for protocol in self.protocols])
        if kinds:
            raise ValueError(
                f"protocols: each protocol runs once per agent (its message types have one handler); "
                f"got {', '.join(repr(kind) for kind in kinds)} more than once"
            )
        return self

    @model_validator(mode="after")
    def _shared_checkpoint_is_shared_dqn(self) -> AgentsConfig:
        if self.load_shared_checkpoint is None:
            return self
        if self.load_checkpoints is not None:
            raise ValueError(
                "load_shared_checkpoint and load_checkpoints: give one (one file for every agent, or a directory "
                f"with one per agent), got both ({self.load_shared_checkpoint!r}, {self.load_checkpoints!r})"
            )
        if self.learner.kind != "shared_dqn":
            raise ValueError(
                "load_shared_checkpoint: one checkpoint fits every agent only for a parameter-shared policy whose input "
                f"is padded to a maximum agent count (learner kind 'shared_dqn'), got kind {self.learner.kind!r}"
            )
        return self


# The file name of a node checkpoint, in a run's nodes/<node id>/checkpoints/ and in an offline --out.
CHECKPOINT_FILENAME = "latest.pt"


def initial_checkpoint_candidates(load_checkpoints: str | Path, env_agent: str, node_id: str) -> tuple[Path, Path]:
    """Where the node `node_id`, driving `env_agent`, looks for its start under `agents.load_checkpoints`,
    in this order: `<dir>/<env agent>/latest.pt` (what `python -m agent_node.offline --out` writes)
    and `<dir>/<node id>/checkpoints/latest.pt` (a run's own `<run dir>/nodes`, so a trained run
    is evaluated by pointing at it). The agent node and the orchestrator's pre-launch check
    (orchestrator/prelaunch.py) both read the layout from here."""
    root = Path(load_checkpoints)
    return root / env_agent / CHECKPOINT_FILENAME, root / node_id / "checkpoints" / CHECKPOINT_FILENAME


def initial_checkpoint(load_checkpoints: str | Path, env_agent: str, node_id: str) -> Path | None:
    """The first of `initial_checkpoint_candidates` that is a file, or None."""
    return next((path for path in initial_checkpoint_candidates(load_checkpoints, env_agent, node_id) if path.is_file()), None)


class AgentNodeConfig(NodeSections):
    """What an agent node (and a learner node) reads from its resolved config: the shared
    sections, `agents`, `training` and a user's `capabilities`."""

    agents: AgentsConfig
    training: TrainingConfig = DecentralizedTraining()
    # A user's capabilities (agent_node/registry.py), each built by the node beside Parley's own.
    capabilities: CapabilityConfigs = ()


def load_agent_side_config(config_path: str, node_id: str, role: str) -> tuple[AgentNodeConfig, NodeIdentity] | None:
    """Start-up of every node that reads `AgentNodeConfig` (agent, learner, supervisor): the
    resolved config validated once, then logging with the node id on every line. A bad config
    is one line `<role> <node_id>: <what is wrong>` on stderr and None (the caller exits 2)."""
    try:
        config, identity = load_node_config(config_path, node_id, AgentNodeConfig)
    except ConfigError as error:
        print(f"{role} {node_id}: {error}", file=sys.stderr)
        return None
    logging.basicConfig(level=config.agents.log_level, format=f"%(asctime)s {node_id} %(name)s %(levelname)s %(message)s")
    return config, identity
