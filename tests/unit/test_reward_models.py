"""The agent-side reward model rebuilt from a task spec agrees with the environment's own reward,
the spec survives msgpack, and bad specs are refused with an error that names the field."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from agent_node.reward_models import SiteCollectionReward, TaskSpecError, reward_model_from_spec
from env_server.envs.reward_collection import SITE_POSITIONS, SITE_RADIUS, collection_reward, parallel_env


def positions_near_sites(rng: np.random.Generator, count: int) -> np.ndarray:
    """Half the points within 0.8 of a random site (so some pay, some miss), half anywhere."""
    near = SITE_POSITIONS[rng.integers(0, len(SITE_POSITIONS), count)] + rng.uniform(-0.8, 0.8, (count, 2))
    anywhere = rng.uniform(-10.0, 10.0, (count, 2))
    return np.where(rng.random((count, 1)) < 0.5, near, anywhere)


@pytest.mark.parametrize(
    "action_penalty, penalty_coef",
    [(False, 0.1), (True, 0.1), (True, 1.0)],
    ids=["no-penalty", "penalty-0.1", "penalty-1"],
)
def test_team_reward_matches_the_environment(action_penalty, penalty_coef):
    env = parallel_env(num_agents=5, action_penalty=action_penalty, action_penalty_coef=penalty_coef)
    model = reward_model_from_spec(env.task_spec())
    rng = np.random.default_rng(0)
    steps_with_a_hit = 0
    for _ in range(300):
        num_agents = int(rng.integers(1, 7))
        positions = positions_near_sites(rng, num_agents)
        actions = rng.uniform(-1.5, 1.5, (num_agents, 2))  # beyond the bounds too: both must clip
        expected = collection_reward(positions, actions, action_penalty, penalty_coef=penalty_coef)
        assert model.team_reward(positions, actions) == pytest.approx(expected, abs=1e-12)
        # The team reward is the sum of every agent's own term.
        assert model.contribution(positions, actions).sum() == pytest.approx(expected, abs=1e-12)
        steps_with_a_hit += bool(model.site_values(positions).sum() > 0)
    assert 50 < steps_with_a_hit < 290, "the random inputs should both hit and miss sites"


def test_contribution_is_one_agents_share_of_a_real_step():
    """Step the environment with one agent: the reward it pays equals that agent's contribution."""
    env = parallel_env(num_agents=1, action_penalty=True, dynamics_seed=3)
    model = reward_model_from_spec(env.task_spec())
    observations, _ = env.reset()
    rng = np.random.default_rng(1)
    paid = 0.0
    for _ in range(100):
        action = rng.uniform(-1.0, 1.0, 2)
        observations, rewards, _, _, _ = env.step({"agent_0": action})
        own = model.contribution(observations["agent_0"][None].astype(np.float64), action[None])
        assert own[0] == pytest.approx(rewards["agent_0"], abs=1e-5)  # float32 observations
        paid += rewards["agent_0"]
    assert paid != 0.0


def test_radius_is_strict_and_sites_are_the_environments():
    model = reward_model_from_spec(parallel_env().task_spec())
    np.testing.assert_array_equal(model.sites, SITE_POSITIONS)
    site = SITE_POSITIONS[0]
    just_inside = site + np.array([SITE_RADIUS - 1e-9, 0.0])
    on_the_edge = site + np.array([SITE_RADIUS, 0.0])
    assert model.site_values(just_inside) > 0
    assert model.site_values(on_the_edge) == 0.0
    assert model.site_values(np.zeros((3, 4, 2))).shape == (3, 4)


def test_spec_survives_msgpack():
    spec = parallel_env(action_penalty=True, action_penalty_coef=0.25).task_spec()
    decoded = msgpack.unpackb(msgpack.packb(spec), strict_map_key=True)
    model = reward_model_from_spec(decoded)
    assert isinstance(model, SiteCollectionReward)
    assert model.action_penalty is True and model.action_penalty_coef == 0.25
    assert (model.world_low, model.world_high) == (-10.0, 10.0)


def valid_spec() -> dict:
    return parallel_env().task_spec()


@pytest.mark.parametrize(
    "change, field",
    [
        ({"kind": "goal_lines"}, "kind"),
        ({"radius": -0.5}, "radius"),
        ({"radius": True}, "radius"),
        ({"radius": float("nan")}, "radius"),
        ({"action_penalty": 1}, "action_penalty"),
        ({"action_penalty_coef": -1.0}, "action_penalty_coef"),
        ({"values": [1.0, 2.0]}, "values"),
        ({"sites": [[0.0, 0.0, 1.0]]}, "sites[0]"),
        ({"sites": []}, "sites"),
        ({"sites": "here"}, "sites"),
        ({"bounds": [10.0, -10.0]}, "bounds"),
        ({"action_bounds": [-1.0]}, "action_bounds"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_specs_name_the_field(change, field):
    spec = {**valid_spec(), **change}
    with pytest.raises(TaskSpecError, match=field.replace("[", r"\[").replace("]", r"\]")):
        reward_model_from_spec(spec)


def test_missing_field_and_non_mapping_are_refused():
    spec = valid_spec()
    del spec["values"]
    with pytest.raises(TaskSpecError, match="missing fields \\['values'\\]"):
        reward_model_from_spec(spec)
    with pytest.raises(TaskSpecError, match="expected a mapping"):
        reward_model_from_spec([("kind", "site_collection")])
    assert issubclass(TaskSpecError, ValueError)


def test_bad_inputs_to_the_reward_are_refused():
    model = reward_model_from_spec(valid_spec())
    with pytest.raises(ValueError, match="positions: expected shape \\(K, 2\\)"):
        model.contribution(np.zeros((3, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="actions: expected the shape of positions"):
        model.contribution(np.zeros((3, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="finite"):
        model.contribution(np.full((1, 2), np.nan), np.zeros((1, 2)))
