"""Goal negotiation and hindsight talking in env steps on real processes: the Dec-IMSAP pair of
configs/goals_negotiation_hindsight.yaml with peer messages that take 2 env steps and lose 20%,
and no episode-start hold.

- Nothing held the env (`env/default_actions/*` 0), every negotiation landed inside its episode
  at least one delay after it started, and hindsight reports were applied.
- Run twice with `run.reproducible`, the second under load: the same metrics rows and checkpoints
  (the deadlines count steps, so timing decides nothing).
"""

from __future__ import annotations

import pytest

from tests.integration.test_orchestrate import node_metrics
from tests.integration.test_reproducible_runs import (
    PATIENT, PERTURBED, assert_same_state, checkpoint, run_idle_then_perturbed, seeded_rows,
)

pytestmark = [pytest.mark.integration, pytest.mark.long, pytest.mark.timeout(400)]

AGENTS = ["agent_0", "agent_1"]
DELAY_STEPS = 2
SETTINGS = (
    *PATIENT,
    "run.seed=5",
    "run.steps=600",
    "env.episode_start_hold_s=0",
    "agents.checkpoint_every_steps=600",
    "agents.learner.learning_starts=100",
    "protocols.talk=env_steps",
    f"network.links=[{{role: peer_links, link: {{delay_steps: {DELAY_STEPS}, loss: 0.2}}}}]",
)




def test_goal_negotiation_in_steps_holds_nothing_and_repeats_under_load(tmp_path):
    idle, loaded = run_idle_then_perturbed("configs/goals_negotiation_hindsight.yaml", SETTINGS, tmp_path)
    env_rows = node_metrics(idle, "env")
    assert all(value == 0 for row in env_rows for key, value in row.items() if key.startswith("env/default_actions/"))
    for agent in AGENTS:
        episodes = [row for row in node_metrics(idle, agent) if "goals/goal" in row]
        assert len(episodes) >= 10, f"{agent}: {len(episodes)} episodes"
        ages = [row["negotiation/decision_age_steps"] for row in episodes if "negotiation/decision_age_steps" in row]
        assert ages and min(ages) >= DELAY_STEPS, f"{agent}: a decision landed before a message could: {ages}"
        assert sum(row["negotiation/cut_by_episode_end"] for row in episodes) < len(episodes) / 2
        assert sum(row.get("hindsight/reports_applied", 0) for row in node_metrics(idle, agent)) > 0
        assert seeded_rows(loaded, agent) == seeded_rows(idle, agent), f"{agent}: the metrics rows differ"
        assert_same_state(checkpoint(loaded, agent), checkpoint(idle, agent), f"{agent} checkpoint")
