"""The `agents` section of a run config: how many agent nodes, and what each one runs.

Every agent node of a run runs the same learner and world model configuration; they differ by
node id (`agent_i` drives the environment's i-th possible agent) and by their derived seeds.
No torch here: the schemas of the learners and world models are torch-free too.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agent_node.algos.config import LearnerConfig
from agent_node.world_models.config import WorldModelConfig


class AgentsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Number of agent nodes; the environment must have exactly this many possible agents.
    count: int = Field(ge=1)
    # The off-policy learner, chosen by `kind` (dqn | sac).
    learner: LearnerConfig
    # An optional world model, chosen by `kind` (sparse_gp | ensemble); null for model-free runs.
    world_model: WorldModelConfig | None = None
    # Transitions sampled from the replay buffer to fit a world model trained beside a
    # model-free learner (the OG-MARL learner has its own `fit_transitions`).
    world_model_fit_transitions: int = Field(512, ge=1)
    # torch.set_num_threads in every agent: many agents share few cores.
    torch_threads: int = Field(1, ge=1)
    # Counted in lockstep environment steps of this agent.
    checkpoint_every_steps: int = Field(5000, ge=1)
    replay_save_every_steps: int = Field(20000, ge=1)
    # Period of the control.status report to the orchestrator (it doubles as a heartbeat).
    status_every_s: float = Field(1.0, gt=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
