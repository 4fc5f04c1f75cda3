"""BeBold's count-based novelty (Zhang et al., 2020), an intrinsic reward an AMIGo
student may add to its own (`agents.goals.amigo.novelty: bebold`), instead of or beside a teacher."""

from __future__ import annotations

from typing import Hashable


class BeBoldNovelty:
    """BeBold's intrinsic reward, `max(1/N(s') - 1/N(s), 0)` when `s'` is visited for the first
    time in the episode, else 0; `N` counts lifelong visits (including the current one)."""

    def __init__(self) -> None:
        self.counts: dict[Hashable, int] = {}
        self._episode_visits: set[Hashable] = set()

    def start_episode(self, first_state: Hashable) -> None:
        self._episode_visits = {first_state}
        self.counts[first_state] = self.counts.get(first_state, 0) + 1

    def reward(self, state: Hashable, next_state: Hashable) -> float:
        if state not in self.counts:
            raise ValueError(f"state {state!r} was never visited: call start_episode first")
        self.counts[next_state] = self.counts.get(next_state, 0) + 1
        first_visit = next_state not in self._episode_visits
        self._episode_visits.add(next_state)
        if not first_visit:
            return 0.0
        return max(1.0 / self.counts[next_state] - 1.0 / self.counts[state], 0.0)
