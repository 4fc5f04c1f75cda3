"""The run directory: where a run's config, timeline, logs, metrics and sockets live.

    runs/<name>/<YYYYmmdd-HHMMSS>[-n]/
      resolved.yaml       the one source of truth every node reads
      events.jsonl        the orchestrator's timeline (EventLog)
      orchestrator.pid    the pid of the `orchestrate up` process, for `orchestrate down`
      run.claim           created exclusively by the run that owns an explicit --run-dir
      nodes/<node id>/    log, metrics.jsonl, and for agents checkpoints/, replay/
      sock/               ipc sockets (mode 0700), unless the path is too long (see below)
      keys/               the run's keys (protocols/net/auth.py): 0700, every file 0600
      tb/                 TensorBoard event files
      report/             plots and summary.md

The run directory is 0700: endpoints, keys and logs are the user's alone (`orchestrate up`
also sets the umask to 077, so every file the run writes is 0600).

A run never reuses a directory: a second run started in the same second gets a `-1`, `-2`, ...
suffix, and an explicit `--run-dir` must not exist yet or be empty. The one exception is
`orchestrate resume`, which launches a stopped run again in its own directory (`reopen_run`).

**Socket directory.** Unix socket paths are limited to ~107 bytes. If the longest ipc endpoint
of the run would not fit under `<run dir>/sock/`, the sockets go into a fresh
`/tmp/parley-XXXXXXXX/` (mode 0700) instead; `runtime.socket_dir_is_temp` records it, and
`remove_temp_socket_dir` removes it when the run ends.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from orchestrator.config import RESOLVED_FILENAME, RunConfig, load_resolved, with_runtime, with_nodes, write_resolved
from protocols.storage.jsonlines import LineFile, LineWriteError, json_object
from protocols.net.auth import KEYS_DIRNAME
from protocols.run.config_errors import ConfigError
from protocols.storage.durable_state import EXIT_DAMAGED_STATE
from protocols.run.settings import ENV_NODE_ID, ORCHESTRATOR_ID, RunLayout, ipc_dir_fits

EVENTS_FILENAME = "events.jsonl"
PID_FILENAME = "orchestrator.pid"
NODES_DIRNAME = "nodes"
NODE_LOG_FILENAME = "log"
NODE_METRICS_FILENAME = "metrics.jsonl"
SOCKET_DIRNAME = "sock"
CLAIM_FILENAME = "run.claim"  # created exclusively: the run that creates it owns the directory

_RUN_DIR_NAME = re.compile(r"^(\d{8}-\d{6})(?:-(\d+))?$")


class RunDirError(ValueError):
    """A run directory cannot be created or found (a bad path given by the user: exit 2)."""


class RunDirWriteError(RuntimeError):
    """A run directory was created but its files cannot be written (disk full: exit 1)."""


# ------------------------------------------------------------------------------------------
# Creating a run
# ------------------------------------------------------------------------------------------


def code_identity() -> dict[str, Any]:
    """Which code ran: Parley's version, its git commit when it runs from a checkout (with
    `dirty` when tracked files differ from it), Python's and torch's versions. It goes into the
    run's `run_started` event: `run.reproducible` promises the same run for the same seed *and
    code*, and a matrix library's rounding (torch's build, Parley's choice of products) is code.
    Read without importing torch (the orchestrator never does)."""
    from importlib import metadata

    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    identity: dict[str, Any] = {"parley": version("parley"), "python": platform.python_version(),
                                "torch": version("torch"), "git_commit": None, "git_dirty": None}
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / ".git").exists():
        try:
            commit = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True,
                                    text=True, timeout=10, check=True).stdout.strip()
            changes = subprocess.run(["git", "-C", str(checkout), "status", "--porcelain", "--untracked-files=no"],
                                     capture_output=True, text=True, timeout=10, check=True).stdout
            identity.update(git_commit=commit, git_dirty=bool(changes.strip()))
        except (OSError, subprocess.SubprocessError):
            pass  # no git on this machine, or not a checkout git can read: the versions remain
    return identity


def timestamp_name(now: datetime | None = None) -> str:
    """`YYYYmmdd-HHMMSS` in UTC."""
    return (now or datetime.now(timezone.utc)).strftime("%Y%m%d-%H%M%S")


def create_run_dir(config: RunConfig, run_dir: str | Path | None = None, now: datetime | None = None) -> Path:
    """Create a fresh run directory with its skeleton and return its absolute path.

    Default: `<run.root>/<run.name>/<UTC timestamp>[-n]/`. An explicit `run_dir` must not exist
    yet, or be an empty directory.
    """
    if run_dir is not None:
        path = Path(run_dir).absolute()
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise RunDirError(f"--run-dir {path}: expected a new or empty directory, got an existing non-empty one")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:  # a parent that is a file, no permission, a read-only file system
            raise RunDirError(f"--run-dir {path}: cannot create it: {error.strerror or error}") from None
        # The emptiness check and the mkdir are two steps: two runs started at once can both
        # pass them. Creating the claim file is atomic (O_EXCL): exactly one of them wins.
        try:
            os.close(os.open(path / CLAIM_FILENAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            raise RunDirError(f"--run-dir {path}: another run claimed this directory at the same time") from None
        except OSError as error:
            raise RunDirError(f"--run-dir {path}: cannot write in it: {error.strerror or error}") from None
    else:
        parent = (Path(config.run.root) / config.run.name).absolute()
        base = timestamp_name(now)
        suffix = 0
        while True:
            path = parent / (base if suffix == 0 else f"{base}-{suffix}")
            try:
                parent.mkdir(parents=True, exist_ok=True)
                path.mkdir()  # atomic: two runs started at once never share a directory
                break
            except FileExistsError:
                if not parent.is_dir():  # run.root (or a directory under it) is a file
                    raise RunDirError(f"run.root {config.run.root}: cannot create {path}: a file stands in the way "
                                      f"(expected a directory)") from None
                suffix += 1
            except OSError as error:  # a file in the way, no permission, a read-only file system
                raise RunDirError(f"run.root {config.run.root}: cannot create {path}: {error.strerror or error}") from None
    os.chmod(path, 0o700)  # the endpoints and keys of a run are its user's alone
    for node in config.node_ids():
        (path / NODES_DIRNAME / node).mkdir(parents=True, exist_ok=True)
        if node != ENV_NODE_ID:
            (path / NODES_DIRNAME / node / "checkpoints").mkdir(exist_ok=True)
            (path / NODES_DIRNAME / node / "replay").mkdir(exist_ok=True)
    (path / "tb").mkdir(exist_ok=True)
    (path / "report").mkdir(exist_ok=True)
    return path


def make_socket_dir(config: RunConfig, run_dir: Path) -> tuple[Path | None, bool]:
    """Create the run's ipc socket directory (mode 0700): (its path, whether it is a temp dir).

    (None, False) with the tcp transport.
    """
    if config.network.transport != "ipc":
        return None, False
    candidate = run_dir / SOCKET_DIRNAME
    if ipc_dir_fits(str(candidate), config.agents.count):
        candidate.mkdir(mode=0o700, exist_ok=True)
        os.chmod(candidate, 0o700)  # mkdir's mode is filtered by the umask
        return candidate, False
    temp = Path(tempfile.mkdtemp(prefix="parley-"))  # mkdtemp creates it with mode 0700
    if not ipc_dir_fits(str(temp), config.agents.count):
        shutil.rmtree(temp, ignore_errors=True)
        raise RunDirError(
            f"ipc socket paths do not fit the unix limit even in {temp} "
            f"(agents.count={config.agents.count}); use network.transport 'tcp'"
        )
    return temp, True


def remove_temp_socket_dir(layout: RunLayout | None) -> None:
    """Remove the socket directory if it was a temp dir outside the run directory."""
    if layout is not None and layout.socket_dir_is_temp and layout.socket_dir:
        shutil.rmtree(layout.socket_dir, ignore_errors=True)


def run_id_for(config: RunConfig, run_dir: Path) -> str:
    """`<name>-<run dir name>`, e.g. `tiny_ring-20251122-160301`: unique per run."""
    return f"{config.run.name}-{run_dir.name}"


def prepare_run(config: RunConfig, run_dir: str | Path | None = None) -> tuple[RunConfig, Path]:
    """Create the run directory and socket dir, write resolved.yaml.

    Returns the resolved config (with `nodes` and `runtime`) and the run directory. The launch
    plan is then `plan.build_plan(resolved, run_dir)`.
    """
    path = create_run_dir(config, run_dir)
    try:
        return _fill_run_dir(config, path)
    except OSError as error:
        # The directory was created but cannot be filled (a disk that is full, say): take back
        # what this call made, so a failed start leaves nothing behind.
        shutil.rmtree(path, ignore_errors=True)
        raise RunDirWriteError(f"{path}: cannot write the run's files: {error.strerror or error}") from None


def _fill_run_dir(config: RunConfig, path: Path) -> tuple[RunConfig, Path]:
    # Imported here: drawing CURVE keys takes zmq (protocols/net/transport.py), which `validate`
    # and the CLI's start never need.
    from protocols.net.transport import generate_run_keys

    socket_dir, socket_dir_is_temp = make_socket_dir(config, path)
    keys_dir = generate_run_keys(path / KEYS_DIRNAME, [*config.node_ids(), ORCHESTRATOR_ID])
    layout = RunLayout(
        run_id=run_id_for(config, path),
        run_dir=str(path),
        socket_dir=None if socket_dir is None else str(socket_dir),
        socket_dir_is_temp=socket_dir_is_temp,
        keys_dir=str(keys_dir),
    )
    resolved = with_runtime(config, layout)
    write_resolved(resolved, path)
    # Nodes read resolved.yaml: re-read it once, so a value that does not survive the YAML
    # round trip fails here, before any process starts.
    if load_resolved(path / RESOLVED_FILENAME) != with_nodes(resolved):
        raise ConfigError([f"{path / RESOLVED_FILENAME}: does not load back to the same config"])
    return with_nodes(resolved), path


def reopen_run(run_dir: Path) -> RunConfig:
    """The resolved config of an existing run, ready to be launched again in place (`orchestrate
    resume`): its socket directory made again, and resolved.yaml rewritten if that directory
    had to move (a temp dir, removed when the run ended, is drawn afresh; the nodes read its
    path from resolved.yaml). Keys, checkpoints, resume points, metrics and events stay."""
    resolved = load_resolved(run_dir / RESOLVED_FILENAME)
    layout = resolved.runtime
    assert layout is not None  # load_resolved requires it
    if layout.socket_dir is None:
        return resolved  # tcp: nothing on disk to make again
    if not layout.socket_dir_is_temp:
        Path(layout.socket_dir).mkdir(mode=0o700, exist_ok=True)
        os.chmod(layout.socket_dir, 0o700)
        return resolved
    socket_dir, socket_dir_is_temp = make_socket_dir(resolved, run_dir)
    moved = layout.model_copy(update={"socket_dir": None if socket_dir is None else str(socket_dir),
                                      "socket_dir_is_temp": socket_dir_is_temp})
    reopened = with_runtime(resolved.model_copy(update={"nodes": None}), moved)
    write_resolved(reopened, run_dir)
    return with_nodes(reopened)


# ------------------------------------------------------------------------------------------
# Finding a run
# ------------------------------------------------------------------------------------------


def _run_sort_key(path: Path) -> tuple[str, int, float]:
    match = _RUN_DIR_NAME.match(path.name)
    if match:
        return match.group(1), int(match.group(2) or 0), path.stat().st_mtime
    return "", 0, path.stat().st_mtime


def find_run_dir(path: str | Path) -> Path:
    """A run directory itself, or the latest run inside `runs/<name>`: the latest one launched,
    so a later `up --dry-run` (which writes resolved.yaml and launches nothing) does not hide it."""
    path = Path(path)
    if not path.is_dir():
        raise RunDirError(f"run directory not found: {path}")
    if (path / RESOLVED_FILENAME).exists():
        return path
    runs = [child for child in path.iterdir() if child.is_dir() and (child / RESOLVED_FILENAME).exists()]
    if not runs:
        raise RunDirError(f"{path}: expected a run directory (with {RESOLVED_FILENAME}) or a directory of runs, found neither")
    launched = [run for run in runs if (run / PID_FILENAME).exists()]
    return max(launched or runs, key=_run_sort_key)


# ------------------------------------------------------------------------------------------
# The event log
# ------------------------------------------------------------------------------------------


class EventLog:
    """The orchestrator's timeline: one JSON object per line, flushed as it is written.

    Each line is `{"t": unix time, "event": name, "node": node id or null, ...fields}`. Field
    values that JSON cannot encode are written as their `str()`. Safe to call from several
    threads. A line that cannot be written (disk full) sets `failed` instead of raising, and
    no later line is written: the file ends with whole lines only.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file = LineFile(self.path)  # whole lines or nothing, even when the disk fills
        self._lock = threading.Lock()
        self.failed: LineWriteError | None = None  # set when a line could not be written

    def write(self, event: str, node: str | None = None, *, at: float | None = None, **fields: Any) -> dict[str, Any]:
        """Append one event stamped now, or at `at` (unix time) for something that happened
        earlier than it is written (a node's exit, seen on SIGCHLD before it was reaped)."""
        reserved = {"t", "event", "node"} & set(fields)
        if reserved:
            raise ValueError(f"event fields may not be named {sorted(reserved)}: they are set by EventLog")
        record = {"t": time.time() if at is None else at, "event": event, "node": node, **fields}
        line = json.dumps(record, default=str)
        with self._lock:
            if self.failed is None:
                try:
                    self._file.append(line)
                except LineWriteError as error:
                    # The disk filled (or went away): the orchestrator sees `failed` in its loop
                    # and stops the run cleanly; raising here would skip reaping the nodes.
                    self.failed = error
        return record

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every well-formed JSON object line of a file; a torn last line (a writer was killed
    mid-write) or a non-object line is skipped rather than fatal."""
    records = []
    try:
        with open(path, encoding="utf-8") as file:
            for line in file:
                line = line.strip()
                if not line:
                    continue
                record = json_object(line)
                if record is not None:
                    records.append(record)
    except FileNotFoundError:
        return []
    return records


def describe_exit_code(code: int) -> str:
    """`code 1`, or `signal SIGKILL` for a process killed by a signal (Popen reports -N)."""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    if code == EXIT_DAMAGED_STATE:
        return f"code {code} (it refused to start from damaged saved state; not restarted)"
    return f"code {code}"


def log_tail(path: Path, lines: int = 5, max_bytes: int = 16384) -> list[str]:
    """The last few non-empty lines of a log (reading only its last `max_bytes`)."""
    try:
        with open(path, "rb") as file:
            file.seek(0, os.SEEK_END)
            size = file.tell()
            file.seek(max(0, size - max_bytes))
            text = file.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


def file_system_is_full(path: Path) -> bool:
    """True when the file system holding `path` has no block left for an unprivileged writer."""
    try:
        return os.statvfs(path).f_bavail == 0
    except OSError:
        return False


def explain_failure(run_dir: Path, node_reasons: dict[str, str] | None = None, tail_lines: int = 5) -> list[str]:
    """Why a run failed, for the terminal: the run's recorded reason, then for each node that
    exited unexpectedly (first the earliest) its exit code or signal and its log's last lines.
    `node_reasons`: what failed nodes said in their goodbye (node id -> reason), which the
    orchestrator holds in memory; on a full disk these lines say which node stopped and why."""
    node_reasons = node_reasons or {}
    events = read_jsonl(run_dir / EVENTS_FILENAME)
    unexpected = [e for e in events if e.get("event") == "exited" and not e.get("expected") and e.get("node")]
    if file_system_is_full(run_dir):
        # The nodes' logs all end the same way; what each one said it could not write says more.
        stopped = ", ".join(sorted({e["node"] for e in unexpected} | set(node_reasons))) or "none"
        lines = [f"run failed: {run_dir}: no space left on its file system (nodes that stopped: {stopped})"]
        lines += [f"node {node_id} stopped: {said}" for node_id, said in sorted(node_reasons.items())]
        return lines
    lines = []
    finished = [e for e in events if e.get("event") == "run_finished"]
    if finished and finished[-1].get("reason"):
        lines.append(f"run failed: {finished[-1]['reason']}")
    for record in unexpected[:3]:
        node_id, code = record["node"], record.get("code")
        how = describe_exit_code(code) if isinstance(code, int) else "an unknown code"
        log_path = run_dir / NODES_DIRNAME / node_id / NODE_LOG_FILENAME
        tail = log_tail(log_path, tail_lines)
        lines.append(f"node {node_id} exited with {how}; " + (f"last lines of {log_path}:" if tail else f"{log_path} is empty"))
        lines.extend(f"  | {line}" for line in tail)
    if len(unexpected) > 3:
        lines.append(f"(and {len(unexpected) - 3} more unexpected exits; see {run_dir / EVENTS_FILENAME})")
    return lines
