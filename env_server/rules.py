"""The env section's lockstep settings as the env server uses them, and their checks."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from env_server.config import clock_settings_refusal
from protocols.run.settings import ControlConfig


@dataclass(frozen=True)
class LockstepRules:
    """The env section's lockstep settings, as the server uses them (see env_server/config.py)."""

    max_steps: int | None
    step_deadline_s: float
    join_deadline_s: float
    default_action: str = "noop"
    eval_every_steps: int | None = None
    eval_start_step: int = 0
    episode_start_hold_s: float = 0.0
    # How long a step with a scheduled fault waits for the orchestrator (protocols.control).
    step_hold_timeout_s: float = field(default_factory=lambda: ControlConfig().step_hold_timeout_s)
    # How the lockstep's bodies travel to clients on this host: auto | shm | zmq (env_server/config.py).
    transport: str = "auto"
    # At most this many training steps per second (env.max_steps_per_s); None: unpaced.
    max_steps_per_s: float | None = None
    # The clocks of training and evaluation steps: lockstep | realtime (env.clock, env.eval_clock
    # resolved), the realtime rate and what a late agent gets (env.steps_per_s, env.late_action).
    clock: str = "lockstep"
    eval_clock: str = "lockstep"
    steps_per_s: float | None = None
    late_action: str = "last"


def clock_refusal(rules: LockstepRules) -> str | None:
    """Why the server cannot run `rules`' clocks, or None: the env section's own check
    (env_server/config.py), for a server started without it. (A late_action the realtime barrier
    does not know it refuses itself.)"""
    return clock_settings_refusal(clock=rules.clock, eval_clock=rules.eval_clock, steps_per_s=rules.steps_per_s,
                                  max_steps_per_s=rules.max_steps_per_s, episode_start_hold_s=rules.episode_start_hold_s)


def pace_refusal(max_steps_per_s: float | None) -> str | None:
    """Why `max_steps_per_s` cannot pace the lockstep, or None (None itself: unpaced)."""
    if max_steps_per_s is None or (math.isfinite(max_steps_per_s) and max_steps_per_s > 0):
        return None
    return f"expected a positive number of steps per second, got {max_steps_per_s}"
