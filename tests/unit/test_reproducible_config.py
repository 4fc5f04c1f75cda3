"""`run.reproducible`: the settings it cannot make reproducible are refused, each with its reason;
the update-ratio bound it needs is its default and survives resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config import load_config, read_yaml, resolve, validate_config, write_resolved
from protocols.run.config_errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny_ring.yaml"
REPRODUCIBLE = "run.reproducible=true"


def problems_for(*overrides: str, path: Path = TINY) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, [REPRODUCIBLE, *overrides])
    return list(caught.value.problems)


def test_a_reproducible_run_owes_nothing_before_acting_by_default_and_its_resolved_file_says_so(tmp_path):
    config = load_config(TINY, [REPRODUCIBLE])
    assert config.run.reproducible and config.agents.max_pending_gradient_steps == 0
    assert load_config(TINY, []).agents.max_pending_gradient_steps == 64  # the mode changes only its own runs
    written = write_resolved(config, tmp_path)
    again = validate_config(read_yaml(written))
    assert again.agents.max_pending_gradient_steps == 0 and resolve(again)["run"]["reproducible"] is True


def test_an_update_ratio_with_slack_is_refused():
    assert load_config(TINY, [REPRODUCIBLE, "agents.max_pending_gradient_steps=0"]).agents.max_pending_gradient_steps == 0
    (problem,) = problems_for("agents.max_pending_gradient_steps=8")
    assert problem.startswith("agents.max_pending_gradient_steps: expected 0") and "got 8" in problem


@pytest.mark.parametrize(
    ("overrides", "field", "reason"),
    [
        (("protocols.consensus={enabled: true, what: policy_parameters, mode: push_sum}",), "protocols.consensus.mode", "asynchronous"),
        (("faults.schedule=[{at_s: 5, kind: kill, nodes: [agent_1]}]",), "faults.schedule", "checkpoint"),
        (("network.partitions=[[agent_0], [agent_1, agent_2]]",), "network.partitions", "runs out"),
        (("network.default_link={loss: 0.05}",), "network.default_link.loss", "heartbeats"),
        (("network.default_link={duplicate: 0.01}",), "network.default_link.duplicate", "heartbeats"),
        (("network.default_link={bandwidth_bytes_per_s: 1e6, queue_limit_bytes: 1e4}",), "network.default_link.queue_limit_bytes", "heartbeats"),
        (
            ("network.links=[{role: peer_links, link: {loss_model: gilbert_elliott, ge_p_good_to_bad: 0.1}}]",),
            "network.links.0.link.loss_model",
            "heartbeats",
        ),
    ],
)
def test_what_timing_would_decide_is_refused_with_its_reason(overrides, field, reason):
    problems = problems_for(*overrides)
    mine = [p for p in problems if p.startswith(f"{field}:")]
    assert len(mine) == 1, problems
    assert "run.reproducible: true" in mine[0] and reason in mine[0]


def test_centralized_training_and_goal_negotiation_are_refused():
    problems = problems_for(path=ROOT / "configs" / "tiny_qmix.yaml")
    assert any(p.startswith("training.mode: expected 'decentralized'") for p in problems), problems
    problems = problems_for(path=ROOT / "configs" / "goals_negotiation_hindsight.yaml")
    assert any(p.startswith("agents.goals: expected none") for p in problems), problems


def test_goal_negotiation_talking_in_env_steps_is_reproducible():
    config = load_config(ROOT / "configs" / "goals_negotiation_hindsight.yaml", [
        "run.reproducible=true", "protocols.talk=env_steps", "env.episode_start_hold_s=0",
        "network.links=[{role: peer_links, link: {delay_steps: 2, loss: 0.2}}]"])
    assert config.run.reproducible and config.agents.goals.selection == "negotiation"


def test_what_only_changes_when_a_message_arrives_is_allowed():
    config = load_config(TINY, [
        REPRODUCIBLE,
        "network.default_link={delay_s: 0.01, jitter_s: 0.005, reorder: 0.1, bandwidth_bytes_per_s: 1e6}",
        "protocols.consensus={enabled: true, what: policy_parameters, mode: sync}",
        "faults.restart.policy=on-failure",  # a restart happens only after a failure, and is recorded
    ])  # fmt: skip
    assert config.run.reproducible


def test_without_the_mode_nothing_is_refused():
    config = load_config(TINY, ["network.default_link={loss: 0.05}", "agents.max_pending_gradient_steps=8"])
    assert not config.run.reproducible
