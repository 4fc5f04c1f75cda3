"""Holding an episode's first observation while the agents negotiate, sans-IO.

Goal-conditioned agents (ALGORITHMS.md sections 2-3) agree on goals with the partners
they play with before the episode's first step. Who plays is decided by the environment's reset
(a population env draws its agents), so the server announces it: when a copy's episode starts
(the first reset, or an autoreset inside a step) and `env.episode_start_hold_s` > 0, the server
sends every client an `env.episode_start` message (which agents are active in each starting copy)
and holds back the observation until every claimed agent active in a starting copy has sent
`goal.ready` for that step, or `hold_s` has passed. Then the held observation goes out as usual.

With `hold_s == 0` (the default) nothing is announced or held: the lockstep pays nothing.
This part never touches a socket or a clock: the server feeds it results, `goal.ready` requests
and the time, and broadcasts what `release` hands back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from env_server.vector import BatchedStep

log = logging.getLogger("env_server")


@dataclass
class HeldStart:
    result: BatchedStep
    missing: list[str]
    step: int
    waiting: set[str]  # active agents in a starting copy that have not sent goal.ready yet
    deadline: float


class EpisodeStartHold:
    def __init__(self, hold_s: float) -> None:
        if not (hold_s >= 0 and np.isfinite(hold_s)):
            raise ValueError(f"episode_start_hold_s must be a finite number >= 0, got {hold_s!r}")
        self.hold_s = hold_s
        self.held: HeldStart | None = None
        self.released_by_ready = 0
        self.released_by_deadline = 0

    @property
    def enabled(self) -> bool:
        return self.hold_s > 0

    @property
    def holding(self) -> bool:
        return self.held is not None

    def should_hold(self, result: BatchedStep) -> bool:
        return self.enabled and bool(result.episode_start.any())

    def begin(self, result: BatchedStep, missing: list[str], *, step: int, claimed: set[str], now: float) -> dict[str, np.ndarray]:
        """Hold `result` (the observation of `step`); returns who is active in the starting copies:
        agent -> (K,) bool, False for copies that do not start an episode now."""
        starting = result.episode_start
        active = {agent: rows & starting for agent, rows in result.active.items()}
        waiting = {agent for agent, rows in active.items() if rows.any() and agent in claimed}
        self.held = HeldStart(result, missing, step, waiting, now + self.hold_s)
        return active

    def on_ready(self, agents: list[str], step: int) -> bool:
        """`goal.ready` from these agents for `step`; True when the hold may end now."""
        if self.held is None or step != self.held.step:
            return False  # late for an episode already released, or early: nothing to do
        self.held.waiting.difference_update(agents)
        if not self.held.waiting:
            self.released_by_ready += 1
            return True
        return False

    def next_deadline(self) -> float | None:
        return None if self.held is None else self.held.deadline

    def on_timer(self, now: float) -> bool:
        """True when the hold's deadline has passed (the agents still waited for are logged)."""
        if self.held is None or now < self.held.deadline:
            return False
        log.warning("episode start at step %d: no goal.ready from %s within %.2f s; starting without them",
                    self.held.step, sorted(self.held.waiting), self.hold_s)
        self.released_by_deadline += 1
        return True

    def release(self) -> HeldStart:
        held, self.held = self.held, None
        return held
