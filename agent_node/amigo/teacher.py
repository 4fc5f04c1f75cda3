"""AMIGo's teacher side without torch: its rewards, its t* curriculum, the tabular teacher and
the uniform baseline.

ALGORITHMS.md section 3 (Campero et al., arXiv 2006.12122). A teacher proposes a goal cell to its
student and is rewarded by how the goal episode went (`amigo_teacher_reward`); the student's
reward is `amigo_student_reward`. Both teachers, the tabular `AmigoTeacher` here and the paper's
network teacher (`agent_node/amigo/network_teacher.py`), learn on batches of completed goal
episodes and raise the target difficulty t* by one rule (`advance_difficulty`), with the settings
of one `Curriculum`; what they share of their bookkeeping is `CurriculumTeacher`.

Every proposer has the same interface (`propose_cell`, `observe_goal_episode`, `reach_history`,
`state_dict`, `load_state_dict`), and takes its seed from the caller, who derives it with
`derive_seed(run_seed, node_index, stream)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def amigo_student_reward(extrinsic: float, reached: bool, steps_since_proposal: int, max_steps: int) -> float:
    """The student's reward for one step: `clip(r_ext + r_int, -1, 1)`, plus 1 when the
    extrinsic reward is positive; `r_int = 1 - 0.9 * t / T_max` on reaching the goal, else 0."""
    intrinsic = 1.0 - 0.9 * steps_since_proposal / max_steps if reached else 0.0
    total = float(np.clip(extrinsic + intrinsic, -1.0, 1.0))
    return total + (1.0 if extrinsic > 0 else 0.0)


def amigo_teacher_reward(reached: bool, steps_to_reach: int, t_star: int, extrinsic_positive: bool, *, alpha: float = 0.7, beta: float = 0.3) -> float:
    """`+1` when the extrinsic reward was positive; else `+alpha` if the goal was reached in at
    least `t*` steps, `-beta` otherwise (too easy, or never reached)."""
    if extrinsic_positive:
        return 1.0
    return alpha if reached and steps_to_reach >= t_star else -beta


def advance_difficulty(t_star: int, counter: int, batch_reward: float, *, threshold: float, counts: int, t_star_max: int) -> tuple[int, int]:
    """AMIGo's t* rule after one teacher update, shared by the tabular and the network teacher:
    the counter of consecutive updates whose mean teacher reward is at least `threshold` goes up
    (or resets to 0 below it); at `counts` it restarts and `t* += 1`, capped at `t_star_max`.
    Returns the new (t*, counter)."""
    counter = counter + 1 if batch_reward >= threshold else 0
    if counter >= counts:
        return min(t_star + 1, t_star_max), 0
    return t_star, counter


@dataclass(frozen=True)
class Curriculum:
    """How a teacher is rewarded and how its target difficulty rises; defaults are the paper's
    (ALGORITHMS.md section 3). After each update on `batch_size` goal episodes: if the batch's mean
    teacher reward >= `difficulty_threshold` a counter goes up, else it resets; at
    `difficulty_counts`, `t* += 1` (capped at `t_star_max`) and the counter restarts. Note: with
    alpha 0.7 and beta 0.3 no batch mean falls below -0.3, so with the threshold -0.5 the counter
    never resets and t* rises every 10 updates whatever the student does."""

    t_star: int = 7  # the starting target difficulty
    t_star_max: int = 100
    alpha: float = 0.7  # teacher reward for a goal reached in >= t* steps
    beta: float = 0.3  # teacher penalty otherwise
    batch_size: int = 32  # goal episodes per update
    difficulty_threshold: float = -0.5
    difficulty_counts: int = 10

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.difficulty_counts < 1:
            raise ValueError(f"batch_size and difficulty_counts: expected >= 1, got {self.batch_size} and {self.difficulty_counts}")


class CurriculumTeacher:
    """What both teachers keep the same way: t* and its counter, the count of updates, the last
    batch's mean reward, and which goals were reached. A teacher scores each goal episode with
    `_score` and, after an update on a full batch, calls `_updated` with the batch's mean reward."""

    def __init__(self, curriculum: Curriculum) -> None:
        self.curriculum = curriculum
        self.t_star = curriculum.t_star
        self.counter = 0
        self.updates = 0
        self.last_batch_reward = float("nan")  # the mean teacher reward of the last update's batch
        self.reach_history: list[bool] = []

    def _score(self, reached: bool, steps_to_reach: int, extrinsic_positive: bool) -> float:
        self.reach_history.append(bool(reached))
        curriculum = self.curriculum
        return amigo_teacher_reward(reached, steps_to_reach, self.t_star, extrinsic_positive, alpha=curriculum.alpha, beta=curriculum.beta)

    def _updated(self, batch_reward: float) -> None:
        curriculum = self.curriculum
        self.updates += 1
        self.last_batch_reward = float(batch_reward)
        self.t_star, self.counter = advance_difficulty(
            self.t_star, self.counter, self.last_batch_reward, threshold=curriculum.difficulty_threshold,
            counts=curriculum.difficulty_counts, t_star_max=curriculum.t_star_max,
        )


