"""What the orchestrator knows of each node of a run while it runs (orchestrator/runtime.py)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import IO

from orchestrator.faults import ScheduledFault
from orchestrator.launcher import NodeProcess, process_state
from orchestrator.plan import NodeLaunch
from orchestrator.rundir import EventLog
from protocols.codec import messages as m


@dataclass
class NodeRecord:
    launch: NodeLaunch
    process: NodeProcess | None = None
    log_file: IO | None = None
    endpoints: dict[str, str] = field(default_factory=dict)
    # An agent's neighbours' peer endpoints as its last directory gave them: a neighbour that
    # registered again at a new one (tcp) since then is announced to it once it is ready.
    neighbour_endpoints: dict[str, str] = field(default_factory=dict)
    registered: bool = False
    ready: bool = False
    said_goodbye: bool = False
    # The reason its goodbye gave ("failure: cannot write to ...: no space left ..."), kept in
    # memory: events.jsonl may be on the same full disk as the node's files.
    goodbye_reason: str | None = None
    exit_code: int | None = None
    last_status: m.Status | None = None
    # Why a run.reproducible run stopped being a function of its seed on this node, as its
    # statuses said (each cause gets one `reproducibility_broken` event).
    reproducibility_broken: set[str] = field(default_factory=set)
    held_step: int | None = None  # env server: the last step it held for scheduled faults (control.step_held)
    last_heard: float = 0.0
    # When the node's exit was first seen (unix time; SIGCHLD or a poll), before it is reaped.
    exited_at: float | None = None
    # "paused" (SIGSTOP: state T) or "unresponsive" while it has been silent too long.
    silent: str | None = None
    # Set by the fault schedule: a scheduled kill is an expected exit; a scheduled pause is
    # continued before the shutdown.
    killed_by_schedule: bool = False
    killed_by_fault: ScheduledFault | None = None  # which one (for the env server's failure reason)
    paused_by_schedule: bool = False
    # Restarts (faults.restart, or a scheduled restart): how many so far, when the next is due.
    restarts: int = 0
    restart_at: float | None = None
    restart_requested: bool = False  # by the schedule: restart whatever the policy says

    def start_again(self) -> None:
        """Forget what the last process did (its exit, its registration, the schedule's marks) before
        the next one starts; its launch, endpoints and restart count stay."""
        if self.log_file is not None:
            self.log_file.close()
        self.restart_at = None
        self.restarts += 1
        self.restart_requested = self.killed_by_schedule = self.paused_by_schedule = False
        self.killed_by_fault = None
        self.registered = self.ready = self.said_goodbye = False
        self.exit_code = self.exited_at = self.last_status = self.silent = None


def note_exit_times(nodes: dict[str, NodeRecord]) -> None:
    """On SIGCHLD: note when each node that has exited did so, without reaping it (WNOWAIT),
    so its `exited` event carries the time it exited, not the time the loop got to it."""
    now = time.time()
    for node in nodes.values():
        if node.exited_at is None and node.exit_code is None and node.process is not None:
            try:
                info = os.waitid(os.P_PID, node.process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                continue
            if info is not None:
                node.exited_at = now


def mark_silent(nodes: dict[str, NodeRecord], limit_s: float, events: EventLog) -> None:
    """A running node that stopped reporting for `limit_s`: paused (SIGSTOP, state T) or
    unresponsive; marked once, with an event."""
    now = time.monotonic()
    for node_id, node in nodes.items():
        if node.exit_code is not None or node.process is None or node.silent is not None or not node.ready:
            continue  # (a restarted node reports status only once it runs again)
        silent_s = now - node.last_heard
        if silent_s > limit_s:
            state = process_state(node.process.pid)
            node.silent = "paused" if state in ("T", "t") else "unresponsive"
            events.write(node.silent, node_id, silent_s=round(silent_s, 2), process_state=state)
