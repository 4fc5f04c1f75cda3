"""What an agent node keeps on disk: its learner checkpoint and its replay buffer.

Every file is written whole through `protocols.storage.files.atomic_write` and sealed (a trailer with a
CRC32 that `read_sealed` checks before anything parses the bytes): a node killed mid-save leaves
the previous file or the new one, and a file damaged later is refused with a `DamagedStateError`
naming it. Both the checkpoint (`save_checkpoint`) and the replay buffer (`ReplayBuffer.save`,
which keeps its own file layout) write through it.

**Generations.** A node keeps its last `keep` good saves of each file (`agents.keep_generations`,
default 2), named by the lockstep step they hold (`checkpoints/step-000000120.pt`,
`replay/step-000000120.npz`); `checkpoints/latest.pt` and `replay/buffer.npz` are symbolic links
to the newest. On restore the newest generation that verifies is used; the newer ones that
failed are renamed `<name>.damaged` (kept for the user, never pruned, never written over) and
the fallback is reported (`Restored.damaged`, the steps of learning lost). When no generation of
a file verifies, `restore` raises `DamagedStateError` naming them, leaves them as they are, and
the node stops (it does not start from step 0 over the files it could not read; started again,
it refuses them again). Unless the run says `run.on_corrupt_state: start_fresh`: then every
generation that failed is renamed `<name>.damaged` (kept, never written over) and the node starts
from scratch, saying so (`Generations.started_fresh`, `describe_fresh_start`; the orchestrator
puts it in the report's headline).

The same `Generations` keep the learner node's checkpoint and joint replay
(agent_node/ctde/learner_node.py) and the goal supervisor's checkpoint (agent_node/goals/supervisor.py);
the recorded datasets' chunks and manifests are sealed with the same trailer
(agent_node/offline/datasets.py).

`NodePersistence` is the node's bookkeeping around those two files: when each is due (every
`checkpoint_every_steps` / `replay_save_every_steps` lockstep steps), saving both at the end,
and restoring them at start. It writes nothing before `restore` has succeeded: a node that
failed before or during its restore must not replace its saved state with an untrained one.
It is handed the learner and never reaches into the replay buffer's internals: the buffer saves
and restores itself.

This module imports no torch at module level: torch is imported where a checkpoint is written
or read.
"""

from __future__ import annotations

import io
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, TypeVar

from protocols.storage.durable_state import DamagedStateError, StateNotice
from protocols.storage.files import atomic_write, read_sealed
from protocols.storage.jsonlines import FileWriteError

