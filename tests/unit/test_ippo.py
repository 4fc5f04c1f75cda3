"""The example plugin's IPPO learner (examples/parley_ippo/parley_ippo/learner.py), without a node:
GAE against a hand computation, the behaviour policy's log-probabilities, the update-ratio
contract, checkpoints and the saved rollout, and learning a contextual bandit."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from agent_node.algos import build_learner, LEARNERS
from agent_node.roles import NodeLearner, ParamSource, Transition
from tests.conftest import REPO

pytest.importorskip("torch")
EXAMPLE = REPO / "examples" / "parley_ippo"
IPPO_PATH = "parley_ippo.learner:IPPOLearner"
OBS = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
ACTIONS = gym.spaces.Discrete(2)


@pytest.fixture(autouse=True)
def example_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    torch.set_num_threads(1)


def make(seed: int = 0, **settings):
    config = LEARNERS.resolve(IPPO_PATH).config_model(kind=IPPO_PATH, hidden_sizes=(16,), **settings)
    return build_learner(config, OBS, ACTIONS, seed)


def rows(obs, action, reward, next_obs, terminated=None, truncated=None, copies=None) -> Transition:
    k = len(obs)
    return Transition(
        obs=np.asarray(obs, np.float32), action=np.asarray(action, np.int64), reward=np.asarray(reward, np.float32),
        next_obs=np.asarray(next_obs, np.float32),
        terminated=np.zeros(k, bool) if terminated is None else np.asarray(terminated),
        truncated=np.zeros(k, bool) if truncated is None else np.asarray(truncated),
        copy_index=None if copies is None else np.asarray(copies, np.int64),
    )


def test_it_is_a_node_learner_and_a_param_source():
    learner = make()
    assert isinstance(learner, NodeLearner) and isinstance(learner, ParamSource)
    params = learner.get_params()
    learner.set_params({name: value + 1.0 for name, value in params.items()})
    assert all(np.allclose(learner.get_params()[name], value + 1.0) for name, value in params.items())
    with pytest.raises(KeyError, match="expected parameters"):
        learner.set_params({"actor.0.weight": params["actor.0.weight"]})


def test_gae_matches_a_hand_computation_along_each_copy():
    """Two copies, three steps each: copy 0 is truncated after its second step (bootstraps from
    the final observation, the recursion stops), copy 1 terminates at its last step."""
    gamma, lam = 0.9, 0.8
    learner = make(gamma=gamma, gae_lambda=lam, rollout_rows=6, minibatches=1, epochs=1)
    s = [np.full((2, 3), 0.1 * t, np.float32) for t in range(4)]
    s[1][0] = 0.7  # distinct observations per copy, so each next row follows its predecessor
    final = np.full(3, -0.5, np.float32)  # copy 0's observation where its episode was cut
    restart = np.full(3, 0.9, np.float32)  # copy 0's first observation of the next episode
    steps = [
        (s[0], [0, 1], [1.0, 2.0], s[1], [False, False], [False, False]),
        (s[1], [1, 0], [0.5, -1.0], np.stack([final, s[2][1]]), [False, False], [True, False]),
        (np.stack([restart, s[2][1]]), [0, 0], [3.0, 1.0], np.stack([s[3][0], s[3][1]]), [False, True], [False, False]),
    ]
    values, next_values = [], []
    for obs, action, reward, next_obs, terminated, truncated in steps:
        learner.act(obs)
        with torch.no_grad():
            values.append(learner.critic(torch.as_tensor(obs)).squeeze(1).numpy())
            next_values.append(learner.critic(torch.as_tensor(next_obs)).squeeze(1).numpy())
        learner.observe(rows(obs, action, reward, next_obs, terminated, truncated))
    batch = learner._batch
    got = batch["advantage"].numpy().reshape(3, 2)  # rows arrive step by step, copy 0 then 1

    expected = np.zeros((3, 2))
    for copy in range(2):
        following = 0.0
        for t in (2, 1, 0):
            _, _, reward, _, terminated, truncated = steps[t]
            delta = reward[copy] + (0.0 if terminated[copy] else gamma * next_values[t][copy]) - values[t][copy]
            continues = t < 2 and not (terminated[copy] or truncated[copy])
            following = delta + (gamma * lam * following if continues else 0.0)
            expected[t, copy] = following
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(batch["return"].numpy().reshape(3, 2), expected + np.stack(values), rtol=1e-5, atol=1e-6)


def test_a_copy_whose_next_row_does_not_follow_is_cut_there():
    """Copy 1 sat out a step: its next row does not start where the last one ended."""
    learner = make(gamma=0.9, gae_lambda=1.0, rollout_rows=2, minibatches=1, epochs=1)
    a, b, c = (np.full((1, 3), x, np.float32) for x in (0.1, 0.2, 0.3))
    learner.observe(rows(a, [0], [1.0], b, copies=[1]))
    learner.observe(rows(c, [0], [1.0], a, copies=[1]))  # starts at c, not at b
    def value(x):
        with torch.no_grad():
            return learner.critic(torch.as_tensor(x)).squeeze(1).numpy()[0]

    first = 1.0 + 0.9 * value(b) - value(a)  # no recursion into the second row
    assert learner._batch["advantage"].numpy()[0] == pytest.approx(first, rel=1e-5)


def test_rows_keep_the_log_probability_they_were_acted_with():
    learner = make(rollout_rows=100)
    obs = np.random.default_rng(0).uniform(-1, 1, (4, 3)).astype(np.float32)
    action = learner.act(obs)
    acted_log_prob = learner._acted[1].copy()
    for parameter in learner.actor.parameters():  # the policy moves before the rows are observed
        parameter.data.add_(0.5)
    learner.observe(rows(obs[[3, 1]], action[[3, 1]], [0.0, 0.0], obs[[3, 1]], copies=[3, 1]))
    np.testing.assert_array_equal(learner.replay.rows["log_prob"][0], acted_log_prob[[3, 1]])


def test_greedy_actions_are_the_mode_and_do_not_touch_the_rollout_bookkeeping():
    learner = make()
    obs = np.zeros((5, 3), np.float32)
    logits = learner.actor(torch.as_tensor(obs)).detach()
    np.testing.assert_array_equal(learner.act(obs, explore=False), logits.argmax(1).numpy())
    assert learner._acted is None


def test_update_ratio_contract_and_slices():
    learner = make(rollout_rows=8, epochs=3, minibatches=2)
    obs = np.zeros((4, 3), np.float32)
    learner.act(obs)
    learner.observe(rows(obs, [0, 1, 0, 1], [1, 0, 1, 0], obs))
    assert learner.gradient_steps_due() == 0  # 4 of 8 rows
    learner.act(obs)
    learner.observe(rows(obs, [0, 1, 0, 1], [1, 0, 1, 0], obs))
    assert learner.gradient_steps_due() == 6  # frozen: 3 epochs x 2 minibatches
    metrics = learner.update(max_gradient_steps=4)
    assert set(metrics) == {"ippo/policy_loss", "ippo/value_loss", "ippo/entropy", "ippo/approx_kl", "ippo/clip_fraction"}
    assert learner.counters() == {"ippo/gradient_steps": 4.0, "ippo/steps_pending": 2.0, "ippo/steps_owed": 6.0,
                                  "ippo/rows_observed": 8.0, "ippo/updates": 0.0}
    assert learner.update() and learner.gradient_steps_due() == 0 and learner.counters()["ippo/updates"] == 1.0
    assert learner.update() == {}


def test_the_same_seed_and_slices_of_any_size_give_the_same_weights():
    def trained(slice_size: int, seed: int) -> dict[str, np.ndarray]:
        learner = make(seed=seed, rollout_rows=8, epochs=2, minibatches=2)
        rng = np.random.default_rng(1)
        for _ in range(4):
            obs = rng.uniform(-1, 1, (4, 3)).astype(np.float32)
            learner.observe(rows(obs, learner.act(obs), rng.normal(size=4), obs))
            while learner.gradient_steps_due():
                learner.update(slice_size)
        return learner.get_params()

    one, four = trained(1, seed=3), trained(4, seed=3)
    assert all(np.array_equal(one[name], four[name]) for name in one)
    other = trained(4, seed=4)
    assert not all(np.array_equal(one[name], other[name]) for name in one)


def test_checkpoint_and_rollout_restore_into_a_fresh_learner(tmp_path):
    learner = make(rollout_rows=8, epochs=1, minibatches=2)
    rng = np.random.default_rng(2)
    for _ in range(3):  # one full rollout trained on, 4 rows in flight
        obs = rng.uniform(-1, 1, (4, 3)).astype(np.float32)
        learner.observe(rows(obs, learner.act(obs), rng.normal(size=4), obs))
        learner.update()
    torch.save(learner.state_dict(), tmp_path / "latest.pt")
    learner.replay.save(tmp_path / "rollout.npz")

    fresh = make(seed=9, rollout_rows=8, epochs=1, minibatches=2)
    fresh.load_state_dict(torch.load(tmp_path / "latest.pt", weights_only=True))
    fresh.replay.restore(tmp_path / "rollout.npz")
    assert fresh.counters() == learner.counters()
    assert len(fresh.replay) == len(learner.replay) == 4
    probe = rng.uniform(-1, 1, (16, 3)).astype(np.float32)
    np.testing.assert_array_equal(fresh.act(probe, explore=False), learner.act(probe, explore=False))
    np.testing.assert_array_equal(fresh.act(probe), learner.act(probe))  # the sampling stream too
    with pytest.raises(ValueError, match="expected an IPPO checkpoint"):
        fresh.load_state_dict({"algorithm": "dqn"})


def test_it_learns_a_contextual_bandit():
    """Reward 1 for action 1 when obs[0] > 0, for action 0 otherwise; each row ends its episode."""
    learner = make(seed=0, rollout_rows=64, epochs=4, minibatches=2, learning_rate=3e-3)
    rng = np.random.default_rng(0)
    for _ in range(160):  # 1,280 rows, 20 updates
        obs = rng.uniform(-1, 1, (8, 3)).astype(np.float32)
        action = learner.act(obs)
        reward = (action == (obs[:, 0] > 0)).astype(np.float32)
        learner.observe(rows(obs, action, reward, obs, terminated=np.ones(8, bool)))
        learner.update()
    probe = rng.uniform(-1, 1, (500, 3)).astype(np.float32)
    assert np.mean(learner.act(probe, explore=False) == (probe[:, 0] > 0)) > 0.9
