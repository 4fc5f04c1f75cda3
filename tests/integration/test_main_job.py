"""The main job through `orchestrate up`: the main job (configs/4agents_ring.yaml) agrees who covers
which landmark before every episode, shares its rows after it, averages the agents' policies,
evaluates against the env server's random and oracle lines, and reports all of it."""

from __future__ import annotations

import pytest

from orchestrator.report import summarize_run
from tests.integration.test_orchestrate import node_metrics, orchestrate, read_events

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

EPISODE = 25  # simple_spread's max_cycles in the config




def test_the_main_job_agrees_on_distinct_landmarks_every_episode_and_reports_its_curve(tmp_path):
    run_dir = tmp_path / "run"
    steps = 6 * EPISODE
    process = orchestrate(
        "up", "configs/4agents_ring.yaml", "--run-dir", str(run_dir), "--set", f"run.steps={steps}",
        "--set", "env.eval_every_steps=50", "--set", "env.eval_episodes=2", "--set", "agents.learner.learning_starts=256",
        "--set", "protocols.consensus.period_steps=75",
    )
    _, stderr = process.communicate(timeout=280)
    stderr = stderr.decode()
    assert process.returncode == 0, stderr[-3000:]
    assert all(e["code"] == 0 for e in read_events(run_dir) if e["event"] == "exited")
    assert "greedy evaluation (return per agent per episode)" in stderr and "scripted oracle" in stderr

    for agent in ("agent_0", "agent_1", "agent_2", "agent_3"):
        mine = node_metrics(run_dir, agent)
        decided = [r for r in mine if "landmarks/goals_code" in r]
        # One agreement per training episode start (the last start is the run's final observation).
        assert [r["step"] for r in decided] == list(range(0, steps, EPISODE))
        assert all(r["landmarks/complete"] == 1.0 and r["landmarks/rows_known"] == 4.0 for r in decided)
        ended = [r for r in mine if "hindsight/partner_rows_received" in r]
        assert ended and ended[-1]["hindsight/partner_rows_received"] > 0, "the ring neighbours' rows arrived"
        counters = [r for r in mine if "dqn/gradient_steps" in r]
        # The update ratio counts this agent's own rows only: 8 copies x steps / train_every 2.
        assert counters[-1]["dqn/rows_observed"] == 8 * steps and counters[-1]["dqn/steps_pending"] == 0

    summary = summarize_run(run_dir)
    assert summary["landmarks"]["distinct_fraction"] == 1.0  # lossless links: every copy, four landmarks
    # Whether they got there, as the env counts it (its value at this budget is not asserted).
    assert 0.0 <= summary["landmarks"]["reached_pursued"] <= 1.0
    assert 0.0 <= summary["evaluation"]["covered_fraction"] <= 1.0
    evaluation = summary["evaluation"]
    assert evaluation["evaluations"] == steps // 50
    assert evaluation["oracle"] > evaluation["random"]
    # The Q-networks averaged by consensus at step 75 (the run ends at 150, before a second one).
    # Its 2 rounds measure the neighbours' distance before the first mix and before the second:
    # Metropolis weights on a ring of 4 shrink every disagreement 3x a round (|eigenvalues| 1/3),
    # less what int8's rounding adds (2.9x in the run that set this bound).
    consensus = summary["consensus"]
    assert consensus["sessions"] == 4 and consensus["disagreement_last_mean"] < consensus["disagreement_first_mean"] / 2.5
    traffic = summary["peer_traffic"]
    assert set(traffic) == {f"agent_{i} -> agent_{j}" for i in range(4) for j in ((i + 1) % 4, (i - 1) % 4)}
    assert all(counters["bytes_sent"] > 0 for counters in traffic.values())
    assert (run_dir / "report" / "learning_curve.png").exists()
    assert "landmarks:" in (run_dir / "report" / "summary.md").read_text()
