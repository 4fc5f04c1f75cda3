"""The goal space of goal_lines (ALGORITHMS.md section 2), shared by the environment and the agents.

The environment (`env_server/envs/goal_lines.py`) reports which goals the joint state achieves;
the agents (`agent_node/goals/session.py`) choose goals and compute their own goal rewards. The
two packages never import each other, so the goal indices and the reward, the one definition
both rely on, live here.

Goal indices: `0 .. L-1` are the individual goals (landmark i); `L ..` the cooperative goals,
the pairs `(i, j)`, `i < j`, in lexicographic order. `L = 3`: 3 + 3 goals; `L = 6`: 6 + 15.
Reward: 1 for an achieved cooperative goal, `1 / beta` for an achieved individual goal, else 0.
"""

from __future__ import annotations

import itertools

import numpy as np

BETA = 2.0


def goal_table(num_landmarks: int) -> list[tuple[int, ...]]:
    """Goal index -> the landmarks it names: `(i,)` for individual goals, then `(i, j)` pairs."""
    individual = [(i,) for i in range(num_landmarks)]
    cooperative = list(itertools.combinations(range(num_landmarks), 2))
    return individual + cooperative


def num_goals(num_landmarks: int) -> int:
    return num_landmarks + num_landmarks * (num_landmarks - 1) // 2


def cooperative_goals(num_landmarks: int) -> np.ndarray:
    """The indices of the cooperative goals."""
    return np.arange(num_landmarks, num_goals(num_landmarks), dtype=np.int64)


def individual_goals(num_landmarks: int) -> np.ndarray:
    return np.arange(num_landmarks, dtype=np.int64)


def goal_set(kind: str, num_landmarks: int) -> np.ndarray:
    """The goals an agent may pursue: "cooperative", "individual" or "all"."""
    if kind == "cooperative":
        return cooperative_goals(num_landmarks)
    if kind == "individual":
        return individual_goals(num_landmarks)
    if kind == "all":
        return np.arange(num_goals(num_landmarks), dtype=np.int64)
    raise ValueError(f"goal set must be 'cooperative', 'individual' or 'all', got {kind!r}")


def complete_events(events, num_landmarks: int) -> list[tuple[int, int]]:
    """`events` ((step, goal) pairs, possibly merged from several agents' reports) plus every
    cooperative goal they imply: at each step, the pair of any two distinct landmarks whose
    individual goals were achieved then. Landmarks never overlap, so two distinct touched
    landmarks were touched by two different agents: the joint state achieved their pair. With
    every active agent's report, this rebuilds exactly what the joint view lists; with some
    missing, the pairs those agents took part in stay unknown. Sorted, without duplicates."""
    completed = {(int(step), int(goal)) for step, goal in events}
    touched_at: dict[int, set[int]] = {}
    for step, goal in completed:
        if goal < num_landmarks:
            touched_at.setdefault(step, set()).add(goal)
    pair_index = {pair: num_landmarks + k for k, pair in enumerate(itertools.combinations(range(num_landmarks), 2))}
    for step, landmarks in touched_at.items():
        completed |= {(step, pair_index[pair]) for pair in itertools.combinations(sorted(landmarks), 2)}
    return sorted(completed)


def events_reports_add(own_events, partner_events, num_landmarks: int) -> list[tuple[int, int]]:
    """What the partners' reports add to an agent's own events once completed (`complete_events`):
    the events they carry and the pairs that their landmarks and the agent's own imply; what HER
    relabels with beside the agent's own events when the env pays on the joint state."""
    own = {(int(step), int(goal)) for step, goal in own_events}
    return sorted(set(complete_events([*own, *partner_events], num_landmarks)) - own)


def goal_reward(goal: int, achieved: np.ndarray, num_landmarks: int, beta: float = BETA) -> float:
    """1 for an achieved cooperative goal, 1/beta for an achieved individual goal, else 0."""
    if not 0 <= goal < num_goals(num_landmarks):
        raise ValueError(f"goal must be in [0, {num_goals(num_landmarks)}) for L={num_landmarks}, got {goal}")
    if goal not in achieved:
        return 0.0
    return 1.0 if goal >= num_landmarks else 1.0 / beta
