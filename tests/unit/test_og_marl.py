"""OGMARLAgent driven in-process on the reward-collection environment (no sockets).

Checks: the refresh schedule; the statistics a refit hands to consensus; imagined rollouts that
follow the true dynamics closely and carry the task reward plus the optimism bonus; batches with
the requested real fraction; averaged statistics from two agents changing (and improving) the
model; an exact resume from the state dict; config and builder errors.

Small sizes keep the file fast: 100 inducing points, SAC 32x32, batch 64, 300 random steps.
"""

from __future__ import annotations

import io

import gymnasium as gym
import numpy as np
import pydantic
import pytest
import torch

from agent_node.algos import LearnerConfig, build_learner
from agent_node.algos.config import OGMARLConfig, SACConfig
from agent_node.algos.og_marl import OGMARLAgent, probe_distances
from agent_node.reward_models import TaskSpecError
from agent_node.roles import Actor, Learner, ParamSource, Transition
from agent_node.world_models import SparseGPConfig
from env_server.envs.reward_collection import parallel_env
from tests.conftest import assert_goes_on_alike

torch.set_num_threads(1)

RANDOM_STEPS = 300
SMALL_SAC = SACConfig(
    hidden_sizes=(32, 32), batch_size=64, buffer_size=10_000, random_steps=RANDOM_STEPS, learning_starts=RANDOM_STEPS
)
SMALL_GP = SparseGPConfig(num_inducing=100)  # box left unset: the agent fills it from the spaces


def small_config(**overrides) -> OGMARLConfig:
    fields = dict(
        sac=SMALL_SAC,
        model_every=50,
        fit_transitions=128,
        holdout_transitions=32,
        rollout_starts=64,
        rollout_horizon=2,
        updates_per_step=2,
        real_ratio=0.25,
        model_buffer_size=5_000,
    )
    return OGMARLConfig(**{**fields, **overrides})


def make_agent(env, agent_name="agent_0", seed=0, **overrides) -> OGMARLAgent:
    return build_learner(
        small_config(**overrides),
        env.observation_space(agent_name),
        env.action_space(agent_name),
        seed,
        world_model_config=SMALL_GP,
        task_spec=env.task_spec(),
    )


def drive(env, agents: dict[str, OGMARLAgent], rows: int, *, refresh=None, learn=False) -> list[int]:
    """Step the env `rows` times with every agent acting; return the rows at which a refresh was due.

    `refresh(agent)` runs when an agent's refresh is due (default: fit, then adopt the local model).
    """
    refresh = refresh or (lambda agent: (agent.fit_world_model(), agent.adopt_world_model(None, 1)))
    if not env.agents:
        env.reset()
    observations = {name: env._observations()[name] for name in agents}
    due_rows = []
    for _ in range(rows):
        actions = {name: agent.act(observations[name][None])[0] for name, agent in agents.items()}
        next_observations, rewards, terminations, truncations, _ = env.step(actions)
        for name, agent in agents.items():
            agent.observe(
                Transition(
                    obs=observations[name][None],
                    action=actions[name][None],
                    reward=np.array([rewards[name]], np.float32),
                    next_obs=next_observations[name][None],
                    terminated=np.array([terminations[name]]),
                    truncated=np.array([truncations[name]]),
                )
            )
        first = next(iter(agents.values()))
        if first.model_refresh_due():
            due_rows.append(first.rows_observed)
        for agent in agents.values():
            if agent.model_refresh_due():
                refresh(agent)
            if learn:
                agent.update()
        observations = next_observations if not truncations[next(iter(agents))] else env.reset()[0]
    return due_rows


def unscored(obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray) -> Transition:
    """Rows with zero reward and no episode end, for tests that only count rows."""
    count = len(obs)
    return Transition(obs, action, np.zeros(count, np.float32), next_obs, np.zeros(count, bool), np.zeros(count, bool))


def true_next_positions(obs: np.ndarray, action: np.ndarray, eta: np.ndarray) -> np.ndarray:
    return np.clip(obs + np.clip(action, -1.0, 1.0) * eta, -10.0, 10.0)


# ---------------------------------------------------------------------------------- schedule


