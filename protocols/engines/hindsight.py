"""Hindsight sharing after an episode, and HER relabelling: a sans-IO engine plus pure functions.

ALGORITHMS.md section 2, "Hindsight (planned in the source, never implemented there)". An
autotelic agent learns only from the goal it pursued, yet an episode often achieves other goals
on the way, some of them cooperative and by accident. Hindsight experience replay (Andrychowicz
et al. 2017) relabels an episode's transitions with goals it did achieve. With several agents the
goals a joint trajectory achieved may be seen by one agent and not by another, so after each
episode every agent tells its partners which goals were achieved and when (`HindsightReport`),
optionally with a budget of its own transitions, and each agent relabels its own transitions with
its own and its partners' achieved goals. Cooperative goals achieved by accident become training
signal for both.

Time convention. An event `(step t, goal g)` means the state reached by transition `t` (the
observation after action `t`, t = 0 .. T-1) achieves `g`. The reward of transition `t` under goal
`g` is `reward_fn(g, goals achieved after t)` (goal_lines: 1, 1/beta or 0), and the transition
terminates when that reward is positive (an agent is done once rewarded). A transition after the
first achievement of `g` is never relabelled with `g`: an agent pursuing `g` would have been done.

Strategies (`relabel_episode`):
- `final`: the goals achieved at the episode's last step with any achievement; each relabels the
  transitions from 0 up to its first achievement.
- `future`: for each transition `t`, `k` events drawn uniformly (with replacement) from the events
  at steps >= t; each draw whose goal was not achieved before `t` gives one relabelled transition.

The engine (one run per episode):

    idle --start(HindsightRequest)--> reports sent, waiting for partners
         --(every partner's report | partner down | deadline start + timeout_s)--> done
    result: HindsightResult (merged events, per-partner events, shared transitions, who is missing)

Exactly once: a report is keyed by (sender, episode). A duplicate of a report already applied is
counted and ignored; a report for a later episode (a partner finished first, or reordering) waits
in a buffer, deduplicated by the same key, until that episode starts; a report for an episode
whose run is over arrived too late and is counted and dropped (`late_dropped`), never applied.
So each report is applied at most once, and exactly once when it arrives before its deadline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal, Sequence

import numpy as np

from protocols.engines.engine import EpisodeRuns, Outgoing
from protocols.codec.messages import register_message

Event = tuple[int, int]  # (step, goal)
RewardFn = Callable[[int, np.ndarray], float]  # (goal, goals achieved after the step) -> reward


# ------------------------------------------------------------------------------------------
# Messages
# ------------------------------------------------------------------------------------------


@register_message("hindsight.report")
@dataclass(frozen=True)
class HindsightReport:
    """The goals the sender saw achieved in `episode` (`goals[i]` after transition `steps[i]`),
    and optionally some of its transitions (`transition_*`, one row each, or None)."""

    episode: int
    steps: np.ndarray  # int64 (n,)
    goals: np.ndarray  # int64 (n,)
    transition_steps: np.ndarray | None = None  # int64 (m,)
    transition_obs: np.ndarray | None = None  # float32 (m, obs_dim)
    transition_actions: np.ndarray | None = None  # int64 (m,)
    transition_next_obs: np.ndarray | None = None  # float32 (m, obs_dim)


@register_message("hindsight.rows")
@dataclass(frozen=True)
class HindsightRows:
    """One episode of the sender's rows, each with the goal it pursued and the goal its episode
    reached, so a partner whose dynamics are the same relabels them for itself (the main job:
    agents share how they reached their landmarks). Sent once, not waited for: it is added to the
    partner's replay buffer whenever it arrives."""

    episode: str  # the run's key of the episode (e.g. `train:1000`)
    obs: np.ndarray  # float32 (m, obs_dim)
    actions: np.ndarray  # int64 (m,)
    next_obs: np.ndarray  # float32 (m, obs_dim)
    terminated: np.ndarray  # bool (m,)
    pursued: np.ndarray  # int64 (m,)
    reached: np.ndarray  # int64 (m,)
    # The env copy of each row, so links that follow positions with several copies send a
    # partner only the rows of the copies in which it is in range; None: about no copy.
    copies: np.ndarray | None = None  # int64 (m,)

    def is_about_copies(self) -> bool:
        return self.copies is not None

    def restricted_to_copies(self, keep: np.ndarray) -> HindsightRows | None:
        """Only the rows of the copies `keep` names ((K,) booleans); None when no row is left
        (a `CopyContent`, protocols/engines/proximity.py)."""
        keep = np.asarray(keep, dtype=bool)
        if self.copies is None or keep.all():
            return self
        rows = keep[np.asarray(self.copies, dtype=np.int64)]
        if not rows.any():
            return None
        return HindsightRows(self.episode, self.obs[rows], self.actions[rows], self.next_obs[rows],
                             self.terminated[rows], self.pursued[rows], self.reached[rows], self.copies[rows])


