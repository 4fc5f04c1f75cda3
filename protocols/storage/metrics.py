"""Metrics of one node: JSON lines in `nodes/<id>/metrics.jsonl`, mirrored to TensorBoard.

Each line is `{"step": lockstep step, "t": unix time, "<namespace>/<name>": value, ...}`:
`env/episode_return` once per finished episode, learner and protocol scalars periodically.
Each line is one `os.write` on an O_APPEND descriptor (protocols/storage/jsonlines.py), so readers never
see half a line; when the disk fills, `write` raises `LineWriteError` naming the file and leaves
the file's last line whole.

Agents and the env server write through this one class. It lives in `protocols/` and imports
neither torch nor TensorBoard when the module loads: the TensorBoard mirror (tensorboardX) is
imported only when a `tensorboard_dir` is given. tensorboardX writes its files from a thread of
its own; when the disk refuses a write that thread dies, and instead of Python's traceback the log
gets one line naming the directory and the cause (`_one_line_when_the_mirror_fails`): the mirror
is a copy, and the node's own write to metrics.jsonl is what stops it with a clear reason.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections import defaultdict
from pathlib import Path

from protocols.storage.jsonlines import LineFile, LineWriteError, describe_os_error, latest_values

__all__ = ["MetricsWriter", "LineWriteError"]

log = logging.getLogger(__name__)


class MetricsWriter:
    def __init__(self, path: Path, tensorboard_dir: Path | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = LineFile(path)
        self._tensorboard = None
        self._tensorboard_dir = tensorboard_dir
        self._mirror_threads: list[threading.Thread] = []
        if tensorboard_dir is not None:
            from tensorboardX import SummaryWriter  # a light import; torch's writer needs tensorflow's tensorboard
            from tensorboardX.proto.summary_pb2 import Summary

            threads_before = set(threading.enumerate())
            # An unbounded queue (max_queue 0): a scalar never waits for the writer thread, which
            # a full disk kills; a bounded one, full when it died, would block this node for good.
            self._tensorboard = SummaryWriter(str(tensorboard_dir), max_queue=0, flush_secs=10)
            self._summary = Summary  # (imported here, once: a record is written every few steps)
            # That thread: once it is dead the mirror is dropped (`_mirror_alive`).
            self._mirror_threads = [thread for thread in threading.enumerate()
                                    if thread not in threads_before and _is_tensorboard_thread(thread)]
            _one_line_when_the_mirror_fails()
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
        if len(record) > 2 and self._tensorboard is not None and self._mirror_alive():
            self._mirror(step, now, record)

    def _mirror(self, step: int, now: float, record: dict[str, float]) -> None:
        """The record's scalars as one TensorBoard event (one Summary with a value per key).
        `add_scalar` makes an event per scalar, and tensorboardX hands each event to its writer
        thread through a multiprocessing queue (a pickle and a pipe write each): for the main
        job's agents, one event per record costs about 40% of the CPU of one per scalar."""
        summary = self._summary
        values = [summary.Value(tag=_tensorboard_tag(key), simple_value=value)
                  for key, value in record.items() if key not in ("step", "t")]
        self._tensorboard.file_writer.add_summary(summary(value=values), step, now)

    def recent_value(self, key: str, tail_bytes: int = 1 << 16) -> float | None:
        """The value of `key` in the newest line that has it among the file's last `tail_bytes`
        (None where none has it): what a restarted node wrote just before it was killed."""
        return latest_values(self.path, (key,), tail_bytes).get(key)

    def _mirror_alive(self) -> bool:
        """Whether the TensorBoard mirror's writer thread still runs; once it died (the disk
        refused its file: one log line says so) the mirror is dropped for the rest of the run."""
        if all(thread.is_alive() for thread in self._mirror_threads):
            return True
        self._abandon_tensorboard()
        self._tensorboard = None
        return False

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
        if self._tensorboard is not None and self._mirror_alive():
            try:
                self._tensorboard.close()
            except OSError as error:
                log.warning("the TensorBoard files in %s were not all written: %s",
                            self._tensorboard_dir, describe_os_error(error))
                self._abandon_tensorboard()

    def _abandon_tensorboard(self) -> None:
        """The disk refused the mirror (its thread died, or its close failed): what tensorboardX
        still holds cannot be written, so its writers are marked closed, or its own exit handler
        would try again and print the same failure as a traceback when the process ends.
        (tensorboardX's event writers keep that state in `_closed`; where a version does not, the
        handler runs as before.)"""
        for file_writer in (getattr(self._tensorboard, "all_writers", None) or {}).values():
            event_writer = getattr(file_writer, "event_writer", None)
            if event_writer is not None and hasattr(event_writer, "_closed"):
                event_writer._closed = True


_previous_excepthook = None  # set once the hook below is installed


def _one_line_when_the_mirror_fails() -> None:
    """Install (once per process) a `threading.excepthook` that turns the death of a tensorboardX
    writer thread by an OSError (a full disk, a file system gone read-only) into one log line;
    every other thread's exception goes to the hook that was there before."""
    global _previous_excepthook
    if _previous_excepthook is not None:
        return
    _previous_excepthook = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if isinstance(args.exc_value, OSError) and _is_tensorboard_thread(args.thread):
            # (its event file, where this tensorboardX version says: the thread's record writer)
            path = getattr(getattr(args.thread, "_record_writer", None), "_file_name", "its event file")
            log.warning("the TensorBoard mirror stopped writing %s: %s (metrics.jsonl is the record)",
                        path, describe_os_error(args.exc_value))
            return
        _previous_excepthook(args)

    threading.excepthook = hook


def _tensorboard_tag(key: str) -> str:
    """`key` as a TensorBoard tag: characters outside letters, digits, `_`, `-`, `/` and `.`
    become `_`, and leading slashes go (what `add_scalar` does to a tag)."""
    return _NOT_IN_A_TAG.sub("_", key).lstrip("/")


_NOT_IN_A_TAG = re.compile(r"[^-/\w.]")


def _is_tensorboard_thread(thread: threading.Thread | None) -> bool:
    return thread is not None and type(thread).__module__.startswith("tensorboardX")
