"""Env copies split over worker processes (env_server/workers.py) behave like unsplit copies."""

from __future__ import annotations

import numpy as np
import pytest
from mpe2 import simple_spread_v3

from env_server.vector import VectorizedParallelEnv
from env_server.workers import SplitVectorEnv, split_copies

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def factory():
    return simple_spread_v3.parallel_env(N=2, max_cycles=4)


def test_split_copies_shares_them_out_server_first():
    assert split_copies(8, 2) == [4, 4] and split_copies(5, 2) == [3, 2] and split_copies(3, 3) == [1, 1, 1]
    with pytest.raises(ValueError, match="between 1 and num_copies=2"):
        split_copies(2, 3)


@pytest.mark.parametrize("autoreset", [True, False])
def test_split_copies_step_exactly_like_one_process(autoreset):
    plain = VectorizedParallelEnv(factory, 5, autoreset=autoreset)
    split = SplitVectorEnv(factory, 5, autoreset=autoreset, num_workers=2)
    # The worker's step requests and results travel packed (protocols/codec/packed.py).
    assert [channel.packed_peers for channel in split._channels] == [{None}]
    try:
        rng = np.random.default_rng(0)
        results = [plain.reset(seed=11), split.reset(seed=11)]
        for _ in range(9):
            assert_same_step(*results)
            assert plain.all_finished == split.all_finished
            actions = {a: rng.integers(0, 5, size=5) for a in plain.possible_agents}
            results = [plain.step(actions), split.step(actions)]
        assert_same_step(*results)
    finally:
        split.close()
        plain.close()
    assert all(not p.is_alive() for p in split._processes), "workers are reaped on close"


def assert_same_step(expected, actual):
    for name in ("observations", "rewards", "terminated", "truncated", "active", "final_observations"):
        e, a = getattr(expected, name), getattr(actual, name)
        assert list(e) == list(a), name
        for agent in e:
            np.testing.assert_array_equal(e[agent], a[agent], err_msg=f"{name}[{agent}]")
    np.testing.assert_array_equal(expected.episode_start, actual.episode_start)
    assert expected.episode_returns == pytest.approx(actual.episode_returns)


def test_split_copies_forward_the_same_infos_as_one_process():
    from env_server.envs.goal_lines import parallel_env as goal_lines_env

    def build():
        return goal_lines_env(num_landmarks=3, max_steps=6)

    keys = ("achieved_goals", "landmark")
    plain = VectorizedParallelEnv(build, 5, autoreset=True, forward_infos=keys)
    split = SplitVectorEnv(build, 5, autoreset=True, num_workers=2, forward_infos=keys)
    assert [channel.packed_peers for channel in split._channels] == [set()]  # infos travel in msgpack only
    try:
        rng = np.random.default_rng(1)
        results = [plain.reset(seed=4), split.reset(seed=4)]
        for _ in range(12):
            expected, actual = results
            assert sorted(expected.infos) == sorted(actual.infos)
            for agent, entries in expected.infos.items():
                assert sorted(entries) == sorted(actual.infos[agent])
                for key, value in entries.items():
                    got = actual.infos[agent][key]
                    assert type(got) is type(value), (agent, key)
                    assert len(got) == len(value) == 5
                    for e, a in zip(value, got):
                        assert (e is None and a is None) or np.array_equal(e, a)
            actions = {a: rng.integers(0, 5, size=5) for a in plain.possible_agents}
            results = [plain.step(actions), split.step(actions)]
    finally:
        split.close()
        plain.close()


def test_goals_reach_only_the_copies_the_server_process_steps():
    """Paid goals (goal.ready under `agents.goals.paid_by: env`) go to an env object in this
    process; a copy stepped by a worker is refused, as is an env that takes no goals."""
    from env_server.envs.goal_lines import parallel_env as goal_lines_env

    split = SplitVectorEnv(lambda: goal_lines_env(num_landmarks=3, view="own"), 4, autoreset=True, num_workers=2)
    try:
        split.reset(seed=0)
        local = split._bounds[1]
        split.assign_goals(0, {"agent_0": 3})
        assert split.local.copies[0].unwrapped._paid_goals == {"agent_0": 3}
        with pytest.raises(ValueError, match=f"copy {local} runs in a worker process"):
            split.assign_goals(local, {"agent_0": 3})
    finally:
        split.close()
    spread = VectorizedParallelEnv(factory, 1, autoreset=True)
    try:
        spread.reset(seed=0)
        with pytest.raises(ValueError, match="takes no goals to pay"):
            spread.assign_goals(0, {"agent_0": 3})
    finally:
        spread.close()