@dataclass(frozen=True)
class SharedTransitions:
    """A batch of one agent's transitions (rows), with the step index of each."""

    steps: np.ndarray
    obs: np.ndarray
    actions: np.ndarray
    next_obs: np.ndarray


@dataclass(frozen=True)
class HindsightRequest:
    episode: int
    partners: Sequence[str]
    achieved: Sequence[Event]  # what this agent saw
    shared: SharedTransitions | None = None  # its transition budget, already chosen


@dataclass(frozen=True)
class HindsightResult:
    episode: int
    events: list[Event]  # own and partners' events, sorted, without duplicates
    from_partners: dict[str, list[Event]]
    partner_transitions: dict[str, SharedTransitions]
    missing: list[str]  # partners whose report did not arrive by the deadline


# ------------------------------------------------------------------------------------------
# Relabelling (pure)
# ------------------------------------------------------------------------------------------


def achieved_after_each_step(events: Sequence[Event], num_steps: int) -> list[np.ndarray]:
    """For t = 0 .. num_steps-1, the sorted goals achieved after transition t."""
    per_step: list[set[int]] = [set() for _ in range(num_steps)]
    for step, goal in events:
        if not 0 <= step < num_steps:
            raise ValueError(f"event step {step} outside the episode's transitions [0, {num_steps})")
        per_step[step].add(int(goal))
    return [np.array(sorted(goals), dtype=np.int64) for goals in per_step]


@dataclass
class Relabelled:
    """Relabelled transitions, one row each: index into the episode, goal, reward, terminated."""

    step: np.ndarray
    goal: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray

    def __len__(self) -> int:
        return int(self.step.shape[0])


def relabel_episode(
    num_steps: int,
    events: Sequence[Event],
    reward_fn: RewardFn,
    strategy: Literal["final", "future"],
    *,
    k: int = 4,
    rng: np.random.Generator | None = None,
) -> Relabelled:
    """Which (transition, goal) pairs HER adds for one episode, with their rewards; see the
    module docstring. The caller copies obs/action/next_obs of the listed transitions."""
    achieved = achieved_after_each_step(events, num_steps)
    first_achieved: dict[int, int] = {}
    for step, goals in enumerate(achieved):
        for goal in goals:
            first_achieved.setdefault(int(goal), step)
    pairs: list[tuple[int, int]] = []
    if strategy == "final":
        steps_with_events = [step for step, goals in enumerate(achieved) if goals.size]
        if steps_with_events:
            for goal in achieved[steps_with_events[-1]]:
                pairs += [(t, int(goal)) for t in range(first_achieved[int(goal)] + 1)]
    elif strategy == "future":
        if k < 1:
            raise ValueError(f"future relabelling needs k >= 1, got {k}")
        if rng is None:
            raise ValueError("future relabelling draws goals: pass rng")
        flat = sorted((int(step), int(goal)) for step, goal in events)
        event_steps = np.array([step for step, _ in flat], dtype=np.int64)
        for t in range(num_steps):
            first_future = int(np.searchsorted(event_steps, t, side="left"))
            if first_future == len(flat):
                break
            for index in rng.integers(first_future, len(flat), size=k):
                goal = flat[int(index)][1]
                if first_achieved[goal] >= t:  # not already achieved before t
                    pairs.append((t, goal))
    else:
        raise ValueError(f"strategy must be 'final' or 'future', got {strategy!r}")
    rewards = np.array([reward_fn(goal, achieved[t]) for t, goal in pairs], dtype=np.float32)
    return Relabelled(
        step=np.array([t for t, _ in pairs], dtype=np.int64),
        goal=np.array([g for _, g in pairs], dtype=np.int64),
        reward=rewards,
        terminated=rewards > 0,
    )


