"""Run dirs that cannot be written: a path under a file, a read-only file system, a directory
without write permission, a disk that is full before the run or fills during it.

Each case: exit 2 for a bad path given by the user, 1 for a disk that fills; one line naming the
path and the cause; no Python traceback on the terminal; nothing torn in events.jsonl or
metrics.jsonl; no node left running. The tmpfs cases need root (mount); they skip otherwise and
always unmount. Root ignores file permissions, so the "no write permission" case runs the
orchestrator as root *without* CAP_DAC_OVERRIDE (setpriv), against a directory owned by nobody.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, fill_disk
from tests.integration.test_orchestrate import assert_all_reaped, launched_pids, read_events

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def up(run_dir: Path, *extra: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [*prefix, sys.executable, "-m", "orchestrator", "up", "configs/tiny_ring.yaml", "--run-dir", str(run_dir), *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=200,
    )


def mount_tmpfs(mount_point: Path, options: str) -> None:
    mount_point.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {result.stderr.strip()}")


@pytest.fixture
def tmpfs(tmp_path):
    mounted: list[Path] = []

    def make(name: str, options: str) -> Path:
        mount_tmpfs(tmp_path / name, options)
        mounted.append(tmp_path / name)
        return tmp_path / name

    yield make
    for mount_point in mounted:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def assert_one_clear_line(result: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert result.returncode == code, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    matching = [line for line in result.stderr.splitlines() if all(needle in line for needle in needles)]
    assert matching, f"no line naming {needles} in: {result.stderr[-2000:]}"


def test_a_run_dir_under_a_file_exits_2_naming_the_path(tmp_path):
    (tmp_path / "a_file").write_text("not a directory")
    run_dir = tmp_path / "a_file" / "run"
    assert_one_clear_line(up(run_dir), 2, str(run_dir), "Not a directory")


def test_a_run_dir_on_a_read_only_file_system_exits_2_naming_the_path(tmpfs):
    run_dir = tmpfs("ro", "ro,size=64k") / "run"
    assert_one_clear_line(up(run_dir), 2, str(run_dir), "Read-only file system")


def not_mine(directory: Path) -> tuple[str, ...]:
    """Make `directory`, owned by nobody; return the command prefix that runs the orchestrator
    as root without the capabilities that ignore file permissions (skips without root/setpriv)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the orchestrator without CAP_DAC_OVERRIDE")
    directory.mkdir()
    os.chown(directory, 65534, 65534)  # nobody's
    directory.chmod(0o755)
    caps = "-dac_override,-dac_read_search,-fowner"
    return ("setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}")


def test_a_run_dir_without_write_permission_exits_2_naming_the_path(tmp_path):
    prefix = not_mine(tmp_path / "not_mine")
    run_dir = tmp_path / "not_mine" / "run"
    assert_one_clear_line(up(run_dir, prefix=prefix), 2, str(run_dir), "Permission denied")
    assert not run_dir.exists()


def up_under_root(root: Path, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`orchestrate up` without --run-dir: the run directory goes under `run.root`."""
    return subprocess.run(
        [*prefix, sys.executable, "-m", "orchestrator", "up", "configs/tiny_ring.yaml", "--set", f"run.root={root}"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=200,
    )  # fmt: skip


def test_a_run_root_that_is_a_file_exits_2_naming_the_path(tmp_path):
    root = tmp_path / "a_file"
    root.write_text("not a directory")
    result = up_under_root(root)
    assert_one_clear_line(result, 2, f"run.root {root}", "Not a directory")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_run_root_without_write_permission_exits_2_naming_the_path(tmp_path):
    root = tmp_path / "not_mine"
    result = up_under_root(root, prefix=not_mine(root))
    assert_one_clear_line(result, 2, f"run.root {root}", "Permission denied")
    assert list(root.iterdir()) == []


def test_a_disk_full_before_the_run_exits_1_and_leaves_no_run_dir(tmpfs):
    disk = tmpfs("full", "size=256k")
    fill_disk(disk / "filler")
    run_dir = disk / "run"
    assert_one_clear_line(up(run_dir), 1, str(run_dir), "No space left on device")
    assert not run_dir.exists()


@pytest.mark.long
def test_a_disk_that_fills_during_the_run_stops_it_cleanly_with_whole_lines(tmpfs):
    run_dir = tmpfs("fills", "size=256k") / "run"
    result = up(run_dir, "--set", "run.steps=1000000")
    assert_one_clear_line(result, 1, str(run_dir), "no space left")
    for path in [run_dir / "events.jsonl", *run_dir.glob("nodes/*/metrics.jsonl")]:
        text = path.read_text()
        assert text == "" or text.endswith("\n"), f"{path} ends with a torn line"
        for line in text.splitlines():
            json.loads(line)  # every line whole
    assert_all_reaped(launched_pids(read_events(run_dir)))
    # The terminal says which node stopped and which of its own files the disk refused; the
    # node's log says the same in one line, and no traceback runs through our code.
    said = [line for line in result.stderr.splitlines() if line.startswith("node ") and " stopped: cannot write to " in line]
    assert said, result.stderr[-3000:]
    for line in said:
        node = line.split()[1]
        assert f"cannot write to {run_dir}/nodes/{node}/" in line and line.endswith(": no space left on its file system"), line
        log = (run_dir / "nodes" / node / "log").read_text(errors="replace")
        assert f"ERROR stopping: {line.split(' stopped: ', 1)[1]}" in log, log[-3000:]
        for package in ("agent_node", "env_server", "protocols", "orchestrator"):
            assert f'File "{REPO}/{package}/' not in log, f"a traceback through {package} in {node}'s log: {log[-3000:]}"
