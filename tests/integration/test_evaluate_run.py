"""A trained policy looked at after its run: `orchestrate evaluate RUN_DIR` on a real tiny run
(with its random baseline), and the config route (`agents.learning=false`, `agents.load_checkpoints=<run dir>/nodes`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.test_orchestrate import finished_ok, node_metrics, orchestrate

pytestmark = [pytest.mark.integration, pytest.mark.long, pytest.mark.timeout(400)]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("evaluate") / "run"
    process = orchestrate("up", "configs/tiny_ring.yaml", "--run-dir", str(run_dir))
    stderr = finished_ok(process, timeout_s=150)
    return run_dir


def test_evaluate_prints_each_agents_return_per_episode_from_the_last_checkpoints(trained_run):
    process = orchestrate("evaluate", str(trained_run), "--episodes", "3")
    stdout, stderr = process.communicate(timeout=150)
    assert process.returncode == 0, stderr.decode()[-3000:]
    lines = stdout.decode().splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["episode"])
    assert lines[header].split() == ["episode", "agent_0", "agent_1", "agent_2", "mean"]
    rows = [line.split() for line in lines[header + 1 : header + 5]]
    assert [row[0] for row in rows] == ["0", "1", "2", "mean"]
    # The baseline: uniformly random actions on the same episodes, and the two means.
    assert "uniformly random actions on the same episodes:" in lines
    assert lines[-2].startswith("mean return per agent: ") and lines[-2].endswith(" random")
    evaluation_dir = trained_run / "evaluations" / "1"
    assert lines[-1] == f"evaluation run: {evaluation_dir}"
    # The numbers are the env server's, and each agent started from its node's checkpoint.
    env_rows = node_metrics(evaluation_dir, "env")
    episode_rows = [row for row in env_rows if "eval_episode/index" in row]
    assert [f"{row['eval_episode/return/agent_1']:.3f}" for row in episode_rows] == [row[2] for row in rows[:3]]
    for node in ("agent_0", "agent_1", "agent_2"):
        log = (evaluation_dir / "nodes" / node / "log").read_text()
        assert f"loaded the initial checkpoint {trained_run / 'nodes' / node / 'checkpoints' / 'latest.pt'}" in log


def test_a_run_starts_from_the_checkpoints_of_another_runs_nodes_dir(trained_run, tmp_path):
    process = orchestrate("up", "configs/tiny_ring.yaml", "--run-dir", str(tmp_path / "greedy"),
                          "--set", "agents.learning=false", "--set", f"agents.load_checkpoints={trained_run / 'nodes'}")
    stderr = finished_ok(process, timeout_s=150)
    assert "loaded the initial checkpoint" in (tmp_path / "greedy" / "nodes" / "agent_2" / "log").read_text()


def test_evaluate_renders_the_first_episode_into_a_gif(trained_run, tmp_path):
    from PIL import Image

    gif = tmp_path / "episode.gif"
    process = orchestrate("evaluate", str(trained_run), "--episodes", "2", "--render", str(gif))
    stdout, stderr = process.communicate(timeout=150)
    assert process.returncode == 0, stderr.decode()[-3000:]
    # tiny_ring's episodes last 10 steps: the reset's frame and one per step.
    assert "rendered the first episode (11 frames)" in stdout.decode()
    with Image.open(gif) as image:
        # Pillow folds a frame identical to the one before it into that one's duration.
        assert 2 <= image.n_frames <= 11 and image.size[0] > 100


def test_evaluate_render_wants_a_gif(trained_run, tmp_path):
    process = orchestrate("evaluate", str(trained_run), "--render", str(tmp_path / "episode.mp4"))
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2 and "--render: expected a path ending in .gif" in stderr.decode()
