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


class StatusView:
    def __init__(self, nodes: dict[str, Any], *, live: str, run_name: str, total_steps: int) -> None:
        self.nodes = nodes
        self.run_name = run_name
        self.total_steps = total_steps
        self.console = Console(stderr=True)
        self.use_live = live == "on" or (live == "auto" and sys.stderr.isatty())
        self._live: Live | None = None
        self._last_plain = time.monotonic()

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
        if self._live is not None:
            self._live.update(self.table())
        elif time.monotonic() - self._last_plain >= PLAIN_EVERY_S:
            self._print_plain()

    def table(self) -> Table:
        table = Table(title=f"{self.run_name}: {self.total_steps} lockstep steps")
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
        parts = []
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