log = logging.getLogger("agent_node.persistence")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    import torch  # here, not at the top: torch-free nodes import this module

    # Serialized in memory first: torch.save into a file that the disk refuses fails with a
    # RuntimeError from its zip writer ("unexpected pos 704 vs 598", measured on a full tmpfs)
    # that no longer says ENOSPC; a plain write of the bytes fails with the system's errno.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, lambda file: file.write(buffer.getbuffer()), sealed=True)


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint at `path`, None when there is none; `DamagedStateError` when it fails its
    seal or torch cannot read what it holds."""
    if not path.exists():
        return None
    payload = read_sealed(path)
    import torch

    try:
        # weights_only: a checkpoint is data; unpickling arbitrary objects is never needed.
        loaded = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - whatever torch says, the file is named with it
        raise DamagedStateError(path, f"sealed, but torch cannot load it: {error}") from None
    if not isinstance(loaded, dict):
        raise DamagedStateError(path, f"holds a {type(loaded).__name__}, not a checkpoint dict")
    return loaded


T = TypeVar("T")


@dataclass(frozen=True)
class Damaged:
    """A generation that failed verification on restore, renamed to `kept_as`."""

    path: Path
    step: int
    why: str
    kept_as: Path


class Generations:
    """The last `keep` sealed saves of one file, `<directory>/step-<step><suffix>`, with `latest`
    a symbolic link to the newest (see the module docstring)."""

    _NAME = re.compile(r"step-(\d+)(\.[a-z]+)$")

    def __init__(self, directory: Path, suffix: str, latest: str, keep: int) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1 generation, got {keep}")
        self.directory = directory
        self.suffix = suffix
        self.latest = directory / latest
        self.keep = keep
        # Set by `restore_newest(..., start_fresh=True)` when no generation verified: the ones set
        # aside, newest first (the node starts from scratch; see the module docstring).
        self.started_fresh: list[Damaged] = []

    def path_of(self, step: int) -> Path:
        return self.directory / f"step-{step:09d}{self.suffix}"

    def steps(self) -> list[int]:
        """The steps of the generations on disk, newest first (damaged ones, renamed, excluded)."""
        if not self.directory.is_dir():
            return []
        found = []
        for entry in self.directory.iterdir():
            match = self._NAME.fullmatch(entry.name)
            if match and match.group(2) == self.suffix:
                found.append(int(match.group(1)))
        return sorted(found, reverse=True)

    def save(self, step: int, save_at: Callable[[Path], None]) -> None:
        """Have `save_at(path)` write generation `step` (sealed, atomically), point `latest` at
        it, drop the oldest beyond `keep`."""
        save_at(self.path_of(step))
        self._point_latest_at(self.path_of(step))
        for old in self.steps()[self.keep :]:
            try:
                self.path_of(old).unlink()
            except FileNotFoundError:
                pass

    def _point_latest_at(self, path: Path) -> None:
        # A new link under a temporary name renamed over the old one: readers see one or the other.
        temporary = self.directory / f".{self.latest.name}.{os.getpid()}.tmp"
        try:
            try:
                temporary.unlink()
            except FileNotFoundError:
                pass
            os.symlink(path.name, temporary)
            os.replace(temporary, self.latest)
        except OSError as error:
            raise FileWriteError.of(self.latest, error) from None

    def remove_leftover_temporaries(self) -> list[Path]:
        """Delete the temporary files of saves that a kill interrupted (`.<name>.*.tmp`)."""
        removed = []
        if self.directory.is_dir():
            for entry in self.directory.glob(".*.tmp"):
                try:
                    entry.unlink()
                    removed.append(entry)
                except OSError as error:
                    log.warning("could not remove the leftover temporary file %s: %s", entry, error)
        return removed

    def restore_newest(self, read: Callable[[Path], T], *, start_fresh: bool = False) -> tuple[int, T, list[Damaged]] | None:
        """(step, what `read` made of it, the damaged generations newer than it) for the newest
        generation that `read` accepts; None when there is none on disk. The generations `read`
        refused with `DamagedStateError` are then renamed `<name>.damaged`, out of the way of
        the saves to come. When every one is refused, `DamagedStateError` names them all and
        they stay as they are: the next attempt refuses them again rather than starting fresh.
        With `start_fresh` (run.on_corrupt_state) they are renamed instead, listed in
        `started_fresh`, and None is returned: the caller starts from scratch and says so."""
        refused: list[tuple[int, DamagedStateError]] = []
        for step in self.steps():
            path = self.path_of(step)
            try:
                value = read(path)
            except DamagedStateError as error:
                log.error("DAMAGED: %s", error)
                refused.append((step, error))
                continue
            return step, value, [self._set_aside(step, error) for step, error in refused]
        if refused and start_fresh:
            self.started_fresh = [self._set_aside(step, error) for step, error in refused]
            log.error("no good generation left in %s: starting from scratch (run.on_corrupt_state: start_fresh)", self.directory)
            return None
        if refused:
            newest = refused[0][1]
            older = "; ".join(f"{error.path.name}: {error.why}" for _, error in refused[1:]) or "none"
            raise DamagedStateError(
                newest.path, f"{newest.why}; no good generation is left in {self.directory} (older ones: {older})"
            )
        return None

    def _set_aside(self, step: int, error: DamagedStateError) -> Damaged:
        kept_as = error.path.with_name(error.path.name + ".damaged")
        try:
            os.replace(error.path, kept_as)
        except OSError as rename_error:
            log.warning("could not rename the damaged %s: %s", error.path, rename_error)
            kept_as = error.path
        return Damaged(path=error.path, step=step, why=error.why, kept_as=kept_as)


def describe_fresh_start(damaged: list[Damaged] | tuple[Damaged, ...], lost: int, unit: str = "steps of learning") -> str:
    """One line for the log, the orchestrator and the report: a node that found no good generation
    of its saved state and started from scratch (run.on_corrupt_state: start_fresh)."""
    files = "; ".join(f"{d.path} ({d.why}), kept as {d.kept_as.name}" for d in damaged)
    return (f"no good generation of its saved state: {files}; started from scratch (run.on_corrupt_state: "
            f"start_fresh): {lost} {unit} lost")


def describe_fallback(damaged: list[Damaged] | tuple[Damaged, ...], restored: str, steps_lost: int,
                      unit: str = "steps of learning") -> str:
    """One line for the log, the orchestrator and the report: a node that skipped damaged
    generations and restored older ones (`restored`: what it restored, e.g. "checkpoint of step 10")."""
    files = "; ".join(f"{d.path} ({d.why}), kept as {d.kept_as.name}" for d in damaged)
    return f"damaged state skipped: {files}; restored the older generation: {restored}; {steps_lost} {unit} lost"


def steps_lost(damaged: list[Damaged] | tuple[Damaged, ...], restored_step: int, suffix: str) -> int:
    """Steps lost to the damaged generations of the files ending in `suffix`: the newest damaged
    one's step minus the step restored (0 when none of them was damaged)."""
    newer = [d.step for d in damaged if d.path.suffix == suffix]
    return max(0, max(newer) - restored_step) if newer else 0


