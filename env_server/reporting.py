"""What the lockstep reports, a part of the env server (env_server/part.py): the defaulted
actions and where the training steps' wall time went in the metrics every status period, and
the figures of each status report."""

from __future__ import annotations

from env_server.part import ServerPart, ServerServices


class LockstepReport(ServerPart):
    name = "report"

    def __init__(self, server: ServerServices) -> None:
        self.server = server
        self.step_time = StepWallTime()

    def metrics(self) -> dict[str, float]:
        """`env/default_actions/<agent>`: the steps each agent's action was defaulted because it was
        dead, paused or late from its own compute (the env never waits on a protocol when talking
        takes env steps), every possible agent listed, 0 included; and `StepWallTime`'s sums."""
        barrier = self.server.barrier
        counts = barrier.default_actions
        defaulted = {f"env/default_actions/{agent}": float(counts.get(agent, 0)) for agent in barrier.possible_agents}
        return {**defaulted, **self.step_time.metrics()}

    def status(self) -> dict[str, float]:
        """The status report's extra figures: env steps per second (over the copies), the missing
        and stale actions, and the refused requests."""
        server, barrier = self.server, self.server.barrier
        elapsed = max(1e-9, server.clock() - server.counters.started_at)
        return {
            "env/steps_per_s": server.counters.steps * server.envs.num_copies / elapsed,
            "env/missing_actions": float(barrier.missing_actions),
            "env/stale_actions": float(barrier.stale_actions),
            "env/rejected_requests": float(server.counters.rejected_requests),
        }


class StepWallTime:
    """Where the training steps' wall time goes on the env server, summed over the run: each
    step's cycle is waiting (from its observation's broadcast to the step taking the actions:
    the agents' compute and talking, and the wake-ups), stepping (the copies' step and the
    server's bookkeeping) and sending (the next observation's broadcast). Evaluation episodes,
    held starts and fault holds are left out: a wait is counted only from a training broadcast
    to the next training step, and stepping only up to a broadcast within the same step. The
    server marks each training step's beginning and end, and each training observation once
    it is sent (with when its broadcast began)."""

    def __init__(self) -> None:
        self.waiting_s = self.stepping_s = self.sending_s = 0.0
        self.steps = 0  # training steps whose wait was counted
        self._sent_at: float | None = None
        self._step_began_at: float | None = None

    def step_begins(self, now: float) -> None:
        if self._sent_at is not None:
            self.waiting_s += now - self._sent_at
            self.steps += 1
        self._sent_at = None
        self._step_began_at = now

    def step_ends(self) -> None:
        """(A step that began an evaluation or was held broadcasts later, outside the step: that
        broadcast's sending counts, the time before it is not stepping.)"""
        self._step_began_at = None

    def observation_sent(self, broadcast_began: float, now: float) -> None:
        if self._step_began_at is not None:
            self.stepping_s += broadcast_began - self._step_began_at
        self._step_began_at = None
        self.sending_s += now - broadcast_began
        self._sent_at = now

    def metrics(self) -> dict[str, float]:
        return {"lockstep/waiting_s": self.waiting_s, "lockstep/stepping_s": self.stepping_s,
                "lockstep/sending_s": self.sending_s, "lockstep/timed_steps": float(self.steps)}