# ------------------------------------------------------------------------------------------
# The engine
# ------------------------------------------------------------------------------------------


@dataclass
class _Run:
    request: HindsightRequest
    deadline: float
    waiting_for: set[str]
    reports: dict[str, HindsightReport] = field(default_factory=dict)
    result: HindsightResult | None = None


class HindsightEngine(EpisodeRuns[HindsightResult]):
    """One agent's side of hindsight sharing. See the module docstring."""

    message_types: ClassVar[tuple[type, ...]] = (HindsightReport,)
    not_done_message = "hindsight has not finished"
    runs_what = "hindsight"

    def __init__(self, node_id: str, *, timeout_s: float = 1.0) -> None:
        if not timeout_s > 0:
            raise ValueError(f"hindsight timeout_s must be > 0 seconds, got {timeout_s}")
        self.node_id = node_id
        self.timeout_s = timeout_s
        self._run: _Run | None = None
        self._last_episode = -1
        self._future: dict[int, dict[str, HindsightReport]] = {}
        self.applied: dict[tuple[str, int], int] = {}  # (sender, episode) -> times applied (always 1)
        self.duplicates_ignored = 0
        self.late_dropped = 0
        self.not_a_partner = 0

    # ------------------------------------------------------------------ Engine inputs

    def start(self, request: HindsightRequest, now: float) -> list[Outgoing]:
        self._check_next_episode(request.episode)
        if self.node_id in request.partners:
            raise ValueError(f"node {self.node_id!r} lists itself among its partners")
        self._last_episode = request.episode
        # Old keys can go: a report for an episode before the current one is dropped as late anyway.
        self.applied = {key: count for key, count in self.applied.items() if key[1] >= request.episode - 1}
        self._run = _Run(request=request, deadline=now + self.timeout_s, waiting_for=set(request.partners))
        report = _report_of(request)
        outgoing: list[Outgoing] = [(partner, report) for partner in request.partners]
        for sender, buffered in self._future.pop(request.episode, {}).items():
            self._apply(sender, buffered)
        for episode in [e for e in self._future if e < request.episode]:
            self.late_dropped += len(self._future.pop(episode))
        self._finish_if_complete()
        return outgoing

    def on_message(self, sender: str, message: Any, now: float) -> list[Outgoing]:
        if not isinstance(message, HindsightReport):
            raise TypeError(f"hindsight got a {type(message).__name__} from {sender!r}; it takes HindsightReport")
        _check_report(sender, message)
        key = (sender, message.episode)
        if key in self.applied:
            self.duplicates_ignored += 1
            return []
        run = self._run
        current = run.request.episode if run is not None else self._last_episode
        if message.episode > current or run is None:
            buffer = self._future.setdefault(message.episode, {})
            if sender in buffer:
                self.duplicates_ignored += 1
            else:
                buffer[sender] = message
            return []
        if message.episode < current or run.result is not None:
            self.late_dropped += 1
            return []
        self._apply(sender, message)
        self._finish_if_complete()
        return []

    def on_timer(self, now: float) -> list[Outgoing]:
        run = self._run
        if run is not None and run.result is None and now >= run.deadline:
            self._finish()
        return []

    def on_neighbour_down(self, node: str, now: float) -> list[Outgoing]:
        run = self._run
        if run is not None and run.result is None:
            run.waiting_for.discard(node)
            self._finish_if_complete()
        return []

    def on_neighbour_up(self, node: str, now: float) -> list[Outgoing]:
        return []

    # ------------------------------------------------------------------ Engine outputs

    def next_deadline(self) -> float | None:
        run = self._run
        return run.deadline if run is not None and run.result is None else None

    def _outcome_so_far(self) -> HindsightResult | None:
        return None if self._run is None else self._run.result

    def metrics(self) -> dict[str, float]:
        metrics = {
            "hindsight/duplicates_ignored": float(self.duplicates_ignored),
            "hindsight/late_dropped": float(self.late_dropped),
        }
        if self.done:
            result = self._run.result
            metrics["hindsight/partners_missing"] = float(len(result.missing))
            metrics["hindsight/events"] = float(len(result.events))
            metrics["hindsight/events_from_partners_only"] = float(
                len(set(result.events) - {(int(s), int(g)) for s, g in self._run.request.achieved})
            )
        return metrics

    # ------------------------------------------------------------------ internals

    def _apply(self, sender: str, report: HindsightReport) -> None:
        run = self._run
        if sender not in run.request.partners:
            self.not_a_partner += 1
            return
        self.applied[(sender, report.episode)] = self.applied.get((sender, report.episode), 0) + 1
        run.reports[sender] = report

    def _finish_if_complete(self) -> None:
        run = self._run
        if run.result is None and run.waiting_for <= set(run.reports):
            self._finish()

    def _finish(self) -> None:
        run = self._run
        own = {(int(step), int(goal)) for step, goal in run.request.achieved}
        from_partners = {
            sender: [(int(s), int(g)) for s, g in zip(report.steps, report.goals)] for sender, report in run.reports.items()
        }
        merged = set(own)
        for events in from_partners.values():
            merged.update(events)
        transitions = {
            sender: SharedTransitions(report.transition_steps, report.transition_obs, report.transition_actions, report.transition_next_obs)
            for sender, report in run.reports.items()
            if report.transition_steps is not None
        }
        run.result = HindsightResult(
            episode=run.request.episode,
            events=sorted(merged),
            from_partners=from_partners,
            partner_transitions=transitions,
            missing=sorted(set(run.request.partners) - set(run.reports)),
        )


