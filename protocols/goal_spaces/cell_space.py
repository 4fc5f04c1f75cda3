"""Cells of a square grid as goals (AMIGo, ALGORITHMS.md section 3), shared by env and agents.

The grid environment (`env_server/envs/treasure_room.py`) reports each step which cell each agent
stands on (`infos[agent]["cell"]`); the agents' AMIGo teachers propose cells and check whether the
student reached them (`agent_node/amigo/session.py`). The two packages never import each other, so
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


# -- grid observations (minigrid_v0): the whole grid after the agent's own position
#
# A grid-observation env (env_server/envs/minigrid_task.py) pads its grid to `size x size` and
# sends, per agent: `(row, col) / (size - 1)` (as above), the agent's direction one-hot (4), what it
# carries (object and colour codes, scaled as below; 0 for nothing), then every cell's (object, colour, state) code scaled to [0, 1], row-major. AMIGo's network teacher
# (agent_node/amigo/network_teacher.py) reads the grid back from the observation with `grid_of_observation`.

GRID_HEADER = 2 + 4 + 2  # position, direction one-hot, carried object and colour
GRID_CHANNELS = 3  # object, colour, state (MiniGrid's encoding)
# The largest code of each channel in MiniGrid's encoding (11 object kinds, 6 colours, door
# states 0-2 and the agent's direction 0-3): dividing by these puts every code in [0, 1].
GRID_CODE_SCALE = (10.0, 5.0, 3.0)


def grid_observation_size(size: int) -> int:
    """The length of a grid observation of a `size x size` (padded) grid."""
    return GRID_HEADER + GRID_CHANNELS * size * size


def grid_of_observation(observation: np.ndarray, size: int) -> np.ndarray:
    """The (size, size, 3) scaled cell codes of a grid observation (or a batch: (..., size, size, 3))."""
    observation = np.asarray(observation)
    if observation.shape[-1] != grid_observation_size(size):
        raise ValueError(
            f"a grid observation of a {size}x{size} grid has {grid_observation_size(size)} entries, got {observation.shape[-1]}"
        )
    return observation[..., GRID_HEADER:].reshape(*observation.shape[:-1], size, size, GRID_CHANNELS)
