"""When the env server evaluates the agents, and what an evaluation measured; sans-IO.

Every `every_steps` training steps (from `start_step` on) the server holds the training copies
where they are and runs greedy episodes on separate copies through the same barrier, with
observations flagged `evaluation=True` (agents act deterministically and learn nothing). When
every evaluation copy has finished its episode, the mean return (and each agent's mean return,
`eval/return/<agent>`) is written to the server's metrics, after one row per episode with each
agent's return in it (`eval_episode/index`, `eval_episode/return/<agent>`: what `orchestrate
evaluate` prints; a prefix of their own, so a reader of the `eval/` rows still sees one row per
evaluation), and training resumes with the observation that was held back. Every evaluation
starts from the same seed, so the curve compares policies, not luck.

This object only decides and keeps count: the server steps the copies and sends messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from env_server.vector import BatchedStep


@dataclass
class HeldBack:
    """The training observation an evaluation interrupted, sent again when it ends."""

    result: BatchedStep
    missing: list[str]


@dataclass
class EvaluationSchedule:
    every_steps: int | None  # None: never evaluate
    start_step: int = 0
    running: bool = False
    step: int = 0  # lockstep steps of the running evaluation
    completed: int = 0
    held_back: HeldBack | None = None
    returns: list[float] = field(default_factory=list)
    agent_returns: list[dict[str, float]] = field(default_factory=list)  # per episode, each agent's return
    started_at: float = 0.0

    def due(self, training_step: int) -> bool:
        """Whether an evaluation starts after training step `training_step`."""
        return bool(
            self.every_steps
            and training_step % self.every_steps == 0
            and training_step >= self.start_step
        )

    def begin(self, held_back: BatchedStep, missing: list[str], now: float) -> None:
        self.running, self.step, self.returns, self.agent_returns, self.started_at = True, 0, [], [], now
        self.held_back = HeldBack(held_back, missing)

    def record(self, result: BatchedStep) -> None:
        """One evaluation step happened."""
        self.step += 1
        self.returns.extend(result.episode_returns)
        self.agent_returns.extend(result.episode_agent_returns)

    def finish(self, now: float) -> tuple[HeldBack, dict[str, float]]:
        """End the evaluation: the held-back training observation and the metrics to write."""
        if not self.running or self.held_back is None:
            raise RuntimeError("finish() without a running evaluation")
        returns = np.asarray(self.returns, dtype=float)
        metrics = {
            "eval/return_mean": float(returns.mean()) if len(returns) else float("nan"),
            "eval/return_std": float(returns.std()) if len(returns) else float("nan"),
            "eval/episodes": float(len(returns)),
            "eval/duration_s": now - self.started_at,
        }
        for agent in self.agent_returns[0] if self.agent_returns else ():
            metrics[f"eval/return/{agent}"] = float(np.mean([episode[agent] for episode in self.agent_returns]))
        held_back = self.held_back
        self.running, self.held_back = False, None
        self.completed += 1
        return held_back, metrics

    def episode_rows(self) -> list[dict[str, float]]:
        """One metrics row per episode of the evaluation that just finished: its number (from 0,
        in the order the episodes ended) and each agent's return."""
        return [
            {"eval_episode/index": float(index), **{f"eval_episode/return/{agent}": value for agent, value in episode.items()}}
            for index, episode in enumerate(self.agent_returns)
        ]
