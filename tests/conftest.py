"""Shared test fixtures: processes that are always reaped, sockets that are always closed."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import selectors
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from protocols.net.transport import Hub

REPO = Path(__file__).resolve().parents[1]


def load_bench(script: str | Path, module_name: str | None = None):
    """A bench script (`bench/<name>.py`, not a package) imported as a module, registered under
    `module_name` (default `bench_<name>`): dataclasses and pickling look their module up there."""
    path = Path(script) if Path(script).is_absolute() else REPO / "bench" / script
    name = module_name or f"bench_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def hub():
    """A private transport hub; every channel made on it is closed with linger 0 at teardown."""
    hub = Hub(sender="test", run_id="test")
    yield hub
    hub.close()


@pytest.fixture
def hubs():
    """`make(sender, **hub_options)`: hubs of run "r" speaking as `sender`, all closed at teardown."""
    made: list[Hub] = []

    def make(sender: str, **kwargs) -> Hub:
        hub = Hub(sender=sender, run_id="r", **kwargs)
        made.append(hub)
        return hub

    yield make
    for hub in made:
        hub.close()


@pytest.fixture
def raw_dealer():
    """`connect(endpoint, identity)`: a bare pyzmq DEALER (no hub, no envelope), for tests that put
    frames on the wire by hand or read them as they arrived; closed with its context at teardown."""
    import zmq

    context = zmq.Context()
    sockets = []

    def connect(endpoint: str, identity: bytes):
        socket = context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.IDENTITY, identity)
        socket.connect(endpoint)
        sockets.append(socket)
        return socket

    yield connect
    for socket in sockets:
        socket.close(linger=0)
    context.term()


@contextlib.contextmanager
def reaped(process: subprocess.Popen):
    """Leave the block with `process` gone: killed and waited for if still running (the test
    failed or timed out half way), so no child outlives its test."""
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def read_line_with_deadline(process: subprocess.Popen, timeout_s: float) -> str:
    """The next stdout line of `process`, or an AssertionError naming what it printed instead."""
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout_s
    while (remaining := deadline - time.monotonic()) > 0:
        if selector.select(remaining):
            line = process.stdout.readline()
            if line:
                return line.decode().strip()
            break  # EOF: the process died
    returncode = process.poll()
    process.kill()
    _, stderr = process.communicate(timeout=5)
    state = "still running" if returncode is None else f"exited with {returncode}"
    raise AssertionError(f"no line within {timeout_s} s ({state}); stderr:\n{stderr.decode()[-3000:]}")


@pytest.fixture
def spawn():
    """Start child processes for a test; all of them are terminated and reaped at teardown."""
    children: list[subprocess.Popen] = []

    def start(argv: list[str], **kwargs) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **kwargs.pop("env", {})}
        process = subprocess.Popen(argv, cwd=kwargs.pop("cwd", REPO), env=env, start_new_session=True, **kwargs)
        children.append(process)
        return process

    yield start
    for process in children:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in children:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture(params=["zmq", "shm"])
def lockstep_transport(request) -> str:
    """Run the test once per path of the lockstep's bodies (tests/integration/lockstep_paths.py)."""
    return request.param


@pytest.fixture
def env_server(spawn):
    """Start a standalone env server; returns its endpoint once it printed READY."""

    def start(*args: str) -> str:
        process = spawn(
            [sys.executable, "-m", "env_server", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        line = read_line_with_deadline(process, 60)
        assert line.startswith("READY "), line
        return line.split(" ", 1)[1]

    return start


class RecordingLink:
    """A peer link without a socket: what the mesh sends over it is kept in `sent`."""

    def __init__(self) -> None:
        self.sent: list = []

    def send(self, message) -> None:
        self.sent.append(message)


def through_a_checkpoint(state):
    """What a node's checkpoint does to a state dict: torch.save, then torch.load(weights_only=True)
    (so a state that needs arbitrary pickling fails here as it would on resume)."""
    import io

    import torch

    stream = io.BytesIO()
    torch.save(state, stream)
    stream.seek(0)
    return torch.load(stream, weights_only=True)


def assert_goes_on_alike(original, resumed, transition) -> None:
    """Both learners observe `transition` and update: the same metrics, then the same parameters
    (a learner resumed from a checkpoint goes on exactly as the original would)."""
    import numpy as np

    for learner in (original, resumed):
        learner.observe(transition)
    assert resumed.update() == original.update()
    for name, value in original.get_params().items():
        np.testing.assert_array_equal(resumed.get_params()[name], value)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """`rows` as a JSON-lines file at `path` (its folders made): a run's metrics or events by hand."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def fill_disk(path, chunk_bytes: int = 4096) -> None:
    """Write `path` until its file system is full (the OSError that says so is expected)."""
    with pytest.raises(OSError):
        with open(path, "wb") as file:
            while True:
                file.write(b"x" * chunk_bytes)
                file.flush()


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 64 KiB tmpfs (root only: skipped otherwise), for disks that fill up; always unmounted."""
    mount_point = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
