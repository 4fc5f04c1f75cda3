"""What an agent node keeps on disk: its learner checkpoint and its replay buffer.

One helper, `atomic_write`, writes every file: the bytes go to a temporary file in the target's
directory, are fsynced, and the file is renamed over the target (`os.replace` is atomic on
POSIX), then the directory entry is fsynced. A reader, or a node restarted after a kill mid-save,
sees the previous file or the new one, never half of one. When the file system refuses the write
(a full disk, a read-only remount) it raises `FileWriteError` naming the file and the cause; the
previous file stays as it was. Both the checkpoint (`save_checkpoint`)
and the replay buffer (`ReplayBuffer.save`, which keeps its own file layout) write through it.

`NodePersistence` is the node's bookkeeping around those two files: when each is due (every
`checkpoint_every_steps` / `replay_save_every_steps` lockstep steps), saving both at the end,
and restoring them at start. It is handed the learner and never reaches into the replay buffer's
internals: the buffer saves and restores itself.

This module imports no torch at module level: the replay buffer (numpy only) imports
`atomic_write` from here; torch is imported where a checkpoint is written or read.
"""

from __future__ import annotations

import logging
import os
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Mapping, Protocol

from protocols.jsonlines import FileWriteError

log = logging.getLogger("agent_node.persistence")


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> None:
    """Create or replace `path` with what `write(file)` writes, atomically (see the module doc).

    An OSError of the file system (ENOSPC, EROFS, EACCES, ...) comes out as `FileWriteError`
    naming `path`; anything else `write` raises comes out as it is."""
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as error:
        raise FileWriteError.of(target, error) from None
    try:
        with os.fdopen(descriptor, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException as error:
        # Leave nothing behind; the previous file at `target` (if any) is untouched.
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        if isinstance(error, OSError) and not isinstance(error, FileWriteError):
            raise FileWriteError.of(target, error) from None
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    # The rename is durable only once the directory entry itself reaches the disk.
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # some filesystems do not allow opening directories; the file itself is synced
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    import torch  # here, not at the top: the torch-free replay buffer imports this module

    # Serialized in memory first: torch.save into a file that the disk refuses fails with a
    # RuntimeError from its zip writer ("unexpected pos 704 vs 598", measured on a full tmpfs)
    # that no longer says ENOSPC; a plain write of the bytes fails with the system's errno.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, lambda file: file.write(buffer.getbuffer()))


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    import torch

    # weights_only: a checkpoint is data; unpickling arbitrary objects is never needed.
    return torch.load(path, map_location="cpu", weights_only=True)


class SavesItself(Protocol):
    def save(self, path: str | os.PathLike[str]) -> None: ...
    def restore(self, path: str | os.PathLike[str]) -> None: ...
    def __len__(self) -> int: ...


class PersistentLearner(Protocol):
    """What persistence needs from a learner: its state and its replay buffer."""

    replay: SavesItself

    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


@dataclass(frozen=True)
class Restored:
    step: int  # the lockstep step the checkpoint was taken at
    episodes: int  # episodes this agent had finished by then
    replay_rows: int  # transitions restored into the replay buffer (0 when there was no file)


class NodePersistence:
    def __init__(
        self, node_dir: Path, *, checkpoint_every_steps: int, replay_save_every_steps: int, keep_replay: bool = True
    ) -> None:
        self.checkpoint_path = node_dir / "checkpoints" / "latest.pt"
        self.replay_path = node_dir / "replay" / "buffer.npz"
        self.checkpoint_every_steps = checkpoint_every_steps
        self.replay_save_every_steps = replay_save_every_steps
        # False for a node that learns nothing (agents.learning: false): no buffer is saved or restored.
        self.keep_replay = keep_replay
        self.last_checkpoint_step = 0
        self.last_replay_save_step = 0

    def maybe_save(self, step: int, learner: PersistentLearner, episodes: int) -> None:
        """Save whichever of the two files is due at `step`."""
        if step - self.last_checkpoint_step >= self.checkpoint_every_steps:
            self.save_checkpoint(step, learner, episodes)
        if step - self.last_replay_save_step >= self.replay_save_every_steps:
            self.save_replay(step, learner)

    def save_all(self, step: int, learner: PersistentLearner, episodes: int) -> None:
        self.save_checkpoint(step, learner, episodes)
        self.save_replay(step, learner)

    def save_checkpoint(self, step: int, learner: PersistentLearner, episodes: int) -> None:
        save_checkpoint(self.checkpoint_path, {"learner": learner.state_dict(), "step": step, "episodes": episodes})
        self.last_checkpoint_step = step

    def save_replay(self, step: int, learner: PersistentLearner) -> None:
        if not self.keep_replay:
            return
        learner.replay.save(self.replay_path)
        self.last_replay_save_step = step

    def restore(self, learner: PersistentLearner) -> Restored | None:
        """Load the checkpoint and the replay buffer into `learner`, if they exist; None when
        there is no checkpoint (a fresh start; a replay file alone is still restored)."""
        checkpoint = load_checkpoint(self.checkpoint_path)
        if checkpoint is not None:
            learner.load_state_dict(checkpoint["learner"])
            log.info("restored checkpoint of step %d", checkpoint["step"])
        replay_rows = 0
        if self.keep_replay and self.replay_path.exists():
            learner.replay.restore(self.replay_path)
            replay_rows = len(learner.replay)
            log.info("restored %d replay transitions", replay_rows)
        if checkpoint is None:
            return None
        return Restored(step=int(checkpoint["step"]), episodes=int(checkpoint["episodes"]), replay_rows=replay_rows)

    def load_initial_checkpoint(self, learner: PersistentLearner, path: Path) -> bool:
        """Start from another run's checkpoint (agents.load_checkpoints); False when it is missing."""
        loaded = load_checkpoint(path)
        if loaded is None:
            return False
        learner.load_state_dict(loaded["learner"])
        return True
