"""The transition assembler: consecutive env observations in, transition rows and finished episodes out.

Sans-IO: it never touches a socket or a clock. The node feeds it every training observation
(`observe`) and tells it what it answered (`acted`); it returns the K-copy `Transition` rows the
learner should see and one `FinishedEpisode` per episode of this agent that just ended.

Which rows become transitions. Row k (one environment copy) is a transition when this agent
acted in copy k at the previous step (`last_active[k]`) and either

- takes part in the current step (`active[k]`), or
- its episode ended at this step (`terminated[k] | truncated[k]`).

The second case matters for population envs with autoreset: an agent that does not take part
in the next episode of a copy arrives with `active[k] = False` at that episode's start, yet the
step that ended the previous episode is still its own final transition (the rule used to be
`last_active & active`, which silently dropped it). It also keeps the final transition of an
agent that terminates while the others play on.

With autoreset the env server has already reset an ended copy: `observations[k]` is the first
observation of the new episode, `final_observations[k]` the last of the old one, and
`episode_start[k]` marks it. The transition's `next_obs` is the final observation there.

When the env server restarts (orchestrator/runtime.py), every copy's episode is cut where it
stood and the resumed server starts new ones: `cut` ends this agent's episodes in flight as
truncated (`FinishedEpisode.cut`; reported apart from whole episodes) and forgets the last observation and action, so the first
observation of the new episodes is never glued to the old episode's last one (whose action
the server may never have played). No transition is made for that last action: its outcome
is unknown.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent_node.roles import Transition
from protocols.codec import messages as m


@dataclass(frozen=True)
class FinishedEpisode:
    copy: int  # which of the K environment copies
    episode_return: float  # undiscounted sum of this agent's rewards
    length: int  # steps this agent took part in
    episode: int  # 1-based count of this agent's finished episodes, over all copies
    cut: bool = False  # ended by an env-server restart (truncated), not by the environment


@dataclass(frozen=True)
class AssembledStep:
    transition: Transition | None  # None when no row qualified (or nothing was acted on yet)
    finished: list[FinishedEpisode]


class TransitionAssembler:
    """Per-agent bookkeeping between one observation and the next: last observation, action,
    participation, and running per-copy returns."""

    def __init__(self, agent: str, num_copies: int, *, episodes_finished: int = 0) -> None:
        if num_copies < 1:
            raise ValueError(f"num_copies must be at least 1, got {num_copies}")
        self.agent = agent
        self.num_copies = num_copies
        self.returns = np.zeros(num_copies)
        self.lengths = np.zeros(num_copies, dtype=np.int64)
        self.episodes = episodes_finished  # restored from a checkpoint on restart
        self.last_return: float | None = None
        self.last_obs: np.ndarray | None = None
        self.last_action: np.ndarray | None = None
        self.last_active: np.ndarray | None = None
        # False when the env server stepped without this agent's answer (it came after the step
        # deadline): the server played its default action, so the next observation does not
        # follow from `last_action`; that step yields no transition, only rewards and episode ends.
        self.last_action_applied = True

    def stepped_without_answer(self) -> None:
        """The env server went on without the answer to the last observation."""
        self.last_action_applied = False

    def acted(self, observations: np.ndarray, actions: np.ndarray, active: np.ndarray) -> None:
        """Remember what the agent saw and sent; the next `observe` pairs it with the outcome."""
        self.last_obs, self.last_action, self.last_active = observations, actions, np.asarray(active, dtype=bool)
        self.last_action_applied = True

    def observe(self, message: m.EnvObservation) -> AssembledStep:
        """The rows and finished episodes that `message` (a training observation) completes."""
        if message.evaluation:
            raise ValueError("TransitionAssembler.observe got an evaluation observation; those are not learned from")
        if self.last_obs is None or message.step == 0:
            return AssembledStep(None, [])  # the first observation after reset answers nothing yet
        agent = self.agent
        observations = message.observations[agent]
        active = np.asarray(message.active[agent], dtype=bool)
        rewards = np.asarray(message.rewards[agent])
        terminated = np.asarray(message.terminated[agent], dtype=bool)
        truncated = np.asarray(message.truncated[agent], dtype=bool)
        if active.shape != (self.num_copies,):
            raise ValueError(
                f"env.observation for {agent!r} has active of shape {active.shape}, expected ({self.num_copies},)"
            )
        ended_here = terminated | truncated
        took_part = self.last_active & (active | ended_here)

        next_obs = observations
        if agent in message.final_observations:
            starts = np.asarray(message.episode_start, dtype=bool)
            next_obs = np.where(
                starts.reshape(-1, *([1] * (observations.ndim - 1))), message.final_observations[agent], observations
            )
        transition = None
        # The env server names in `missing` the agents whose action it replaced at the step before
        # (the answer came after the step deadline, or after a realtime clock's step time): the
        # next observation does not follow from `last_action` then either.
        applied = self.last_action_applied and agent not in message.missing
        if took_part.any() and applied:
            rows = np.flatnonzero(took_part)
            transition = Transition(
                obs=self.last_obs[rows],
                action=self.last_action[rows],
                reward=rewards[rows],
                next_obs=next_obs[rows],
                terminated=terminated[rows],
                truncated=truncated[rows],
                copy_index=rows.astype(np.int64),
            )

        self.returns += np.where(took_part, rewards, 0.0)
        self.lengths += took_part
        finished = []
        for copy in np.flatnonzero(took_part & ended_here):
            finished.append(self._finish(int(copy)))
        return AssembledStep(transition, finished)

    def cut(self) -> list[FinishedEpisode]:
        """End the episodes in flight as truncated (the env server restarted); see the module doc.

        One `FinishedEpisode(cut=True)` per copy where this agent took part in at least one step,
        with its return and length so far. A cut episode is not counted in `episodes` and does
        not become `last_return`: a partial return is not comparable with whole episodes' ones.
        The next observation starts over as if after a reset."""
        cut = [
            FinishedEpisode(int(copy), float(self.returns[copy]), int(self.lengths[copy]), self.episodes, cut=True)
            for copy in np.flatnonzero(self.lengths > 0)
        ]
        self.returns[:] = 0.0
        self.lengths[:] = 0
        self.last_obs = self.last_action = self.last_active = None
        self.last_action_applied = True
        return cut

    def _finish(self, copy: int) -> FinishedEpisode:
        episode_return, length = float(self.returns[copy]), int(self.lengths[copy])
        self.returns[copy] = 0.0
        self.lengths[copy] = 0
        self.episodes += 1
        self.last_return = episode_return
        return FinishedEpisode(copy, episode_return, length, self.episodes)