def test_refresh_fires_once_per_model_every_after_the_random_steps():
    env = parallel_env(num_agents=1, action_penalty=True, max_cycles=25)
    agent = make_agent(env)
    assert isinstance(agent, OGMARLAgent)
    assert isinstance(agent, Actor) and isinstance(agent, Learner) and isinstance(agent, ParamSource)
    due_rows = drive(env, {"agent_0": agent}, 460, learn=True)
    # Due at the ticks only: drive records the rows where it was due, then fits (which clears it).
    assert due_rows == [300, 350, 400, 450]
    assert agent.refreshes == 4
    # SAC runs the og_marl updates_per_step, on every row after learning_starts.
    assert agent.sac.config.updates_per_step == 2
    assert agent.sac.gradient_steps == 2 * (460 - RANDOM_STEPS)


def test_first_refresh_waits_for_enough_data_and_missed_ticks_are_not_made_up():
    env = parallel_env(num_agents=1)
    config_rows = dict(sac=SMALL_SAC.model_copy(update={"random_steps": 50, "learning_starts": 50}))
    agent = make_agent(env, **config_rows)
    assert agent.config.first_refresh_row() == 160  # fit_transitions + holdout_transitions > random_steps

    def rows(count: int, start: float = 0.0) -> Transition:
        obs = np.full((count, 2), start, np.float32)
        action = np.random.default_rng(count).uniform(-1, 1, (count, 2)).astype(np.float32)
        return unscored(obs, action, obs + action)

    agent.observe(rows(159))
    assert not agent.model_refresh_due()
    agent.observe(rows(1))
    assert agent.model_refresh_due()
    agent.fit_world_model()
    assert not agent.model_refresh_due() and agent.next_refresh_row == 210
    # One observe of 120 rows (K vectorized copies) jumps over the ticks at 210 and 260.
    agent.observe(rows(120))
    assert agent.rows_observed == 280 and agent.model_refresh_due()
    agent.fit_world_model()
    assert agent.next_refresh_row == 310 and not agent.model_refresh_due()


def test_the_refresh_follows_the_clock_it_is_given_and_shares_without_refit_when_data_is_short():
    """The agent node's clock is the env server's step x K, the same on every agent: an agent
    that missed steps (fewer rows than its neighbours) refreshes at the same ticks, and one with
    less than a refit's data shares the statistics it has (none yet: zeros) instead of failing."""
    env = parallel_env(num_agents=1)
    agent = make_agent(env, model_every=50, fit_transitions=128, holdout_transitions=32)
    assert agent.config.first_refresh_row() == RANDOM_STEPS
    assert agent.refresh_tick(RANDOM_STEPS - 1) is None and not agent.model_refresh_due(RANDOM_STEPS - 1)
    assert agent.refresh_tick(349) == 300 and agent.model_refresh_due(349)
    assert not agent.model_refresh_due()  # its own rows (none) have not reached a tick
    statistics = agent.fit_world_model(rows=300)
    assert agent.next_refresh_row == 350 and not agent.model_refresh_due(349) and agent.model_refresh_due(350)
    assert all(not value.any() for value in statistics.values())  # no fit yet: no information
    metrics = agent.adopt_world_model(None, 1)
    assert metrics["og_marl/refit_skipped"] == 1.0 and "og_marl/model_mse" not in metrics  # nothing to imagine from
    drive(env, {"agent_0": agent}, 20, refresh=lambda agent: None)  # 20 rows, under one refit's 160
    assert agent.model_refresh_due(350)
    agent.fit_world_model(rows=350)
    metrics = agent.adopt_world_model(None, 1)
    assert metrics["og_marl/refit_skipped"] == 1.0 and np.isnan(metrics["og_marl/model_mse"])
    assert metrics["og_marl/model_buffer_size"] > 0  # imagined from the 20 real start states


# ---------------------------------------------------------------------------------- one agent


@pytest.fixture(scope="module")
def trained_single_agent():
    """One agent after its random phase and one refresh-free stretch, before its first refit."""
    env = parallel_env(num_agents=1, action_penalty=True, max_cycles=25, dynamics_seed=7)
    agent = make_agent(env, optimism=0.05)
    due_rows = drive(env, {"agent_0": agent}, RANDOM_STEPS - 1)
    assert due_rows == [] and not agent.model_refresh_due()
    drive(env, {"agent_0": agent}, 1, refresh=lambda agent: None)
    assert agent.model_refresh_due()
    return env, agent


