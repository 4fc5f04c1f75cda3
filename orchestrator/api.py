"""Parley from Python: load a config, launch a run, follow its metrics, read its report.

For notebooks and scripts; `orchestrate validate` and `orchestrate up` go through the same steps
(`load`, `check`, `prepare`):

    from orchestrator import api

    config = api.load("configs/4agents_ring.yaml", {"run.seed": 1, "run.steps": 2000})
    run = api.launch(config)                     # checked, prepared, started; returns at once
    for record in run.metrics(follow=True):      # every node's metrics.jsonl lines as they come
        if "eval/return_mean" in record:
            print(record["step"], record["eval/return_mean"])
    run.wait()                                   # the exit code of `orchestrate up`
    run.report()["evaluation"]                   # what `orchestrate report --json` gives

`launch` checks everything `up` checks in this process (a bad config raises `ConfigError`, the
same lines `up` prints before it exits 2), writes the run directory, and starts the run in a
child process (`python -m orchestrator.api RUN_DIR`), which runs it exactly as `up` does: the
runtime installs its own signal handlers, which a notebook's process must keep. `Run` handles a
run started by `launch` or any run directory (`api.open_run`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from orchestrator.config import RESOLVED_FILENAME, RunConfig, load_config, load_resolved, validate_config
from orchestrator.overrides import apply_overrides
from orchestrator.backends import BackendUnavailable
from orchestrator.launcher import process_state
from orchestrator.plan import LaunchPlan
from orchestrator.rundir import (
    EVENTS_FILENAME, NODE_METRICS_FILENAME, NODES_DIRNAME, PID_FILENAME, RunDirError, find_run_dir, read_jsonl,
    remove_temp_socket_dir,
)
from protocols.run.config_errors import ConfigError
from protocols.storage.jsonlines import json_object

Overrides = Mapping[str, Any] | Sequence[str]


def _override_lines(overrides: Overrides) -> list[str]:
    """`{"run.seed": 1}` or `["run.seed=1"]` -> the `--set` lines; a value is written as YAML
    (flow style), so lists and maps override like `--set agents.learner.hidden_sizes=[32,32]`."""
    if isinstance(overrides, Mapping):
        import yaml

        return [f"{key}={yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix('...').strip()}"
                for key, value in overrides.items()]
    if isinstance(overrides, str):
        raise TypeError(f"overrides: expected a mapping or a list of 'key=value' strings, got the string {overrides!r}")
    return list(overrides)


def load(config: str | Path | Mapping[str, Any], overrides: Overrides = ()) -> RunConfig:
    """A validated run config from a YAML file or from plain data (a parsed YAML tree), with
    `--set`-style overrides applied first. Raises `ConfigError` naming every bad field."""
    lines = _override_lines(overrides)
    if isinstance(config, (str, Path)):
        return load_config(config, lines)
    if not isinstance(config, Mapping):
        raise TypeError(f"config: expected a path or a mapping of sections, got {type(config).__name__}")
    data = apply_overrides(dict(config), lines) if lines else dict(config)
    return validate_config(data, "<config>")


def check(config: RunConfig, source: str = "<config>") -> None:
    """What `validate` and `up` check beyond the schema, before anything starts: the bind host
    and the environment the config names (agent count, action spaces, checkpoints)."""
    from orchestrator.prelaunch import check_bind_host_before_launch, check_env_before_launch

    check_bind_host_before_launch(config, source)
    check_env_before_launch(config, source)


def prepare(config: RunConfig, run_dir: str | Path | None = None) -> tuple[RunConfig, Path]:
    """Create the run directory (private to this user) and write its resolved config; returns
    the resolved config and the directory. Raises `RunDirError` / `RunDirWriteError`."""
    from orchestrator.rundir import prepare_run

    # Everything the run writes (run dir, events, logs, metrics, keys, checkpoints) is readable
    # by this user only; restored afterwards, since a library must not change its caller's umask.
    previous = os.umask(0o077)
    try:
        return prepare_run(config, run_dir)
    finally:
        os.umask(previous)


def launch(config: RunConfig | str | Path, overrides: Overrides = (), *, run_dir: str | Path | None = None,
           source: str | None = None) -> Run:
    """Check `config` (a RunConfig, or a YAML path loaded with `overrides`), prepare its run
    directory, and start the run in a child process; returns its `Run` at once."""
    if isinstance(config, RunConfig):
        if overrides:
            raise TypeError("overrides: apply them with api.load(path, overrides), then launch the config it returns")
        source = source or "<config>"
    else:
        source = source or str(config)
        config = load(config, overrides)
    check(config, source)
    resolved, path = prepare(config, run_dir)
    log = open(path / "orchestrator.log", "ab")  # the child's stdout and stderr: what `up` prints
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.api", str(path)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_child_env(),
        )
    except OSError:
        remove_temp_socket_dir(resolved.runtime)
        raise
    finally:
        log.close()
    return Run(path, process)


def _child_env() -> dict[str, str]:
    """This process's environment, with the directories it imports from on the child's
    PYTHONPATH (a notebook that put a plugin's folder on sys.path passes it on)."""
    # The interpreter's own directories (stdlib, site-packages) the child finds by itself.
    own = tuple(str(Path(prefix).resolve()) for prefix in {sys.prefix, sys.base_prefix})
    paths = [entry for entry in sys.path
             if entry and Path(entry).is_dir() and not str(Path(entry).resolve()).startswith(own)]
    inherited = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([*(p for p in inherited.split(os.pathsep) if p), *paths])}


