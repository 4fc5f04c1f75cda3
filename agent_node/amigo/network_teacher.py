"""AMIGo's teacher as the paper has it: a network over the grid that proposes a cell.

ALGORITHMS.md section 3 (Campero et al., arXiv 2006.12122). The tabular teacher
(`agent_node/amigo/teacher.py` `AmigoTeacher`) fits an open room whose only content is the student; on
MiniGrid tasks (env_server/envs/minigrid_task.py) every episode has a new layout of walls, doors,
keys and balls, which a table indexed by the student's cell cannot see. This teacher reads the
fully observed grid (`protocols/goal_spaces/cell_space.py` `grid_of_observation`) and outputs one logit per
cell with a small fully convolutional network (the paper's teacher is also convolutional with a
logit per cell; its exact layers and sizes are not reproduced here), so it can learn, e.g., that
the cell behind a locked door is hard to reach in any layout.

Learning is the tabular teacher's: a one-step problem, REINFORCE on batches of `batch_size`
completed goal episodes with the batch mean as baseline, plus an entropy bonus (`entropy_cost`)
that keeps it from collapsing onto one cell early (on a synthetic test with learning rate 0.01
and batches of 16 it did collapse onto one cell whatever the layout; `tests/unit/test_amigo_minigrid.py`
uses 0.003 and entropy 0.1); the teacher reward, the t* rule and their settings are shared
with it (`CurriculumTeacher`, `Curriculum`). The student's own cell is
never proposed. Adam, as for the node's other networks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from agent_node.amigo.teacher import Curriculum, CurriculumTeacher
from protocols.goal_spaces.cell_space import GRID_CODE_SCALE, grid_of_observation


# Each cell's (object, colour, state) codes become one-hots (the paper embeds them): a scaled
# scalar code would put a key (5) between a door (4) and a ball (6), an order that means nothing.
CODE_COUNTS = tuple(int(scale) + 1 for scale in GRID_CODE_SCALE)  # 11 objects, 6 colours, 4 states


def one_hot_codes(grid: torch.Tensor) -> torch.Tensor:
    """Scaled codes (batch, size, size, 3) -> one-hot channels (batch, sum(CODE_COUNTS), size, size)."""
    codes = torch.round(grid * torch.tensor(GRID_CODE_SCALE)).long()
    parts = [nn.functional.one_hot(codes[..., k].clamp(0, count - 1), count) for k, count in enumerate(CODE_COUNTS)]
    return torch.cat(parts, dim=-1).permute(0, 3, 1, 2).float()


class CellPolicy(nn.Module):
    """Grid codes (batch, size, size, 3) -> one logit per cell (batch, size * size)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        # ELU rather than ReLU: no unit can go dead and leave the logits constant
        self.body = nn.Sequential(
            nn.Conv2d(sum(CODE_COUNTS), channels, 3, padding=1), nn.ELU(),
            # dilated: each cell's logit also sees cells a few steps away (a door, a key)
            nn.Conv2d(channels, channels, 3, padding=2, dilation=2), nn.ELU(),
            nn.Conv2d(channels, channels, 3, padding=4, dilation=4), nn.ELU(),
            nn.Conv2d(channels, 1, 1),
        )

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return self.body(one_hot_codes(grid)).flatten(1)


class NetworkTeacher(CurriculumTeacher):
    """Proposes a cell from the observation when the goal is set; see the module docstring.
    Same interface as the tabular `AmigoTeacher`, with the observation required."""

    def __init__(
        self,
        size: int,
        seed: int,
        curriculum: Curriculum = Curriculum(),
        *,
        learning_rate: float = 1e-3,
        entropy_cost: float = 0.05,
        channels: int = 16,
    ) -> None:
        if size < 2 or channels < 1 or not learning_rate > 0 or entropy_cost < 0:
            raise ValueError(
                f"size >= 2, channels >= 1, learning_rate > 0, entropy_cost >= 0 expected; got "
                f"{size}, {channels}, {learning_rate}, {entropy_cost}"
            )
        super().__init__(curriculum)
        self.size = size
        self.num_cells = size * size
        self.entropy_cost = entropy_cost
        with torch.random.fork_rng():  # the weights follow `seed` without touching the process's torch stream
            torch.manual_seed(seed)
            self.network = CellPolicy(channels)
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=learning_rate)
        self._rng = np.random.default_rng(seed)
        self._proposal: tuple[np.ndarray, int, int] | None = None  # (grid, start cell, goal) of the open goal
        self._batch: list[tuple[np.ndarray, int, int, float]] = []

    def _masked_logits(self, grids: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        logits = self.network(grids)
        own = torch.zeros_like(logits, dtype=torch.bool)
        own[torch.arange(len(starts)), starts] = True  # the student's own cell is no goal
        return logits.masked_fill(own, float("-inf"))

    def policy(self, observation: np.ndarray, start_cell: int) -> np.ndarray:
        grid = torch.as_tensor(grid_of_observation(observation, self.size), dtype=torch.float32)[None]
        with torch.no_grad():
            probabilities = torch.softmax(self._masked_logits(grid, torch.tensor([start_cell])), dim=1)[0]
        probabilities = probabilities.double().numpy()
        return probabilities / probabilities.sum()

    def propose_cell(self, start_cell: int, observation: np.ndarray | None = None) -> int:
        if observation is None:
            raise ValueError("the network teacher proposes from the observation (a grid observation, minigrid_v0), got none")
        goal = int(self._rng.choice(self.num_cells, p=self.policy(observation, start_cell)))
        self._proposal = (grid_of_observation(observation, self.size).astype(np.float32), int(start_cell), goal)
        return goal

    def observe_goal_episode(self, start_cell: int, goal_cell: int, reached: bool, steps_to_reach: int, extrinsic_positive: bool = False) -> float:
        """The open goal's episode ended; returns the teacher reward and updates when a batch is full."""
        if self._proposal is None or self._proposal[1:] != (int(start_cell), int(goal_cell)):
            raise RuntimeError(f"goal episode ({start_cell} -> {goal_cell}) that this teacher did not propose last")
        reward = self._score(reached, steps_to_reach, extrinsic_positive)
        grid, start, goal = self._proposal
        self._proposal = None
        self._batch.append((grid, start, goal, reward))
        if len(self._batch) >= self.curriculum.batch_size:
            self._update()
        return reward

    def _update(self) -> None:
        grids = torch.as_tensor(np.stack([row[0] for row in self._batch]))
        starts = torch.tensor([row[1] for row in self._batch])
        goals = torch.tensor([row[2] for row in self._batch])
        rewards = torch.tensor([row[3] for row in self._batch], dtype=torch.float32)
        baseline = rewards.mean()
        log_probabilities = torch.log_softmax(self._masked_logits(grids, starts), dim=1)
        chosen = log_probabilities.gather(1, goals[:, None])[:, 0]
        probabilities = log_probabilities.exp()
        # 0 * -inf is nan: the masked cell adds nothing to the entropy
        entropy = -(probabilities * log_probabilities.masked_fill(probabilities == 0, 0.0)).sum(1)
        loss = -((rewards - baseline) * chosen).mean() - self.entropy_cost * entropy.mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self._batch = []
        self._updated(float(baseline))

    def state_dict(self) -> dict[str, Any]:
        """What a restarted agent needs to go on teaching (the pending batch and open goal are lost)."""
        return {"network": self.network.state_dict(), "optimizer": self.optimizer.state_dict(),
                "t_star": self.t_star, "counter": self.counter, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.t_star, self.counter, self.updates = int(state["t_star"]), int(state["counter"]), int(state["updates"])
