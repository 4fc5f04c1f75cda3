"""Consensus subjects reach the learner through declared roles (agent_node/roles.py): a learner
that lacks the role a subject needs is refused at build time, naming the role and the setting;
a world model fit beside the learner samples its replay buffer with its own random stream."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium import spaces

from agent_node.consensus.subjects import LocalWorldModel, OGMARLWorldModel, PolicyParameters
from agent_node.replay import ReplayBuffer
from agent_node.roles import Transition
from agent_node.world_models.config import SparseGPConfig

OBS = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
ACTIONS = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
GP = SparseGPConfig(num_inducing=27, input_low=[-1.0] * 3, input_high=[1.0] * 3)


class ReplayOnly:
    """A learner as far as a world model fit beside it is concerned: a replay buffer."""

    def __init__(self, seed: int) -> None:
        self.replay = ReplayBuffer(100, (2,), np.float32, (1,), np.float32, seed)
        rng = np.random.default_rng(0)
        obs = rng.uniform(-1, 1, (50, 2)).astype(np.float32)
        action = rng.uniform(-1, 1, (50, 1)).astype(np.float32)
        self.replay.add(Transition(obs, action, np.zeros(50, np.float32), obs + 0.1 * action,
                                   np.zeros(50, bool), np.zeros(50, bool)))


def local_model(learner, sampler_seed: int) -> LocalWorldModel:
    return LocalWorldModel(learner, GP, OBS, ACTIONS, period_steps=10, fit_transitions=20,
                           average="world_model_statistics", seed=1, sampler_seed=sampler_seed)


def test_subjects_refuse_a_learner_without_the_role_they_need():
    with pytest.raises(TypeError, match="policy_parameters.*ParamSource.*object is not"):
        PolicyParameters(object(), period_steps=10)
    with pytest.raises(TypeError, match="og_marl.*ModelBasedLearner"):
        OGMARLWorldModel(object())
    with pytest.raises(TypeError, match="world_model_statistics.*ReplayLearner"):
        local_model(object(), sampler_seed=2)


def test_world_model_samples_with_its_own_stream_not_the_learners():
    alone, beside_a_model = ReplayOnly(seed=5), ReplayOnly(seed=5)
    model = local_model(beside_a_model, sampler_seed=2)
    statistics = model.prepare(10)  # fits on 20 rows drawn with the sampler stream
    assert statistics and all(np.all(np.isfinite(value)) for value in statistics.values())
    # The learner's own minibatch draws are as if the model had never read the buffer.
    np.testing.assert_array_equal(alone.replay.sample(16)["obs"], beside_a_model.replay.sample(16)["obs"])
    # And the sampler stream decides which rows the model saw: another sampler seed, other rows.
    first = local_model(ReplayOnly(seed=5), sampler_seed=2)._sample()[0]
    same = local_model(ReplayOnly(seed=5), sampler_seed=2)._sample()[0]
    other = local_model(ReplayOnly(seed=5), sampler_seed=3)._sample()[0]
    np.testing.assert_array_equal(first, same)
    assert not np.array_equal(first, other)


class StubModelBasedLearner:
    """Only the refresh clock of agent_node/algos/og_marl.py (R0 = 100 rows, every 50)."""

    def __init__(self) -> None:
        self.next_refresh_row = 100

    def refresh_tick(self, rows=None):
        return None if rows < 100 else 100 + (rows - 100) // 50 * 50

    def model_refresh_due(self, rows=None):
        tick = self.refresh_tick(rows)
        return tick is not None and tick >= self.next_refresh_row

    def fit_world_model(self, rows=None):
        self.next_refresh_row = self.refresh_tick(rows) + 50
        return {}

    def adopt_world_model(self, averaged, num_agents):
        return {}


def test_ticks_come_from_the_env_step_alone():
    """Every agent computes the same tick from the same step (its own row count may differ)."""
    policy = PolicyParameters.__new__(PolicyParameters)
    policy.period_steps = 25
    assert [policy.tick(step) for step in (0, 24, 25, 49, 50)] == [None, None, 25, 25, 50]
    learner = StubModelBasedLearner()
    model = OGMARLWorldModel.__new__(OGMARLWorldModel)
    model.learner, model.num_copies = learner, 4  # the clock is step x K rows
    assert model.tick(24) is None and model.tick(25) == 100 and model.tick(37) == 100
    model.prepare(100)
    assert model.tick(37) is None and model.tick(38) == 150  # tick 100 done; 38 x 4 = 152 rows
    local = local_model(ReplayOnly(seed=5), sampler_seed=2)  # every 10 steps, once 20 rows are there
    assert [local.tick(step) for step in (10, 19, 20, 35)] == [None, None, 20, 30]


def test_a_gp_precision_travels_as_its_upper_triangle_and_averages_to_the_same_bits():
    # Three agents' GP statistics, averaged with a ring's weights once as full matrices and once
    # as the subject hands them to the engine: the adopted J is bitwise the same, from half the bytes.
    subjects = [local_model(ReplayOnly(seed=seed), sampler_seed=seed) for seed in range(3)]
    wire = [subject.prepare(10) for subject in subjects]
    full = [subject.model.export_statistics() for subject in subjects]  # what prepare fit
    size = GP.num_inducing
    assert wire[0]["J"].shape == (size * (size + 1) // 2,) and wire[0]["h"].shape == full[0]["h"].shape
    assert not np.array_equal(full[0]["J"], full[1]["J"])

    def weighted(tensors, name):  # one synchronous round's arithmetic, in the engine's order
        total = tensors[0][name] * 0.5
        for share in tensors[1:]:
            total = total + share[name] * 0.25
        return total

    averaged_wire = {name: weighted(wire, name) for name in ("J", "h")}
    rebuilt = subjects[0].wire.unpack(averaged_wire)
    np.testing.assert_array_equal(rebuilt["J"], weighted(full, "J"))
    np.testing.assert_array_equal(rebuilt["h"], weighted(full, "h"))
    subjects[0].adopt(averaged_wire, num_agents=3)  # the model takes the rebuilt matrix
    # A triangle of the wrong length is refused, naming the matrix it should rebuild.
    with pytest.raises(ValueError, match=rf"averaged 'J': expected the upper triangle of a {size} x {size} matrix"):
        subjects[0].wire.unpack({"J": np.zeros(5), "h": averaged_wire["h"]})


def test_ensemble_parameters_travel_as_they_are():
    from agent_node.world_models.config import EnsembleConfig

    subject = LocalWorldModel(ReplayOnly(seed=1), EnsembleConfig(), OBS, ACTIONS, period_steps=10, fit_transitions=20,
                              average="world_model_parameters", seed=1, sampler_seed=1)
    tensors = subject.prepare(10)
    params = subject.model.get_params()
    assert tensors.keys() == params.keys() and all(np.array_equal(tensors[k], params[k]) for k in params)


def test_an_ensembles_disagreement_is_a_bonus_in_units_of_its_mean_on_the_last_refresh():
    from agent_node.world_models.config import EnsembleConfig

    learner = ReplayOnly(seed=1)
    subject = LocalWorldModel(learner, EnsembleConfig(), OBS, ACTIONS, period_steps=10, fit_transitions=20,
                              average="world_model_parameters", seed=1, sampler_seed=1, bonus_weight=0.5)
    rows = learner.replay.sample(8, rng=np.random.default_rng(3))
    assert not subject.exploration_bonus(rows["obs"], rows["action"]).any(), "no bonus before the first refresh"
    subject.adopt(subject.prepare(10), num_agents=2)
    scale = subject.disagreement_scale
    assert scale is not None and scale > 0
    bonus = subject.exploration_bonus(rows["obs"], rows["action"])
    expected = 0.5 * subject.disagreement(rows["obs"], rows["action"]) / scale
    assert bonus.shape == (8,) and bonus.dtype == np.float32 and np.allclose(bonus, expected) and (bonus > 0).all()
    # Far from every row it was fit on, the members disagree more than on average.
    far = subject.exploration_bonus(np.full((1, 2), 50.0, np.float32), np.ones((1, 1), np.float32))
    assert far[0] > 0.5


def test_a_discrete_action_enters_the_model_as_the_one_hot_of_the_index_the_replay_holds():
    from agent_node.algos.config import DQNConfig
    from agent_node.algos.dqn import DQNAgent
    from agent_node.world_models.config import EnsembleConfig

    # Actions 1..3 in the env; the DQN's replay holds them as 0..2.
    actions_space = spaces.Discrete(3, start=1)
    learner = DQNAgent(DQNConfig(buffer_size=100), OBS, actions_space, seed=0)
    obs = np.zeros((3, 2), np.float32)
    learner.observe(Transition(obs, np.array([1, 2, 3]), np.zeros(3, np.float32), obs, np.zeros(3, bool), np.zeros(3, bool)))
    subject = LocalWorldModel(learner, EnsembleConfig(), OBS, actions_space, period_steps=10, fit_transitions=3,
                              average="world_model_parameters", seed=1, sampler_seed=1)
    held = learner.replay.sample(8, rng=np.random.default_rng(0))["action"]
    _, one_hot = subject._model_inputs(np.zeros((8, 2), np.float32), held)
    assert set(held.tolist()) <= {0, 1, 2} and np.array_equal(one_hot, np.eye(3, dtype=np.float32)[held])