class AmigoTeacher(CurriculumTeacher):
    """AMIGo's teacher over a grid's cells, tabular: logits per (student start cell, goal cell).

    The paper's teacher is a network over the full grid; on an open grid whose only content is
    the agents (treasure_room), a table indexed by the student's cell when the goal is proposed
    is the same information for one student. It never proposes the cell the student stands on
    (that goal would need no move). One-step problem, no discount: REINFORCE with the batch mean
    as baseline on batches of `curriculum.batch_size` completed goal episodes, plain gradient
    steps of `learning_rate` on the logits.
    """

    def __init__(self, num_cells: int, seed: int, curriculum: Curriculum = Curriculum(), *, learning_rate: float = 0.5) -> None:
        if num_cells < 1 or not learning_rate > 0:
            raise ValueError(f"num_cells >= 1 and learning_rate > 0 expected, got {num_cells} and {learning_rate}")
        super().__init__(curriculum)
        self.num_cells = num_cells
        self.learning_rate = learning_rate
        self.logits = np.zeros((num_cells, num_cells))
        self._rng = np.random.default_rng(seed)
        self._batch: list[tuple[int, int, float]] = []

    def policy(self, start_cell: int) -> np.ndarray:
        logits = self.logits[start_cell].copy()
        if self.num_cells > 1:
            logits[start_cell] = -np.inf  # the student's own cell is no goal
        probabilities = np.exp(logits - logits.max())
        return probabilities / probabilities.sum()

    def propose_cell(self, start_cell: int, observation: np.ndarray | None = None) -> int:
        # The table is indexed by the start cell alone; the observation is the network teacher's.
        return int(self._rng.choice(self.num_cells, p=self.policy(start_cell)))

    def observe_goal_episode(self, start_cell: int, goal_cell: int, reached: bool, steps_to_reach: int, extrinsic_positive: bool = False) -> float:
        """One goal episode ended (reached, or the episode ended first); returns the teacher
        reward and runs an update when a batch is full."""
        reward = self._score(reached, steps_to_reach, extrinsic_positive)
        self._batch.append((start_cell, goal_cell, reward))
        if len(self._batch) >= self.curriculum.batch_size:
            self._update()
        return reward

    def _update(self) -> None:
        rewards = np.array([reward for _, _, reward in self._batch])
        baseline = rewards.mean()
        gradient = np.zeros_like(self.logits)
        for (start, goal, reward) in self._batch:
            # d log pi(goal | start) / d logits[start] = onehot(goal) - pi(. | start)
            grad_log = -self.policy(start)
            grad_log[goal] += 1.0
            gradient[start] += (reward - baseline) * grad_log
        self.logits += self.learning_rate * gradient / len(self._batch)
        self._batch = []
        self._updated(float(baseline))

    def state_dict(self) -> dict[str, Any]:
        """What a restarted agent needs to go on teaching where it stopped (the pending batch is lost)."""
        return {"logits": self.logits.copy(), "t_star": self.t_star, "counter": self.counter, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        logits = np.asarray(state["logits"], dtype=np.float64)
        if logits.shape != self.logits.shape:
            raise ValueError(f"teacher logits of shape {logits.shape}, this teacher has {self.logits.shape}")
        self.logits = logits
        self.t_star, self.counter, self.updates = int(state["t_star"]), int(state["counter"]), int(state["updates"])


class UniformCells:
    """The baseline proposer: a goal cell drawn uniformly (never the student's own cell), no
    curriculum. Same interface as `AmigoTeacher`'s proposing side."""

    def __init__(self, num_cells: int, seed: int) -> None:
        self.num_cells = num_cells
        self.cells = np.arange(num_cells)
        self._rng = np.random.default_rng(seed)
        self.reach_history: list[bool] = []

    def propose_cell(self, start_cell: int, observation: np.ndarray | None = None) -> int:
        choices = self.cells[self.cells != start_cell] if len(self.cells) > 1 else self.cells
        return int(self._rng.choice(choices))

    def observe_goal_episode(self, start_cell: int, goal_cell: int, reached: bool, steps_to_reach: int, extrinsic_positive: bool = False) -> None:
        self.reach_history.append(bool(reached))

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
