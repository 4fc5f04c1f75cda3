"""Cells of a square grid as goals (AMIGo, ALGORITHMS.md section 3), shared by env and agents.

The grid environment (`env_server/envs/treasure_room.py`) reports each step which cell each agent
stands on (`infos[agent]["cell"]`); the agents' AMIGo teachers propose cells and check whether the
student reached them (`agent_node/amigo_session.py`). The two packages never import each other, so
the one definition both rely on, how a cell is numbered and where an agent's own position sits in
its observation, lives here.

A cell `(row, col)` of a `size x size` grid, row 0 at the top, has index `row * size + col`.
The observation of a cell-grid agent begins with its own `(row, col) / (size - 1)`; an agent reads
its cell from there when the infos cannot tell it (with autoreset, the observation that starts an
episode carries the infos of the previous episode's last step).
"""

from __future__ import annotations

import numpy as np


def cell_index(row: int, col: int, size: int) -> int:
    if not (0 <= row < size and 0 <= col < size):
        raise ValueError(f"cell ({row}, {col}) lies outside a {size}x{size} grid")
    return int(row) * size + int(col)


def cell_coordinates(cell: int, size: int) -> tuple[int, int]:
    if not 0 <= cell < size * size:
        raise ValueError(f"cell {cell} lies outside a {size}x{size} grid (cells 0 .. {size * size - 1})")
    return int(cell) // size, int(cell) % size


def cell_of_observation(observation: np.ndarray, size: int) -> int:
    """The cell whose position opens `observation` (`(row, col) / (size - 1)`)."""
    row, col = np.rint(np.asarray(observation, dtype=np.float64)[:2] * (size - 1)).astype(np.int64)
    return cell_index(int(row), int(col), size)


def cell_features(size: int) -> np.ndarray:
    """Each cell as its normalized coordinates `(row, col) / (size - 1)`, (size * size, 2):
    the goal encoding that lets a student generalize between neighbouring goal cells."""
    rows, cols = np.divmod(np.arange(size * size), size)
    return (np.stack([rows, cols], axis=1) / (size - 1)).astype(np.float32)


def manhattan(cell_a: int, cell_b: int, size: int) -> int:
    (row_a, col_a), (row_b, col_b) = cell_coordinates(cell_a, size), cell_coordinates(cell_b, size)
    return abs(row_a - row_b) + abs(col_a - col_b)
