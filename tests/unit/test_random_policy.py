"""The random baseline of `orchestrate evaluate` (env_server/random_policy.py)."""

from __future__ import annotations

import json

import numpy as np

from env_server.random_policy import main, random_returns
from env_server.registry import make_env
from env_server.vector import VectorizedParallelEnv

KWARGS = {"N": 2, "max_cycles": 5}


def test_random_returns_are_per_agent_per_episode_and_the_same_every_time():
    first = random_returns("mpe2.simple_spread_v3", KWARGS, construction_seed=1, eval_seed=40, episodes=3)
    assert len(first) == 3 and all(set(row) == {"agent_0", "agent_1"} for row in first)
    assert len({row["agent_0"] for row in first}) == 3  # three different episodes
    assert random_returns("mpe2.simple_spread_v3", KWARGS, construction_seed=1, eval_seed=40, episodes=3) == first


def test_episode_i_starts_where_the_servers_evaluation_copy_i_starts():
    copies = VectorizedParallelEnv(lambda: make_env("mpe2.simple_spread_v3", KWARGS), 3, autoreset=False)
    served = copies.reset(40).observations["agent_0"]
    for index in range(3):
        env = make_env("mpe2.simple_spread_v3", KWARGS)
        observations, _ = env.reset(seed=40 + index)  # what random_returns does for episode `index`
        np.testing.assert_array_equal(observations["agent_0"], served[index])


def test_the_command_reports_a_failure_as_one_json_line(capsys):
    assert main([json.dumps({"name": "nope_v1", "construction_seed": 0, "eval_seed": 0, "episodes": 1})]) == 2
    assert "nope_v1" in json.loads(capsys.readouterr().out)["error"]