def test_fit_returns_the_natural_parameters(trained_single_agent):
    _, agent = trained_single_agent
    stats = agent.fit_world_model()
    num_inducing = agent.world_model.num_inducing
    assert num_inducing == 100
    assert set(stats) == {"J", "h"}
    assert stats["J"].shape == (num_inducing, num_inducing) and stats["h"].shape == (num_inducing, 2)
    assert stats["J"].dtype == np.float64 and np.allclose(stats["J"], stats["J"].T)
    assert agent.world_model.num_local_transitions == 128
    np.testing.assert_array_equal(stats["J"], agent.world_model.export_statistics()["J"])
    assert agent.world_model_config.input_low == [-10.0, -10.0, -1.0, -1.0]
    assert agent.world_model_config.input_high == [10.0, 10.0, 1.0, 1.0]


def test_local_adoption_imagines_accurate_rollouts_with_the_task_reward(trained_single_agent):
    env, agent = trained_single_agent
    if agent.pending_holdout is None:
        agent.fit_world_model()
    metrics = agent.adopt_world_model(None, 1)

    buffer = agent.model_buffer
    starts, horizon = 64, 2
    assert len(buffer) == starts * horizon == metrics["og_marl/model_buffer_size"]
    assert not buffer.terminated[: len(buffer)].any() and not buffer.truncated[: len(buffer)].any()
    obs, action, next_obs = buffer.obs[:128], buffer.action[:128], buffer.next_obs[:128]
    # Rows 0-63 are the first imagined step from real states; rows 64-127 continue from them.
    real_states = {tuple(row) for row in agent.replay.obs[: len(agent.replay)]}
    assert all(tuple(row) in real_states for row in obs[:starts])
    np.testing.assert_array_equal(obs[starts:], next_obs[:starts])

    # The model is accurate: imagined next states follow p + a * eta (clipped) closely, far better
    # than assuming the agent does not move. Walls (clipped moves) are where the GP is worst.
    errors = np.abs(next_obs - true_next_positions(obs, action, env.eta[0])).max(axis=1)
    move = np.abs(np.clip(action, -1, 1) * env.eta[0]).max(axis=1)
    assert np.median(errors) < 0.01, np.median(errors)
    assert np.quantile(errors, 0.9) < 0.1, np.quantile(errors, 0.9)
    assert np.median(errors) < 0.05 * np.median(move)
    assert metrics["og_marl/model_mse"] < 0.01

    # Reward = the agent's own term of the task reward at the imagined position + c * sqrt(var),
    # with the reference's variance k(x,x) - k(x,Z) S k(Z,x) by default.
    assert agent.config.optimism_variance == "reference"
    states64, actions64 = obs.astype(np.float64), action.astype(np.float64)
    reference_variance = agent.world_model.reference_variance(states64, actions64)
    _, epistemic_variance = agent.world_model.predict(states64, actions64)
    bonus = 0.05 * np.sqrt(reference_variance)
    task_reward = agent.reward_model.contribution(next_obs, action)
    np.testing.assert_allclose(buffer.reward[:128], task_reward + bonus, atol=1e-5)
    assert metrics["og_marl/optimism_bonus"] == pytest.approx(bonus.mean(), rel=1e-5)
    assert metrics["og_marl/imagined_reward"] == pytest.approx(task_reward.mean(), rel=1e-5)
    assert metrics["og_marl/bonus_over_reward"] == pytest.approx(bonus.mean() / np.abs(task_reward).mean(), rel=1e-5)
    assert metrics["og_marl/sqrt_variance_reference"] == pytest.approx(np.sqrt(reference_variance).mean(), rel=1e-6)
    assert metrics["og_marl/sqrt_variance_epistemic"] == pytest.approx(
        np.sqrt(epistemic_variance[:, 0].astype(np.float64)).mean(), rel=1e-5
    )
    # The reference's variance is dominated by the prior k(x, x): far larger than the epistemic one.
    assert metrics["og_marl/sqrt_variance_reference"] > 10 * metrics["og_marl/sqrt_variance_epistemic"]
    assert metrics["og_marl/shared"] == 0.0


def test_adopt_without_fit_is_refused(trained_single_agent):
    _, agent = trained_single_agent
    agent.pending_holdout = None
    with pytest.raises(RuntimeError, match="fit_world_model first"):
        agent.adopt_world_model(None, 1)
    with pytest.raises(ValueError, match="num_agents"):
        agent.adopt_world_model(None, 0)


