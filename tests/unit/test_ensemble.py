"""Probabilistic ensemble world model: learns, knows where it is unsure, and round-trips its parameters.

Networks here are small (hidden 32, 2 hidden layers) so the whole file runs in a few seconds.
"""

from __future__ import annotations

import numpy as np
import pydantic
import pytest
import torch

from agent_node.roles import ParamSource, WorldModel
from agent_node.world_models import EnsembleConfig, WorldModelConfig, build_world_model
from agent_node.world_models.ensemble import EnsembleWorldModel

torch.set_num_threads(1)

NOISE_STD = 0.05


def small_config(**overrides) -> EnsembleConfig:
    fields = {
        "ensemble_size": 5,
        "num_elites": 3,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "lr": 3e-3,
        "batch_size": 64,
        "epochs_per_fit": 30,
        "max_steps_per_fit": 200,
        **overrides,
    }
    return EnsembleConfig(**fields)


def true_delta(states: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """A smooth nonlinear state change, the function the ensemble must learn."""
    return np.stack([0.5 * np.sin(states[:, 0]) + actions[:, 0], 0.3 * states[:, 1] * actions[:, 1]], axis=1)


def sample(rng: np.random.Generator, count: int, low: float = -2.0, high: float = 2.0):
    states = rng.uniform(low, high, (count, 2)).astype(np.float32)
    actions = rng.uniform(-1.0, 1.0, (count, 2)).astype(np.float32)
    next_states = states + true_delta(states, actions) + NOISE_STD * rng.standard_normal((count, 2))
    return states, actions, next_states.astype(np.float32)


@pytest.fixture(scope="module")
def trained():
    rng = np.random.default_rng(0)
    model = EnsembleWorldModel(small_config(), state_dim=2, action_dim=2, seed=1)
    metrics = model.fit(*sample(rng, 600))
    return model, metrics


def test_fit_beats_a_constant_predictor(trained):
    model, metrics = trained
    rng = np.random.default_rng(10)
    states, actions, _ = sample(rng, 500)
    truth = states + true_delta(states, actions)
    mean, variance = model.predict(states, actions)
    model_mse = float(np.mean((mean - truth) ** 2))
    deltas = truth - states
    constant_mse = float(np.mean((deltas - deltas.mean(axis=0)) ** 2))  # best constant change
    assert model_mse < 0.05 * constant_mse
    assert metrics["ensemble/holdout_mse"] < 0.1 * constant_mse
    assert metrics["ensemble/steps"] > 0 and metrics["ensemble/num_holdout"] == 120.0
    assert mean.shape == states.shape and variance.shape == states.shape and mean.dtype == np.float32


def test_aleatoric_variance_matches_the_noise(trained):
    model, _ = trained
    rng = np.random.default_rng(11)
    states, actions, _ = sample(rng, 500)
    _, aleatoric, _ = model.predict_decomposed(states, actions)
    # Model error inflates it somewhat (measured 1.7x to 2.5x the noise over five seeds).
    assert 0.5 * NOISE_STD**2 < float(np.median(aleatoric)) < 5 * NOISE_STD**2


def test_variance_larger_off_distribution(trained):
    model, _ = trained
    rng = np.random.default_rng(12)
    inside_states, actions, _ = sample(rng, 300)
    outside_states = rng.uniform(6.0, 8.0, (300, 2)).astype(np.float32)
    _, inside_total = model.predict(inside_states, actions)
    _, outside_total = model.predict(outside_states, actions)
    _, _, inside_epistemic = model.predict_decomposed(inside_states, actions)
    _, _, outside_epistemic = model.predict_decomposed(outside_states, actions)
    assert float(outside_epistemic.mean()) > 10 * float(inside_epistemic.mean())
    assert float(outside_total.mean()) > 3 * float(inside_total.mean())


def test_predict_combines_elites_by_total_variance(trained):
    model, _ = trained
    rng = np.random.default_rng(13)
    states, actions, _ = sample(rng, 50)
    member_means, member_variances = model.member_predictions(states, actions)
    elites = model.elite_indices
    mean, variance = model.predict(states, actions)
    np.testing.assert_allclose(mean, member_means[elites].mean(axis=0), rtol=1e-6)
    expected = member_variances[elites].mean(axis=0) + member_means[elites].var(axis=0)
    np.testing.assert_allclose(variance, expected, rtol=1e-5)


def test_elites_are_the_best_holdout_members():
    rng = np.random.default_rng(1)
    model = EnsembleWorldModel(small_config(epochs_per_fit=8), 2, 2, seed=2)
    data = sample(rng, 400)
    model.fit(*data)
    assert len(model.elite_indices) == 3
    order = np.argsort(model.holdout_mse)
    assert set(model.elite_indices) == set(order[:3])

    # Sabotage members 0 and 3 and refit for one step only: they cannot recover, so neither may
    # be an elite, and the prediction must not be pulled by their garbage outputs.
    params = model.get_params()
    for member in (0, 3):
        params["output_layer.bias"][member] += 50.0
    model.set_params(params)
    model.fit(*data)  # early stopping keeps the best weights; the sabotaged ones stay bad
    with_single_step = EnsembleWorldModel(small_config(max_steps_per_fit=1), 2, 2, seed=2)
    with_single_step.set_params(params)
    with_single_step.fit(*data)
    for candidate in (model, with_single_step):
        assert 0 not in candidate.elite_indices and 3 not in candidate.elite_indices
        assert candidate.holdout_mse[0] > 10 * candidate.holdout_mse[candidate.elite_indices].max()
    states, actions, next_states = sample(rng, 200)
    mean, _ = with_single_step.predict(states, actions)
    assert float(np.mean((mean - next_states) ** 2)) < 0.1


def test_params_round_trip_exactly_and_averaging_works(trained):
    model, _ = trained
    params = model.get_params()
    assert {"input_mean", "input_var", "input_count", "max_logvar", "min_logvar", "output_layer.weight"} <= set(params)
    other = EnsembleWorldModel(small_config(), 2, 2, seed=5)
    other.set_params(params)
    for name, array in other.get_params().items():
        np.testing.assert_array_equal(array, params[name])
        assert array.dtype == params[name].dtype

    # get_params returns copies: mutating them does not touch the model.
    params["output_layer.bias"][:] = 123.0
    assert not np.any(model.get_params()["output_layer.bias"] == 123.0)

    # Average a trained model with an untrained one that started from the same init seed.
    rng = np.random.default_rng(14)
    states, actions, _ = sample(rng, 100)
    untrained = EnsembleWorldModel(small_config(), 2, 2, seed=6)
    first, second = model.get_params(), untrained.get_params()
    averaged = {name: (first[name].astype(np.float64) + second[name]) / 2 for name in first}
    target = EnsembleWorldModel(small_config(), 2, 2, seed=7)
    target.import_statistics(averaged, num_agents=2)
    for name, array in target.get_params().items():
        np.testing.assert_allclose(array, averaged[name], rtol=1e-6)
    mean, variance = target.predict(states, actions)
    assert np.all(np.isfinite(mean)) and np.all(variance > 0)


def test_same_init_seed_gives_same_initial_weights_on_every_agent():
    a = EnsembleWorldModel(small_config(init_seed=4), 2, 2, seed=0).get_params()
    b = EnsembleWorldModel(small_config(init_seed=4), 2, 2, seed=99).get_params()
    c = EnsembleWorldModel(small_config(init_seed=5), 2, 2, seed=0).get_params()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(a["hidden_layers.0.weight"], c["hidden_layers.0.weight"])
    # Members within one model differ.
    assert not np.array_equal(a["hidden_layers.0.weight"][0], a["hidden_layers.0.weight"][1])


def test_shape_mismatch_raises_clear_error():
    model = EnsembleWorldModel(small_config(), 2, 2)
    params = model.get_params()
    bad = dict(params)
    bad["hidden_layers.0.weight"] = np.zeros((5, 4, 47), dtype=np.float32)
    expected_message = r"params\['hidden_layers.0.weight'\]: expected shape \(5, 4, 32\), got \(5, 4, 47\)"
    with pytest.raises(ValueError, match=expected_message):
        model.set_params(bad)
    missing = {name: array for name, array in params.items() if name != "max_logvar"}
    with pytest.raises(ValueError, match=r"missing \['max_logvar'\]"):
        model.set_params(missing)
    with pytest.raises(ValueError, match=r"unexpected \['extra'\]"):
        model.set_params({**params, "extra": np.zeros(1)})
    with pytest.raises(TypeError, match="floating dtype"):
        model.set_params({**params, "input_count": np.array([3])})
    with pytest.raises(ValueError, match="NaN"):
        model.set_params({**params, "input_mean": np.full(4, np.nan, dtype=np.float32)})
    # A rejected set_params leaves the model untouched.
    for name, array in model.get_params().items():
        np.testing.assert_array_equal(array, params[name])


def test_bad_transition_shapes_raise_clear_errors():
    model = EnsembleWorldModel(small_config(), 2, 2)
    good = np.zeros((4, 2), dtype=np.float32)
    with pytest.raises(ValueError, match=r"actions: expected a 2-D array of shape \(batch, 2\), got shape \(4, 3\)"):
        model.fit(good, np.zeros((4, 3)), good)
    with pytest.raises(ValueError, match="same batch size"):
        model.predict(good, np.zeros((3, 2)))
    with pytest.raises(ValueError, match="num_agents"):
        model.import_statistics(model.get_params(), num_agents=0)


def test_state_dict_round_trip(trained):
    model, _ = trained
    restored = EnsembleWorldModel(small_config(), 2, 2, seed=3)
    restored.load_state_dict(model.state_dict())
    rng = np.random.default_rng(15)
    states, actions, _ = sample(rng, 20)
    np.testing.assert_array_equal(restored.predict(states, actions)[0], model.predict(states, actions)[0])
    np.testing.assert_array_equal(restored.elite_indices, model.elite_indices)


def test_roles_and_builder():
    model = build_world_model(small_config(), state_dim=2, action_dim=2, seed=0)
    assert isinstance(model, EnsembleWorldModel)
    assert isinstance(model, WorldModel) and isinstance(model, ParamSource)


def test_config_validation():
    adapter = pydantic.TypeAdapter(WorldModelConfig)
    assert isinstance(adapter.validate_python({"kind": "ensemble"}), EnsembleConfig)
    with pytest.raises(pydantic.ValidationError, match="num_elites must be at most ensemble_size"):
        EnsembleConfig(ensemble_size=2, num_elites=3)
    with pytest.raises(pydantic.ValidationError, match="extra_forbidden"):
        adapter.validate_python({"kind": "ensemble", "hidden": 10})
    with pytest.raises(pydantic.ValidationError, match="union_tag_invalid"):
        adapter.validate_python({"kind": "transformer"})
