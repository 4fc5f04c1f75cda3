"""The env registry: names and import paths resolve, and construction seeds reach the environments
that draw part of their task when built (reward_collection's gains `eta`)."""

from __future__ import annotations

import numpy as np
import pytest

from pettingzoo.utils.conversions import aec_to_parallel_wrapper

from env_server.registry import (
    CONSTRUCTION_SEED_KWARGS,
    ConvertedParallelEnv,
    EnvNotFound,
    construction_kwargs,
    construction_seed_kwarg,
    make_env,
    resolve_factory,
)
from env_server.vector import VectorizedParallelEnv
from protocols.seeds import derive_seed

REWARD_COLLECTION_PATH = "env_server.envs.reward_collection:parallel_env"


def test_reward_collection_takes_its_dynamics_seed_from_the_construction_seed():
    assert CONSTRUCTION_SEED_KWARGS["reward_collection_v0"] == "dynamics_seed"
    assert construction_seed_kwarg("reward_collection_v0") == "dynamics_seed"
    assert construction_seed_kwarg(REWARD_COLLECTION_PATH) == "dynamics_seed"  # same factory, by path
    env = make_env("reward_collection_v0", {"num_agents": 5}, construction_seed=1234)
    assert env.dynamics_seed == 1234
    np.testing.assert_array_equal(env.eta, make_env("reward_collection_v0", {"dynamics_seed": 1234}).eta)
    assert make_env(REWARD_COLLECTION_PATH, {}, construction_seed=1234).dynamics_seed == 1234


def test_different_run_seeds_give_different_gains_and_one_run_gives_one():
    """What the env server does: derive_seed(run.seed, env_index, "env_construction") per run."""
    gains = {}
    for run_seed in range(5):
        seed = derive_seed(run_seed, 0, "env_construction")
        gains[run_seed] = make_env("reward_collection_v0", {}, construction_seed=seed).eta
        np.testing.assert_array_equal(make_env("reward_collection_v0", {}, construction_seed=seed).eta, gains[run_seed])
    for first in range(5):
        for second in range(first + 1, 5):
            assert not np.allclose(gains[first], gains[second]), (first, second)


def test_every_copy_of_a_run_training_and_evaluation_shares_the_gains():
    seed = derive_seed(3, 0, "env_construction")

    def build():
        return make_env("reward_collection_v0", {"action_penalty": True}, construction_seed=seed)

    training = VectorizedParallelEnv(build, 4, autoreset=True)
    evaluation = VectorizedParallelEnv(build, 5, autoreset=False)
    reference_eta = training.copies[0].eta
    for copy in [*training.copies, *evaluation.copies]:
        np.testing.assert_array_equal(copy.eta, reference_eta)
    assert not np.allclose(reference_eta, make_env("reward_collection_v0", {}).eta)  # not the old seed-0 default


def test_an_explicit_config_value_wins_over_the_construction_seed():
    env = make_env("reward_collection_v0", {"dynamics_seed": 7}, construction_seed=99)
    assert env.dynamics_seed == 7
    assert construction_kwargs("reward_collection_v0", {"dynamics_seed": 7}, 99) == {"dynamics_seed": 7}


def test_without_a_construction_seed_the_factory_default_stands():
    assert make_env("reward_collection_v0", {}).dynamics_seed == 0
    assert construction_kwargs("reward_collection_v0", {"num_agents": 3}, None) == {"num_agents": 3}


def test_environments_without_a_construction_draw_ignore_the_seed():
    assert construction_seed_kwarg("mpe2.simple_spread_v3") is None
    assert construction_kwargs("simple_spread_v3", {"N": 3}, 5) == {"N": 3}
    env = make_env("simple_spread_v3", {"N": 2}, construction_seed=5)
    assert len(env.possible_agents) == 2


def test_bad_construction_seeds_and_names_are_refused():
    with pytest.raises(ValueError, match="construction_seed"):
        construction_kwargs("reward_collection_v0", {}, -1)
    with pytest.raises(ValueError, match="construction_seed"):
        construction_kwargs("reward_collection_v0", {}, True)
    with pytest.raises(EnvNotFound, match="neither a registered environment"):
        make_env("no_such_env", {}, construction_seed=1)
    # The kwargs the config gave are not modified in place.
    given = {"num_agents": 2}
    make_env("reward_collection_v0", given, construction_seed=4)
    assert given == {"num_agents": 2}


# ------------------------------------------------------------------------------------------
# Every registered env builds, and the pre-launch check names the field at fault
# ------------------------------------------------------------------------------------------

from env_server.precheck import check_env  # noqa: E402
from env_server.registry import ALIASES, BUILTIN_ENVS  # noqa: E402


@pytest.mark.parametrize("name", sorted(BUILTIN_ENVS) + sorted(ALIASES))
def test_every_registered_env_builds_with_the_declared_dependencies(name):
    env = make_env(name, {})
    env.reset(seed=0)
    assert env.possible_agents
    env.close()
    assert check_env(name, {}) is None


def test_precheck_names_an_unknown_env_name():
    field, error = check_env("nope_v1", {})
    assert field == "env.name" and "nope_v1" in error and "mpe2.simple_spread_v3" in error


def test_precheck_names_an_import_path_that_does_not_import():
    field, error = check_env("no_such_package.module:factory", {})
    assert field == "env.name" and "no_such_package" in error


