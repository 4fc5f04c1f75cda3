"""Centralized-training runs through `orchestrate up`: PMIC agents fed by the env server's global view."""

from __future__ import annotations

import json

import pytest

from tests.integration.test_orchestrate import finished_ok, node_metrics, orchestrate, read_events

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


@pytest.mark.long
def test_tiny_pmic_run_learns_with_the_global_view_and_mi_shaping(tmp_path):
    run_dir = tmp_path / "run"
    process = orchestrate("up", "configs/tiny_pmic.yaml", "--run-dir", str(run_dir))
    stderr = finished_ok(process, timeout_s=200)
    assert all(e["code"] == 0 for e in read_events(run_dir) if e["event"] == "exited")
    for agent in ("agent_0", "agent_1", "agent_2"):
        records = node_metrics(run_dir, agent)
        learner = [r for r in records if "pmic/critic_loss" in r]  # the update metrics, not the counters
        assert learner, f"{agent} wrote no PMIC learner metrics"
        # PMIC's observe refuses transitions without global_state / joint_action / copy_index, so
        # gradient steps prove the node filled them; the buffers prove whole episodes were filed.
        assert sum(r["pmic/gradient_steps"] for r in learner) > 0
        assert learner[-1]["pmic/superior_size"] > 0 and learner[-1]["pmic/shaping_active"] == 1.0
        assert "i_superior_on_batch" in " ".join(learner[-1])


def test_tiny_run_records_a_dataset_with_the_global_view(tmp_path):
    import numpy as np

    from agent_node.offline.datasets import MultiAgentDataset

    run_dir = tmp_path / "run"
    process = orchestrate("up", "configs/tiny_record.yaml", "--run-dir", str(run_dir))
    stderr = finished_ok(process, timeout_s=200)
    dataset = MultiAgentDataset(run_dir / "dataset")
    assert dataset.agents == ["agent_0", "agent_1", "agent_2"]
    # 60 lockstep steps x 2 copies: the observations of steps 1..60 each end 2 transitions.
    joint = dataset.joint()
    assert joint["obs"].shape == (120, 3, 18) and joint["global_state"].shape == (120, 54)
    for index in range(3):
        # simple_spread's state() is the agents' observations in order; each agent's own action is
        # its one-hot slice of the joint action the env server published.
        np.testing.assert_allclose(joint["global_state"][:, 18 * index : 18 * index + 18], joint["obs"][:, index], rtol=1e-6)
        np.testing.assert_array_equal(joint["joint_action"][:, 5 * index : 5 * index + 5].argmax(1), joint["action"][:, index])
    assert np.array_equal(np.sort(np.unique(joint["copy"])), [0, 1])


# Long (about 18 s): it records a run, trains CQL on it and evaluates that with another run.
@pytest.mark.long
def test_offline_cql_from_a_recorded_run_then_evaluated_by_orchestrate_up(tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO

    record_dir = tmp_path / "record"
    process = orchestrate("up", "configs/tiny_record.yaml", "--run-dir", str(record_dir))
    stderr = finished_ok(process, timeout_s=200)
    checkpoints = tmp_path / "offline"
    trained = subprocess.run(
        [sys.executable, "-m", "agent_node.offline", "--dataset", str(record_dir / "dataset"), "--learner", "cql",
         "--gradient-steps", "100", "--hidden-sizes", "32", "--out", str(checkpoints)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    report = json.loads((checkpoints / "offline.json").read_text())
    assert all(agent["cql/gradient_steps"] == 100 and agent["rows"] == 120 for agent in report["agents"].values())

    eval_dir = tmp_path / "eval"
    process = orchestrate(
        "up", "configs/tiny_ring.yaml", "--run-dir", str(eval_dir),
        "--set", "agents.learner={kind: cql, hidden_sizes: [32]}", "--set", "agents.learning=false",
        "--set", f"agents.load_checkpoints={checkpoints}",
    )  # fmt: skip
    stderr = finished_ok(process, timeout_s=200)
    evaluations = node_metrics(eval_dir, "env")
    assert [e["step"] for e in evaluations if "eval/return_mean" in e] == [20, 40, 60]
    for agent in ("agent_0", "agent_1", "agent_2"):
        assert "loaded the initial checkpoint" in (eval_dir / "nodes" / agent / "log").read_text()
        records = node_metrics(eval_dir, agent)
        assert any("env/episode_return" in r for r in records)
        # The node logs the learner's counters at each evaluation: still the 100 offline steps.
        assert not any("cql/td_loss" in r for r in records), "learning: false must not train"
        assert [r["cql/gradient_steps"] for r in records if "cql/gradient_steps" in r] == [100.0] * 3


def test_offline_learner_in_a_learning_run_is_refused():
    from protocols.run.config_errors import ConfigError
    from orchestrator.config import load_config

    with pytest.raises(ConfigError, match="trains from a dataset"):
        load_config("configs/tiny_ring.yaml", ["agents.learner={kind: cql}"])