@pytest.mark.parametrize("optimism", [0.0, 0.05])
@pytest.mark.parametrize("optimism_variance", ["reference", "epistemic"])
def test_optimism_bonus_is_zero_only_without_optimism(optimism, optimism_variance):
    env = parallel_env(num_agents=1, max_cycles=25)
    agent = make_agent(env, optimism=optimism, optimism_variance=optimism_variance)
    metrics = {}

    def refresh(agent):
        agent.fit_world_model()
        metrics.update(agent.adopt_world_model(None, 1))

    drive(env, {"agent_0": agent}, RANDOM_STEPS, refresh=refresh)
    rows = len(agent.model_buffer)
    task_reward = agent.reward_model.contribution(agent.model_buffer.next_obs[:rows], agent.model_buffer.action[:rows])
    if optimism == 0.0:
        assert metrics["og_marl/optimism_bonus"] == 0.0
        np.testing.assert_array_equal(agent.model_buffer.reward[:rows], task_reward.astype(np.float32))
    else:
        assert metrics["og_marl/optimism_bonus"] > 0.0
        assert np.all(agent.model_buffer.reward[:rows] > task_reward.astype(np.float32))
        # The bonus is c times the mean square root of the chosen variance.
        chosen = metrics[f"og_marl/sqrt_variance_{optimism_variance}"]
        assert metrics["og_marl/optimism_bonus"] == pytest.approx(optimism * chosen, rel=1e-5)


def test_batches_hold_the_requested_real_fraction():
    env = parallel_env(num_agents=1, max_cycles=25)
    agent = make_agent(env, real_ratio=0.25)
    drive(env, {"agent_0": agent}, RANDOM_STEPS + 5, learn=True)
    batch, num_real = agent.sac.sample_batch()
    assert num_real == 16 and len(batch["reward"]) == 64
    stored = len(agent.model_buffer)
    imagined = {tuple(row) for row in np.concatenate([agent.model_buffer.obs, agent.model_buffer.next_obs], axis=1)[:stored]}
    imagined_rows = np.concatenate([batch["obs"], batch["next_obs"]], axis=1)[num_real:]
    assert all(tuple(row) in imagined for row in imagined_rows)
    taken = agent.counters()["sac/gradient_steps"]
    metrics = agent.update()  # nothing due: returns without a gradient step
    assert agent.counters()["sac/gradient_steps"] == taken and "sac/real_fraction" not in metrics
    agent.observe(unscored(batch["obs"][:1], batch["action"][:1], batch["next_obs"][:1]))
    metrics = agent.update()
    assert agent.counters()["sac/gradient_steps"] == taken + 2 and metrics["sac/real_fraction"] == 0.25
    assert agent.counters()["sac/steps_pending"] == 0
    assert agent.counters()["og_marl/refreshes"] == agent.refreshes


# ---------------------------------------------------------------------------------- sharing


def test_averaged_statistics_from_two_agents_change_and_improve_the_model():
    env = parallel_env(num_agents=2, max_cycles=25, dynamics_seed=1)
    agents = {"agent_0": make_agent(env, "agent_0", seed=0), "agent_1": make_agent(env, "agent_1", seed=1)}
    drive(env, agents, RANDOM_STEPS, refresh=lambda agent: None)
    first, second = agents["agent_0"], agents["agent_1"]
    first_stats, second_stats = first.fit_world_model(), second.fit_world_model()
    averaged = {name: (first_stats[name] + second_stats[name]) / 2 for name in first_stats}

    # The second agent's held-out data: transitions in its own region with its own gains.
    other = second.pending_holdout
    query_states, query_actions = other["obs"], other["action"]
    local_prediction, local_variance = first.world_model.predict(query_states, query_actions)

    # Importing one's own statistics as a 1-agent "average" is the local model, exactly.
    first.world_model.import_statistics(first_stats, 1)
    np.testing.assert_array_equal(first.world_model.predict(query_states, query_actions)[0], local_prediction)

    metrics = first.adopt_world_model(averaged, 2)
    assert metrics["og_marl/shared"] == 1.0
    fused_prediction, fused_variance = first.world_model.predict(query_states, query_actions)
    assert np.abs(fused_prediction - local_prediction).max() > 1e-3
    local_error = np.mean((local_prediction - other["next_obs"]) ** 2)
    fused_error = np.mean((fused_prediction - other["next_obs"]) ** 2)
    assert fused_error < local_error, (fused_error, local_error)
    # Twice the data: the model is surer where the other agent has been.
    assert fused_variance.mean() < local_variance.mean()


