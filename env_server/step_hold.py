"""Holding the lockstep at the training steps that carry a scheduled fault, sans-IO.

A fault scheduled at a training step (`faults.schedule`, `at_step: s`) should hit between step s
and step s + 1, wherever the machine's speed puts that step in time. The orchestrator learns the
server's step only from periodic status reports, so on its own it would fire up to one status
period late. Instead it tells the server the steps it cares about (`control.hold_at_steps`);
once training step s is done, the server keeps its observation back, tells the orchestrator
(`control.step_held`) and sends it out when the orchestrator has issued the faults and says
`control.release_step`. No agent acts on step s + 1's observation before then.

An orchestrator that never answers (dead, or a lost message) must not stall the run: the hold
ends by itself after `timeout_s` (`protocols.control.step_hold_timeout_s`), and is counted.

This part never touches a socket or a clock: the server asks `should_hold` after each training
step, hands over what it would have sent, and sends what `release` or `on_timer` gives back
(with how long it was held, which the server writes to its metrics at that step).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("env_server")


@dataclass
class HeldStep:
    step: int
    payload: Any  # what the server resumes with: (the step's result, its missing agents)
    since: float
    deadline: float
    timed_out: bool = False  # set when `on_timer` ended the hold


class StepHold:
    def __init__(self, timeout_s: float) -> None:
        if not timeout_s > 0:
            raise ValueError(f"step_hold_timeout_s must be > 0, got {timeout_s!r}")
        self.timeout_s = timeout_s
        self.marks: set[int] = set()
        self.held: HeldStep | None = None
        self.released_by_orchestrator = 0
        self.released_by_timeout = 0

    def set_marks(self, steps: list[int]) -> None:
        """The training steps to hold at from now on (replaces the earlier ones)."""
        self.marks = set(steps)

    @property
    def holding(self) -> bool:
        return self.held is not None

    def should_hold(self, step: int) -> bool:
        return step in self.marks

    def hold(self, step: int, payload: Any, now: float) -> None:
        if self.held is not None:  # the lockstep cannot reach another step while one is held
            raise RuntimeError(f"step {step} reached while step {self.held.step} is still held")
        self.marks.discard(step)  # each mark holds once, even if the run comes back to it after a restart
        self.held = HeldStep(step, payload, since=now, deadline=now + self.timeout_s)

    def release(self, step: int) -> HeldStep | None:
        """The orchestrator's go-ahead for `step`: the step that was held, or None when `step` is
        not the one held (a late or repeated release is ignored)."""
        if self.held is None or self.held.step != step:
            return None
        held, self.held = self.held, None
        self.released_by_orchestrator += 1
        return held

    def next_deadline(self) -> float | None:
        return None if self.held is None else self.held.deadline

    def on_timer(self, now: float) -> HeldStep | None:
        """The step that was held, once its hold has timed out (logged), else None."""
        if self.held is None or now < self.held.deadline:
            return None
        log.warning("step %d: no release from the orchestrator within %.1f s; stepping on without it",
                    self.held.step, self.timeout_s)
        held, self.held = self.held, None
        held.timed_out = True
        self.released_by_timeout += 1
        return held
