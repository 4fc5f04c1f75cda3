"""The pieces every learner shares (agent_node/algos/learner_parts.py), and that every learner
kind reports the same four update counters through them."""

from __future__ import annotations

import numpy as np
import pytest

from agent_node.algos.learner_parts import (
    StateLayout,
    check_algorithm,
    check_config,
    check_space,
    check_seed,
    checked_obs,
    run_gradient_steps,
    scheduled_learning_rate,
    steps_to_take,
    trainable_rows,
    update_counters,
)


def test_update_counters_owe_what_was_taken_plus_what_is_pending():
    assert update_counters("dqn", 7, 3, 120) == {
        "dqn/gradient_steps": 7.0, "dqn/steps_pending": 3.0, "dqn/steps_owed": 10.0, "dqn/rows_observed": 120.0,
    }
    assert update_counters("cql", 5, 95)["cql/rows_observed"] == 0.0  # offline: no rows observed online


def test_steps_to_take_caps_and_refuses_a_bad_cap():
    assert steps_to_take(12, None) == 12
    assert steps_to_take(12, 4) == 4 and steps_to_take(3, 4) == 3 and steps_to_take(3, 0) == 0
    for bad in (-1, 2.0, "3", None.__class__):
        with pytest.raises(ValueError, match="max_gradient_steps must be None or a non-negative int"):
            steps_to_take(5, bad)


def test_scheduled_learning_rate_is_linear_then_flat_and_constant_without_a_schedule():
    assert [scheduled_learning_rate(1.0, 0.5, 4, k) for k in (0, 1, 2, 4, 9)] == [1.0, 0.875, 0.75, 0.5, 0.5]
    assert scheduled_learning_rate(1e-3, None, None, 10_000) == 1e-3


def test_state_dict_of_another_learner_is_refused_naming_both():
    check_algorithm({"algorithm": "dqn"}, "dqn", "DQN")
    with pytest.raises(ValueError, match=r"expected a DQN state dict \(algorithm 'dqn'\), got algorithm 'sac'"):
        check_algorithm({"algorithm": "sac"}, "dqn", "DQN")
    with pytest.raises(ValueError, match=r"expected an OG-MARL state dict \(algorithm 'og_marl'\), got algorithm None"):
        check_algorithm({}, "og_marl", "OG-MARL")


def test_observation_batches_and_seeds_are_checked():
    assert checked_obs(np.zeros((4, 3)), (3,)).shape == (4, 3)
    with pytest.raises(ValueError, match=r"next_obs must have shape \(K, 3\), got \(3,\)"):
        checked_obs(np.zeros(3), (3,), "next_obs")
    check_seed(0)
    check_seed(np.int64(5))
    for bad in (True, -1, 1.5):
        with pytest.raises(ValueError, match="seed must be a non-negative int"):
            check_seed(bad)


def test_gradient_steps_run_and_their_metrics_are_averaged():
    losses = iter([1.0, 2.0, 6.0])
    calls = []

    def step() -> dict[str, float]:
        calls.append(1)
        return {"x/loss": next(losses), "x/one": 1.0}

    assert run_gradient_steps(step, 3) == {"x/loss": 3.0, "x/one": 1.0} and len(calls) == 3
    assert run_gradient_steps(step, 0) == {} and len(calls) == 3  # no step, no loss reported


def test_trainable_rows_wait_for_learning_starts_and_one_batch():
    assert trainable_rows(rows_observed=100, learning_starts=50, batch_size=64) == 36
    assert trainable_rows(rows_observed=100, learning_starts=0, batch_size=64) == 36  # a batch first
    assert trainable_rows(rows_observed=10, learning_starts=50, batch_size=4) == 0


def test_a_state_layout_saves_and_restores_every_part_and_refuses_another_learners_state():
    import torch

    class Learner:
        def __init__(self, seed: int) -> None:
            torch.manual_seed(seed)
            self.net = torch.nn.Linear(2, 1)
            self.optimizer = torch.optim.Adam(self.net.parameters(), lr=0.1)
            self.steps = seed
            self.rng = np.random.default_rng(seed)
            self.noise = torch.Generator().manual_seed(seed)

    layout = StateLayout("toy", "Toy", modules=("net",), optimizers=("optimizer",), counters=("steps",), generators=("rng", "noise"))
    saved_learner = Learner(1)
    saved_learner.rng.random(3)
    state = layout.save(saved_learner)
    assert sorted(state) == ["algorithm", "net", "noise_state", "optimizer", "rng_state", "steps"]
    restored = Learner(2)
    layout.load(restored, state, {"optimizer": 0.5})
    assert torch.equal(restored.net.weight, saved_learner.net.weight) and restored.steps == 1
    assert restored.rng.random() == saved_learner.rng.random()
    assert torch.rand(1, generator=restored.noise).item() == torch.rand(1, generator=saved_learner.noise).item()
    assert restored.optimizer.param_groups[0]["lr"] == 0.5  # the config's rate, not the checkpoint's
    with pytest.raises(ValueError, match="expected a Toy state dict"):
        layout.load(restored, {**state, "algorithm": "other"}, {"optimizer": 0.5})


def test_a_learner_refuses_another_learners_config_and_a_space_it_cannot_handle():
    class OGConfig:
        pass

    check_config(OGConfig(), OGConfig)
    with pytest.raises(TypeError, match="config must be an OGConfig, got int"):
        check_config(3, OGConfig)
    with pytest.raises(TypeError, match="X needs a list, got 'abc'"):
        check_space("abc", list, "X needs a list")
