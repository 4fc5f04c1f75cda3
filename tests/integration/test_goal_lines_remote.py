"""goal_lines_v0 served by a real env server, driven through RemoteParallelEnv."""

from __future__ import annotations

import json

import pytest
from pettingzoo.test import parallel_api_test

from agent_node.remote_env import RemoteParallelEnv

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


# Only the all-active case: with a population of four and two drawn per episode the server
# awaits actions from every agent a client owns, also the inactive ones, while
# RemoteParallelEnv sends actions only for live agents, so the first step waits for its
# deadline (found here; the server and RemoteParallelEnv belong to issue 6).
@pytest.mark.parametrize("kwargs", [{"num_landmarks": 3, "max_steps": 15}, {"num_landmarks": 6, "max_steps": 15}])
def test_goal_lines_passes_the_api_test_through_the_env_server(env_server, kwargs):
    endpoint = env_server("--env", "goal_lines_v0", "--kwargs", json.dumps(kwargs), "--no-autoreset")
    env = RemoteParallelEnv(endpoint)
    try:
        assert env.metadata["name"] == "goal_lines_v0"
        parallel_api_test(env, num_cycles=40)
        observations, _ = env.reset(seed=5)
        assert sorted(observations) == ["agent_0", "agent_1"]
        assert observations["agent_0"].shape == env.observation_space("agent_0").shape
    finally:
        env.close()
