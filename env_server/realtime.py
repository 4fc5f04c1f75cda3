"""The real-time clock of the env server, sans-IO: the env steps at a fixed rate whatever the agents do.

In the lockstep (barrier.py) the world waits for the slowest agent, so a slow learner costs wall
time, never return. A robot's world does not wait: with `env.clock: realtime` the server takes
step s at its time, `steps_per_s` after step s - 1's, with whatever actions it has. The same
barrier rules for who drives which agent, joins and take-overs hold; what changes:

- **When a step happens**: at its time, never earlier (all actions in does not end the wait) and
  never later (a missing action does not hold it). Step s + 1's time is step s's plus the period;
  when the server's own work (stepping the env, sending) has already passed it, the clock slips:
  the step is due one period after now, and the slip is counted (`env/clock_slips`), so a rate
  the env server itself cannot keep shows up instead of starving the agents of their period.
  After a pause that is not the clock's (a fault's step hold, an evaluation, a reset) the next
  step counts from its broadcast.
- **Which actions count**: an agent's action for the open step is on time. One for an earlier step
  of the same clock (the agent handled an older observation, or answered after its step's time) is
  late, and kept as the agent's newest if it is newer than the one it has.
- **What is played**, per active agent at step s, from its newest action (sent for step s' <= s):
  on time (s' = s, age 0); else, when it arrived since the agent's action was last played, the
  late one (age s - s'); else `late_action: last` plays it again (a zero-order hold, its age
  grows) and `late_action: default` plays `env.default_action`. An agent that has sent nothing in
  this clock gets the default action. Every agent whose action for s was not there is named in the
  next observation's `missing` (so a neighbour that talks in env steps does not wait for its mark,
  agent_node/step_talk.py) and counted as late (`late_actions`); the default actually played is
  also counted in `default_actions`, as in the lockstep; the age of each played action of its own
  is kept per agent for the metrics period (`age_metrics`).
- Each clock starts afresh: the evaluation's steps count from 0 and its actions are not
  training's, so switching between training and evaluation forgets every agent's newest action.

`env.eval_clock` may put evaluation on the other clock: a barrier with `realtime_for={training:
False, evaluation: True}` runs training in the lockstep (the base class, unchanged) and
evaluation on the clock, or the other way round.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from gymnasium import spaces

from env_server.barrier import DefaultActions, Deliver, LockstepBarrier, Outgoing
from env_server.vector import BatchedStep

log = logging.getLogger("env_server")

LATE_ACTIONS = ("last", "default")  # env.late_action


@dataclass
class ActionAges:
    """The ages (in steps) of one agent's played actions over a metrics period."""

    total: int = 0
    count: int = 0
    largest: int = 0

    def add(self, age: int) -> None:
        self.total += age
        self.count += 1
        self.largest = max(self.largest, age)


@dataclass
class ClockCounts:
    """What one clock (training, or one evaluation) played: active agent-steps and late ones."""

    played: int = 0
    late: int = 0
    late_by_agent: dict[str, int] = field(default_factory=dict)
    ages: ActionAges = field(default_factory=ActionAges)  # of the agents' own actions played, all together


