"""AMIGo on MiniGrid through `orchestrate up`: configs/amigo_minigrid.yaml, two AMIGo students in their own
processes, each on its own copy of MiniGrid's KeyCorridorS3R3 with a network teacher of its own;
the teacher's t* and the goal metrics are logged. Needs the minigrid package."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.integration.test_amigo_run import check_amigo_student
from tests.integration.test_orchestrate import REPO, finished_ok, read_events

pytestmark = [pytest.mark.integration, pytest.mark.timeout(170), pytest.mark.long]

EPISODE = 30  # env.kwargs.max_steps below, shortened from the config's 270 to see several episodes


def test_amigo_on_minigrid_runs_with_network_teachers_and_logs_t_star(tmp_path):
    pytest.importorskip("minigrid")
    run_dir = tmp_path / "run"
    steps = 10 * EPISODE
    # The run's processes import minigrid where this test does (a venv, or a PYTHONPATH entry).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    # A teacher update per goal episode and t* += 1 after every 2 updates whose mean reward is
    # >= -0.5 (always, with alpha 0.7 and beta 0.3): the curriculum moves within a short run.
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "up", "configs/amigo_minigrid.yaml", "--run-dir", str(run_dir),
         "--set", f"run.steps={steps}", "--set", f"env.kwargs.max_steps={EPISODE}",
         "--set", f"agents.goals.amigo.max_steps={EPISODE}", "--set", "agents.learner.learning_starts=60",
         "--set", "agents.goals.amigo.teacher_batch_size=1", "--set", "agents.goals.amigo.difficulty_counts=2"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    stderr = finished_ok(process, timeout_s=160)
    assert all(e["code"] == 0 for e in read_events(run_dir) if e["event"] == "exited")
    for agent in ("agent_0", "agent_1"):
        check_amigo_student(run_dir, agent, steps, EPISODE, max_goal_distance=12)  # the 7x7 grid