def open_run(run_dir: str | Path) -> Run:
    """A handle on an existing run directory (or the latest run under `runs/<name>`)."""
    return Run(find_run_dir(run_dir), None)


class Run:
    """One run's directory, and its process when this process launched it."""

    def __init__(self, run_dir: Path, process: subprocess.Popen | None) -> None:
        self.run_dir = Path(run_dir)
        self.process = process

    def __repr__(self) -> str:
        return f"Run({str(self.run_dir)!r}, {'running' if self.running() else 'ended'})"

    @property
    def config(self) -> RunConfig:
        """The resolved config the nodes read."""
        return load_resolved(self.run_dir / RESOLVED_FILENAME)

    def exit_code(self) -> int | None:
        """The exit code the orchestrator recorded when the run ended, or None while it runs."""
        finished = [e for e in read_jsonl(self.run_dir / EVENTS_FILENAME) if e.get("event") == "run_finished"]
        if finished:
            return int(finished[-1]["exit_code"])
        if self.process is not None and self.process.poll() is not None:
            return self.process.returncode  # ended before it could record (a launch that failed)
        return None

    def running(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return self.exit_code() is None and (self.run_dir / "orchestrator.pid").exists() and _orchestrator_alive(self.run_dir)

    def wait(self, timeout_s: float | None = None) -> int:
        """Block until the run ends; its exit code (`up`'s: 0 done, 1 a failure). TimeoutError
        after `timeout_s` (the run goes on; `stop` ends it)."""
        if self.process is not None:
            try:
                return self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                raise TimeoutError(f"{self.run_dir}: still running after {timeout_s} s") from None
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.running():
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{self.run_dir}: still running after {timeout_s} s")
            time.sleep(0.5)
        code = self.exit_code()
        return 1 if code is None else code

    def stop(self, wait_s: float = 30.0) -> int | None:
        """Ask the run to stop (SIGTERM to its orchestrator, as `orchestrate down`); its exit code,
        or None if it still runs after `wait_s`."""
        pid = self.process.pid if self.process is not None else _orchestrator_pid(self.run_dir)
        if pid is not None and self.running():
            os.kill(pid, signal.SIGTERM)
        try:
            return self.wait(wait_s)
        except TimeoutError:
            return None

    def nodes(self) -> list[str]:
        nodes_dir = self.run_dir / NODES_DIRNAME
        return sorted(p.name for p in nodes_dir.iterdir() if p.is_dir()) if nodes_dir.is_dir() else []

    def metrics(self, node: str | None = None, *, follow: bool = False, poll_s: float = 0.5) -> Iterator[dict[str, Any]]:
        """The metric records of one node (or of every node), each with its `node`; with
        `follow`, new records as the nodes write them, until the run ends."""
        offsets: dict[str, int] = {}
        while True:
            ended = not self.running() if follow else True
            for name in [node] if node is not None else self.nodes():
                for record in _read_new(self.run_dir / NODES_DIRNAME / name / NODE_METRICS_FILENAME, offsets, name):
                    yield {"node": name, **record}
            if ended:
                return
            time.sleep(poll_s)

    def evaluations(self) -> list[tuple[int, float]]:
        """(step, mean greedy return) of each evaluation the env server ran."""
        return [(r["step"], r["eval/return_mean"]) for r in self.metrics("env") if "eval/return_mean" in r]

    def report(self) -> dict[str, Any]:
        """Everything `orchestrate report` shows for this run, as data (`report --json`)."""
        from orchestrator.report import summarize_run

        return summarize_run(self.run_dir)


def _read_new(path: Path, offsets: dict[str, int], key: str) -> Iterator[dict[str, Any]]:
    """The whole JSON lines added to `path` since the last call (a torn last line waits)."""
    try:
        with open(path, "rb") as file:
            file.seek(offsets.get(key, 0))
            data = file.read()
    except FileNotFoundError:
        return
    complete = data[: data.rfind(b"\n") + 1]
    offsets[key] = offsets.get(key, 0) + len(complete)
    for line in complete.splitlines():
        record = json_object(line)
        if record is not None:
            yield record


def _orchestrator_pid(run_dir: Path) -> int | None:
    return orchestrator_pid(run_dir)


def _orchestrator_alive(run_dir: Path) -> bool:
    pid = _orchestrator_pid(run_dir)
    return pid is not None and process_alive(pid)


def _run_prepared(run_dir: str) -> int:
    """The child of `launch`: run the prepared run in `run_dir` as `up` does."""
    from orchestrator.plan import build_plan

    os.umask(0o077)
    path = Path(run_dir)
    try:
        resolved = load_resolved(path / RESOLVED_FILENAME)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    return run_prepared(build_plan(resolved, path), resolved, path)


# ------------------------------------------------------------------------------------------
# Running a prepared run, and whether a run's orchestrator lives (the CLI's `up`, `resume`,
# `status` and `down` use these too)
# ------------------------------------------------------------------------------------------


EXIT_FAILURE = 1  # a runtime failure, as `orchestrate` reports it


def _failed(message: str, code: int) -> int:
    print(message, file=sys.stderr)
    return code


def run_prepared(plan: LaunchPlan, resolved: RunConfig, run_dir: Path) -> int:
    """Run a prepared run to its end through the runtime, in this process; the exit code of
    `up` (`launch` starts one in a child process and returns at once)."""
    try:
        from orchestrator.runtime import run
        from protocols.net.transport import PortRangeExhausted
    except ImportError as error:
        remove_temp_socket_dir(resolved.runtime)
        return _failed(f"cannot start the run: orchestrator.runtime is not available ({error})", EXIT_FAILURE)
    try:
        return int(run(plan, resolved))
    except KeyboardInterrupt:
        return _failed("interrupted", EXIT_FAILURE)
    except BackendUnavailable as error:
        return _failed(f"cannot start the run: {error}", EXIT_FAILURE)
    except PortRangeExhausted as error:  # the control socket's bind, before any node started
        return _failed(f"cannot start the run: {error}", EXIT_FAILURE)
    except OSError as error:
        # The run dir became unwritable (disk full, read-only remount) before any node started.
        return _failed(f"cannot run in {run_dir}: {error.strerror or error}", EXIT_FAILURE)
    finally:
        remove_temp_socket_dir(resolved.runtime)


def orchestrator_pid(run_dir: Path) -> int | None:
    """The pid in `orchestrator.pid`, or None if there is no such file."""
    path = run_dir / PID_FILENAME
    if not path.exists():
        return None
    text = path.read_text().strip()
    if not text.isdigit():
        raise RunDirError(f"{path}: expected a process id, got {text!r}")
    return int(text)


def process_alive(pid: int) -> bool:
    """True if `pid` runs and (where /proc tells) is an orchestrator, not a recycled pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    state = process_state(pid)  # "Z": exited, not yet reaped
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return True
    return state is None or (state != "Z" and b"orchestrat" in cmdline)

if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m orchestrator.api RUN_DIR   (a run prepared by orchestrator.api.launch)", file=sys.stderr)
        sys.exit(2)
    sys.exit(_run_prepared(sys.argv[1]))
