"""The optional global-view fields of a node's transitions (`Transition.global_state`, ...).

The env server puts the global state, the final state of an ended episode and the joint action
on the observations of a client that joined with `global_view=True` (env_server/global_view.py).
A transition of step S-1 -> S needs the state *before* the step, which came with the previous
observation, so this small tracker remembers it between the two. It also supplies `copy_index`,
which every transition carries (the node drops rows where the agent did not take part, so a
learner that follows whole episodes needs to know which copy each row came from).

Kept out of node.py so the node only calls `remember` when it acts and `fields` when it records.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class GlobalFieldTracker:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.last_global_state: np.ndarray | None = None

    def remember(self, message: Any) -> None:
        """Keep the state the agent acted on (call with the observation it answers)."""
        if self.enabled:
            if message.global_state is None:
                raise RuntimeError(
                    "this node asked for the global view but the env server sent an observation without "
                    "global_state (an env server without env_server/global_view.py?)"
                )
            self.last_global_state = message.global_state

    def fields(self, message: Any, rows: np.ndarray) -> dict[str, np.ndarray | None]:
        """The optional Transition fields for these rows of the observation `message`."""
        values: dict[str, np.ndarray | None] = {"copy_index": rows.astype(np.int64)}
        if not self.enabled or self.last_global_state is None:
            return values
        starts = np.asarray(message.episode_start, dtype=bool).reshape(-1, *([1] * (message.global_state.ndim - 1)))
        next_state = np.where(starts, message.final_global_state, message.global_state)
        values["global_state"] = self.last_global_state[rows]
        values["next_global_state"] = next_state[rows]
        values["joint_action"] = message.joint_action[rows] if message.joint_action is not None else None
        return values
