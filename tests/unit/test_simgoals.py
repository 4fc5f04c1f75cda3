"""The goal protocols for many simulated agents under faults (protocols/sim/simgoals.py): the real team
flood and hindsight engines on 64 agents with 30% loss, heavy-tailed delays and crashed agents,
their invariants held, and a broken engine caught."""

from __future__ import annotations

from dataclasses import replace

import pytest

from protocols.sim import simgoals
from protocols.engines.hindsight import HindsightEngine
from protocols.engines.team_negotiation import TeamNegotiationEngine
from protocols.engines.topology import exponential, grid, ring


@pytest.mark.parametrize("topology", [exponential(64), grid(8, 8, torus=True)], ids=["exponential", "torus"])
def test_the_team_flood_on_64_agents_under_faults_agrees_within_its_bound(topology):
    result = simgoals.run_goal_plan(topology, "team_flood", seed=0, episodes=2)
    assert result.violations == []
    assert result.live_agents == 61 and result.live_components == 1  # 3 crashed, the rest still connected
    # With one round beyond the diameter, the flood reaches every live agent despite 30% loss (seeded: the same every run).
    assert result.follow_winner == 1.0 and result.team_aligned == 1.0
    assert result.decision_bound_s == (topology.diameter() + 1) * 0.5
    assert result.decision_s_max <= result.decision_bound_s + simgoals.BOUND_SLACK_S


def test_crashed_agents_that_cut_a_ring_leave_teams_that_each_agree():
    result = simgoals.run_goal_plan(ring(64), "team_flood", seed=0, episodes=1)
    assert result.violations == [] and result.live_components == 3
    assert result.follow_winner == 1.0 and result.team_aligned == 0.0  # each piece follows its own winner


def test_hindsight_on_64_agents_applies_what_arrives_once_and_unaltered():
    result = simgoals.run_goal_plan(exponential(64), "hindsight", seed=0, episodes=3)
    assert result.violations == []
    # Nothing retransmits: about the loss rate of the reports between live neighbours is missing.
    assert 0.2 < result.reports_missing < 0.4
    assert result.reports_applied + result.reports_missing == pytest.approx(1.0)


def test_a_flood_engine_that_makes_up_a_goal_is_caught(monkeypatch):
    class MadeUpGoal(TeamNegotiationEngine):
        @property
        def result(self):
            outcome = super().result
            return replace(outcome, goal=(outcome.goal + 1) % simgoals.NUM_GOALS)

    monkeypatch.setattr(simgoals, "TeamNegotiationEngine", MadeUpGoal)
    result = simgoals.run_goal_plan(grid(4, 4, torus=True), "team_flood", seed=1, episodes=1, crash_fraction=0.0)
    assert result.violations and all("but" in violation and "proposed" in violation for violation in result.violations)


def test_a_hindsight_engine_that_alters_a_report_is_caught(monkeypatch):
    class Garbling(HindsightEngine):
        @property
        def result(self):
            outcome = super().result
            return replace(outcome, from_partners={partner: events[1:] for partner, events in outcome.from_partners.items()})

    monkeypatch.setattr(simgoals, "HindsightEngine", Garbling)
    result = simgoals.run_goal_plan(grid(4, 4, torus=True), "hindsight", seed=1, episodes=2, crash_fraction=0.0)
    assert any("saw" in violation for violation in result.violations)


def test_bad_plans_are_refused():
    with pytest.raises(ValueError, match="expected 'team_flood' or 'hindsight'"):
        simgoals.run_goal_plan(ring(4), "naming_game")
