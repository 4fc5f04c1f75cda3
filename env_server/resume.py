"""What an env server keeps on disk so that, restarted, it resumes the run; sans-IO except for one file.

The orchestrator may restart the env server (`faults.restart.roles: [env_server]`, or a scheduled
`restart` of it). The run then goes on where it stopped rather than from step 0: the restarted
server reads its `ResumePoint` from `nodes/<id>/resume.bin` and continues

- the lockstep step counter, which is also the run budget spent (`run.steps`): the next step it
  runs is the one after the last step it finished, so no step number is run twice;
- the episode counters (`episodes`, `last_return`) that its status reports;
- the evaluation schedule: evaluations are due by step number, so the schedule goes on by
  itself; `evaluations_completed` keeps the count, and an evaluation that was running when the
  server died (`evaluation_running`) is run again, from its start, before training resumes;
- `incarnation`: how many times the server has resumed; each incarnation resets its copies
  with a seed derived from it, so the resumed episodes are not a replay of the run's first ones.

The environment itself is not saved: PettingZoo environments cannot be checkpointed in general,
so a resumed server resets every copy and the episodes in flight are cut (the agents end them as
truncated; agent_node/transitions.py `TransitionAssembler.cut`).

**The file.** The point is saved after every training step, so it must be cheap and must never
be read half-written. `os.replace` of a fresh file costs ~0.65 ms here (measured at load 14), more
than a lockstep step, so the file instead holds two fixed slots of `SLOT_BYTES` and each save
overwrites the older one with a single `pwrite` (16 µs a save at load 5.5): a header (magic, sequence number, payload
length, CRC32 of the payload) and the JSON payload. Loading takes the valid slot with the highest
sequence number; a slot torn by a crash mid-write fails its CRC and the other slot, one step
older, is used (and said: `damaged`, a warning naming the file, the orchestrator's
`state_damaged` event). Saves are not fsynced: the point survives the kill of the process (the page
cache keeps it), which is what a restart recovers from; a crash of the whole machine may lose the
last steps, and then the run resumes from an older step.

**Never a silent step 0.** The file is created whole, by a rename, with its first
point in it, so a file on disk always held a valid slot: a file in which neither slot is valid
(cut short, overwritten, another program's) is damage, and `load` raises `DamagedStateError`
naming the file and what is wrong with each slot. The server then stops with
`EXIT_DAMAGED_STATE` and is not restarted (protocols/storage/durable_state.py), instead of running the
run's steps a second time from step 0. Only with `run.on_corrupt_state: start_fresh` does it
start the run again from step 0: the file is renamed `resume.bin.damaged` (kept, never written
over) and that is said like a fallback is. Either way `notice` (a `StateNotice`) carries what
happened to the server's `control.ready` and its metrics (`persistence/restored_from_step`,
`persistence/steps_lost`: the steps that may be run a second time, 1 at most after a torn slot).

**Its format.** Each payload carries `format` (`RESUME_FORMAT`); a payload written before the
field existed has format 1's fields and reads as format 1. A whole slot (magic and CRC right)
of another format is refused by name ("written in resume format 2; this server reads format
1"), not taken for damage, and when the run starts fresh over it (`start_fresh`) the step it
had reached is read from it, so the steps run again are counted (`steps_lost`); only over a
file with no whole slot are they not known.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

from protocols.storage.durable_state import DamagedStateError, StateNotice
from protocols.storage.jsonlines import FileWriteError

log = logging.getLogger("env_server")

RESUME_FILENAME = "resume.bin"
SLOT_BYTES = 512
_MAGIC = b"PRSM"
_HEADER = struct.Struct("<4sQII")  # magic, sequence number, payload length, CRC32 of the payload
RESUME_FORMAT = 1  # the payload's `format`; see the module docstring


@dataclass(frozen=True)
class ResumePoint:
    """Where the run stood after the env server's last finished step (see the module docstring)."""

    step: int  # lockstep training steps finished = the run budget spent; the next step to run
    episodes: int = 0  # episodes finished in the training copies
    last_return: float | None = None
    evaluations_completed: int = 0
    evaluation_running: bool = False  # died during an evaluation: it is run again from its start
    incarnation: int = 0  # 0: the first run of the server; each resume adds one


