"""The live status view of `orchestrate up`: one row per node.

On a terminal it is a `rich` live table redrawn a few times a second; otherwise (CI, a pipe,
`live_view: off`) a plain summary line is printed every few seconds, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

PLAIN_EVERY_S = 10.0
# The ETA divides the steps left by the step rate over about this many recent seconds: long
# enough to smooth evaluation pauses, short enough to follow a run that speeds up once its
# learners' warm-up ends.
RATE_WINDOW_S = 60.0


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """Lockstep steps done out of the run's budget, and when the rest should be done."""

    def __init__(self, total_steps: int) -> None:
        self.total_steps = total_steps
        self._samples: list[tuple[float, int]] = []  # (monotonic time, step), the last RATE_WINDOW_S

    def observe(self, step: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self._samples and step <= self._samples[-1][1]:
            return  # no news (or a restarted server reporting an older step): the rate stands
        self._samples.append((now, step))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW_S:
            self._samples.pop(0)

    def describe(self) -> str:
        """`step 928 / 10000 (9%), ETA 3 min 12 s`; the ETA once two steps were seen apart."""
        if not self._samples:
            return f"step 0 / {self.total_steps}"
        step = self._samples[-1][1]
        text = f"step {step} / {self.total_steps} ({100 * step // self.total_steps}%)"
        (t0, s0), (t1, s1) = self._samples[0], self._samples[-1]
        if s1 > s0 and t1 > t0 and step < self.total_steps:
            text += f", ETA {format_duration((self.total_steps - step) * (t1 - t0) / (s1 - s0))}"
        return text


class StatusView:
    def __init__(self, nodes: dict[str, Any], *, live: str, run_name: str, total_steps: int) -> None:
        self.nodes = nodes
        self.run_name = run_name
        self.total_steps = total_steps
        self.console = Console(stderr=True)
        self.use_live = live == "on" or (live == "auto" and sys.stderr.isatty())
        self._live: Live | None = None
        self._last_plain = time.monotonic()
        self.progress = Progress(total_steps)

    def _observe_progress(self) -> None:
        # The env server's step is the run's lockstep step; runs without one (a service that
        # failed to start) show none.
        env = next((node for node_id, node in self.nodes.items() if node_id == "env"), None)
        status = getattr(env, "last_status", None)
        if status is not None and status.step is not None:
            self.progress.observe(int(status.step))

    def __enter__(self) -> StatusView:
        if self.use_live:
            self._live = Live(self.table(), console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        if self._live is not None:
            self._live.update(self.table())
            self._live.__exit__(*exc_info)
        else:
            self._print_plain()

    def refresh(self) -> None:
        self._observe_progress()
        if self._live is not None:
            self._live.update(self.table())
        elif time.monotonic() - self._last_plain >= PLAIN_EVERY_S:
            self._print_plain()

    def table(self) -> Table:
        table = Table(title=f"{self.run_name}: {self.progress.describe()}")
        for column in ("node", "state", "step", "episode", "last return", "msgs/s", "pid"):
            table.add_column(column, justify="right" if column not in ("node", "state") else "left")
        for node_id, node in self.nodes.items():
            status = node.last_status
            state = status.state if status else ("exited" if node.exit_code is not None else "starting")
            if node.exit_code is not None:
                state = f"exited ({node.exit_code})"
            elif getattr(node, "silent", None):
                state = node.silent  # "paused" (SIGSTOP) or "unresponsive": no status reports
            table.add_row(
                node_id,
                state,
                str(status.step) if status else "-",
                str(status.episode) if status else "-",
                f"{status.last_return:.2f}" if status and status.last_return is not None else "-",
                f"{status.msgs_per_s:.0f}" if status else "-",
                str(node.process.pid) if node.process else "-",
            )
        return table

    def _print_plain(self) -> None:
        self._last_plain = time.monotonic()
        parts = [self.progress.describe()]
        for node_id, node in self.nodes.items():
            status = node.last_status
            if node.exit_code is not None:
                parts.append(f"{node_id}: exited ({node.exit_code})")
                continue
            if getattr(node, "silent", None):
                parts.append(f"{node_id}: {node.silent}")
                continue
            if status is None:
                parts.append(f"{node_id}: starting")
                continue
            last = f" R={status.last_return:.1f}" if status.last_return is not None else ""
            parts.append(f"{node_id}: {status.state} step {status.step} ep {status.episode}{last}")
        print(" | ".join(parts), file=sys.stderr, flush=True)