def state_notice(skipped: list[Damaged] | tuple[Damaged, ...], fresh: list[Damaged] | tuple[Damaged, ...], *,
                 restored_step: int, restored: str, primary_suffix: str, unit: str = "steps of learning") -> StateNotice | None:
    """What a node tells the run after a restore (protocols/storage/durable_state.py): `skipped`, the
    damaged generations it fell back past; `fresh`, those of files with no good generation that
    it set aside to start them from scratch; `restored`, what it restored, for the line. Steps
    lost are counted on the files ending in `primary_suffix` (the checkpoint: what was learned).
    None when nothing was damaged."""
    if not skipped and not fresh:
        return None
    fresh_primary = [d.step for d in fresh if d.path.suffix == primary_suffix]
    lost = max(fresh_primary) if fresh_primary else steps_lost(skipped, restored_step, primary_suffix)
    lines = [describe_fallback(skipped, restored, steps_lost(skipped, restored_step, primary_suffix), unit)] if skipped else []
    lines += [describe_fresh_start(fresh, lost, unit)] if fresh else []
    return StateNotice(what="; ".join(lines), restored_from_step=0 if fresh_primary else restored_step, steps_lost=lost,
                       damaged_files=len(skipped) + len(fresh), started_fresh=bool(fresh))


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
    # Generations that failed verification and were skipped (newest first), checkpoints and replay.
    damaged: tuple[Damaged, ...] = ()
    replay_step: int | None = None  # the step of the replay generation restored
    # What the node's capabilities saved beside the learner (agent_node/capability.py), by name.
    capabilities: Mapping[str, Any] = field(default_factory=dict)

    @property
    def steps_lost(self) -> int:
        """Lockstep steps of learning lost to damaged checkpoints: the newest damaged one's step
        minus the step restored (0 when nothing was damaged)."""
        return steps_lost(self.damaged, self.step, ".pt")

    def describe_damage(self) -> str:
        """One line for the log, the orchestrator and the report; empty when nothing was damaged."""
        if not self.damaged:
            return ""
        return describe_fallback(self.damaged, self.what_was_restored(), self.steps_lost)

    def what_was_restored(self) -> str:
        return f"checkpoint of step {self.step}" + ("" if self.replay_step is None else f", replay of step {self.replay_step}")


