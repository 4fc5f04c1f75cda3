"""The matrix games through `orchestrate up`: the QMIX paper's two-step game, trained under uniform
exploration by the learner node, lands where the paper says (QMIX 8, VDN 7), and the final
checkpoint's Q_tot table is QMIX's (the true Q* with gamma 0.99) or additive (VDN); on the
non-monotonic game VDN's Q_tot is the least-squares additive projection of the payoffs: at a small
budget, of the rows it trained on (the optimizer converges), and at the bench's budget within 0.1
of the analytic projection (the data are then near enough to uniform)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from env_server.envs import nonmonotonic, two_step
from tests.integration.test_orchestrate import finished_ok, node_metrics, orchestrate

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def final_team_return(run_dir: Path) -> float:
    records = node_metrics(run_dir, "env")
    evaluations = [r["eval/return_mean"] for r in records if "eval/return_mean" in r]
    return 2 * evaluations[-1]  # the mean over the two agents, each paid half of the team's payoff


@pytest.mark.long
@pytest.mark.parametrize("mixer", ["qmix", "vdn"])
def test_two_step_game_through_the_learner_node_lands_where_the_paper_says(tmp_path, mixer):
    from agent_node.ctde.learner_node import load_trained_learner

    run_dir = tmp_path / "run"
    process = orchestrate("up", "configs/games_two_step.yaml", "--run-dir", str(run_dir), "--set", f"training.mixer={mixer}")
    stderr = finished_ok(process, timeout_s=540)
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


def nonmonotonic_vdn_run(run_dir: Path, *overrides: str, timeout_s: float = 570) -> tuple[np.ndarray, np.ndarray]:
    """(VDN's final Q_tot table, the least-squares additive fit of the rows in its replay)."""
    from agent_node.ctde.learner_node import load_trained_learner

    sets = [arg for override in ("training.mixer=vdn", *overrides) for arg in ("--set", override)]
    process = orchestrate("up", "configs/games_nonmonotonic.yaml", "--run-dir", str(run_dir), *sets)
    stderr = finished_ok(process, timeout_s=timeout_s)
    assert final_team_return(run_dir) == 0.0  # the projection's greedy cell lies in the zero block
    obs = nonmonotonic.parallel_env().stage_observation("matrix")
    learned = load_trained_learner(run_dir).joint_q_table(np.stack([obs, obs]), obs)
    with np.load(run_dir / "nodes" / "learner" / "replay" / "joint.npz", allow_pickle=False) as saved:
        data_fit = nonmonotonic.empirical_additive_fit(saved["action"], saved["reward"])
    return learned, data_fit


# Long (about 16 s): a whole run of the matrix game, then the fit against its rows.
@pytest.mark.long
def test_nonmonotonic_game_vdn_fits_the_least_squares_projection_of_its_rows_at_a_small_budget(tmp_path):
    # 32 copies x 400 steps = 12,800 rows, one gradient step per 4 (2,944 steps at batch 1,024), the
    # rate decayed to 1e-5 over them. Too few rows for the analytic table (the fit of 12,800 drawn
    # rows misses it by a median 0.22: bench/vdn_projection.py data), but VDN must land on the fit
    # of the rows it had, within the 0.1. (Not much closer at this budget: the rate is
    # already low when the last rows come in; it was 0.07 when this was written.)
    learned, data_fit = nonmonotonic_vdn_run(
        tmp_path / "run", "run.steps=400", "env.num_copies=32", "env.eval_every_steps=400",
        "agents.learner.buffer_size=12800", "agents.learner.train_every=4", "agents.learner.learning_rate_decay_steps=2944")
    np.testing.assert_allclose(learned, data_fit, atol=0.1)


# The bench's budget: ~9 minutes here, so `extended` (`make test-extended`), not CI; the test above
# runs the same path at a budget CI can afford.
@pytest.mark.long
@pytest.mark.extended
@pytest.mark.timeout(1500)
def test_nonmonotonic_game_vdn_lands_within_0_1_of_the_analytic_projection(tmp_path):
    # The bench's config as it is: 819,200 rows, one gradient step per 128, the decaying rate
    # (minutes on two cores; seed 0's rows fit the projection to 0.018, and the learned table was
    # 0.015 from that fit, 0.028 from the projection, in the bench's third pass).
    learned, data_fit = nonmonotonic_vdn_run(tmp_path / "run", timeout_s=1440)  # ~5 min a run beside another, 8-12 min loaded
    np.testing.assert_allclose(learned, nonmonotonic.additive_projection(nonmonotonic.PAYOFF), atol=0.1)
    np.testing.assert_allclose(learned, data_fit, atol=0.1)
