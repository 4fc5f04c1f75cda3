"""K copies of a ParallelEnv batched per agent (env_server/vector.py), without sockets."""

import numpy as np
import pytest
from gymnasium import spaces
from mpe2 import simple_spread_v3

from env_server.vector import VectorizedParallelEnv, check_batched


def make(copies: int, autoreset: bool = True, max_cycles: int = 3) -> VectorizedParallelEnv:
    return VectorizedParallelEnv(lambda: simple_spread_v3.parallel_env(N=2, max_cycles=max_cycles), copies, autoreset=autoreset)


def zeros(envs: VectorizedParallelEnv) -> dict:
    return {a: np.zeros(envs.num_copies, dtype=np.int64) for a in envs.possible_agents}


def test_reset_batches_every_agent_over_copies():
    envs = make(3)
    result = envs.reset(seed=7)
    assert set(result.observations) == {"agent_0", "agent_1"}
    assert result.observations["agent_0"].shape == (3, 12)
    assert result.episode_start.all() and all(result.active[a].all() for a in envs.possible_agents)
    # Seeds differ per copy: copies are not clones of each other.
    assert not np.allclose(result.observations["agent_0"][0], result.observations["agent_0"][1])


def test_autoreset_sends_final_and_first_observation_and_the_episode_return():
    envs = make(2, max_cycles=3)
    envs.reset(seed=0)
    for _ in range(2):
        result = envs.step(zeros(envs))
        assert not result.episode_start.any() and result.episode_returns == []
    result = envs.step(zeros(envs))
    assert result.episode_start.all() and result.truncated["agent_0"].all()
    assert result.final_observations["agent_0"].shape == (2, 12)
    assert not np.allclose(result.final_observations["agent_0"], result.observations["agent_0"])
    assert len(result.episode_returns) == 2


def test_without_autoreset_finished_copies_wait_for_a_reset():
    envs = make(1, autoreset=False, max_cycles=2)
    envs.reset(seed=0)
    envs.step(zeros(envs))
    result = envs.step(zeros(envs))
    assert envs.all_finished and not result.episode_start.any()
    idle = envs.step(zeros(envs))  # stepping a finished copy does nothing
    assert not idle.active["agent_0"].any()
    assert envs.reset(seed=1).episode_start.all() and not envs.all_finished


def test_check_batched_names_the_problem():
    discrete, box = spaces.Discrete(5), spaces.Box(-1, 1, (2,), np.float32)
    check_batched(discrete, np.array([0, 4]), 2, "a")
    check_batched(box, np.zeros((2, 2), np.float32), 2, "b")
    with pytest.raises(ValueError, match=r"a: expected shape \(2,\), got \(3,\)"):
        check_batched(discrete, np.array([0, 1, 2]), 2, "a")
    with pytest.raises(ValueError, match="integer actions"):
        check_batched(discrete, np.array([0.0, 1.0]), 2, "a")
    with pytest.raises(ValueError, match=r"a\[1\]: 5 is outside Discrete\(5\)"):
        check_batched(discrete, np.array([0, 5]), 2, "a")
    with pytest.raises(ValueError, match="finite"):
        check_batched(box, np.full((2, 2), np.nan, np.float32), 2, "b")
    with pytest.raises(ValueError, match="expected an array"):
        check_batched(box, [[0, 0], [0, 0]], 2, "b")