def test_precheck_names_a_missing_attribute():
    field, error = check_env("env_server.envs.reward_collection:no_such_factory", {})
    assert field == "env.name" and "no_such_factory" in error


def test_precheck_names_a_keyword_a_kwargs_factory_does_not_take():
    field, error = check_env("mpe2.simple_spread_v3", {"N": 3, "max_cyles": 10})
    assert field == "env.kwargs.max_cyles" and "max_cyles" in error


def test_precheck_names_a_keyword_a_named_parameter_factory_does_not_take():
    field, error = check_env("reward_collection_v0", {"max_cyles": 10})
    assert field == "env.kwargs.max_cyles" and "max_cycles" in error  # it lists what it takes


def test_precheck_reports_a_bad_value_under_env_kwargs():
    field, error = check_env("reward_collection_v0", {"num_agents": "three"})
    assert field == "env.kwargs" and "three" in error


def test_pistonball_is_not_registered_without_its_dependency():
    assert "pettingzoo.pistonball_v6" not in BUILTIN_ENVS and "pistonball_v6" not in ALIASES


def test_precheck_refuses_an_aec_env_and_says_how_to_get_a_parallel_one():
    # pursuit's module has a parallel_env beside its AEC env: the error names it.
    field, error = check_env("pettingzoo.sisl.pursuit_v5:env", {})
    assert field == "env.name" and "builds an AEC env" in error
    assert "set env.name to 'pettingzoo.sisl.pursuit_v5:parallel_env'" in error
    # tic-tac-toe is turn-based and says it cannot be parallelized: no wrapper helps.
    field, error = check_env("pettingzoo.classic.tictactoe_v3:env", {})
    assert field == "env.name" and "builds an AEC env" in error and "cannot be wrapped" in error


def _wrappers(env) -> list[str]:
    """The AEC env's wrapper chain inside a converted parallel env, outermost first."""
    chain, inner = [], env.aec_env
    while hasattr(inner, "env"):
        chain.append(type(inner).__name__)
        inner = inner.env
    return [*chain, type(inner).__name__]


@pytest.mark.parametrize("kwargs, kept", [
    ({"N": 4, "max_cycles": 25, "continuous_actions": False}, ["raw_env"]),
    # clipping changes the actions: it stays
    ({"N": 3, "max_cycles": 25, "continuous_actions": True}, ["ClipOutOfBoundsWrapper", "raw_env"]),
])
def test_a_converted_aec_env_loses_only_its_call_checks_and_steps_as_before(kwargs, kept):
    from mpe2 import simple_spread_v3

    built, reference = make_env("mpe2.simple_spread_v3", kwargs), simple_spread_v3.parallel_env(**kwargs)
    assert _wrappers(reference)[:2] == ["OrderEnforcingWrapper", "ClipOutOfBoundsWrapper" if kwargs["continuous_actions"]
                                        else "AssertOutOfBoundsWrapper"]
    assert _wrappers(built) == kept
    actions = np.random.default_rng(0)
    for episode in range(3):
        pairs = [(built.reset(seed=episode)[0], reference.reset(seed=episode)[0])]  # (built's, reference's) per field
        while True:
            for ours, theirs in pairs:
                assert ours.keys() == theirs.keys()
                assert all(np.array_equal(np.asarray(ours[agent]), np.asarray(theirs[agent])) for agent in ours)
            if not reference.agents:
                break
            space = reference.action_space(reference.agents[0])
            step = {agent: (actions.uniform(-0.5, 1.5, space.shape).astype(np.float32) if kwargs["continuous_actions"]
                            else int(actions.integers(space.n))) for agent in reference.agents}
            pairs = list(zip(built.step(step)[:4], reference.step(step)[:4]))  # observations, rewards, ends, cut-offs
    assert built.agents == reference.agents == []


def _converted_envs() -> list[str]:
    return [name for name, path in sorted(BUILTIN_ENVS.items())
            if isinstance(resolve_factory(name)(), aec_to_parallel_wrapper)]


@pytest.mark.parametrize("name", _converted_envs())
def test_every_converted_env_steps_as_pettingzoos_converter_does_without_the_spare_observations(name, monkeypatch):
    built, reference = make_env(name, {}), resolve_factory(name)()
    assert type(built) is ConvertedParallelEnv and type(reference) is aec_to_parallel_wrapper
    observed = []
    observe = built.aec_env.observe
    monkeypatch.setattr(built.aec_env, "observe", lambda agent: observed.append(agent) or observe(agent))
    actions = np.random.default_rng(0)
    for episode in range(2):
        pairs = [(built.reset(seed=episode)[0], reference.reset(seed=episode)[0])]
        for _ in range(40):
            for ours, theirs in pairs:
                assert ours.keys() == theirs.keys()
                assert all(np.array_equal(np.asarray(ours[agent]), np.asarray(theirs[agent])) for agent in ours)
            if not reference.agents:
                break
            step = {agent: reference.action_space(agent).sample() for agent in reference.agents}
            observed.clear()
            pairs = list(zip(built.step(step)[:4], reference.step(step)[:4]))  # observations, rewards, ends, cut-offs
            assert sorted(observed) == sorted(pairs[0][1].keys()), "one observation per agent a step"
    assert built.agents == reference.agents


def test_a_native_parallel_env_is_built_as_its_factory_builds_it():
    assert type(make_env("reward_collection_v0", {}, construction_seed=0)).__name__ == "RewardCollectionEnv"