class RealtimeBarrier(LockstepBarrier):
    """A `LockstepBarrier` whose steps, where `realtime_for[evaluation]`, come at a fixed rate.
    See the module docstring."""

    def __init__(
        self,
        possible_agents: list[str],
        action_spaces: dict[str, spaces.Space],
        defaults: DefaultActions,
        *,
        step_deadline_s: float,
        steps_per_s: float,
        late_action: str,
        realtime_for: dict[bool, bool],
    ) -> None:
        super().__init__(possible_agents, action_spaces, defaults, step_deadline_s=step_deadline_s)
        if not steps_per_s > 0:
            raise ValueError(f"steps_per_s: expected a positive number of steps per second, got {steps_per_s!r}")
        if late_action not in LATE_ACTIONS:
            raise ValueError(f"late_action: expected one of {LATE_ACTIONS}, got {late_action!r}")
        self.period_s = 1.0 / steps_per_s
        self.late_action = late_action
        self.realtime_for = {False: bool(realtime_for.get(False)), True: bool(realtime_for.get(True))}
        # The clock of the latest broadcast: training or evaluation, and its step.
        self.clock_evaluation = False
        self.clock_step: int | None = None
        self.newest: dict[str, tuple[int, Any]] = {}  # agent -> (step it was sent for, batched action)
        self.played_step: dict[str, int] = {}  # agent -> the step of its own action played last
        self._last_step_time: float | None = None  # the time of the step just taken, while it flows on
        self.clock_slips = 0
        self.counts = {False: ClockCounts(), True: ClockCounts()}  # training; the current evaluation
        self.ages: dict[str, ActionAges] = {}  # training only, since the last `age_metrics`

    @property
    def clocked(self) -> bool:
        """Whether the current clock (of the latest broadcast) is the realtime one."""
        return self.realtime_for[self.clock_evaluation]

    # ------------------------------------------------------------------ the open step

    def broadcast(self, result: BatchedStep, *, step: int, evaluation: bool, run_finished: bool,
                  missing: list[str], wait: bool, now: float, deliver: Deliver | None = None) -> list[Outgoing]:
        if evaluation != self.clock_evaluation or self.clock_step is None or step < self.clock_step:
            self._start_clock(evaluation)
        self.clock_step = step
        outgoing = super().broadcast(result, step=step, evaluation=evaluation, run_finished=run_finished,
                                     missing=missing, wait=wait, now=now, deliver=deliver)
        if self.clocked:
            self.deadline = self._step_time(now) if wait else None
        return outgoing

    def _start_clock(self, evaluation: bool) -> None:
        """Training and each evaluation are clocks of their own (see the module docstring)."""
        self.clock_evaluation = evaluation
        self.newest, self.played_step = {}, {}
        self._last_step_time = None
        if evaluation:
            self.counts[True] = ClockCounts()

    def _step_time(self, now: float) -> float:
        """When the step being opened is due: one period after the last one, or after now when
        the clock starts afresh or slipped (counted)."""
        if self._last_step_time is None:
            return now + self.period_s
        due = self._last_step_time + self.period_s
        if due <= now:
            self.clock_slips += 1
            if self.clock_slips == 1 or self.clock_slips % 100 == 0:
                log.warning("the env server could not keep %.3g steps per second: step %s is due %.1f ms late "
                            "(%d slips so far; env/clock_slips)", 1.0 / self.period_s, self.open_step,
                            (now - due) * 1e3, self.clock_slips)
            return now + self.period_s
        return due

    def restart_clock(self) -> None:
        self._last_step_time = None

    def close_step(self) -> None:
        super().close_step()
        self._last_step_time = None

    def on_actions(self, identity: bytes, step: int, evaluation: bool, actions: dict[str, Any], now: float) -> list[Outgoing]:
        if not self.clocked:
            return super().on_actions(identity, step, evaluation, actions, now)
        client = self.clients[identity]
        client.absent = False
        if evaluation != self.clock_evaluation or self.clock_step is None or step > self.clock_step:
            self.stale_actions += 1  # another clock's, or a step not yet sent
            return []
        self._check_actions(client, actions)
        for agent, action in actions.items():
            known = self.newest.get(agent)
            if known is None or known[0] < step:
                self.newest[agent] = (step, action)
        if step == self.open_step:
            self.pending.update(actions)
        return []

    def on_timer(self, now: float) -> list[Outgoing]:
        if not self.clocked:
            return super().on_timer(now)
        if self.deadline is not None and now >= self.deadline and not self.step_due:
            self.step_due = True
        return []

    def take_actions(self) -> tuple[dict[str, Any], list[str]]:
        """Every agent's batched action for the due step and who was late (see the module docstring)."""
        if not self.clocked:
            return super().take_actions()
        step, step_time, evaluation = self.open_step, self.deadline, self.open_evaluation
        counts = self.counts[evaluation]
        actions: dict[str, Any] = {}
        late: list[str] = []
        for agent in self.possible_agents:
            if agent not in self.active_agents:  # inactive in every copy: the env ignores it
                actions[agent] = self.defaults.batched(agent, self.num_copies)
                continue
            counts.played += 1
            own = self._own_action(agent)
            if own is None or own[0] != step:
                late.append(agent)
                counts.late += 1
                counts.late_by_agent[agent] = counts.late_by_agent.get(agent, 0) + 1
            if own is None:
                actions[agent] = self.defaults.batched(agent, self.num_copies)
                self.default_actions[agent] = self.default_actions.get(agent, 0) + 1
                continue
            sent_for, actions[agent] = own
            self.played_step[agent] = sent_for
            counts.ages.add(step - sent_for)
            if not evaluation:
                self.ages.setdefault(agent, ActionAges()).add(step - sent_for)
        self.missing_actions += len(late)
        self.close_step()
        self._last_step_time = step_time  # the next step is due one period after this one
        return actions, late

    def _own_action(self, agent: str) -> tuple[int, Any] | None:
        """(the step it was sent for, the action) of the agent's action to play now, or None for
        the default: its newest, when it came since the last one played or `late_action` is last."""
        newest = self.newest.get(agent)
        if newest is None:
            return None
        arrived_since = newest[0] > self.played_step.get(agent, -1)
        return newest if arrived_since or self.late_action == "last" else None

    # ------------------------------------------------------------------ metrics

    def late_actions(self) -> dict[str, int]:
        """Training steps at which each agent's action was not there (cumulative)."""
        return dict(self.counts[False].late_by_agent)

    def age_metrics(self) -> dict[str, float]:
        """`env/action_age_steps/<agent>` (mean) and `env/action_age_steps_max/<agent>` of the
        training actions played since the last call, for agents that had one played; then starts
        a new period."""
        metrics: dict[str, float] = {}
        for agent, ages in sorted(self.ages.items()):
            metrics[f"env/action_age_steps/{agent}"] = ages.total / ages.count
            metrics[f"env/action_age_steps_max/{agent}"] = float(ages.largest)
        self.ages = {}
        return metrics
