"""Landmark coverage as simple_spread measures it (env_server/evaluation.py) and as the report
gives it beside the assignment share: counted against mpe2's own benchmark_data, and on cases
where the agents' assignment is distinct (as the Hungarian method makes it) but the agents do not
cover their landmarks, so the coverage must come out low."""

from __future__ import annotations

import numpy as np
import pytest
from mpe2 import simple_spread_v3

from env_server.evaluation import EvaluationSchedule, landmarks_covered, spread_end_state
from orchestrator import report
from tests.conftest import write_jsonl

LANDMARKS = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])


def test_a_landmark_counts_only_with_an_agent_within_the_envs_distance():
    assert landmarks_covered(LANDMARKS + 0.05, LANDMARKS) == 4
    # Four agents on one landmark: a distinct assignment would still say "one each".
    assert landmarks_covered(np.zeros((4, 2)), LANDMARKS) == 1
    assert landmarks_covered(LANDMARKS + np.array([0.1, 0.0]), LANDMARKS) == 0  # 0.1 is not "within 0.1"
    assert landmarks_covered(LANDMARKS + 0.5, LANDMARKS) == 0


def test_the_count_agrees_with_mpe2s_occupied_landmarks():
    env = simple_spread_v3.parallel_env(N=4, max_cycles=25)
    rng = np.random.default_rng(0)
    env.reset(seed=3)
    raw = env.unwrapped
    for trial in range(20):
        for agent in raw.world.agents:  # some agents put on or near landmarks, some anywhere
            landmark = raw.world.landmarks[rng.integers(4)].state.p_pos
            agent.state.p_pos = landmark + rng.normal(scale=0.08, size=2) if rng.random() < 0.7 else rng.uniform(-1, 1, 2)
        agents, landmarks = spread_end_state(env)
        occupied = raw.scenario.benchmark_data(raw.world.agents[0], raw.world)[3]  # (rew, collisions, dists, occupied)
        assert landmarks_covered(agents, landmarks) == occupied
    env.close()


def test_other_envs_have_no_end_state():
    class NotSpread:
        pass

    assert spread_end_state(NotSpread()) is None


def test_an_evaluation_reports_coverage_at_the_end_of_its_episodes():
    schedule = EvaluationSchedule(every_steps=10)
    schedule.begin(held_back=None, missing=[], now=0.0)
    schedule.held_back = object()  # what a real begin holds: the training observation
    schedule.returns, schedule.agent_returns = [-10.0, -20.0], [{"a": -10.0}, {"a": -20.0}]
    everyone_home = (LANDMARKS.copy(), LANDMARKS)
    all_on_one = (np.zeros((4, 2)), LANDMARKS)
    _, metrics = schedule.finish(1.0, [everyone_home, all_on_one])
    assert metrics["eval/landmarks_covered"] == pytest.approx((1.0 + 0.25) / 2)
    assert metrics["eval/all_landmarks_covered"] == pytest.approx(0.5)
    schedule.begin(held_back=None, missing=[], now=2.0)
    schedule.held_back = object()
    _, metrics = schedule.finish(3.0, [None, None])  # not simple_spread: nothing said
    assert "eval/landmarks_covered" not in metrics


def test_the_report_puts_coverage_beside_a_distinct_assignment_that_cannot_fail(tmp_path):
    """Every assignment distinct and decided on the whole table, yet the agents end away from
    their landmarks: the report must say 100% distinct and low coverage, not one for the other."""
    (tmp_path / "resolved.yaml").write_text("run: {steps: 100}\n")
    write_jsonl(tmp_path / "events.jsonl", [{"t": 0.0, "event": "started", "node": None}])
    for index in range(4):
        # Goals code: one copy, agent i takes landmark i (base-4 digits): all distinct.
        rows = [{"step": step, "t": float(step), "landmarks/goals_code": float(index), "landmarks/copies": 1.0,
                 "landmarks/complete": 1.0, "landmarks/flood_duration_s": 0.01} for step in (0, 25, 50, 75)]
        rows += [{"step": step, "t": float(step), "landmarks/reached_pursued": 0.25, "landmarks/final_distance": 0.6}
                 for step in (25, 50, 75, 100)]
        write_jsonl(tmp_path / "nodes" / f"agent_{index}" / "metrics.jsonl", rows)
    write_jsonl(tmp_path / "nodes" / "env" / "metrics.jsonl", [
        {"step": step, "t": float(step), "eval/return_mean": -30.0, "eval/landmarks_covered": 0.25,
         "eval/all_landmarks_covered": 0.0} for step in (50, 100)])
    summary = report.summarize_run(tmp_path)
    landmarks, evaluation = summary["landmarks"], summary["evaluation"]
    assert landmarks["distinct_fraction"] == 1.0 and landmarks["complete_fraction"] == 1.0
    assert landmarks["reached_pursued"] == pytest.approx(0.25) and landmarks["final_distance"] == pytest.approx(0.6)
    assert evaluation["covered_fraction"] == pytest.approx(0.25) and evaluation["all_covered_fraction"] == 0.0
    assert summary["headline"]["eval_landmarks_covered"] == pytest.approx(0.25)
    import io

    from rich.console import Console

    out = io.StringIO()
    report.render_run(summary, Console(file=out, width=400))
    text = out.getvalue()
    assert "by construction" in text and "25.0% of landmarks covered" in text and "nearest its pursued landmark in 25.0%" in text


def test_the_report_gives_no_whole_table_share_when_each_agent_chose_alone(tmp_path):
    (tmp_path / "resolved.yaml").write_text("run: {steps: 100}\n")
    write_jsonl(tmp_path / "events.jsonl", [{"t": 0.0, "event": "started", "node": None}])
    for index in range(4):  # as `assignment: nearest` writes them: no flooding, no landmarks/complete
        write_jsonl(tmp_path / "nodes" / f"agent_{index}" / "metrics.jsonl", [
            {"step": 0, "t": 0.0, "landmarks/goals_code": 0.0, "landmarks/copies": 1.0, "landmarks/rows_known": 1.0},
            # and as runs before 2026-11-29 wrote them: complete 1 of a table never flooded
            {"step": 25, "t": 25.0, "landmarks/goals_code": 0.0, "landmarks/copies": 1.0, "landmarks/rows_known": 1.0,
             "landmarks/complete": 1.0}])
    summary = report.summarize_run(tmp_path)
    assert summary["landmarks"]["complete_fraction"] is None
    assert summary["headline"]["landmarks_complete_fraction"] is None
    assert summary["landmarks"]["distinct_fraction"] == 0.0  # all four on landmark 0
    import io

    from rich.console import Console

    out = io.StringIO()
    report.render_run(summary, Console(file=out, width=400))
    assert "each agent chose its nearest landmark alone (no table flooded)" in out.getvalue()
