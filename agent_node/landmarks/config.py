"""The `agents.landmarks` section: agents that agree who covers which landmark (the main job).

Torch-free, like every schema, so `orchestrate validate` stays fast. What the settings do is in
`agent_node/landmarks/session.py`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class LandmarksConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # How each episode's landmark is chosen, per env copy:
    # "negotiated": the team floods its distance rows over the topology (protocols/engines/flooding.py)
    #   and every agent takes its part of the one assignment the Hungarian method gives on the
    #   table (one landmark each);
    # "nearest": each agent alone takes its nearest landmark (no messages; two may pick one).
    assignment: Literal["negotiated", "nearest"] = "negotiated"
    # How long a flooding round waits for a neighbour's table before it goes on without it, in
    # seconds, when talk is free in env time (protocols.talk: free) ...
    round_timeout_s: float = Field(0.5, gt=0)
    # ... and in env steps when talking takes them (protocols.talk: env_steps).
    round_timeout_steps: int = Field(5, ge=1)
    # After each episode, send the partners this agent's rows with the landmark it pursued and
    # the one it reached, so they learn from them too (protocols/engines/hindsight.py, hindsight.rows).
    share_hindsight: bool = True
    # The learner's reward (named in the report; the env's reward stays the objective reported):
    # minus the distance to the agent's landmark, minus this much per agent it touches.
    collision_penalty: float = Field(1.0, ge=0)
