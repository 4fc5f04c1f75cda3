"""Training steps held while the orchestrator issues a fault, a part of the env server
(env_server/part.py).

The orchestrator names the training steps that carry a scheduled fault (`control.hold_at_steps`);
after such a step the core hands its result to `hold_if_marked`, which keeps it back, tells the
orchestrator (`control.step_held`, through `control_outbox`: the loop owns the control channel)
and goes on with it when the orchestrator says `control.release_step`, or when the hold times out
(the rules: step_hold.py). How long each hold lasted goes to the metrics at that step
(`env/step_hold_s`, `env/step_hold_timed_out`).
"""

from __future__ import annotations

from env_server.pacing import Pacing
from env_server.part import ServerPart, ServerServices
from env_server.step_hold import HeldStep, StepHold
from env_server.vector import BatchedStep
from protocols.codec import messages as m


class FaultHold(ServerPart):
    name = "fault_hold"

    def __init__(self, server: ServerServices, timeout_s: float, pacing: Pacing) -> None:
        self.server, self.pacing = server, pacing
        self.step_hold = StepHold(timeout_s)
        self.control_outbox: list[object] = []  # what the loop sends the orchestrator next

    def set_marks(self, steps: list[int]) -> None:
        """control.hold_at_steps: the training steps to hold after."""
        self.step_hold.set_marks(steps)

    def hold_if_marked(self, result: BatchedStep, missing: list[str]) -> bool:
        """Whether this training step's result is held for a fault (True: the part goes on with
        it on release); False: the core goes on with it now."""
        server = self.server
        if not self.step_hold.should_hold(server.step):
            return False
        server.save_resume_point()
        self.step_hold.hold(server.step, (result, missing), server.clock())
        self.control_outbox.append(m.StepHeld(step=server.step))
        return True

    def release_step(self, step: int) -> None:
        """The orchestrator has issued the faults of `step` (control.release_step): step on."""
        if (held := self.step_hold.release(step)) is not None:
            self._step_on(held, self.server.clock())

    def next_deadline(self) -> float | None:
        return self.step_hold.next_deadline()

    def on_timer(self, now: float) -> None:
        if (held := self.step_hold.on_timer(now)) is not None:
            self._step_on(held, now)

    def _step_on(self, held: HeldStep, now: float) -> None:
        self.server.write_metrics({"env/step_hold_s": now - held.since, "env/step_hold_timed_out": float(held.timed_out)})
        self.pacing.after_hold()  # a realtime clock pauses for the fault's hold
        self.server.after_training_step(*held.payload)
