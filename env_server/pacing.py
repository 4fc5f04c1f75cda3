"""The pacing of the lockstep, a part of the env server (env_server/part.py).

Two settings decide when a step may be taken once its actions are in:

- `env.clock` / `env.eval_clock`: `lockstep` steps as soon as every awaited action is in (or the
  step deadline passed); `realtime` steps at `env.steps_per_s` whatever the agents do
  (realtime.py). The part builds the barrier that implements the clocks asked for: the plain
  `LockstepBarrier`, or the `RealtimeBarrier` when either clock is realtime.
- `env.max_steps_per_s`: at most this many training steps per second. A due training step waits
  for its time (the loop wakes for it: `next_deadline`); the actions wait in the barrier, and a
  deadline no longer runs for them. Evaluation steps are never held back.

The core asks `may_step()` before it takes a due step's actions; with a realtime training
clock the part's `metrics()` are the clock's (late actions, their age, the server's slips), and
an evaluation on the realtime clock adds `evaluation_metrics()` to its own.
"""

from __future__ import annotations

from env_server.barrier import DefaultActions, LockstepBarrier
from env_server.part import ServerPart, ServerServices
from env_server.realtime import RealtimeBarrier
from env_server.rules import LockstepRules, clock_refusal, pace_refusal
from env_server.vector import VectorizedParallelEnv


class Pacing(ServerPart):
    name = "pacing"

    def __init__(self, server: ServerServices, rules: LockstepRules, envs: VectorizedParallelEnv, default_action_seed: int) -> None:
        if (refusal := pace_refusal(rules.max_steps_per_s)) is not None:
            raise ValueError(f"max_steps_per_s: {refusal}")
        if (refusal := clock_refusal(rules)) is not None:
            raise ValueError(refusal)
        self.server = server
        self.max_steps_per_s = rules.max_steps_per_s
        # With env.max_steps_per_s: the earliest time the next training step may be taken.
        self.next_step_at: float | None = None
        defaults = DefaultActions(envs.action_spaces, rules.default_action, default_action_seed)
        if "realtime" in (rules.clock, rules.eval_clock):  # (realtime.py; the lockstep is the plain barrier)
            self.barrier: LockstepBarrier = RealtimeBarrier(
                envs.possible_agents, envs.action_spaces, defaults, step_deadline_s=rules.step_deadline_s,
                steps_per_s=rules.steps_per_s, late_action=rules.late_action,
                realtime_for={False: rules.clock == "realtime", True: rules.eval_clock == "realtime"},
            )
        else:
            self.barrier = LockstepBarrier(envs.possible_agents, envs.action_spaces, defaults,
                                           step_deadline_s=rules.step_deadline_s)

    def may_step(self) -> bool:
        """Whether the due step may be taken now (a paced training step that may sets the next one's time)."""
        if self.max_steps_per_s is None or self.server.evaluating:
            return True
        now = self.server.clock()
        if self.next_step_at is not None and now < self.next_step_at:
            return False
        self.next_step_at = now + 1.0 / self.max_steps_per_s
        return True

    def next_deadline(self) -> float | None:
        """When a due training step that env.max_steps_per_s holds back may be taken, or None."""
        if self.next_step_at is not None and self.barrier.step_due and not self.server.evaluating:
            return self.next_step_at
        return None

    def after_hold(self) -> None:
        """The lockstep was held (a fault's hold): a realtime clock pauses for it."""
        self.barrier.restart_clock()

    def metrics(self) -> dict[str, float]:
        """With a realtime training clock (realtime.py): `env/late_actions/<agent>`, the training
        steps each agent's action was not there at its time (cumulative, every possible agent,
        0 included); `env/action_age_steps/<agent>` and `env/action_age_steps_max/<agent>`, the
        mean and largest age in steps of the actions played since the last call; and
        `env/clock_slips`, the steps the server itself was too slow to open on time. Nothing in
        the lockstep."""
        barrier = self.barrier
        if not isinstance(barrier, RealtimeBarrier) or not barrier.realtime_for[False]:
            return {}
        late = barrier.late_actions()
        return {
            **{f"env/late_actions/{agent}": float(late.get(agent, 0)) for agent in barrier.possible_agents},
            **barrier.age_metrics(),
            "env/clock_slips": float(barrier.clock_slips),
        }

    def evaluation_metrics(self) -> dict[str, float]:
        """An evaluation on the realtime clock: how many of its agent-steps had an action that
        was not there at its time (`eval/late_actions`), their share (`eval/late_action_share`),
        and the mean and largest age in steps of the agents' own actions it played
        (`eval/action_age_mean`, `eval/action_age_max`; none played: 0)."""
        barrier = self.barrier
        if not isinstance(barrier, RealtimeBarrier) or not barrier.realtime_for[True]:
            return {}
        counts = barrier.counts[True]
        return {"eval/late_actions": float(counts.late), "eval/late_action_share": counts.late / max(1, counts.played),
                "eval/action_age_mean": counts.ages.total / max(1, counts.ages.count),
                "eval/action_age_max": float(counts.ages.largest)}
