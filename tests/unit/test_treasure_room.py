"""treasure_room_v0: PettingZoo API, the cell each agent reports, the sparse treasure reward."""

from __future__ import annotations

import numpy as np
import pytest
from pettingzoo.test import parallel_api_test

from env_server.envs.treasure_room import parallel_env
from env_server.registry import make_env
from protocols.goal_spaces.cell_space import cell_coordinates, cell_index, cell_of_observation

UP, DOWN, LEFT, RIGHT, STAY = 1, 2, 3, 4, 0


@pytest.mark.parametrize("kwargs", [{}, {"num_agents": 1, "size": 5, "start_region": 2}, {"num_agents": 3, "max_steps": 10}])
def test_passes_pettingzoo_parallel_api_test(kwargs):
    parallel_api_test(parallel_env(**kwargs), num_cycles=200)


def test_every_step_reports_each_agents_cell_and_the_observation_opens_with_it():
    env = parallel_env(num_agents=2, size=9)
    observations, infos = env.reset(seed=3)
    for agent in env.agents:
        row, col = cell_coordinates(int(infos[agent]["cell"]), 9)
        assert row < 3 and col < 3, "starts in the top-left start region"
        assert cell_of_observation(observations[agent], 9) == int(infos[agent]["cell"])
    before = {agent: cell_coordinates(int(infos[agent]["cell"]), 9) for agent in env.agents}
    observations, _, _, _, infos = env.step({"agent_0": DOWN, "agent_1": RIGHT})
    assert cell_coordinates(int(infos["agent_0"]["cell"]), 9) == (before["agent_0"][0] + 1, before["agent_0"][1])
    assert cell_coordinates(int(infos["agent_1"]["cell"]), 9) == (before["agent_1"][0], before["agent_1"][1] + 1)
    assert infos["agent_0"]["cell"].dtype == np.int64


def test_the_treasure_pays_one_and_terminates_only_the_agent_on_it():
    env = parallel_env(num_agents=2, size=4, start_region=1, max_steps=20)
    env.reset(seed=0)  # both start on (0, 0); the treasure is (3, 3)
    path = [DOWN, DOWN, DOWN, RIGHT, RIGHT]
    for action in path:
        _, rewards, terminations, truncations, _ = env.step({"agent_0": action, "agent_1": STAY})
        assert rewards == {"agent_0": 0.0, "agent_1": 0.0} and not any(terminations.values())
    _, rewards, terminations, _, infos = env.step({"agent_0": RIGHT, "agent_1": STAY})
    assert rewards == {"agent_0": 1.0, "agent_1": 0.0}
    assert terminations == {"agent_0": True, "agent_1": False} and env.agents == ["agent_1"]
    assert int(infos["agent_0"]["cell"]) == cell_index(3, 3, 4)


def test_a_move_into_a_wall_stays_and_the_episode_truncates_at_max_steps():
    env = parallel_env(num_agents=1, size=4, start_region=1, max_steps=3)
    env.reset(seed=0)
    _, _, _, truncations, infos = env.step({"agent_0": UP})
    assert int(infos["agent_0"]["cell"]) == 0 and not truncations["agent_0"]
    env.step({"agent_0": LEFT})
    _, _, terminations, truncations, _ = env.step({"agent_0": STAY})
    assert truncations == {"agent_0": True} and terminations == {"agent_0": False} and env.agents == []


def test_registered_and_bad_arguments_name_themselves():
    assert make_env("treasure_room_v0", {"size": 5, "start_region": 2}).size == 5
    with pytest.raises(ValueError, match="start_region"):
        parallel_env(size=4, start_region=4)
    with pytest.raises(TypeError, match="size must be an int"):
        parallel_env(size=9.0)
    with pytest.raises(ValueError, match=r"outside a 4x4 grid"):
        cell_index(4, 0, 4)
