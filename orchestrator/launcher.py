"""How the local backend starts node processes: `launch.start_method`.

- `fork_server` (default): one zygote process (orchestrator/zygote.py) imports torch and the
  node code once; every node is forked from it and shares those pages copy-on-write. Measured
  in bench/scale.py; it is what makes 32 agents fit on a small machine.
- `spawn`: every node is a fresh `python -m agent_node|env_server ...` subprocess, the plan's
  argv as is. Slower to start and more memory per agent, but nothing is shared.

Either way every node is a child of the orchestrator (with the fork server through
PR_SET_CHILD_SUBREAPER, see zygote.py), so supervision is the same: `poll()` / `wait()` give
the exit code (negative: killed by that signal), and signals go to the node's own process
group. Each node's pid is written to `nodes/<id>/pid` (with its start time, so a recycled pid
is never mistaken for the node) for `orchestrate down` when the orchestrator itself is gone.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Callable, Protocol

from agent_node.registry import builtin_descriptions
from orchestrator.plan import PROJECT_ROOT, NodeLaunch

# prctl(2) option: orphaned descendants are re-parented to us instead of to init.
PR_SET_CHILD_SUBREAPER = 36
# Every node learns the orchestrator's pid from this variable; its control client watches for
# the orchestrator's death by comparing it with its parent pid (protocols/run/control.py reads the
# same name; not imported from there so that the CLI's `status`/`down` never load zmq).
ORCHESTRATOR_PID_ENV = "PARLEY_ORCHESTRATOR_PID"
NODE_PID_FILENAME = "pid"
ZYGOTE_PID_FILENAME = "zygote.pid"
ZYGOTE_LOG_FILENAME = "zygote.log"


class NodeProcess(Protocol):
    """What supervision needs of a started node (subprocess.Popen has it)."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


class ForkedProcess:
    """A node forked by the zygote and re-parented to us: a child we did not fork ourselves."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                # Not our child (never re-parented): cannot happen with the subreaper set; be
                # loud rather than wait forever.
                raise RuntimeError(f"pid {self.pid} is not a child of the orchestrator") from None
            if pid == self.pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0.0)
            time.sleep(0.02)
        assert self.returncode is not None
        return self.returncode


# ------------------------------------------------------------------------------------------
# pid files
# ------------------------------------------------------------------------------------------


def process_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def process_state(pid: int) -> str | None:
    """The one-letter state in /proc/<pid>/stat (R, S, T stopped, Z zombie, ...), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return None


def write_pid_file(path: Path, pid: int) -> None:
    path.write_text(f"{pid} {process_start_time(pid) or 0}\n")


def live_pid_from_file(path: Path) -> int | None:
    """The pid in a pid file if that very process (same start time) still runs, not a zombie."""
    try:
        pid_text, start_text = path.read_text().split()
        pid, start = int(pid_text), int(start_text)
    except (OSError, ValueError):
        return None
    if process_start_time(pid) != start or process_state(pid) in (None, "Z"):
        return None
    return pid


# ------------------------------------------------------------------------------------------
# Launchers
# ------------------------------------------------------------------------------------------


def node_module_and_args(launch: NodeLaunch) -> tuple[str, list[str]]:
    """`python -m <module> <args...>` → (module, args)."""
    argv = list(launch.argv)
    if len(argv) < 3 or argv[1] != "-m":
        raise ValueError(f"{launch.node_id}: expected an argv of the form python -m MODULE ..., got {argv}")
    return argv[2], argv[3:]


class SubprocessLauncher:
    """`launch.start_method: spawn` — every node a fresh interpreter."""

    name = "spawn"

    def __init__(self) -> None:
        self.should_stop: Callable[[], bool] = lambda: False

    def prepare(self) -> None:
        pass

    def start(self, launch: NodeLaunch, env: dict[str, str], log_file: IO) -> NodeProcess:
        return subprocess.Popen(
            launch.argv,
            env={**os.environ, **launch.env, **env},
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            # Its own process group: a Ctrl-C in the terminal reaches the orchestrator only,
            # which then shuts the nodes down in order instead of all dying at once.
            start_new_session=True,
        )

    def close(self) -> None:
        pass


class ZygoteError(RuntimeError):
    pass


