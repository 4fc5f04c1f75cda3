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
older, is used. Saves are not fsynced: the point survives the kill of the process (the page
cache keeps it), which is what a restart recovers from; a crash of the whole machine may lose the
last steps, and then the run resumes from an older step.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

from protocols.jsonlines import FileWriteError

log = logging.getLogger("env_server")

RESUME_FILENAME = "resume.bin"
SLOT_BYTES = 512
_MAGIC = b"PRSM"
_HEADER = struct.Struct("<4sQII")  # magic, sequence number, payload length, CRC32 of the payload


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

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._sequence = 0  # of the newest slot on disk

    def load(self) -> ResumePoint | None:
        """The newest valid point in the file; None when there is no file (a fresh run) or no
        valid slot (a server killed before its first save finished)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise FileWriteError.of(self.path, error) from None
        best: tuple[int, ResumePoint] | None = None
        for slot in (0, 1):
            decoded = _decode_slot(data[slot * SLOT_BYTES : (slot + 1) * SLOT_BYTES])
            if decoded is not None and (best is None or decoded[0] > best[0]):
                best = decoded
        if best is None:
            if data:
                log.warning("%s holds no valid resume point (%d bytes); starting from step 0", self.path, len(data))
            return None
        self._sequence = best[0]
        return best[1]

    def save(self, point: ResumePoint) -> None:
        """Overwrite the older slot with `point` (one pwrite). A refusing file system raises
        `FileWriteError` naming the file."""
        payload = json.dumps(asdict(point), separators=(",", ":")).encode()
        if _HEADER.size + len(payload) > SLOT_BYTES:
            raise ValueError(f"a resume point of {len(payload)} bytes does not fit a {SLOT_BYTES}-byte slot: {point}")
        self._sequence += 1
        record = _HEADER.pack(_MAGIC, self._sequence, len(payload), zlib.crc32(payload)) + payload
        try:
            if self._fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            written = os.pwrite(self._fd, record.ljust(SLOT_BYTES, b"\0"), (self._sequence % 2) * SLOT_BYTES)
            if written != SLOT_BYTES:
                raise OSError(28, os.strerror(28))  # a short write: the disk filled mid-slot
        except OSError as error:
            raise FileWriteError.of(self.path, error) from None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _decode_slot(slot: bytes) -> tuple[int, ResumePoint] | None:
    """(sequence number, point) of a whole, valid slot; None for an empty, torn or foreign one."""
    if len(slot) < _HEADER.size:
        return None
    magic, sequence, length, crc = _HEADER.unpack_from(slot)
    payload = slot[_HEADER.size : _HEADER.size + length]
    if magic != _MAGIC or len(payload) != length or zlib.crc32(payload) != crc:
        return None
    try:
        return sequence, ResumePoint(**json.loads(payload))
    except (ValueError, TypeError):  # a payload of another version of this file: not ours to read
        return None
