"""Turns for the gradient steps: the agents of a run on one host update at most one per core, first come first served.

Five agents that each owe ten SAC gradient steps after every lockstep step all start them at once
on a machine with two cores. The kernel then switches between five processes every few
milliseconds, and each switch costs the incoming process its caches: a gradient step that takes
4.6 ms of CPU alone takes 6.1–6.3 ms when five update at once, and 5.2 ms when at most two do
(`bench/probes/update_sharing.py`). The gate lets at most `tokens` agents (one per core) update at
once, and hands the turns out **one slice at a time in the order they were asked for**: a node
takes a turn for one slice of its owed gradient steps (`agents.gradient_steps_per_slice`) and
gives it back after, and when others are queued it goes behind them. Turns of a whole burst
would not do: two tokens run five bursts in three rounds, the last with a core idle, which costs
as much as the kernel's switching (docs/og_marl_speed_and_reference.md); slices in a queue pack
the work onto the cores. It changes when gradient steps run, never which: a reproducible run
gives the same results gated or not.

**The queue.** A small file in a directory of the run dir (one per host) holds the pids holding a
turn and the pids queued, read and rewritten under an exclusive `flock` of that file. A pid that
no longer exists is dropped whenever the file is read, so a node killed while it holds a turn or
waits in the queue (kill -9 included) blocks nobody; the kernel drops its lock too.

**Waiting does not stop the node.** `take_turn` never blocks: a node whose turn has not come goes
back to its loop, which polls its sockets and the gate's wake-up pipe (`wake_fd`) together and
asks again when either has something, so it still answers observations and heartbeats while it
waits. A release writes one byte into the pipe when someone is queued; every waiter that wakes
empties it and asks. A waiter also asks again every `RECHECK_S` (a dead holder writes no byte),
and after `WAIT_LIMIT_S` without a turn it updates without one and counts it
(`update_gate/timeouts`): a gate can slow a run down, never stop it.
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import struct
import time
from pathlib import Path
from typing import Callable

# A waiter asks again at least this often (see the module docstring).
RECHECK_S = 0.02
# The longest a node waits for a turn before it updates without one: long beside a slice of
# gradient steps (tens of ms), short beside every timeout of the run.
WAIT_LIMIT_S = 1.0
_COUNTS = struct.Struct("<II")  # the queue file: holders, queued, then that many int32 pids


def gate_directory(run_dir: Path) -> Path:
    """This host's gate in the run dir: one per machine (the ssh and ray backends give each host a
    run dir of its own, and the host name keeps them apart where a file system is shared)."""
    return run_dir / "update_gate" / socket.gethostname()


def cores_of_this_host() -> int:
    """The cores this process may run on (its affinity, which a container's CPU set narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def open_update_gate(setting: str | int, run_dir: Path) -> UpdateGate | None:
    """The gate `agents.update_gate` asks for on this host: None for "off", one turn at a time per
    core for "cores", else that many."""
    if setting == "off":
        return None
    return UpdateGate(gate_directory(run_dir), cores_of_this_host() if setting == "cores" else int(setting))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


class UpdateGate:
    """One node's side of its host's gate. Every node of the run on the host opens the same
    directory with the same number of tokens."""

    def __init__(self, directory: Path, tokens: int, clock: Callable[[], float] = time.monotonic,
                 pid: int | None = None) -> None:
        if tokens < 1:
            raise ValueError(f"update gate: expected at least 1 token, got {tokens}")
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.tokens = tokens
        self.clock = clock
        self.pid = os.getpid() if pid is None else pid  # (tests stand in several nodes in one process)
        # Created by whichever node comes first (O_CREAT without O_EXCL, a tolerated FileExistsError).
        self._queue_fd = os.open(directory / "queue", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.mkfifo(directory / "wake", 0o600)
        except FileExistsError:
            pass
        # Read-write and non-blocking: the open never waits for a peer, and a release never blocks
        # on a full pipe (its byte is then dropped: the waiters are awake already).
        self.wake_fd = os.open(directory / "wake", os.O_RDWR | os.O_NONBLOCK)
        self.held = False
        self._waiting_since: float | None = None
        # For the metrics: turns taken, of those how many waited, seconds waited, waits given up.
        self.acquired = self.waited = self.timeouts = 0
        self.wait_s = 0.0

    @property
    def waiting(self) -> bool:
        """True between a `take_turn` that queued and the one that gets (or gives up on) a turn."""
        return self._waiting_since is not None

    def take_turn(self) -> bool:
        """Whether this node may update now, without blocking: True when it holds a turn (taken
        now if a token is free and no one queued before it), or when it has waited WAIT_LIMIT_S
        (then it updates without one, and the next call queues again); False while it waits
        in the queue (poll `wake_fd`, at most RECHECK_S, then ask again)."""
        if self.held:
            return True
        now = self.clock()
        if self._waiting_since is not None:
            self.drain_wake_ups()
        self.held = self._change_queue(self._take_or_queue)
        if self.held:
            self.acquired += 1
            self._end_wait(now)
            return True
        if self._waiting_since is None:
            self._waiting_since = now
            self.waited += 1
        elif now - self._waiting_since >= WAIT_LIMIT_S:
            self._change_queue(self._leave)
            self.timeouts += 1
            self._end_wait(now)
            return True
        return False

    def release(self) -> None:
        """Give the turn back, or leave the queue; wake the waiters if someone is queued."""
        if not self.held and self._waiting_since is None:
            return
        self._end_wait(self.clock())
        self.held = False
        if self._change_queue(self._leave):
            try:
                os.write(self.wake_fd, b"x")
            except BlockingIOError:
                pass  # the pipe is full of wake-ups nobody read: the waiters are awake already

    def acquire(self, timeout_s: float = WAIT_LIMIT_S) -> bool:
        """Block until `take_turn` says yes, at most `timeout_s` (for a node with nothing else to
        do, e.g. while it drains); True when a turn is held."""
        deadline = self.clock() + timeout_s
        while not self.take_turn():
            remaining = deadline - self.clock()
            if remaining <= 0:
                self.release()
                self.timeouts += 1
                return False
            select.select([self.wake_fd], [], [], min(remaining, RECHECK_S))
        return self.held

    def drain_wake_ups(self) -> None:
        """Empty the wake-up pipe: a byte left there would make every later poll return at once."""
        try:
            while os.read(self.wake_fd, 4096):
                pass
        except BlockingIOError:
            pass

    def metrics(self) -> dict[str, float]:
        """Cumulative: `update_gate/acquired` (turns taken), `update_gate/waited` (of those asked
        for, how many queued first), `update_gate/wait_s` and `update_gate/timeouts` (waits given up)."""
        return {"update_gate/acquired": float(self.acquired), "update_gate/waited": float(self.waited),
                "update_gate/wait_s": self.wait_s, "update_gate/timeouts": float(self.timeouts)}

    def close(self) -> None:
        self.release()
        os.close(self._queue_fd)
        os.close(self.wake_fd)

    def _end_wait(self, now: float) -> None:
        if self._waiting_since is not None:
            self.wait_s += now - self._waiting_since
            self._waiting_since = None

    # ------------------------------------------------------------------ the queue file

    def _take_or_queue(self, holders: list[int], queued: list[int]) -> bool:
        if self.pid not in queued:
            queued.append(self.pid)
        free = self.tokens - len(holders)
        if self.pid in queued[:max(0, free)]:  # a free token, and no one asked before this node
            queued.remove(self.pid)
            holders.append(self.pid)
            return True
        return False

    def _leave(self, holders: list[int], queued: list[int]) -> bool:
        """Out of both lists; whether someone is still queued (then a release wakes them)."""
        for pids in (holders, queued):
            if self.pid in pids:
                pids.remove(self.pid)
        return bool(queued)

    def _change_queue(self, change: Callable[[list[int], list[int]], bool]) -> bool:
        """Read the queue file under its lock, drop the dead, apply `change`, write it back."""
        fcntl.flock(self._queue_fd, fcntl.LOCK_EX)
        try:
            holders, queued = self._read_queue()
            result = change(holders, queued)
            pids = holders + queued
            data = _COUNTS.pack(len(holders), len(queued)) + struct.pack(f"<{len(pids)}i", *pids)
            os.pwrite(self._queue_fd, data, 0)
            os.ftruncate(self._queue_fd, len(data))
            return result
        finally:
            fcntl.flock(self._queue_fd, fcntl.LOCK_UN)

    def _read_queue(self) -> tuple[list[int], list[int]]:
        raw = os.pread(self._queue_fd, 1 << 16, 0)
        if len(raw) < _COUNTS.size:
            return [], []  # a new gate
        holding, waiting = _COUNTS.unpack_from(raw)
        if len(raw) != _COUNTS.size + 4 * (holding + waiting):
            return [], []  # torn by a writer killed mid-write: start the queue afresh
        pids = list(struct.unpack_from(f"<{holding + waiting}i", raw, _COUNTS.size))
        return [p for p in pids[:holding] if _alive(p)], [p for p in pids[holding:] if _alive(p)]