class ForkServerLauncher:
    """`launch.start_method: fork_server` — nodes forked from one zygote (orchestrator/zygote.py)."""

    name = "fork_server"

    def __init__(self, run_dir: Path, preload: list[str], ready_timeout_s: float) -> None:
        if not sys.platform.startswith("linux"):
            raise ZygoteError(
                f"launch.start_method 'fork_server' needs Linux (PR_SET_CHILD_SUBREAPER), got {sys.platform}; use 'spawn'"
            )
        self.run_dir = run_dir
        self.preload = preload
        self.ready_timeout_s = ready_timeout_s
        self.process: subprocess.Popen | None = None
        self.socket: socket.socket | None = None
        self._reader: IO[bytes] | None = None
        self._log: IO | None = None
        self.preload_report: dict = {}
        # Set by the orchestrator: True once the run is interrupted (stops waiting on the zygote).
        self.should_stop: Callable[[], bool] = lambda: False

    def prepare(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise ZygoteError(f"prctl(PR_SET_CHILD_SUBREAPER) failed: {os.strerror(ctypes.get_errno())}")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = {
            **os.environ,
            # No BLAS/OpenMP worker threads in the zygote: fork copies only the calling thread.
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p),
        }  # fmt: skip
        self._log = (self.run_dir / ZYGOTE_LOG_FILENAME).open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.zygote", "--fd", str(theirs.fileno()), "--preload", ",".join(self.preload)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            pass_fds=(theirs.fileno(),),
            start_new_session=True,
        )
        theirs.close()
        write_pid_file(self.run_dir / ZYGOTE_PID_FILENAME, self.process.pid)
        self.socket = ours
        self._reader = ours.makefile("rb")
        report = self._receive(self.ready_timeout_s, "to preload")
        if not report.get("ready"):
            raise ZygoteError(f"the zygote could not start: {report.get('failed')} (see {self.run_dir / ZYGOTE_LOG_FILENAME})")
        self.preload_report = report

    def start(self, launch: NodeLaunch, env: dict[str, str], log_file: IO) -> NodeProcess:
        assert self.socket is not None, "prepare() first"
        module, args = node_module_and_args(launch)
        request = {
            "node_id": launch.node_id,
            "module": module,
            "args": args,
            "env": {**launch.env, **env},
            "log_path": str(launch.log_path),
            "seed": launch.seed,
            "comm": f"parley:{launch.node_id}",
        }
        self.socket.sendall((json.dumps(request) + "\n").encode())
        reply = self._receive(30.0, f"to fork {launch.node_id}")
        if reply.get("node_id") != launch.node_id or "pid" not in reply:
            raise ZygoteError(f"the zygote could not fork {launch.node_id}: {reply.get('error', reply)}")
        return ForkedProcess(int(reply["pid"]))

    def _receive(self, timeout_s: float, doing: str) -> dict:
        """The zygote's next reply; gives up at the deadline, or early once `should_stop()`."""
        assert self.socket is not None and self._reader is not None and self.process is not None
        deadline = time.monotonic() + timeout_s
        while True:
            ready, _, _ = select.select([self.socket], [], [], 0.2)  # short slices: a Ctrl-C is seen at once
            if ready:
                line = self._reader.readline()
                break
            if self.should_stop():
                raise ZygoteError(f"interrupted while waiting for the zygote {doing}")
            if time.monotonic() >= deadline:
                raise ZygoteError(f"the zygote took more than {timeout_s:.0f} s {doing} (see {self.run_dir / ZYGOTE_LOG_FILENAME})")
        if not line:
            code = self.process.poll()
            raise ZygoteError(f"the zygote exited (code {code}) instead of answering {doing} (see {self.run_dir / ZYGOTE_LOG_FILENAME})")
        return json.loads(line)

    def close(self) -> None:
        """Stop the zygote: it exits when its socket closes (killed if still preloading)."""
        if self._reader is not None:
            self._reader.close()
        if self.socket is not None:
            self.socket.close()
        if self.process is not None:
            if not self.preload_report:
                self.process.kill()  # it would read the closed socket only after preloading
            try:
                self.process.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()


def preload_modules(
    roles: set[str], learner_kind: str | None, world_model_kind: str | None, env_name: str | None = None,
    capability_modules: tuple[str, ...] = (), compiled_updates: bool = False,
) -> list[str]:
    """What the zygote imports: what the run's roles import at start-up, and what the nodes its
    capabilities add import (`capability_modules`: agent_node/registry.py `ExtraNode.preload`),
    named as strings: the orchestrator itself never imports learning code."""
    modules = ["numpy", "msgpack", "zmq", "pydantic", "yaml", "protocols.net.transport", "protocols.run.node_config"]
    if "env_server" in roles:
        modules += ["pettingzoo", "env_server.server", "env_server.registry", "env_server.vector", "env_server.config"]
        if env_name and ":" not in env_name and "." in env_name:
            modules.append(env_name)  # registry names like mpe2.simple_spread_v3 are modules too
    if "agent" in roles:
        modules += ["torch", "tensorboardX", "agent_node.config", "agent_node.node", "agent_node.algos"]
        # The node builds its topology at start-up through networkx (protocols/engines/topology.py imports
        # it where it is used): imported once here rather than in every agent.
        modules.append("networkx")
        # The built-in capabilities the node loads by import path (agent_node/capability.py).
        modules += [d.node_side.partition(":")[0] for d in builtin_descriptions() if d.node_side is not None]
        if learner_kind:
            modules.append(f"agent_node.algos.{learner_kind}")
        if compiled_updates:
            # DQN's gradient step compiled by numba (`numpy_updates`): its `warm_up` runs in the
            # zygote, which loads (or, the first time, compiles) its machine code once for all.
            modules.append("agent_node.algos.numpy_steps")
        if world_model_kind:
            modules.append(f"agent_node.world_models.{world_model_kind}")
    modules += [module for module in capability_modules if module not in modules]
    return modules
