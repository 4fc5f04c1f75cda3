"""`orchestrate sweep` and `orchestrate report` end to end: real runs of tiny configs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.integration.test_orchestrate import assert_all_reaped, finished_ok, launched_pids, read_events

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]


def orchestrate(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", *args], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def write_sweep(tmp_path: Path, **spec) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.mark.long  # (~20 s; the Ctrl-C sweep stays in the README's test command)
def test_a_two_point_loss_sweep_runs_and_reports(tmp_path):
    """Loss on the peer links, 0 or 0.5, both runs at once: both finish, and the report shows the
    loss the links realised, so the swept key reached the runs."""
    path = write_sweep(
        tmp_path, base=str(REPO / "configs" / "tiny_ring_links.yaml"),
        grid={"network.links.0.link.loss": [0.0, 0.5]}, seeds=[0],
        set={"network.links": [{"role": "peer_links", "link": {}}], "run.steps": 30,
             "protocols.consensus.period_steps": 10, "protocols.consensus.round_timeout_s": 0.5},
    )  # fmt: skip
    sweep_dir = tmp_path / "sweep"
    process = orchestrate("sweep", str(path), "--sweep-dir", str(sweep_dir), "--parallel", "2")
    stderr = finished_ok(process, timeout_s=240)

    index = json.loads((sweep_dir / "sweep.json").read_text())
    assert index["state"] == "finished"
    assert [(run["point"], run["status"], run["exit_code"]) for run in index["runs"]] == [
        ("p00-loss0.0", "ok", 0), ("p01-loss0.5", "ok", 0),
    ]  # fmt: skip
    for run in index["runs"]:
        events = read_events(Path(run["run_dir"]))
        assert events[-1]["event"] == "run_finished" and events[-1]["exit_code"] == 0
        assert f"--set network.links.0.link.loss={run['grid_values']['network.links.0.link.loss']}" in Path(run["log"]).read_text()

    reported = orchestrate("report", str(sweep_dir), "--json")
    stdout, stderr = reported.communicate(timeout=60)
    assert reported.returncode == 0, stderr.decode()[-3000:]
    points = json.loads(stdout)["points"]
    clean, lossy = (point["metrics"] for point in points)
    assert clean["peer_dropped_fraction"]["mean"] == 0.0
    assert lossy["peer_dropped_fraction"]["mean"] > 0.2  # 0.5 Bernoulli on a few dozen messages
    assert clean["return_last20"]["n"] == 1 and clean["steps_per_s"]["mean"] > 0

    table = orchestrate("report", str(Path(index["runs"][1]["run_dir"])))
    stdout, stderr = table.communicate(timeout=60)
    assert table.returncode == 0, stderr.decode()[-3000:]
    assert "agent_0 -> agent_1" in stdout.decode() and "consensus:" in stdout.decode()


@pytest.mark.long
def test_a_failed_run_is_recorded_and_the_sweep_goes_on(tmp_path):
    """A start-up timeout far too short fails the first point at run time (it validates); the
    second point still runs, and the sweep exits 1."""
    path = write_sweep(
        tmp_path, base=str(REPO / "configs" / "tiny_ring.yaml"),
        grid={"protocols.control.startup_timeout_s": [0.001, 60.0]}, seeds=[0], set={"run.steps": 10},
    )  # fmt: skip
    sweep_dir = tmp_path / "sweep"
    process = orchestrate("sweep", str(path), "--sweep-dir", str(sweep_dir))
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == 1, stderr.decode()[-3000:]
    runs = json.loads((sweep_dir / "sweep.json").read_text())["runs"]
    assert [(run["status"], run["exit_code"]) for run in runs] == [("failed", 1), ("ok", 0)]
    assert runs[0]["error_tail"], "the failed run's last log lines are kept in the index"
    assert "failed: p00-startup_timeout_s0.001-seed0 (exit 1)" in stderr.decode()


def test_ctrl_c_stops_the_sweep_and_every_process_of_its_runs(tmp_path):
    path = write_sweep(
        tmp_path, base=str(REPO / "configs" / "tiny_ring.yaml"),
        grid={"run.steps": [100000, 10]}, seeds=[0],
    )  # fmt: skip
    sweep_dir = tmp_path / "sweep"
    process = orchestrate("sweep", str(path), "--sweep-dir", str(sweep_dir))
    first = sweep_dir / "p00-steps100000-seed0"
    deadline = time.monotonic() + 150
    while not any(e["event"] == "started" for e in read_events(first)):
        assert process.poll() is None, process.communicate()[1].decode()[-3000:]
        assert time.monotonic() < deadline, "the first run never started"
        time.sleep(0.1)
    pids = launched_pids(read_events(first))
    process.send_signal(signal.SIGINT)
    stopped_at = time.monotonic()
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr.decode()[-3000:]
    assert time.monotonic() - stopped_at < 30
    assert_all_reaped(pids)
    index = json.loads((sweep_dir / "sweep.json").read_text())
    assert index["state"] == "interrupted"
    assert [(run["status"], run["exit_code"]) for run in index["runs"]] == [("interrupted", 130), ("not_started", None)]
    assert not (sweep_dir / "p01-steps10-seed0").exists()
    assert read_events(first)[-1]["event"] == "run_finished"  # the run shut itself down


def test_ctrl_c_while_a_run_is_still_starting_marks_it_interrupted(tmp_path):
    """The child `orchestrate up` is stopped before it launched anything (checking its config and
    env): it exits at once, is marked interrupted (not failed), and leaves nothing running."""
    path = write_sweep(tmp_path, base=str(REPO / "configs" / "tiny_ring.yaml"), grid={"run.steps": [100000, 10]}, seeds=[0])
    sweep_dir = tmp_path / "sweep"
    process = orchestrate("sweep", str(path), "--sweep-dir", str(sweep_dir))
    log = sweep_dir / "logs" / "p00-steps100000-seed0.log"
    deadline = time.monotonic() + 60
    while not log.exists():  # the first child has been started
        assert process.poll() is None, process.communicate()[1].decode()[-3000:]
        assert time.monotonic() < deadline, "the first run never started"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr.decode()[-3000:]
    runs = json.loads((sweep_dir / "sweep.json").read_text())["runs"]
    assert [run["status"] for run in runs] == ["interrupted", "not_started"]
    assert "failed:" not in stderr.decode()
    first = sweep_dir / "p00-steps100000-seed0"
    assert_all_reaped(launched_pids(read_events(first)))  # (none, if it had not launched yet)
