"""`orchestrate resume RUN_DIR`: a run stopped half-way goes on from what its nodes saved to its
budget, in its own directory; and what resume refuses, before anything starts."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from orchestrator.cli import main
from tests.integration.test_orchestrate import orchestrate, read_events

pytestmark = [pytest.mark.integration, pytest.mark.long, pytest.mark.timeout(600)]


def env_step(run_dir: Path) -> int:
    path = run_dir / "nodes" / "env" / "metrics.jsonl"
    steps = [0]
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                steps.append(int(json.loads(line).get("step", 0)))
            except json.JSONDecodeError:
                pass  # a line being written
    return max(steps)


def test_a_stopped_run_resumes_from_its_saved_state_to_its_budget(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # A budget the first run cannot finish between reaching step 150 and `down` taking effect,
    # even idle (a 400-step budget was spent in that window on an idle machine).
    budget = 1500
    overrides = ["--set", f"run.steps={budget}", "--set", "agents.checkpoint_every_steps=50",
                 "--set", "agents.replay_save_every_steps=50"]
    first = orchestrate("up", "configs/tiny_ring.yaml", "--run-dir", str(run_dir), *overrides)
    deadline = time.monotonic() + 240
    while env_step(run_dir) < 150 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert env_step(run_dir) >= 150, first.communicate(timeout=30)[1].decode()[-3000:]
    stop = orchestrate("down", str(run_dir), "--wait", "60")
    stop.communicate(timeout=90)
    first.communicate(timeout=90)
    assert first.returncode == 130  # stopped by SIGTERM, not finished
    stopped_at = env_step(run_dir)
    assert stopped_at < budget

    second = orchestrate("resume", str(run_dir))
    _, stderr = second.communicate(timeout=400)
    assert second.returncode == 0, stderr.decode()[-3000:]

    events = read_events(run_dir)
    assert [e["event"] for e in events].count("run_started") == 2
    assert events[-1]["event"] == "run_finished" and events[-1]["exit_code"] == 0
    assert env_step(run_dir) == budget
    # The env server went on from its resume point (not from step 0), and every agent from its
    # checkpoint and replay buffer.
    env_log = (run_dir / "nodes" / "env" / "log").read_text()
    assert "resumed at step" in env_log
    resumed_step = int(env_log.split("resumed at step ")[1].split()[0])
    assert 150 <= resumed_step <= stopped_at
    for node in ("agent_0", "agent_1", "agent_2"):
        log = (run_dir / "nodes" / node / "log").read_text()
        assert "restored checkpoint of step" in log and "replay transitions" in log, log[-2000:]

    # Finished now: nothing left to resume.
    assert main(["resume", str(run_dir)]) == 2


def test_resume_refuses_a_run_that_never_stepped(tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "dry"
    assert main(["up", "configs/tiny_ring.yaml", "--run-dir", str(run_dir), "--dry-run"]) == 0
    assert main(["resume", str(run_dir)]) == 2
    assert "has no resume point" in capsys.readouterr().err
