"""What a node does when the state it saved on disk cannot be read back (issue 27).

Every node that resumes from its own files (an agent's checkpoints and replay buffer,
agent_node/persistence.py; the env server's resume point, env_server/resume.py) verifies them
before using them. A file that fails the check is never used and never written over: the node
falls back to an older good copy and says so, or, when none is left, stops with
`DamagedStateError`, whose message names the file and what is wrong with it, and exits with
`EXIT_DAMAGED_STATE`. The orchestrator does not restart a node that exited with that code:
restarting it would read the same files and fail the same way (a crash loop), or, worse, start
it from step 0 over the files the user may still want to rescue.
"""

from __future__ import annotations

import os
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
