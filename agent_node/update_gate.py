"""At most one updating agent per core: the agents of a run on one host take turns for their gradient steps.

Five agents that each owe ten SAC gradient steps after every lockstep step all start them at once
on a machine with two cores. The kernel then switches between five processes every few
milliseconds, and each switch costs the incoming process its caches: a gradient step that takes
4.6 ms of CPU alone takes 6.1–6.3 ms when five update at once, and 5.2 ms when at most two do
(`bench/probes/update_sharing.py`). The gate turns that into a rule: a node takes a token before
it starts the gradient steps it owes and gives it back when it owes nothing more (or after
`HOLD_LIMIT_STEPS`, so that a learner that always owes cannot keep a core's token forever), and
there are as many tokens as the host has cores (`agents.update_gate`). It changes when gradient
steps run, never which: a reproducible run gives the same results gated or not.

**Waiting does not stop the node.** `take_turn` never blocks: a node that finds every token taken
goes back to its loop, which polls its sockets and the gate's wake-up pipe together
(`wake_fd`) and asks again when either has something, so it still answers observations and
heartbeats while it waits. Every release writes one byte into the pipe; every waiter that wakes
empties it and tries the tokens. A waiter also tries again every `RECHECK_S` (a token freed by a
death writes no byte, and a waiter that entered its poll just after another emptied the pipe
would miss the byte). After `WAIT_LIMIT_S` without a token a node updates without one and counts
it (`update_gate/timeouts`), so a gate can slow a run down, never stop it.

**Tokens that cannot be lost.** A token is an exclusive `flock` on one of `tokens` files in a
directory of the run dir (one per host). The kernel drops a process's locks when it exits, so a
node killed while it holds one (kill -9 included) frees it at once; nothing has to notice.
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import time
from pathlib import Path

# A holder gives its token back after this many gradient steps even if it still owes some, and
# queues again: a learner slower than the lockstep owes without end (agents.max_pending_gradient_steps
# lets it act meanwhile) and would otherwise keep its core's token for the whole run.
HOLD_LIMIT_STEPS = 32
# A waiter looks at the tokens again at least this often (see the module docstring).
RECHECK_S = 0.02
# The longest a node waits for a token before it updates without one: long beside a burst of
# gradient steps (tens of ms), short beside every timeout of the run.
WAIT_LIMIT_S = 1.0


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
    """The gate `agents.update_gate` asks for on this host: None for "off", one token per core for
    "cores", else that many tokens."""
    if setting == "off":
        return None
    return UpdateGate(gate_directory(run_dir), cores_of_this_host() if setting == "cores" else int(setting))


class UpdateGate:
    """One node's side of its host's gate. Every node of the run on the host opens the same
    directory with the same token count."""

    def __init__(self, directory: Path, tokens: int, clock=time.monotonic) -> None:
        if tokens < 1:
            raise ValueError(f"update gate: expected at least 1 token, got {tokens}")
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.tokens = tokens
        self.clock = clock
        # Created by whichever node comes first; O_CREAT without O_EXCL and a tolerated
        # FileExistsError make the race between nodes starting together harmless.
        self._token_fds = [os.open(directory / f"token-{i}", os.O_RDWR | os.O_CREAT, 0o600) for i in range(tokens)]
        wake_path = directory / "wake"
        try:
            os.mkfifo(wake_path, 0o600)
        except FileExistsError:
            pass
        # Read-write and non-blocking: the open never waits for a peer, and a release never blocks
        # on a full pipe (its byte is then dropped: the waiters are awake already).
        self.wake_fd = os.open(wake_path, os.O_RDWR | os.O_NONBLOCK)
        self._held: int | None = None  # index of the token file this node holds
        self._first = os.getpid() % tokens  # nodes start their search at different tokens
        self._waiting_since: float | None = None
        self.steps_since_acquire = 0
        # For the metrics: turns taken, of those how many waited, seconds waited, waits given up.
        self.acquired = self.waited = self.timeouts = 0
        self.wait_s = 0.0

    @property
    def held(self) -> bool:
        return self._held is not None

    @property
    def waiting(self) -> bool:
        """True between a `take_turn` that found no token and the one that gets (or gives up on) one."""
        return self._waiting_since is not None

    def take_turn(self) -> bool:
        """Whether this node may update now, without blocking: True when it holds a token (taken
        now if one is free), or when it has waited WAIT_LIMIT_S for one (then it updates without,
        and the next call queues again); False while it should wait (poll `wake_fd`, at most
        RECHECK_S, then ask again)."""
        if self._held is not None:
            return True
        now = self.clock()
        if self._waiting_since is not None:
            self.drain_wake_ups()
        if self._try_all():
            self.acquired += 1
            self._end_wait(now)
            return True
        if self._waiting_since is None:
            self._waiting_since = now
            self.waited += 1
        elif now - self._waiting_since >= WAIT_LIMIT_S:
            self.timeouts += 1
            self._end_wait(now)
            return True
        return False

    def acquire(self, timeout_s: float = WAIT_LIMIT_S) -> bool:
        """Block until `take_turn` says yes, at most `timeout_s` (for a node with nothing else to
        do, e.g. while it drains); True when a token is held."""
        deadline = self.clock() + timeout_s
        while not self.take_turn():
            remaining = deadline - self.clock()
            if remaining <= 0:
                self._end_wait(self.clock())
                self.timeouts += 1
                return False
            select.select([self.wake_fd], [], [], min(remaining, RECHECK_S))
        return self.held

    def release(self) -> None:
        """Give the token back and wake the waiters; or stop waiting for one."""
        self._end_wait(self.clock())
        if self._held is None:
            return
        fcntl.flock(self._token_fds[self._held], fcntl.LOCK_UN)
        self._held, self.steps_since_acquire = None, 0
        try:
            os.write(self.wake_fd, b"x")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups nobody read: the waiters are awake already

    def counted(self, gradient_steps: int) -> bool:
        """Count gradient steps taken under the token; True when the holder should give it back
        (HOLD_LIMIT_STEPS reached) and queue again."""
        self.steps_since_acquire += gradient_steps
        return self.steps_since_acquire >= HOLD_LIMIT_STEPS

    def drain_wake_ups(self) -> None:
        """Empty the wake-up pipe: a byte left there would make every later poll return at once."""
        try:
            while os.read(self.wake_fd, 4096):
                pass
        except BlockingIOError:
            pass

    def metrics(self) -> dict[str, float]:
        """Cumulative: `update_gate/acquired` (turns taken with a token), `update_gate/waited` (turns
        that found no token free), `update_gate/wait_s` and `update_gate/timeouts` (waits given up)."""
        return {"update_gate/acquired": float(self.acquired), "update_gate/waited": float(self.waited),
                "update_gate/wait_s": self.wait_s, "update_gate/timeouts": float(self.timeouts)}

    def close(self) -> None:
        self.release()
        for fd in (*self._token_fds, self.wake_fd):
            os.close(fd)
        self._token_fds = []

    def _end_wait(self, now: float) -> None:
        if self._waiting_since is not None:
            self.wait_s += now - self._waiting_since
            self._waiting_since = None

    def _try_all(self) -> bool:
        for offset in range(self.tokens):
            index = (self._first + offset) % self.tokens
            try:
                fcntl.flock(self._token_fds[index], fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            self._held = index
            return True
        return False
