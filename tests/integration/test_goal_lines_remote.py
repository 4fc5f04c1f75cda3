"""goal_lines_v0 served by a real env server, driven through RemoteParallelEnv."""

from __future__ import annotations

import json

import pytest
from pettingzoo.test import parallel_api_test

from agent_node.remote_env import RemoteEnvError, RemoteParallelEnv
from tests.conftest import read_line_with_deadline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


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


def test_a_drawn_population_steps_without_waiting_for_the_agents_that_sit_out(env_server):
    # Population 4, two drawn per episode: RemoteParallelEnv acts only for the two live agents;
    # the server must not wait for the other two (a 30 s deadline would fail the 5 s client wait).
    kwargs = {"num_landmarks": 3, "max_steps": 15, "population": 4, "active_per_episode": 2}
    endpoint = env_server("--env", "goal_lines_v0", "--kwargs", json.dumps(kwargs), "--no-autoreset",
                          "--step-deadline", "30")
    env = RemoteParallelEnv(endpoint, timeout_s=5.0)
    try:
        drawn = set()
        for episode in range(4):
            env.reset(seed=episode)
            assert len(env.agents) == 2
            drawn.update(env.agents)
            steps = 0
            while env.agents:
                env.step({a: env.action_space(a).sample() for a in env.agents})
                steps += 1
            assert 1 <= steps <= 15
        assert len(drawn) > 2, "episodes draw different agents"
        parallel_api_test(env, num_cycles=40)
    finally:
        env.close()


@pytest.mark.parametrize("forwarding", [[], ["--forward-infos", "achieved_goals,landmark"]], ids=["default", "named"])
def test_forwarded_infos_reach_the_client_and_match_a_local_env(env_server, forwarding):
    # By default the standalone server forwards every numeric info key, as a local env hands over its infos.
    from env_server.envs.goal_lines import parallel_env as goal_lines_env

    kwargs = {"num_landmarks": 3, "max_steps": 15, "population": 4, "active_per_episode": 2}
    endpoint = env_server("--env", "goal_lines_v0", "--kwargs", json.dumps(kwargs), "--no-autoreset", *forwarding)
    env = RemoteParallelEnv(endpoint, timeout_s=10.0)
    local = goal_lines_env(**kwargs)
    try:
        for episode in range(3):
            _, infos = env.reset(seed=20 + episode)
            _, local_infos = local.reset(seed=20 + episode)
            assert sorted(infos) == sorted(local_infos) == sorted(env.agents)
            while env.agents:
                for agent in infos:
                    assert sorted(infos[agent]) == sorted(local_infos[agent])
                    assert infos[agent]["landmark"] == local_infos[agent]["landmark"]
                    assert infos[agent]["achieved_goals"].tolist() == local_infos[agent]["achieved_goals"].tolist()
                actions = {a: env.action_space(a).sample() for a in env.agents}
                *_, infos = env.step(actions)
                *_, local_infos = local.step(actions)
                assert sorted(infos) == sorted(local_infos)
    finally:
        env.close()


def test_an_info_key_the_env_does_not_report_stops_the_server_with_its_name(spawn):
    import subprocess
    import sys

    process = spawn([sys.executable, "-m", "env_server", "--env", "goal_lines_v0", "--no-autoreset",
                     "--forward-infos", "landmark,goal"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = read_line_with_deadline(process, 60)
    assert line.startswith("READY "), line
    env = RemoteParallelEnv(line.split(" ", 1)[1], timeout_s=5.0)
    try:
        # The server stops at the first reset and tells its client why, at once.
        with pytest.raises(RemoteEnvError, match="env_server_stopped: .*forward_infos names \\['goal'\\]"):
            env.reset(seed=0)
    finally:
        env.close()
    _, stderr = process.communicate(timeout=30)
    assert process.returncode != 0
    assert "forward_infos names ['goal']" in stderr.decode()