class ResumeFile:
    """The two-slot file of `ResumePoint`s. Not thread-safe (the server's loop is its one user)."""

    def __init__(self, path: str | os.PathLike[str], *, start_fresh: bool = False) -> None:
        self.path = Path(path)
        self.start_fresh = start_fresh  # run.on_corrupt_state: start_fresh (see the module docstring)
        self._fd: int | None = None
        self._sequence = 0  # of the newest slot on disk
        self.damaged: str | None = None  # set by `load` when it skipped a slot that failed its check
        self.notice: StateNotice | None = None  # the same, for the run (and a fresh start over a damaged file)

    def load(self) -> ResumePoint | None:
        """The newest valid point in the file; None when there is no file (a fresh run).
        `DamagedStateError` when the file exists and neither slot is valid. When one slot is
        valid and the other was written but fails its check, `damaged` says so."""
        for leftover in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            leftover.unlink(missing_ok=True)  # a creation that a kill interrupted
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise DamagedStateError(self.path, f"cannot be read: {error.strerror or error}") from None
        if len(data) != 2 * SLOT_BYTES:
            raise DamagedStateError(self.path, f"{len(data)} bytes, where a resume file has {2 * SLOT_BYTES} (two slots)")
        best: tuple[int, ResumePoint] | None = None
        problems: dict[int, str] = {}
        steps_reached: list[int] = []  # of whole slots this server cannot use (another format)
        for slot in (0, 1):
            raw = data[slot * SLOT_BYTES : (slot + 1) * SLOT_BYTES]
            decoded = _decode_slot(raw)
            if isinstance(decoded, str):
                if raw.count(0) != len(raw):  # an all-zero slot was never written: not damage
                    problems[slot] = decoded
                    if (step := _step_of_whole_slot(raw)) is not None:
                        steps_reached.append(step)
            elif best is None or decoded[0] > best[0]:
                best = decoded
        if best is None:
            error = DamagedStateError(
                self.path, "no valid resume point in either slot (" + "; ".join(
                    f"slot {slot}: {why}" for slot, why in sorted(problems.items())) + ")",
            )
            if not self.start_fresh:
                raise error
            return self._start_fresh(error, max(steps_reached) if steps_reached else None)
        if problems:
            (slot, why), = problems.items()
            self.damaged = (f"{self.path}: slot {slot} {why} (torn by a kill mid-save, or damaged); resumed from the "
                            f"other slot, step {best[1].step}, which may be one step older than the server reached")
            log.warning("%s", self.damaged)
            # The damaged slot was the older one when its header still says so; else it may have
            # held the step after the one resumed (saves alternate slots, one per step at most).
            header = data[slot * SLOT_BYTES : slot * SLOT_BYTES + _HEADER.size]
            older = header[:4] == _MAGIC and _HEADER.unpack(header)[1] < best[0]
            self.notice = StateNotice(what=self.damaged, restored_from_step=best[1].step, steps_lost=0 if older else 1,
                                      damaged_files=1)
        self._sequence = best[0]
        return best[1]

    def _start_fresh(self, error: DamagedStateError, step_reached: int | None) -> None:
        """run.on_corrupt_state: start_fresh with no valid slot: set the file aside, start at step 0.
        `step_reached`: the step a whole slot of another format had reached (None: not known)."""
        kept_as = self.path.with_name(self.path.name + ".damaged")
        try:
            os.replace(self.path, kept_as)
        except OSError as rename_error:  # it cannot be moved out of the way: it is not written over either
            raise DamagedStateError(self.path, f"{error.why}; and it cannot be set aside to start fresh: {rename_error}") from None
        what = (f"no good resume point: {error}, kept as {kept_as.name}; the run started again from step 0 "
                "(run.on_corrupt_state: start_fresh)")
        log.error("%s", what)
        # How far the run had gone is known only from a whole slot of another format.
        self.notice = StateNotice(what=what, restored_from_step=0, steps_lost=step_reached, damaged_files=1, started_fresh=True)
        return None

    def save(self, point: ResumePoint) -> None:
        """Overwrite the older slot with `point` (one pwrite; the first save creates the file
        whole, by a rename). A refusing file system raises `FileWriteError` naming the file."""
        payload = json.dumps({"format": RESUME_FORMAT, **asdict(point)}, separators=(",", ":")).encode()
        if _HEADER.size + len(payload) > SLOT_BYTES:
            raise ValueError(f"a resume point of {len(payload)} bytes does not fit a {SLOT_BYTES}-byte slot: {point}")
        self._sequence += 1
        record = (_HEADER.pack(_MAGIC, self._sequence, len(payload), zlib.crc32(payload)) + payload).ljust(SLOT_BYTES, b"\0")
        offset = (self._sequence % 2) * SLOT_BYTES
        try:
            if self._fd is None and not self.path.exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._create(bytes(offset) + record + bytes(SLOT_BYTES - offset))
                self._fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
                return
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
            if os.pwrite(self._fd, record, offset) != SLOT_BYTES:
                raise OSError(28, os.strerror(28))  # a short write: the disk filled mid-slot
        except OSError as error:
            raise FileWriteError.of(self.path, error) from None

    def _create(self, contents: bytes) -> None:
        # Whole or not at all: a file that exists always held a valid slot (see `load`).
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            if os.write(descriptor, contents) != len(contents):
                raise OSError(28, os.strerror(28))
            os.close(descriptor)
            descriptor = -1
            os.replace(temporary, self.path)
        except OSError:
            if descriptor >= 0:
                os.close(descriptor)
            temporary.unlink(missing_ok=True)
            raise

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _decode_slot(slot: bytes) -> tuple[int, ResumePoint] | str:
    """(sequence number, point) of a whole, valid slot; what is wrong with it otherwise."""
    whole = _whole_payload(slot)
    if isinstance(whole, str):
        return whole
    sequence, fields = whole
    if not isinstance(fields, dict):
        return f"holds a {type(fields).__name__}, not a resume point"
    written_in = fields.pop("format", 1)  # before the field existed: format 1's fields
    if written_in != RESUME_FORMAT:
        return f"was written in resume format {written_in!r}; this server reads format {RESUME_FORMAT}"
    try:
        return sequence, ResumePoint(**fields)
    except TypeError as error:
        return f"holds a point this server cannot read ({error})"


def _whole_payload(slot: bytes) -> tuple[int, object] | str:
    """(sequence number, decoded JSON payload) of a slot whose magic and CRC are right; what is
    wrong with it otherwise."""
    if len(slot) < _HEADER.size:
        return f"is {len(slot)} bytes, shorter than its header"
    magic, sequence, length, crc = _HEADER.unpack_from(slot)
    payload = slot[_HEADER.size : _HEADER.size + length]
    if magic != _MAGIC:
        return f"does not start with {_MAGIC!r}"
    if len(payload) != length or zlib.crc32(payload) != crc:
        return "fails its CRC32"
    try:
        return sequence, json.loads(payload)
    except ValueError as error:
        return f"holds a payload that is not JSON ({error})"


def _step_of_whole_slot(slot: bytes) -> int | None:
    """The `step` a whole slot records, whatever its format (None: not a whole slot, or no int step)."""
    whole = _whole_payload(slot)
    if isinstance(whole, str) or not isinstance(whole[1], dict):
        return None
    step = whole[1].get("step")
    return step if type(step) is int and step >= 0 else None
