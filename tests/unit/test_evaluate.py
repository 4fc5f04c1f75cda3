"""`orchestrate evaluate` without processes: the evaluation run's config, reading the env server's
per-episode returns, and the table. tests/integration/test_evaluate_run.py runs it for real."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.config import load_config
from orchestrator.evaluate import evaluation_config, format_returns, next_evaluation_dir, read_episode_returns, summary
from protocols.run.config_errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny_ring.yaml"
CTDE = ROOT / "configs" / "tiny_vdn.yaml"


def test_the_evaluation_config_loads_the_runs_checkpoints_and_runs_n_greedy_episodes(tmp_path):
    run = load_config(TINY, ["faults.schedule=[{at_step: 30, kind: kill, nodes: [agent_1]}]",
                             "protocols.consensus.enabled=true", "protocols.consensus.what=policy_parameters"])
    config = evaluation_config(run, tmp_path, episodes=4)
    assert config.agents.learning is False
    assert config.agents.load_checkpoints == str(tmp_path / "nodes")
    assert (config.run.steps, config.env.eval_every_steps, config.env.eval_episodes) == (1, 1, 4)
    assert config.faults.schedule == [] and not config.protocols.consensus.enabled
    assert config.run.name == "tiny_ring-eval" and config.run.seed == run.run.seed
    assert config.agents.learner == run.agents.learner and config.env.kwargs == run.env.kwargs


def test_the_evaluation_refuses_what_it_cannot_do(tmp_path):
    with pytest.raises(ConfigError, match="--episodes: expected at least 1, got 0"):
        evaluation_config(load_config(TINY), tmp_path, episodes=0)
    with pytest.raises(ConfigError, match="training.mode: evaluating a centrally trained run is not implemented"):
        evaluation_config(load_config(CTDE), tmp_path, episodes=2)
    for goal_config in ("goals_negotiation_hindsight.yaml", "amigo_pair.yaml"):
        with pytest.raises(ConfigError, match="agents.goals: evaluating goal-conditioned agents is not implemented"):
            evaluation_config(load_config(ROOT / "configs" / goal_config), tmp_path, episodes=2)


def test_a_world_model_trained_only_for_consensus_is_not_built_for_the_evaluation(tmp_path):
    # The main job as it was until 2026-11-27: DQN agents average a world model they never read.
    # The evaluation turns consensus off, so the model goes too; OG-MARL plans with its own, so it stays.
    main_job = load_config(ROOT / "configs" / "4agents_ring.yaml", [
        "protocols.consensus={enabled: true, what: world_model_parameters}", "agents.world_model={kind: ensemble}"])
    assert main_job.agents.world_model is not None
    assert evaluation_config(main_job, tmp_path, episodes=2).agents.world_model is None
    og_marl = load_config(ROOT / "configs" / "og_marl_ring5.yaml")
    assert evaluation_config(og_marl, tmp_path, episodes=2).agents.world_model == og_marl.agents.world_model


SHIPPED_CONFIGS = sorted(p.relative_to(ROOT) for p in [*(ROOT / "configs").glob("*.yaml"), *(ROOT / "examples").rglob("configs/*.yaml")])
# Why a shipped run cannot be evaluated (evaluation_config's own refusals); any other error is a defect.
STATED_REFUSALS = ("training.mode: evaluating a centrally trained run is not implemented",
                   "agents.goals: evaluating goal-conditioned agents is not implemented")


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=str)
def test_every_shipped_config_has_an_evaluation_config_or_a_stated_refusal(path, tmp_path):
    try:
        config = evaluation_config(load_config(ROOT / path), tmp_path, episodes=2)
    except ConfigError as error:
        assert any(reason in str(error) for reason in STATED_REFUSALS), str(error)
    else:
        assert config.agents.learning is False and not config.protocols.consensus.enabled


def test_evaluation_dirs_are_numbered_in_the_run(tmp_path):
    assert next_evaluation_dir(tmp_path) == tmp_path / "evaluations" / "1"
    (tmp_path / "evaluations" / "1").mkdir(parents=True)
    (tmp_path / "evaluations" / "7").mkdir()
    assert next_evaluation_dir(tmp_path) == tmp_path / "evaluations" / "8"


def test_the_episode_returns_are_read_from_the_env_servers_rows_and_tabled(tmp_path):
    metrics = tmp_path / "nodes" / "env" / "metrics.jsonl"
    metrics.parent.mkdir(parents=True)
    rows = [
        {"step": 1, "env/steps_per_s": 3.0},
        {"step": 1, "eval_episode/index": 0.0, "eval_episode/return/pursuer_0": -1.0, "eval_episode/return/pursuer_1": 3.0},
        {"step": 1, "eval_episode/index": 1.0, "eval_episode/return/pursuer_0": 2.0, "eval_episode/return/pursuer_1": 0.0},
        {"step": 1, "eval/return_mean": 1.0},
    ]
    metrics.write_text("".join(json.dumps(row) + "\n" for row in rows) + '{"cut sho')
    episodes = read_episode_returns(tmp_path)
    assert episodes == [{"pursuer_0": -1.0, "pursuer_1": 3.0}, {"pursuer_0": 2.0, "pursuer_1": 0.0}]
    table = format_returns(episodes, {"pursuer_0": "agent_0", "pursuer_1": "agent_1"}).splitlines()
    assert table[0].split() == ["episode", "pursuer_0", "(agent_0)", "pursuer_1", "(agent_1)", "mean"]
    assert table[1].split() == ["0", "-1.000", "3.000", "1.000"]
    assert table[3].split() == ["mean", "0.500", "1.500", "1.000"]
    assert read_episode_returns(tmp_path / "nowhere") == []


def test_the_summary_says_why_a_random_baseline_is_missing(tmp_path):
    episodes = [{"agent_0": 1.0, "agent_1": 3.0}]
    text = summary(tmp_path, tmp_path / "evaluations" / "1", episodes, (None, "ValueError: no"))
    assert "(no random baseline: ValueError: no)" in text.splitlines()
    text = summary(tmp_path, tmp_path / "evaluations" / "1", episodes, ([{"agent_0": 0.0, "agent_1": -1.0}], None))
    assert "mean return per agent: 2.000 trained, -0.500 random" in text.splitlines()