# ---------------------------------------------------------------------------------- checkpoints


def test_state_dict_round_trip_resumes_exactly(tmp_path):
    env = parallel_env(num_agents=1, max_cycles=25)
    agent = make_agent(env)
    drive(env, {"agent_0": agent}, RANDOM_STEPS + 60, learn=True)
    agent.fit_world_model()  # save between fit and adoption: the held-out rows must survive too

    buffer = io.BytesIO()
    torch.save(agent.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    clone = make_agent(env, seed=123)  # another seed: everything must come from the checkpoint
    clone.load_state_dict(state)
    agent.replay.save(tmp_path / "replay.npz")
    clone.replay.restore(tmp_path / "replay.npz")

    assert clone.next_refresh_row == agent.next_refresh_row and clone.refreshes == agent.refreshes == 2
    for name in ("obs", "action", "reward", "next_obs"):
        np.testing.assert_array_equal(getattr(clone.model_buffer, name), getattr(agent.model_buffer, name))
    probe = np.array([[6.0, 0.0], [-3.0, 2.0]], np.float32)
    np.testing.assert_array_equal(clone.act(probe, explore=False), agent.act(probe, explore=False))

    # The same calls on both give the same results: adoption, imagination, gradient steps.
    assert clone.adopt_world_model(None, 1) == agent.adopt_world_model(None, 1)
    assert_goes_on_alike(agent, clone, unscored(probe[:1], np.zeros((1, 2), np.float32), probe[:1]))

    with pytest.raises(ValueError, match="algorithm 'og_marl'"):
        clone.load_state_dict(agent.sac.state_dict())


# ---------------------------------------------------------------------------------- config and builder


def test_config_parses_from_yaml_shape_and_checks_consistency():
    parsed = pydantic.TypeAdapter(LearnerConfig).validate_python({"kind": "og_marl", "sac": {"hidden_sizes": [64, 64]}})
    assert isinstance(parsed, OGMARLConfig)
    assert parsed.sac_config().updates_per_step == 10 and parsed.sac_config().hidden_sizes == (64, 64)
    assert (parsed.model_every, parsed.fit_transitions, parsed.rollout_horizon, parsed.optimism) == (250, 256, 2, 0.01)
    assert parsed.first_refresh_row() == 5_000
    OGMARLConfig(sac=SACConfig(updates_per_step=10))  # the same value is fine
    one_real = OGMARLConfig(sac=SACConfig(bootstrap_on_truncation=False), real_ratio=1 / 256)
    assert round(one_real.real_ratio * one_real.sac.batch_size) == 1


@pytest.mark.parametrize(("fields", "match"), [
    ({"sac": SACConfig(updates_per_step=3)}, "sac.updates_per_step"),
    ({"model_buffer_size": 100}, "model_buffer_size"),
    ({"rollout_length": 3}, "rollout_length"),
    ({"real_ratio": 1.5}, "real_ratio"),
    # Treating the time limit as terminal acts on real rows only: refused where there are none.
    ({"sac": SACConfig(bootstrap_on_truncation=False)}, "would do nothing"),
])
def test_config_refuses(fields, match):
    with pytest.raises(pydantic.ValidationError, match=match):
        OGMARLConfig(**fields)


def test_builder_requires_a_world_model_and_a_task():
    env = parallel_env(num_agents=1)
    spaces = (env.observation_space("agent_0"), env.action_space("agent_0"))
    with pytest.raises(ValueError, match="world_model"):
        build_learner(small_config(), *spaces, 0, task_spec=env.task_spec())
    with pytest.raises(ValueError, match="metadata\\['task'\\]"):
        build_learner(small_config(), *spaces, 0, world_model_config=SMALL_GP)
    with pytest.raises(TaskSpecError, match="'radius'"):
        bad_task = {**env.task_spec(), "radius": 0}
        build_learner(small_config(), *spaces, 0, world_model_config=SMALL_GP, task_spec=bad_task)
    wide_obs = gym.spaces.Box(-10.0, 10.0, (3,), np.float32)
    with pytest.raises(ValueError, match="observation shape \\(2,\\)"):
        build_learner(small_config(), wide_obs, spaces[1], 0, world_model_config=SMALL_GP, task_spec=env.task_spec())
    unbounded = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    with pytest.raises(ValueError, match="finite"):
        build_learner(small_config(), unbounded, spaces[1], 0, world_model_config=SMALL_GP, task_spec=env.task_spec())
    # A box given in the config is kept as it is.
    boxed = SMALL_GP.model_copy(update={"input_low": [-12.0, -12.0, -1.0, -1.0], "input_high": [12.0, 12.0, 1.0, 1.0]})
    agent = build_learner(small_config(), *spaces, 0, world_model_config=boxed, task_spec=env.task_spec())
    assert agent.world_model_config.input_low == [-12.0, -12.0, -1.0, -1.0]


# ---------------------------------------------------------------------------------- distance to the average


def test_probes_estimate_each_agents_distance_to_the_exact_average():
    env = parallel_env(num_agents=3, max_cycles=25, dynamics_seed=2)
    names = ["agent_0", "agent_1", "agent_2"]
    agents = {name: make_agent(env, name, seed=index) for index, name in enumerate(names)}
    drive(env, agents, RANDOM_STEPS, refresh=lambda agent: None)
    statistics = [agents[name].fit_world_model() for name in names]
    before = [dict(agents[name].pending_probe) for name in names]
    assert len(before[0]) == 2 * 16  # 16 projections of J and 16 of h, "before" only
    # The directions are the same on every agent: projecting one matrix gives one number everywhere.
    np.testing.assert_array_equal(
        list(agents["agent_0"]._probe(statistics[1], "x").values()), list(agents["agent_2"]._probe(statistics[1], "x").values())
    )
    exact = {key: np.mean([stats[key] for stats in statistics], axis=0) for key in ("J", "h")}
    # Agent 0 adopts the exact average, agent 1 a half-way mix, agent 2 keeps its own statistics.
    halfway = {key: (exact[key] + statistics[1][key]) / 2 for key in ("J", "h")}
    adopted = [exact, halfway, statistics[2]]
    after = [agents[name].adopt_world_model(stats, 3) for name, stats in zip(names, adopted)]
    assert all(f"og_marl/probe/before/J/{k:02d}" in metrics for metrics in after for k in range(16))

    estimated = probe_distances(before, after)
    for key in ("J", "h"):
        true = [np.linalg.norm(stats[key] - exact[key]) / np.linalg.norm(exact[key]) for stats in adopted]
        assert estimated[key][0] < 1e-12 and true[0] == 0.0
        for got, want in zip(estimated[key][1:], true[1:]):
            assert want / 3 < got < want * 3, (key, got, want)  # 16 random projections: an estimate
        assert estimated[key][1] < estimated[key][2]  # half-way is closer than not mixing at all


def test_no_probes_when_switched_off_and_none_after_without_sharing():
    env = parallel_env(num_agents=1, max_cycles=25)
    quiet = make_agent(env, consensus_probes=0)
    drive(env, {"agent_0": quiet}, RANDOM_STEPS, refresh=lambda agent: None)
    quiet.fit_world_model()
    assert not any(key.startswith("og_marl/probe/") for key in quiet.adopt_world_model(None, 1))
    alone = make_agent(env)
    drive(env, {"agent_0": alone}, RANDOM_STEPS, refresh=lambda agent: None)
    alone.fit_world_model()
    metrics = alone.adopt_world_model(None, 1)
    assert sum(key.startswith("og_marl/probe/before/") for key in metrics) == 32
    assert not any(key.startswith("og_marl/probe/after/") for key in metrics)


def test_reference_variance_needs_a_sparse_gp():
    from agent_node.world_models import EnsembleConfig

    env = parallel_env(num_agents=1)
    spaces = (env.observation_space("agent_0"), env.action_space("agent_0"))
    ensemble = EnsembleConfig(ensemble_size=2, num_elites=1, hidden_size=8, num_hidden_layers=1)
    with pytest.raises(ValueError, match="optimism_variance 'reference'"):
        build_learner(small_config(), *spaces, 0, world_model_config=ensemble, task_spec=env.task_spec())
    agent = build_learner(
        small_config(optimism_variance="epistemic"), *spaces, 0, world_model_config=ensemble, task_spec=env.task_spec()
    )
    assert agent.probe_directions == {}