class NodePersistence:
    def __init__(
        self,
        node_dir: Path,
        *,
        checkpoint_every_steps: int,
        replay_save_every_steps: int,
        keep_replay: bool = True,
        keep_generations: int = 2,
        start_fresh: bool = False,
    ) -> None:
        self.start_fresh = start_fresh  # run.on_corrupt_state: start_fresh (see the module docstring)
        self.checkpoints = Generations(node_dir / "checkpoints", ".pt", "latest.pt", keep_generations)
        self.replays = Generations(node_dir / "replay", ".npz", "buffer.npz", keep_generations)
        self.checkpoint_path = self.checkpoints.latest
        self.replay_path = self.replays.latest
        self.checkpoint_every_steps = checkpoint_every_steps
        self.replay_save_every_steps = replay_save_every_steps
        # False for a node that learns nothing (agents.learning: false): no buffer is saved or restored.
        self.keep_replay = keep_replay
        self.last_checkpoint_step = 0
        self.last_replay_save_step = 0
        # Nothing is written until `restore` has run to its end (see the module docstring).
        self.may_write = False
        # What `restore` set aside to start from scratch (run.on_corrupt_state: start_fresh): the
        # generations of a file none of which verified. A file that did verify beside it (a
        # checkpoint whose replay is gone, or a replay whose checkpoint is) is still restored.
        self.fresh_start: tuple[Damaged, ...] = ()
        self._refused: set[str] = set()  # what `_writable` refused and said so (once each)
        # The capabilities' states to save beside the learner's (name -> state; none: nothing
        # is added, so a run without such capabilities writes the checkpoint it always did).
        self.capability_states: Callable[[], dict[str, Any]] = dict

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
        if not self._writable("checkpoint"):
            return
        state = {"learner": learner.state_dict(), "step": step, "episodes": episodes}
        if capabilities := self.capability_states():
            state["capabilities"] = capabilities
        self.checkpoints.save(step, lambda path: save_checkpoint(path, state))
        self.last_checkpoint_step = step

    def save_replay(self, step: int, learner: PersistentLearner) -> None:
        if not self.keep_replay or not self._writable("replay buffer"):
            return
        self.replays.save(step, learner.replay.save)  # the buffer writes itself, sealed
        self.last_replay_save_step = step

    def _writable(self, what: str) -> bool:
        if not self.may_write and what not in self._refused:
            self._refused.add(what)
            log.warning("not saving the %s: this node never restored its saved state, which stays as it is", what)
        return self.may_write

    def restore(self, learner: PersistentLearner) -> Restored | None:
        """Load the newest good checkpoint and replay generations into `learner`, if there are
        any; None when there is no checkpoint (a fresh start; a replay file alone is still
        restored). `DamagedStateError` when files exist and none verifies, unless `start_fresh`:
        then those are set aside and listed in `fresh_start`."""
        for generations in (self.checkpoints, self.replays):
            for leftover in generations.remove_leftover_temporaries():
                log.info("removed %s, left by a save that was interrupted", leftover)
        checkpoint = self.checkpoints.restore_newest(_read_checkpoint, start_fresh=self.start_fresh)
        damaged: list[Damaged] = []
        if checkpoint is not None:
            step, state, skipped = checkpoint
            damaged += skipped
            learner.load_state_dict(state["learner"])
            log.info("restored checkpoint of step %d", step)
        replay_rows, replay_step = 0, None
        if self.keep_replay:
            replay = self.replays.restore_newest(lambda path: _restore_replay(learner.replay, path), start_fresh=self.start_fresh)
            if replay is not None:
                replay_step, _, skipped = replay
                damaged += skipped
                replay_rows = len(learner.replay)
                log.info("restored %d replay transitions (step %d)", replay_rows, replay_step)
        if checkpoint is not None and self.keep_replay and replay_rows == 0:
            # The buffer is saved less often than the weights: the checkpoint counts rows the
            # buffer no longer holds, and the gradient steps owed for them cannot be taken.
            owed = learner.gradient_steps_due()
            if owed > 0 and hasattr(learner, "forgive_gradient_steps"):
                learner.forgive_gradient_steps(owed)
                log.warning("the replay buffer was lost with the process: %d gradient steps owed for its rows are forgiven", owed)
        self.fresh_start = tuple(self.checkpoints.started_fresh + self.replays.started_fresh)
        self.may_write = True
        if checkpoint is None:
            if damaged:
                log.error("restored the replay of step %s after skipping damaged files; no checkpoint", replay_step)
            return None
        step, state, _ = checkpoint
        restored = Restored(step=step, episodes=int(state["episodes"]), replay_rows=replay_rows,
                            damaged=tuple(damaged), replay_step=replay_step, capabilities=state.get("capabilities", {}))
        return restored

    def notice(self, restored: Restored | None) -> StateNotice | None:
        """What to tell the run about the restore that returned `restored` (None: nothing damaged)."""
        skipped = () if restored is None else restored.damaged
        what = "nothing" if restored is None else restored.what_was_restored()
        return state_notice(skipped, self.fresh_start, restored_step=0 if restored is None else restored.step,
                            restored=what, primary_suffix=self.checkpoints.suffix)

    def load_initial_checkpoint(self, learner: PersistentLearner, path: Path) -> bool:
        """Start from another run's checkpoint (agents.load_checkpoints); False when it is missing."""
        loaded = load_checkpoint(path)
        if loaded is None:
            return False
        learner.load_state_dict(loaded["learner"])
        return True


def _read_checkpoint(path: Path) -> dict[str, Any]:
    state = load_checkpoint(path)
    if state is None:  # removed between the listing and the read
        raise DamagedStateError(path, "disappeared while it was being restored")
    missing = {"learner", "step", "episodes"} - set(state)
    if missing:
        raise DamagedStateError(path, f"a checkpoint without {sorted(missing)}")
    return state


def _restore_replay(replay: SavesItself, path: Path) -> None:
    try:
        replay.restore(path)
    except (ValueError, KeyError, OSError) as error:  # sealed, yet not a buffer this node can take
        raise DamagedStateError(path, f"sealed, but not a replay buffer this node can restore: {error}") from None
