"""GoalDQNConfig lives with the other learner configs (no torch); a run config picks it together
with an agents.goals section (the node runs it with agent_node/goals/session.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import TypeAdapter, ValidationError

from agent_node.algos.config import GoalDQNConfig, LearnerConfig
from tests.conftest import REPO


def test_goal_dqn_config_validates_without_importing_torch():
    code = (
        "import sys; from agent_node.algos.config import GoalDQNConfig; "
        "GoalDQNConfig(her_strategy='final'); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"


def test_goal_dqn_config_refuses_bad_values():
    assert GoalDQNConfig().her_strategy == "future"
    with pytest.raises(ValidationError, match="her_strategy"):
        GoalDQNConfig(her_strategy="episode")
    with pytest.raises(ValidationError, match="extra"):
        GoalDQNConfig(her_K=4)


def test_the_learner_union_picks_goal_dqn_and_the_goals_section_checks_its_fields():
    assert isinstance(TypeAdapter(LearnerConfig).validate_python({"kind": "goal_dqn"}), GoalDQNConfig)
