"""AMIGo through `orchestrate up`: AMIGo students in their own processes, each with a teacher of
its own proposing treasure_room cells (configs/amigo_pair.yaml); the teacher's metrics are logged."""

from __future__ import annotations

import pytest

from tests.integration.test_orchestrate import finished_ok, node_metrics, orchestrate, read_events

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

EPISODE = 50  # treasure_room max_steps in the config




def check_amigo_student(run_dir, agent: str, steps: int, episode: int, max_goal_distance: int) -> list[dict]:
    """What an AMIGo student's metrics show after a run of `steps` steps in `episode`-step episodes,
    with a teacher update per goal episode (teacher_batch_size 1) and t* moving after every 2
    updates (difficulty_counts 2), whatever the env: every episode ended and recorded once, goals
    proposed and reached in range, the t* schedule run in the node, the student trained. Returns
    the records of the episodes' ends, for the env's own checks."""
    mine = node_metrics(run_dir, agent)
    ended = [r for r in mine if "amigo/t_star" in r]
    # Every episode ends (at `episode` steps, or earlier on success), and is recorded once.
    assert len(ended) >= steps // episode and ended[-1]["amigo/episode_end_step"] == steps
    for record in ended:
        assert record["amigo/goals_proposed"] >= 1 and 0 <= record["amigo/goals_reached"] <= record["amigo/goals_proposed"]
        assert 1 <= record["amigo/goal_distance"] <= max_goal_distance, "a cell of the grid, never the student's own"
    updates = ended[-1]["amigo/teacher_updates"]
    assert updates == sum(r["amigo/goals_proposed"] for r in ended), "one update per goal episode (batch of 1)"
    assert ended[-1]["amigo/t_star"] == 7 + updates // 2, "the t* schedule ran in the node"
    counters = [r for r in mine if "goal_dqn/gradient_steps" in r]
    assert counters and counters[-1]["goal_dqn/gradient_steps"] > 0, "the student learned"
    return ended


@pytest.mark.parametrize("config", ["configs/amigo_pair.yaml", "configs/amigo_pair_bebold.yaml"])
def test_an_amigo_pair_runs_and_logs_t_star_goal_difficulty_and_success(tmp_path, config):
    run_dir = tmp_path / "run"
    steps = 8 * EPISODE
    # A teacher update per goal episode and t* += 1 after every 2 updates whose mean reward is
    # >= -0.5 (always, with alpha 0.7 and beta 0.3): the curriculum moves within a short run.
    process = orchestrate(
        "up", config, "--run-dir", str(run_dir), "--set", f"run.steps={steps}",
        "--set", "agents.learner.learning_starts=80", "--set", "agents.goals.amigo.teacher_batch_size=1",
        "--set", "agents.goals.amigo.difficulty_counts=2",
    )
    stderr = finished_ok(process, timeout_s=110)
    assert all(e["code"] == 0 for e in read_events(run_dir) if e["event"] == "exited")
    for agent in ("agent_0", "agent_1"):
        ended = check_amigo_student(run_dir, agent, steps, EPISODE, max_goal_distance=24)
        for record in ended:
            assert 0.0 <= record["amigo/reach_rate"] <= 1.0
            assert record["amigo/extrinsic_success"] in (0.0, 1.0)
            assert ("amigo/novelty_return" in record) == config.endswith("bebold.yaml")
