"""`protocols.talk` and `delay_steps` in a run config: what validate accepts and what it refuses,
naming the field (orchestrator/config.py `_talk_problems`, orchestrator/reproducibility.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config import load_config
from tests.unit.test_config import problems_for

ROOT = Path(__file__).resolve().parents[2]
MAIN_JOB = ROOT / "configs" / "4agents_ring.yaml"
GOALS = ROOT / "configs" / "goals_negotiation.yaml"
IN_STEPS = "protocols.talk=env_steps"
PEER_DELAY_5 = "network.links=[{role: peer_links, link: {delay_steps: 5, loss: 0.2}}]"


def test_the_main_job_talks_in_steps_on_peer_links_and_reproducibly_with_loss_in_the_step_clock():
    config = load_config(MAIN_JOB, [IN_STEPS, PEER_DELAY_5, "run.reproducible=true"])
    assert config.protocols.talk == "env_steps"
    assert config.network.link_in_steps_between("agent_0", "agent_1").delay_steps == 5
    # A peer link that names no delay counts one step; an env link never counts steps.
    plain = load_config(MAIN_JOB, [IN_STEPS])
    assert plain.network.link_in_steps_between("agent_0", "agent_1").delay_steps == 1
    assert not plain.network.link_in_steps_between("agent_0", "env").counts_steps


@pytest.mark.parametrize("overrides, expected", [
    ((PEER_DELAY_5,), "network.links.0.link.delay_steps: counts delay in env steps, which needs protocols.talk: env_steps"),
    ((IN_STEPS, "network.default_link.delay_steps=3"), "network.default_link.delay_steps: the default link is every env link too"),
    ((IN_STEPS, "network.links=[{node: agent_1, link: {delay_steps: 3}}]"), "only links between two agents can count env steps"),
    ((IN_STEPS, "network.links=[{role: peer_links, link: {delay_s: 0.1}}]"), "sets delay_s, wall-clock settings"),
    ((IN_STEPS, "protocols.consensus={enabled: true, what: policy_parameters, average_at_end: true}"),
     "protocols.consensus.average_at_end: the final average runs after the last env step"),
    ((IN_STEPS, "network.links=[{role: peer_links, link: {delay_steps: 0}}]"), "network.links.0.link.delay_steps: must be >= 1"),
])
def test_validate_refuses_what_talking_in_steps_cannot_do_naming_the_field(overrides, expected):
    assert any(expected in problem for problem in problems_for(*overrides, path=MAIN_JOB)), problems_for(*overrides, path=MAIN_JOB)


def test_goal_negotiation_talks_in_steps_without_the_episode_start_hold():
    found = problems_for(IN_STEPS, path=GOALS)  # the shipped config holds each episode start for its negotiation
    assert [problem.split(":")[0] for problem in found] == ["env.episode_start_hold_s"], found
    config = load_config(GOALS, [IN_STEPS, "env.episode_start_hold_s=0", PEER_DELAY_5])
    assert config.agents.goals.negotiation.round_timeout_steps == 5


def test_wall_clock_loss_on_an_env_link_stays_refused_in_a_reproducible_run():
    found = problems_for(IN_STEPS, "run.reproducible=true", "network.links=[{role: env_links, link: {loss: 0.1}}]", path=MAIN_JOB)
    assert any(problem.startswith("network.links.0.link.loss: expected no drops") for problem in found)


FLOOD_LOSS_ONLY = "network.links=[{role: peer_links, link: {delay_steps: 1, loss: 0.3, messages: [flood.table]}}]"


def test_loss_on_the_flooding_tables_only_is_a_reproducible_run_in_steps():
    config = load_config(MAIN_JOB, [IN_STEPS, FLOOD_LOSS_ONLY, "run.reproducible=true"])
    assert config.network.link_in_steps_between("agent_0", "agent_1").messages == ("flood.table",)
    assert config.network.link_in_steps_between("agent_0", "env").messages is None


@pytest.mark.parametrize("overrides, expected", [
    ((FLOOD_LOSS_ONLY,), "network.links.0.link.messages: limits a link's faults to message types, which only links "
                         "that count env steps do (protocols.talk: env_steps); wall-clock links (talk: free) do not implement it"),
    ((IN_STEPS, FLOOD_LOSS_ONLY.replace("flood.table", "flood.tables")),
     "network.links.0.link.messages: expected message types that peer links carry (consensus.bootstrap_request, "),
    ((IN_STEPS, "network.links=[{role: peer_links, link: {messages: [peer.step_mark]}}]"), "got unknown 'peer.step_mark'"),
    ((IN_STEPS, "network.default_link={loss: 0.1, messages: [flood.table]}"),
     "network.default_link.messages: the default link is every env link too"),
    ((IN_STEPS, "network.links=[{node: agent_1, link: {messages: [flood.table]}}]"),
     "network.links.0.link.messages: only links between two agents carry the protocols' messages"),
    ((IN_STEPS, "faults.schedule=[{at_step: 10, kind: link, nodes: [agent_1], link: {delay_steps: 1, messages: [flood.table]}}]"),
     "faults.schedule.0.link.messages: a link change that limits its faults to message types names its edges"),
    ((IN_STEPS, "faults.schedule=[{at_step: 10, kind: link, edges: [[agent_0, agent_1]], link: {loss: 1.0, messages: [flood.table]}}]"),
     "faults.schedule.0.link.messages: a link change that limits its faults to message types needs delay_steps"),
])
def test_validate_refuses_a_message_filter_that_would_do_nothing_naming_the_field(overrides, expected):
    found = problems_for(*overrides, path=MAIN_JOB)
    assert any(expected in problem for problem in found), found


def test_a_link_change_in_steps_may_limit_its_faults_to_one_message_type():
    config = load_config(MAIN_JOB, [IN_STEPS, "faults.schedule=[{at_step: 10, kind: link, edges: [[agent_0, agent_1]], "
                                              "link: {delay_steps: 1, loss: 1.0, messages: [hindsight.rows]}}]"])
    assert config.faults.schedule[0].link.messages == ("hindsight.rows",)