def _report_of(request: HindsightRequest) -> HindsightReport:
    achieved = sorted({(int(step), int(goal)) for step, goal in request.achieved})
    shared = request.shared
    return HindsightReport(
        episode=request.episode,
        steps=np.array([step for step, _ in achieved], dtype=np.int64),
        goals=np.array([goal for _, goal in achieved], dtype=np.int64),
        transition_steps=None if shared is None else np.asarray(shared.steps, dtype=np.int64),
        transition_obs=None if shared is None else np.asarray(shared.obs, dtype=np.float32),
        transition_actions=None if shared is None else np.asarray(shared.actions, dtype=np.int64),
        transition_next_obs=None if shared is None else np.asarray(shared.next_obs, dtype=np.float32),
    )


def _check_report(sender: str, report: HindsightReport) -> None:
    if report.steps.shape != report.goals.shape or report.steps.ndim != 1:
        raise ValueError(
            f"hindsight report from {sender!r}: steps and goals must be 1-D arrays of one length, "
            f"got shapes {report.steps.shape} and {report.goals.shape}"
        )
    if report.transition_steps is not None:
        rows = report.transition_steps.shape[0]
        for name in ("transition_obs", "transition_actions", "transition_next_obs"):
            value = getattr(report, name)
            if value is None or value.shape[0] != rows:
                raise ValueError(f"hindsight report from {sender!r}: {name} must have {rows} rows like transition_steps")
