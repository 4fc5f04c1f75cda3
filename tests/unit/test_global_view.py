"""The global view (env_server/global_view.py) on real PettingZoo envs in a vector env."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium import spaces
from mpe2 import simple_spread_v3

from env_server.global_view import GlobalView, flatten_actions
from env_server.vector import VectorizedParallelEnv


def spread(num_copies: int, max_cycles: int) -> VectorizedParallelEnv:
    return VectorizedParallelEnv(lambda: simple_spread_v3.parallel_env(N=3, max_cycles=max_cycles), num_copies, autoreset=True)


def test_flatten_discrete_is_one_hot_and_box_is_flat():
    one_hot = flatten_actions(spaces.Discrete(5), np.array([0, 4, 2]))
    assert one_hot.shape == (3, 5) and np.array_equal(one_hot.argmax(1), [0, 4, 2]) and one_hot.sum() == 3
    box = flatten_actions(spaces.Box(-1, 1, (2, 2)), np.arange(8, dtype=np.float64).reshape(2, 2, 2))
    assert box.shape == (2, 4) and box.dtype == np.float32 and box[1, 3] == 7


def test_disabled_view_computes_nothing():
    envs = spread(2, 5)
    view = GlobalView(envs)
    view.after_reset(envs.reset(0))
    assert view.fields() == {"global_state": None, "final_global_state": None, "joint_action": None}
    assert not any(copy.track for copy in envs.copies)


def test_state_joint_action_and_final_state_across_an_autoreset():
    envs = spread(2, 3)
    view = GlobalView(envs)
    view.enable()
    assert view.uses_env_state and view.state_space.shape == (54,) and view.joint_action_dim == 15
    result = envs.reset(7)
    view.after_reset(result)
    assert view.global_state.shape == (2, 54) and view.joint_action is None
    rng = np.random.default_rng(0)
    for step in range(3):
        actions = {a: rng.integers(0, 5, size=2) for a in envs.possible_agents}
        result = envs.step(actions)
        view.after_step(actions, result)
        assert view.joint_action.shape == (2, 15)
        for i, agent in enumerate(envs.possible_agents):
            assert np.array_equal(view.joint_action[:, 5 * i : 5 * i + 5].argmax(1), actions[agent])
    # max_cycles 3: both copies ended and were reset on the last step.
    assert result.episode_start.all()
    # simple_spread's state() is its agents' observations concatenated: the final state must be the
    # final observations, the current state the first observations of the new episode.
    final_obs = np.concatenate([result.final_observations[a] for a in envs.possible_agents], axis=1)
    first_obs = np.concatenate([result.observations[a] for a in envs.possible_agents], axis=1)
    np.testing.assert_allclose(view.final_global_state, final_obs, rtol=1e-6)
    np.testing.assert_allclose(view.global_state, first_obs, rtol=1e-6)
    assert not np.allclose(view.final_global_state, view.global_state)


class WithoutState:
    """simple_spread with its state() hidden: the shape of an env that has none."""

    def __init__(self) -> None:
        self.env = simple_spread_v3.parallel_env(N=3, max_cycles=2)

    def __getattr__(self, name):
        if name in ("state", "state_space"):
            raise AttributeError(name)
        return getattr(self.env, name)


def test_env_without_state_concatenates_observations_and_final_observations():
    envs = VectorizedParallelEnv(WithoutState, 2, autoreset=True)
    view = GlobalView(envs)
    view.enable()
    assert not view.uses_env_state and view.state_space.shape == (54,)
    result = envs.reset(0)
    view.after_reset(result)
    expected = np.concatenate([result.observations[a] for a in envs.possible_agents], axis=1)
    np.testing.assert_array_equal(view.global_state, expected)
    for _ in range(2):
        actions = {a: np.zeros(2, dtype=np.int64) for a in envs.possible_agents}
        result = envs.step(actions)
        view.after_step(actions, result)
    assert result.episode_start.all()
    final = np.concatenate([result.final_observations[a] for a in envs.possible_agents], axis=1)
    np.testing.assert_array_equal(view.final_global_state, final)


def test_agents_section_selects_pmic_and_shared_dqn_but_not_node_less_learners():
    import pydantic

    from agent_node.config import AgentsConfig

    assert AgentsConfig(count=3, learner={"kind": "pmic"}).learner.kind == "pmic"
    assert AgentsConfig(count=3, learner={"kind": "shared_dqn", "max_obs_dim": 18, "max_agents": 4}).learner.kind == "shared_dqn"
    for kind in ("mixer", "cql", "bc"):  # need a learner node or a dataset: not an agent's learner
        with pytest.raises(pydantic.ValidationError):
            AgentsConfig(count=3, learner={"kind": kind})


def test_copies_in_worker_processes_make_the_view_unavailable():
    from env_server.workers import SplitVectorEnv

    envs = SplitVectorEnv(lambda: simple_spread_v3.parallel_env(N=3, max_cycles=5), 2, autoreset=True, num_workers=2)
    try:
        view = GlobalView(envs)
        assert not view.available and "num_workers" in view.unavailable_reason
    finally:
        envs.close()
