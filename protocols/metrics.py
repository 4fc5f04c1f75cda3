"""Metrics of one node: JSON lines in `nodes/<id>/metrics.jsonl`, mirrored to TensorBoard.

Each line is `{"step": lockstep step, "t": unix time, "<namespace>/<name>": value, ...}`:
`env/episode_return` once per finished episode, learner and protocol scalars periodically.
Each line is one `os.write` on an O_APPEND descriptor (protocols/jsonlines.py), so readers never
see half a line; when the disk fills, `write` raises `LineWriteError` naming the file and leaves
the file's last line whole.

Agents and the env server write through this one class. It lives in `protocols/` and imports
neither torch nor TensorBoard when the module loads: the TensorBoard mirror (tensorboardX) is
imported only when a `tensorboard_dir` is given.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict
from pathlib import Path

from protocols.jsonlines import LineFile, LineWriteError, describe_os_error

__all__ = ["MetricsWriter", "LineWriteError"]

log = logging.getLogger(__name__)


class MetricsWriter:
    def __init__(self, path: Path, tensorboard_dir: Path | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = LineFile(path)
        self._tensorboard = None
        self._tensorboard_dir = tensorboard_dir
        if tensorboard_dir is not None:
            from tensorboardX import SummaryWriter  # a light import; torch's writer needs tensorflow's tensorboard

            self._tensorboard = SummaryWriter(str(tensorboard_dir), flush_secs=10)
        # Scalars reported between two flushes are averaged (learner losses every update).
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)

    def write(self, step: int, values: dict[str, float]) -> None:
        record = {"step": step, "t": round(time.time(), 3)}
        for key, value in values.items():
            if value is not None and math.isfinite(value):
                record[key] = float(value)
                if self._tensorboard is not None:
                    self._tensorboard.add_scalar(key, float(value), step)
        self._file.append(json.dumps(record))

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
                log.warning("the TensorBoard files in %s were not all written: %s",
                            self._tensorboard_dir, describe_os_error(error))
