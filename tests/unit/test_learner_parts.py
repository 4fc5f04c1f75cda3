"""The pieces every learner shares (agent_node/algos/learner_parts.py), and that every learner
kind reports the same four update counters through them."""

from __future__ import annotations

import numpy as np
import pytest

from agent_node.algos.learner_parts import (
    check_algorithm,
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
