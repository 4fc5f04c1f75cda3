"""Append-only JSON-lines files that hold whole lines or nothing, even when the disk fills.

`metrics.jsonl` and `events.jsonl` are read while they are written (`orchestrate status`, a
crashed run's post-mortem), so a reader must never see half a line. Each line is written with a
single `os.write` of the encoded line on an `O_APPEND` descriptor: no user-space buffer can split
it. If the file system refuses part of it (ENOSPC, EDQUOT, EIO after a partial write), the file
is truncated back to its length before the write, so the last line on disk is still whole, and
`LineWriteError` says which file and why. After such an error the writer refuses further lines:
a run whose disk is full stops cleanly instead of logging around holes.

`FileWriteError` (LineWriteError is one) is what every write of a node's own files raises when
the file system refuses it (metrics, checkpoint, replay buffer: `agent_node/persistence.py`'s
`atomic_write` raises it too): its message names the file and the cause in words, so the node
logs one line and tells the orchestrator why it stops, instead of dying with a traceback.

Reading them: `json_object` is the one parse of a line (a torn or non-object line is skipped, not
fatal) and `latest_values` the one read of the newest values in a file's tail (`orchestrate
status`, a restarted env server's own metrics).
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class FileWriteError(OSError):
    """A file of the run could not be written; `strerror` names the file and the cause
    ("cannot write to PATH: no space left on its file system"), `errno` is the system's."""

    @classmethod
    def of(cls, path: str | os.PathLike[str], error: OSError) -> "FileWriteError":
        return cls(error.errno, f"cannot write to {path}: {describe_os_error(error)}")

    @property
    def disk_full(self) -> bool:
        return self.errno in DISK_FULL_ERRNOS


def describe_os_error(error: OSError) -> str:
    """The cause of a failed write in words: the same for ENOSPC and EDQUOT on every path."""
    if error.errno in DISK_FULL_ERRNOS:
        return "no space left on its file system"
    return error.strerror or str(error)


class LineWriteError(FileWriteError):
    """A line could not be appended; the message names the file and the cause."""


class LineFile:
    """One append-only file of whole lines. Not thread-safe: callers that share it hold a lock."""

    def __init__(self, path: str | Path, mode: int = 0o600) -> None:
        self.path = Path(path)
        self.failed: LineWriteError | None = None
        try:
            self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, mode)
        except OSError as error:
            raise LineWriteError(error.errno, f"cannot open {self.path} for writing: {error.strerror}") from None

    def append(self, line: str) -> None:
        """Append `line` (a newline is added) whole, or raise LineWriteError leaving the file as it was."""
        if self.failed is not None:
            raise self.failed
        if self._fd is None:
            raise LineWriteError(errno.EBADF, f"{self.path} is closed")
        data = (line + "\n").encode("utf-8")
        size_before = os.fstat(self._fd).st_size
        try:
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # a short write: the disk filled mid-line
        except OSError as error:
            try:
                os.ftruncate(self._fd, size_before)  # drop the torn tail, if any
            except OSError:
                pass
            self.failed = LineWriteError.of(self.path, error)
            raise self.failed from None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def json_object(line: str | bytes) -> dict[str, Any] | None:
    """The JSON object a line holds; None for a torn line (a writer killed mid-write, or the first
    line of a tail cut by a seek) or a line that holds anything else: readers skip those."""
    try:
        record = json.loads(line)
    except ValueError:  # JSONDecodeError, or bytes that are not UTF-8
        return None
    return record if isinstance(record, dict) else None


def latest_values(path: str | Path, keys: tuple[str, ...], max_bytes: int = 262144) -> dict[str, Any]:
    """For each key, its value in the last JSON line (within the file's last `max_bytes`) that has
    it; a key no line there has is left out, and a missing file gives {}.

    Metrics lines differ in what they carry (a step line, an episode line, ...), so the latest
    step and the latest episode return usually come from different lines.
    """
    try:
        with open(path, "rb") as file:
            file.seek(0, os.SEEK_END)
            file.seek(max(0, file.tell() - max_bytes))
            tail = file.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return {}
    found: dict[str, Any] = {}
    for line in reversed(tail.splitlines()):
        record = json_object(line)
        if record is not None:
            for key in keys:
                if key not in found and key in record:
                    found[key] = record[key]
        if len(found) == len(keys):
            break
    return found
