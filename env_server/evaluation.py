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

Where the env is MPE's simple_spread, the server also reads each evaluation copy's world at the
end of its episode (`spread_end_state`) and the evaluation reports the landmarks covered then, as
the env itself counts them (mpe2's `simple_spread.Scenario.benchmark_data`: a landmark is
occupied when some agent is within 0.1 of it): `eval/landmarks_covered`, the share of landmarks
covered at the end of an episode, and `eval/all_landmarks_covered`, the share of episodes that
ended with every landmark covered. Unlike the agents' assignment (distinct by construction), these
fail when the agents do not get there.

This object only decides and keeps count: the server steps the copies and sends messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from env_server.vector import BatchedStep

# mpe2 simple_spread's benchmark_data counts a landmark as occupied when an agent is within this.
OCCUPIED_DISTANCE = 0.1


def landmarks_covered(agent_positions, landmark_positions, within: float = OCCUPIED_DISTANCE) -> int:
    """How many landmarks have some agent closer than `within` (positions: (agents, 2), (landmarks, 2))."""
    agents = np.asarray(agent_positions, dtype=np.float64)
    landmarks = np.asarray(landmark_positions, dtype=np.float64)
    distances = np.linalg.norm(landmarks[:, None, :] - agents[None, :, :], axis=2)  # (landmarks, agents)
    return int((distances.min(axis=1) < within).sum())


def spread_end_state(env) -> tuple[np.ndarray, np.ndarray] | None:
    """(agent positions, landmark positions) of an MPE simple_spread env's world as it stands,
    None for any other env."""
    raw = getattr(env, "unwrapped", env)
    scenario, world = getattr(raw, "scenario", None), getattr(raw, "world", None)
    if world is None or not type(scenario).__module__.endswith("simple_spread"):
        return None
    return (np.array([agent.state.p_pos for agent in world.agents]),
            np.array([landmark.state.p_pos for landmark in world.landmarks]))


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

    def finish(self, now: float, end_states: list[tuple[np.ndarray, np.ndarray] | None] = ()) -> tuple[HeldBack, dict[str, float]]:
        """End the evaluation: the held-back training observation and the metrics to write.
        `end_states`: each episode's (agent positions, landmark positions) at its end where the env
        is simple_spread (`spread_end_state`), for the landmarks covered."""
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
        ends = [state for state in end_states if state is not None]
        if ends:
            covered = [landmarks_covered(agents, landmarks) / len(landmarks) for agents, landmarks in ends]
            metrics["eval/landmarks_covered"] = float(np.mean(covered))
            metrics["eval/all_landmarks_covered"] = float(np.mean([fraction == 1.0 for fraction in covered]))
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
