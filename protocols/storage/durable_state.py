"""What a node does when the state it saved on disk cannot be read back.

Every node that resumes from its own files (an agent's checkpoints and replay buffer,
agent_node/persistence.py; the env server's resume point, env_server/resume.py) verifies them
before using them. A file that fails the check is never used and never written over: the node
falls back to an older good copy and says so, or, when none is left, stops with
`DamagedStateError`, whose message names the file and what is wrong with it, and exits with
`EXIT_DAMAGED_STATE`. The orchestrator does not restart a node that exited with that code:
restarting it would read the same files and fail the same way (a crash loop), or, worse, start
it from step 0 over the files the user may still want to rescue.

`run.on_corrupt_state: start_fresh` (protocols/run/settings.py) changes the last case only: with no
good copy left, the node renames the damaged files `<name>.damaged` (kept, never written over)
and starts from scratch. Either way the node says what happened in its `control.ready`
(`StateNotice`): the orchestrator writes a `state_damaged` event, prints the line on the
terminal, and the report carries it (a fresh start in its headline, `state_started_fresh`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# The exit code of a node that refused to start from damaged state (not 1: the orchestrator's
# restart policy must tell it from a crash, which a restart may cure).
EXIT_DAMAGED_STATE = 3


class DamagedStateError(RuntimeError):
    """A file of a node's saved state failed verification; the message names it and says why."""

    def __init__(self, path: str | os.PathLike[str], why: str) -> None:
        self.path = Path(path)
        self.why = why
        super().__init__(f"damaged state file {self.path}: {why}")


@dataclass(frozen=True)
class StateNotice:
    """What a node that met damaged saved state tells the run: `what`, one line naming the files,
    why, and what it restored instead; the step it restored (0 for a fresh start) and the steps
    lost, in the node's own unit (lockstep steps for agents and the env server, env steps of the
    rows for the learner node, draws for the supervisor)."""

    what: str
    restored_from_step: int
    steps_lost: int | None  # None: not known (nothing readable said how far it had gone)
    damaged_files: int
    started_fresh: bool = False

    def metrics(self) -> dict[str, float]:
        """The `persistence/*` record every such node writes in its metrics."""
        metrics = {
            "persistence/restored_from_step": float(self.restored_from_step),
            "persistence/damaged_files": float(self.damaged_files),
            "persistence/started_fresh": float(self.started_fresh),
        }
        if self.steps_lost is not None:
            metrics["persistence/steps_lost"] = float(self.steps_lost)
        return metrics
