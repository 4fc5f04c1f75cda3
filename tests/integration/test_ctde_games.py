"""Issue 34 through `orchestrate up`: the QMIX paper's two-step game, trained under uniform
exploration by the learner node, lands where the paper says (QMIX 8, VDN 7), and the final
checkpoint's Q_tot table is QMIX's (the true Q* with gamma 0.99) or additive (VDN)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from env_server.envs import two_step
from tests.integration.test_orchestrate import orchestrate

pytestmark = [pytest.mark.integration, pytest.mark.long, pytest.mark.timeout(600)]


def final_team_return(run_dir: Path) -> float:
    records = [json.loads(line) for line in (run_dir / "nodes" / "env" / "metrics.jsonl").read_text().splitlines()]
    evaluations = [r["eval/return_mean"] for r in records if "eval/return_mean" in r]
    return 2 * evaluations[-1]  # the mean over the two agents, each paid half of the team's payoff


@pytest.mark.parametrize("mixer", ["qmix", "vdn"])
def test_two_step_game_through_the_learner_node_lands_where_the_paper_says(tmp_path, mixer):
    from agent_node.learner_node import load_trained_learner

    run_dir = tmp_path / "run"
    process = orchestrate("up", "configs/games_two_step.yaml", "--run-dir", str(run_dir), "--set", f"training.mixer={mixer}")
    _, stderr = process.communicate(timeout=540)
    assert process.returncode == 0, stderr.decode()[-3000:]
    assert final_team_return(run_dir) == {"qmix": 8.0, "vdn": 7.0}[mixer]

    learner = load_trained_learner(run_dir)
    env = two_step.parallel_env()
    tables = {}
    for stage in env.stage_names:
        obs = env.stage_observation(stage)
        tables[stage] = learner.joint_q_table(np.stack([obs, obs]), obs)
    if mixer == "qmix":
        for stage, paper in two_step.PAPER_Q_TOT["qmix"].items():
            np.testing.assert_allclose(tables[stage], paper, atol=0.1, err_msg=f"stage {stage}")
    else:
        # Additive in every stage (u_0's effect does not depend on u_1), so it cannot hold 2B's 8.
        for table in tables.values():
            assert table[0, 0] + table[1, 1] == pytest.approx(table[0, 1] + table[1, 0], abs=1e-4)
        assert tables["2B"][1, 1] < 7.0 and tables["1"][0].max() > tables["1"][1].max()
