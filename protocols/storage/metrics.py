"""Metrics of one node: JSON lines in `nodes/<id>/metrics.jsonl`, mirrored to TensorBoard.

Each line is `{"step": lockstep step, "t": unix time, "<namespace>/<name>": value, ...}`:
`env/episode_return` once per finished episode, learner and protocol scalars periodically.
Each line is one `os.write` on an O_APPEND descriptor (protocols/storage/jsonlines.py), so readers never
see half a line; when the disk fills, `write` raises `LineWriteError` naming the file and leaves
the file's last line whole.

Agents and the env server write through this one class. It lives in `protocols/` and imports
neither torch nor TensorBoard when the module loads: the TensorBoard mirror (tensorboardX's event
file writer) is imported only when a `tensorboard_dir` is given. The mirror writes in the node's
own thread, one event per record into a buffered file flushed every 10 s: tensorboardX's
`SummaryWriter` would hand each event to a writer thread through a multiprocessing queue (a
pickle, a pipe and two thread wake-ups per record; ~110 µs of CPU a record here against ~30).
When the disk refuses the mirror's file the log gets one line naming it and the cause, and the
mirror stops: it is a copy, and the node's own write to metrics.jsonl is what stops the node
with a clear reason.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections import defaultdict
from pathlib import Path

from protocols.storage.jsonlines import LineFile, LineWriteError, describe_os_error, latest_values

__all__ = ["MetricsWriter", "LineWriteError"]

log = logging.getLogger(__name__)


# How often the TensorBoard mirror's buffered events reach its file (what SummaryWriter's
# `flush_secs` was).
MIRROR_FLUSH_EVERY_S = 10.0


class MetricsWriter:
    def __init__(self, path: Path, tensorboard_dir: Path | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = LineFile(path)
        self._tensorboard = None
        self._tensorboard_dir = tensorboard_dir
        if tensorboard_dir is not None:
            # A light import (torch's writer would need tensorflow's tensorboard).
            from tensorboardX.event_file_writer import EventsWriter
            from tensorboardX.proto.event_pb2 import Event
            from tensorboardX.proto.summary_pb2 import Summary

            tensorboard_dir.mkdir(parents=True, exist_ok=True)
            self._tensorboard = EventsWriter(str(tensorboard_dir / "events"))
            self._event, self._summary = Event, Summary  # (imported here, once: a record every few steps)
            self._mirror_flushed = time.monotonic()
        # Scalars reported between two flushes are averaged (learner losses every update).
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)

    def write(self, step: int, values: dict[str, float]) -> None:
        now = time.time()
        record = {"step": step, "t": round(now, 3)}
        for key, value in values.items():
            if value is not None and math.isfinite(value):
                record[key] = float(value)
        self._file.append(json.dumps(record))
        if len(record) > 2 and self._tensorboard is not None:
            self._mirror(step, now, record)

    def _mirror(self, step: int, now: float, record: dict[str, float]) -> None:
        """The record's scalars as one TensorBoard event (one Summary with a value per key)."""
        summary = self._summary
        values = [summary.Value(tag=_tensorboard_tag(key), simple_value=value)
                  for key, value in record.items() if key not in ("step", "t")]
        try:
            self._tensorboard.write_event(self._event(wall_time=now, step=step, summary=summary(value=values)))
            if time.monotonic() - self._mirror_flushed >= MIRROR_FLUSH_EVERY_S:
                self._tensorboard.flush()
                self._mirror_flushed = time.monotonic()
        except OSError as error:
            self._drop_mirror(error)

    def _drop_mirror(self, error: OSError) -> None:
        """The disk refused the mirror's file: say so once, and write metrics.jsonl alone from now on."""
        log.warning("the TensorBoard mirror stopped writing %s: %s (metrics.jsonl is the record)",
                    self._tensorboard_dir, describe_os_error(error))
        try:
            self._tensorboard.close()  # what it still buffers cannot be written either
        except OSError:
            pass
        self._tensorboard = None

    def recent_value(self, key: str, tail_bytes: int = 1 << 16) -> float | None:
        """The value of `key` in the newest line that has it among the file's last `tail_bytes`
        (None where none has it): what a restarted node wrote just before it was killed."""
        return latest_values(self.path, (key,), tail_bytes).get(key)

    def accumulate(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            self._sums[key] += float(value)
            self._counts[key] += 1

    def flush_means(self, step: int) -> None:
        if self._sums:
            self.write(step, {key: self._sums[key] / self._counts[key] for key in self._sums})
        self._sums.clear()
        self._counts.clear()

    def close(self) -> None:
        """Close both files. Never raises: it runs while a node shuts down, maybe because its
        disk is full, and the TensorBoard mirror is a copy of what metrics.jsonl holds."""
        self._file.close()
        if self._tensorboard is not None:
            try:
                self._tensorboard.close()
            except OSError as error:
                self._drop_mirror(error)


def _tensorboard_tag(key: str) -> str:
    """`key` as a TensorBoard tag: characters outside letters, digits, `_`, `-`, `/` and `.`
    become `_`, and leading slashes go (what `add_scalar` does to a tag)."""
    return _NOT_IN_A_TAG.sub("_", key).lstrip("/")


_NOT_IN_A_TAG = re.compile(r"[^-/\w.]")
