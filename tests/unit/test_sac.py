"""SACAgent: finds a bandit's optimum inside non-symmetric bounds, tunes alpha, keeps actions in
bounds, mixes real and imagined batches at the requested ratio, bootstraps through truncation only,
and resumes exactly from its state dict."""

from __future__ import annotations


import gymnasium as gym
import numpy as np
import pytest
import torch

from agent_node.algos import build_learner
from agent_node.algos.config import DQNConfig, SACConfig
from agent_node.algos import sac as sac_module
from agent_node.algos.sac import SACAgent
from agent_node.replay import ReplayBuffer
from agent_node.roles import Actor, Learner, ParamSource, Transition
from tests.conftest import assert_goes_on_alike, through_a_checkpoint

torch.set_num_threads(1)

OBS_SPACE = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
# Non-symmetric bounds: the optimum 0.3 sits off the centre 0.5 of [0, 1].
BANDIT_ACTION_SPACE = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
BEST_ACTION = 0.3
SMALL_CONFIG = SACConfig(
    hidden_sizes=(32, 32),
    batch_size=32,
    buffer_size=10_000,
    learning_starts=100,
    random_steps=100,
    actor_lr=3e-3,
    critic_lr=3e-3,
    alpha_lr=3e-3,
    initial_alpha=0.1,
)


def bandit_transition(obs: np.ndarray, action: np.ndarray) -> Transition:
    """One-step episodes with reward -(a - 0.3)^2."""
    num_rows = obs.shape[0]
    reward = -((action[:, 0] - BEST_ACTION) ** 2)
    return Transition(obs, action, reward.astype(np.float32), obs, np.ones(num_rows, bool), np.zeros(num_rows, bool))


def train_bandit(agent: SACAgent, rows: int) -> dict[str, float]:
    obs = np.zeros((1, 1), np.float32)
    metrics: dict[str, float] = {}
    for _ in range(rows):
        agent.observe(bandit_transition(obs, agent.act(obs)))
        metrics = agent.update()
    return metrics


@pytest.mark.timeout(60)
def test_deterministic_action_approaches_the_optimum_and_alpha_tunes():
    agent = SACAgent(SMALL_CONFIG, OBS_SPACE, BANDIT_ACTION_SPACE, seed=0)
    obs = np.zeros((1, 1), np.float32)
    before = float(agent.act(obs, explore=False)[0, 0])
    metrics = train_bandit(agent, rows=450)
    after = float(agent.act(obs, explore=False)[0, 0])
    assert abs(after - BEST_ACTION) < 0.05, f"deterministic action {after:.3f} (was {before:.3f} untrained)"
    # The entropy of a near-deterministic policy on [0, 1] is above the target -1 only if alpha
    # drops; the tuner must have moved it down from 0.1.
    assert metrics["sac/alpha"] < 0.07
    assert set(metrics) >= {"sac/critic_loss", "sac/actor_loss", "sac/alpha", "sac/alpha_loss", "sac/entropy"}
    assert agent.gradient_steps == 450 - SMALL_CONFIG.learning_starts


def test_alpha_stays_fixed_without_autotuning():
    config = SMALL_CONFIG.model_copy(update={"autotune_alpha": False, "learning_starts": 40, "random_steps": 40})
    agent = SACAgent(config, OBS_SPACE, BANDIT_ACTION_SPACE, seed=0)
    metrics = train_bandit(agent, rows=60)
    assert metrics["sac/alpha"] == pytest.approx(0.1)
    assert "sac/alpha_loss" not in metrics


@pytest.mark.parametrize("phase", ["random_steps", "policy"])
def test_actions_respect_non_symmetric_bounds(phase):
    action_space = gym.spaces.Box(np.array([-3.0, 0.5], np.float32), np.array([-1.0, 4.0], np.float32))
    config = SMALL_CONFIG.model_copy(update={"random_steps": 1_000 if phase == "random_steps" else 0})
    agent = SACAgent(config, gym.spaces.Box(-10.0, 10.0, (3,), np.float32), action_space, seed=0)
    obs = np.random.default_rng(0).normal(scale=10.0, size=(2_000, 3)).astype(np.float32)
    sampled = agent.act(obs, explore=True)
    assert sampled.shape == (2_000, 2) and sampled.dtype == np.float32
    assert all(action_space.contains(action) for action in sampled)
    # Exploration covers most of each interval, not just the middle.
    spread = (sampled.max(axis=0) - sampled.min(axis=0)) / (action_space.high - action_space.low)
    assert np.all(spread > 0.5)
    assert all(action_space.contains(action) for action in agent.act(obs, explore=False))

    # A saturated tanh (huge mean) lands exactly on the bounds, never outside them.
    params = agent.get_params()
    params["actor.mean_head.bias"] = np.array([1e4, -1e4], np.float32)
    params["actor.mean_head.weight"] = np.zeros_like(params["actor.mean_head.weight"])
    agent.set_params(params)
    np.testing.assert_array_equal(agent.act(obs[:3], explore=False), [[-1.0, 0.5]] * 3)
    assert all(action_space.contains(action) for action in agent.act(obs, explore=True))


def test_mixed_batches_use_the_requested_real_ratio():
    config = SMALL_CONFIG.model_copy(update={"learning_starts": 0})
    agent = SACAgent(config, OBS_SPACE, BANDIT_ACTION_SPACE, seed=0)
    obs = np.zeros((64, 1), np.float32)
    actions = np.full((64, 1), 0.5, np.float32)
    no_flags = np.zeros(64, bool)
    # Real rows have reward 0 and imagined rows reward 1, so a batch's reward sum counts imagined rows.
    agent.observe(Transition(obs, actions, np.zeros(64, np.float32), obs, no_flags, no_flags))
    imagined = ReplayBuffer(1_000, (1,), np.float32, (1,), np.float32, seed=5)
    agent.set_model_buffer(imagined, real_ratio=0.25)

    batch, num_real = agent.sample_batch()
    assert num_real == 32 and batch["reward"].sum() == 0.0  # empty model buffer: all real

    imagined.add(Transition(obs, actions, np.ones(64, np.float32), obs, no_flags, no_flags))
    for _ in range(5):
        batch, num_real = agent.sample_batch()
        assert num_real == 8 and batch["reward"].shape == (32,)
        assert batch["reward"].sum() == 32 - 8
    metrics = agent.update(max_gradient_steps=3)
    assert metrics["sac/real_fraction"] == 0.25 and agent.counters()["sac/gradient_steps"] == 3

    agent.set_model_buffer(imagined, real_ratio=0.0)
    assert agent.sample_batch()[0]["reward"].sum() == 32
    agent.set_model_buffer(None, real_ratio=1.0)
    assert agent.sample_batch()[0]["reward"].sum() == 0

    with pytest.raises(ValueError, match=r"real_ratio must be in \[0, 1\]"):
        agent.set_model_buffer(imagined, real_ratio=1.5)
    wrong_shape = ReplayBuffer(10, (2,), np.float32, (1,), np.float32, seed=0)
    with pytest.raises(ValueError, match=r"model buffer holds obs \(2,\)"):
        agent.set_model_buffer(wrong_shape, real_ratio=0.5)


def test_updates_per_step_counts_rows():
    config = SMALL_CONFIG.model_copy(update={"learning_starts": 40, "updates_per_step": 3, "hidden_sizes": (8,)})
    agent = SACAgent(config, OBS_SPACE, BANDIT_ACTION_SPACE, seed=0)
    obs = np.zeros((50, 1), np.float32)
    agent.observe(bandit_transition(obs, np.full((50, 1), 0.5, np.float32)))
    assert agent.update()
    assert agent.counters()["sac/gradient_steps"] == (50 - 40) * 3
    agent.update()
    assert agent.counters()["sac/gradient_steps"] == (50 - 40) * 3  # nothing more was due


def test_counters_are_cumulative_and_count_what_is_owed():
    """gradient_steps + steps_pending == steps_owed == updates_per_step * trainable rows, at any time,
    however the updates are sliced; the numbers are totals since the start, not per call."""
    config = SMALL_CONFIG.model_copy(update={"learning_starts": 40, "updates_per_step": 3, "hidden_sizes": (8,)})
    agent = SACAgent(config, OBS_SPACE, BANDIT_ACTION_SPACE, seed=0)
    assert agent.counters() == {
        "sac/gradient_steps": 0.0, "sac/steps_pending": 0.0, "sac/steps_owed": 0.0, "sac/rows_observed": 0.0,
    }
    obs = np.zeros((50, 1), np.float32)
    agent.observe(bandit_transition(obs, np.full((50, 1), 0.5, np.float32)))
    assert agent.counters()["sac/steps_pending"] == 30 and agent.counters()["sac/steps_owed"] == 30
    metrics = agent.update(max_gradient_steps=4)
    assert "sac/gradient_steps" not in metrics and "sac/steps_pending" not in metrics  # not averaged per call
    assert agent.counters() == {
        "sac/gradient_steps": 4.0, "sac/steps_pending": 26.0, "sac/steps_owed": 30.0, "sac/rows_observed": 50.0,
    }
    agent.update(max_gradient_steps=4)
    agent.observe(bandit_transition(obs[:2], np.full((2, 1), 0.5, np.float32)))
    counters = agent.counters()
    assert counters["sac/gradient_steps"] == 8 and counters["sac/steps_owed"] == 36
    assert counters["sac/steps_pending"] == 28 == agent.gradient_steps_due()
    agent.update()
    assert agent.counters()["sac/gradient_steps"] == 36 and agent.counters()["sac/steps_pending"] == 0


def loop_value(terminal_flag: str, bootstrap_on_truncation: bool = True) -> float:
    """min-Q of a one-state loop with reward 1 per step, where every row is ended by `terminal_flag`."""
    config = SACConfig(
        hidden_sizes=(32, 32), batch_size=32, buffer_size=100, learning_starts=0, random_steps=0,
        critic_lr=3e-3, tau=0.2, gamma=0.5, autotune_alpha=False, initial_alpha=1e-4,
        bootstrap_on_truncation=bootstrap_on_truncation,
    )
    agent = SACAgent(config, OBS_SPACE, BANDIT_ACTION_SPACE, seed=1)
    obs = np.zeros((32, 1), np.float32)
    actions = np.random.default_rng(0).uniform(0.0, 1.0, (32, 1)).astype(np.float32)
    flags = {"terminated": np.zeros(32, bool), "truncated": np.zeros(32, bool)}
    flags[terminal_flag] = np.ones(32, bool)
    agent.observe(Transition(obs, actions, np.ones(32, np.float32), obs, **flags))
    for _ in range(200):
        agent.update()
        agent.observe(Transition(obs[:1], actions[:1], np.ones(1, np.float32), obs[:1],
                                 flags["terminated"][:1], flags["truncated"][:1]))
    return float(agent.critic_values(obs[:1], actions[:1])[0])


@pytest.mark.timeout(60)
def test_bootstraps_through_truncation_but_not_termination():
    # Truncated rows bootstrap: Q = 1 / (1 - gamma) = 2 (alpha ~ 0). Terminated rows do not: Q = 1.
    assert loop_value("truncated") == pytest.approx(2.0, abs=0.15)
    assert loop_value("terminated") == pytest.approx(1.0, abs=0.1)


@pytest.mark.timeout(60)
def test_truncation_is_terminal_when_bootstrapping_on_truncation_is_off():
    # The reference's treatment of its time limit: done = 1 at step 100, so Q = r = 1 there.
    assert loop_value("truncated", bootstrap_on_truncation=False) == pytest.approx(1.0, abs=0.1)
    assert loop_value("terminated", bootstrap_on_truncation=False) == pytest.approx(1.0, abs=0.1)
    assert SACConfig().bootstrap_on_truncation is True  # the default keeps the textbook treatment


def test_state_dict_round_trip_resumes_identically(tmp_path):
    config = SMALL_CONFIG.model_copy(update={"learning_starts": 50, "random_steps": 50})
    agent = SACAgent(config, OBS_SPACE, BANDIT_ACTION_SPACE, seed=0)
    train_bandit(agent, rows=80)
    state = through_a_checkpoint(agent.state_dict())  # no arbitrary pickle needed to resume
    agent.replay.save(tmp_path / "replay.npz")

    resumed = SACAgent(config, OBS_SPACE, BANDIT_ACTION_SPACE, seed=77)
    resumed.load_state_dict(state)
    resumed.replay.restore(tmp_path / "replay.npz")

    obs = np.linspace(-1.0, 1.0, 20, dtype=np.float32)[:, None]
    np.testing.assert_array_equal(resumed.act(obs, explore=False), agent.act(obs, explore=False))
    np.testing.assert_array_equal(resumed.act(obs), agent.act(obs))  # same noise generator state
    assert resumed.alpha == agent.alpha
    assert_goes_on_alike(agent, resumed, bandit_transition(obs[:2], np.full((2, 1), 0.4, np.float32)))
    np.testing.assert_array_equal(resumed.critic_values(obs, np.zeros((20, 1))), agent.critic_values(obs, np.zeros((20, 1))))

    with pytest.raises(ValueError, match="expected a SAC state dict"):
        resumed.load_state_dict({"algorithm": "dqn"})


def test_get_set_params_round_trip_and_validation():
    source = SACAgent(SMALL_CONFIG, OBS_SPACE, BANDIT_ACTION_SPACE, seed=0)
    target = SACAgent(SMALL_CONFIG, OBS_SPACE, BANDIT_ACTION_SPACE, seed=1)
    obs = np.linspace(-1.0, 1.0, 5, dtype=np.float32)[:, None]
    assert not np.array_equal(source.act(obs, explore=False), target.act(obs, explore=False))
    params = source.get_params()
    assert all(name.startswith("actor.") for name in params)
    assert "actor.mean_head.weight" in params and "actor.log_std_head.bias" in params
    target.set_params(params)
    np.testing.assert_array_equal(target.act(obs, explore=False), source.act(obs, explore=False))
    with pytest.raises(ValueError, match=r"unknown \['actor.extra'\]"):
        target.set_params({**params, "actor.extra": np.zeros(1, np.float32)})
    with pytest.raises(TypeError, match="must be a numpy array"):
        target.set_params({**params, "actor.mean_head.bias": [0.0]})


def test_space_and_input_validation():
    with pytest.raises(ValueError, match="must be finite"):
        SACAgent(SMALL_CONFIG, OBS_SPACE, gym.spaces.Box(-np.inf, np.inf, (1,), np.float32), seed=0)
    with pytest.raises(TypeError, match="1-D Box action space"):
        SACAgent(SMALL_CONFIG, OBS_SPACE, gym.spaces.Discrete(3), seed=0)
    with pytest.raises(TypeError, match="config must be a SACConfig"):
        SACAgent(DQNConfig(), OBS_SPACE, BANDIT_ACTION_SPACE, seed=0)
    agent = SACAgent(SMALL_CONFIG, OBS_SPACE, BANDIT_ACTION_SPACE, seed=0)
    with pytest.raises(ValueError, match=r"obs must have shape \(K, 1\), got \(3,\)"):
        agent.act(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="Transition.action must have shape"):
        agent.observe(Transition(np.zeros((2, 1)), np.zeros((2, 2)), np.zeros(2, np.float32), np.zeros((2, 1)),
                                 np.zeros(2, bool), np.zeros(2, bool)))
    assert agent.rows_observed == 0


def test_satisfies_the_role_protocols_and_builder():
    agent = build_learner(SMALL_CONFIG, OBS_SPACE, BANDIT_ACTION_SPACE, seed=0)
    assert isinstance(agent, SACAgent)
    assert isinstance(agent, Actor) and isinstance(agent, Learner) and isinstance(agent, ParamSource)


def _one_step_as_before(agent: SACAgent) -> dict[str, float]:
    """The gradient step as SACAgent took it before its update path was reworked (a batch sampled per step, the
    critics frozen module by module, `backward()` and `step()` per loss, Polyak averaging tensor by
    tensor, one `.item()` per metric): the oracle for the batched update path."""
    import torch.nn.functional as F

    cfg = agent.config
    batch, num_real = agent.sample_batch()
    obs = torch.as_tensor(batch["obs"], dtype=torch.float32)
    unit_action = torch.as_tensor(agent._to_unit_action(batch["action"]))
    reward = torch.as_tensor(batch["reward"], dtype=torch.float32)
    next_obs = torch.as_tensor(batch["next_obs"], dtype=torch.float32)
    ends = batch["terminated"] if cfg.bootstrap_on_truncation else batch["terminated"] | batch["truncated"]
    done = torch.as_tensor(ends, dtype=torch.float32)
    alpha = agent.log_alpha.detach().exp()
    with torch.no_grad():
        next_action, next_log_prob = agent.actor.sample(next_obs, agent.noise_generator, agent.log_half_range_sum)
        next_q = torch.min(agent.q1_target(next_obs, next_action), agent.q2_target(next_obs, next_action))
        td_target = reward + cfg.gamma * (1.0 - done) * (next_q - alpha * next_log_prob)
    q1_value, q2_value = agent.q1(obs, unit_action), agent.q2(obs, unit_action)
    critic_loss = 0.5 * (F.mse_loss(q1_value, td_target) + F.mse_loss(q2_value, td_target))
    agent.critic_optimizer.zero_grad(set_to_none=True)
    critic_loss.backward()
    agent.critic_optimizer.step()
    new_action, log_prob = agent.actor.sample(obs, agent.noise_generator, agent.log_half_range_sum)
    agent.q1.requires_grad_(False)
    agent.q2.requires_grad_(False)
    actor_loss = (alpha * log_prob - torch.min(agent.q1(obs, new_action), agent.q2(obs, new_action))).mean()
    agent.actor_optimizer.zero_grad(set_to_none=True)
    actor_loss.backward()
    agent.actor_optimizer.step()
    agent.q1.requires_grad_(True)
    agent.q2.requires_grad_(True)
    metrics = {
        "sac/critic_loss": critic_loss.item(),
        "sac/actor_loss": actor_loss.item(),
        "sac/q_mean": q1_value.mean().item(),
        "sac/entropy": -log_prob.mean().item(),
        "sac/real_fraction": num_real / cfg.batch_size,
    }
    if cfg.autotune_alpha:
        alpha_loss = -(agent.log_alpha * (log_prob.detach() + agent.target_entropy)).mean()
        agent.alpha_optimizer.zero_grad(set_to_none=True)
        alpha_loss.backward()
        agent.alpha_optimizer.step()
        metrics["sac/alpha_loss"] = alpha_loss.item()
    with torch.no_grad():
        for online, target in ((agent.q1, agent.q1_target), (agent.q2, agent.q2_target)):
            for param, target_param in zip(online.parameters(), target.parameters()):
                target_param.lerp_(param, cfg.tau)
    agent.gradient_steps += 1
    return metrics


@pytest.mark.parametrize(("real_ratio", "autotune_alpha"), [(1 / 32, True), (0.0, True), (None, True), (1 / 32, False)])
def test_batched_update_takes_the_same_steps_as_one_batch_per_step(real_ratio, autotune_alpha):
    # OG-MARL's shape: 10 gradient steps per row, one real row per batch and the rest imagined
    # (None: real rows only), truncated rows treated as terminal to cover the `done` column.
    # Bitwise equal: the update path's gradients (autograd.grad, one pass for actor and alpha)
    # and Adam steps (`adam_step`) must be the same numbers as backward() and step().
    config = SMALL_CONFIG.model_copy(update={"learning_starts": 0, "random_steps": 0, "updates_per_step": 10,
                                             "bootstrap_on_truncation": False, "autotune_alpha": autotune_alpha})
    agents = [SACAgent(config, OBS_SPACE, BANDIT_ACTION_SPACE, seed=3) for _ in range(2)]
    rng = np.random.default_rng(0)
    obs = rng.uniform(-1, 1, (200, 1)).astype(np.float32)
    real = Transition(obs, rng.uniform(0, 1, (200, 1)).astype(np.float32), rng.normal(size=200).astype(np.float32),
                      obs[::-1].copy(), rng.random(200) < 0.05, rng.random(200) < 0.05)
    imagined = Transition(obs, rng.uniform(0, 1, (200, 1)).astype(np.float32), rng.normal(size=200).astype(np.float32),
                          obs, np.zeros(200, bool), np.zeros(200, bool))
    for agent in agents:
        agent.observe(real)
        agent.gradient_steps = agent.gradient_steps_due()  # the rows above are history: only the rows below owe steps
        if real_ratio is not None:
            buffer = ReplayBuffer(1_000, (1,), np.float32, (1,), np.float32, seed=5)
            buffer.add(imagined)
            agent.set_model_buffer(buffer, real_ratio)
    batched, before = agents
    for _ in range(4):
        for agent in agents:
            agent.observe(bandit_transition(np.zeros((1, 1), np.float32), np.full((1, 1), 0.5, np.float32)))
        metrics = batched.update()
        steps = [_one_step_as_before(before) for _ in range(10)]
        expected = {key: sum(step[key] for step in steps) / 10 for key in steps[0]}
        assert {key: value for key, value in metrics.items() if key != "sac/alpha"} == expected
    assert batched.gradient_steps == before.gradient_steps and batched.gradient_steps_due() == 0
    for name in ("actor", "q1", "q2", "q1_target", "q2_target"):
        for (key, value), (_, other) in zip(getattr(batched, name).state_dict().items(),
                                            getattr(before, name).state_dict().items()):
            assert torch.equal(value, other), f"{name}.{key}"
    assert torch.equal(batched.log_alpha.detach(), before.log_alpha.detach())
    # One step through the single-batch entry point is the same step too.
    assert batched._gradient_step() == _one_step_as_before(before)
    # A call owing more steps than one gather holds (a learner catching up) takes them in chunks.
    for agent in agents:
        agent.observe(bandit_transition(np.zeros((7, 1), np.float32), np.full((7, 1), 0.5, np.float32)))
    owed = batched.gradient_steps_due()
    assert owed > 64  # more than one gather (the single step above counts against these)
    metrics = batched.update()
    steps = [_one_step_as_before(before) for _ in range(owed)]
    assert metrics["sac/critic_loss"] == sum(step["sac/critic_loss"] for step in steps) / owed
    assert all(torch.equal(a, b) for a, b in zip(batched.actor.parameters(), before.actor.parameters()))


def test_adam_step_refuses_a_gradient_list_of_the_wrong_length():
    from agent_node.algos.lean_steps import adam_step

    agent = SACAgent(SMALL_CONFIG, OBS_SPACE, BANDIT_ACTION_SPACE, seed=0)
    with pytest.raises(ValueError, match=r"one gradient per parameter \(1\), got 2"):
        adam_step(agent.alpha_optimizer, [torch.zeros(()), torch.zeros(())])


# ------------------------------------------------------------------ wide products through oneDNN

needs_onednn = pytest.mark.skipif(not sac_module._onednn_linear_available(), reason="this torch has no oneDNN linear")


@pytest.mark.parametrize("product, batch, fan_in, fan_out", [
    pytest.param("OneDNNLinear", 300, 128, 96, marks=needs_onednn, id="wide, through oneDNN"),
    pytest.param("NarrowInputLinear", 256, 4, 256, id="narrow input, backward transposed"),
])
def test_a_fast_linear_is_f_linear_up_to_the_order_of_additions(product, batch, fan_in, fan_out):
    fast = getattr(sac_module, product).apply
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(batch, fan_in, generator=generator, requires_grad=True)
    weight = torch.randn(fan_out, fan_in, generator=generator, requires_grad=True)
    bias = torch.randn(fan_out, generator=generator, requires_grad=True)
    upstream = torch.randn(batch, fan_out, generator=generator)
    ours, torchs = fast(inputs, weight, bias), torch.nn.functional.linear(inputs, weight, bias)
    if product == "NarrowInputLinear":
        assert torch.equal(ours, torchs)  # its forward is F.linear's own addmm
    references = torch.autograd.grad(torchs, [inputs, weight, bias], upstream)
    for mine, reference in zip((ours.detach(), *torch.autograd.grad(ours, [inputs, weight, bias], upstream)),
                               (torchs.detach(), *references)):
        assert mine.shape == reference.shape
        torch.testing.assert_close(mine, reference, rtol=1e-5, atol=1e-5 * float(reference.abs().max()))
    # A detached weight (the actor's pass through the frozen critics) asks for the input gradient only.
    (grad_inputs,) = torch.autograd.grad(fast(inputs, weight.detach(), bias.detach()), [inputs], upstream)
    torch.testing.assert_close(grad_inputs, references[0], rtol=1e-5, atol=1e-5 * float(references[0].abs().max()))


def test_narrow_layers_and_other_dtypes_stay_off_onednn(monkeypatch):
    calls = []
    monkeypatch.setattr(sac_module, "_onednn_product", lambda *args: calls.append(args) or torch.nn.functional.linear(*args))
    monkeypatch.setattr(sac_module, "_USE_ONEDNN", True)
    narrow = (torch.randn(8, 4), torch.randn(256, 4), torch.randn(256))  # the observation's layer: 4 inputs
    assert torch.equal(sac_module.linear(*narrow), torch.nn.functional.linear(*narrow))
    head = (torch.randn(8, 256), torch.randn(1, 256), torch.randn(1))  # a critic's head: 1 output
    assert torch.equal(sac_module.linear(*head), torch.nn.functional.linear(*head))
    wide64 = (torch.randn(8, 128, dtype=torch.float64), torch.randn(128, 128, dtype=torch.float64), torch.randn(128, dtype=torch.float64))
    assert torch.equal(sac_module.linear(*wide64), torch.nn.functional.linear(*wide64))
    assert calls == []
    sac_module.linear(torch.randn(8, 128), torch.randn(128, 128), torch.randn(128))
    assert len(calls) == 1
    monkeypatch.setattr(sac_module, "_USE_ONEDNN", False)  # switched off: torch's own products
    sac_module.linear(torch.randn(8, 128), torch.randn(128, 128), torch.randn(128))
    assert len(calls) == 1


def test_products_go_around_mkl_on_amd_processors_only(tmp_path):
    # Measured faster there (oneDNN 0.15 against MKL's 0.31 ms a product); on an Intel Xeon the
    # autograd functions made a gradient step slower (7.4 against 6.1 ms), so torch's own there.
    assert sac_module._products_around_mkl("AuthenticAMD") == sac_module._onednn_linear_available()
    for vendor in ("GenuineIntel", "", "ARM"):
        assert not sac_module._products_around_mkl(vendor)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n")
    assert sac_module._cpu_vendor(str(cpuinfo)) == "AuthenticAMD"
    assert sac_module._cpu_vendor(str(tmp_path / "missing")) == ""


@needs_onednn
def test_a_wide_sac_takes_the_same_steps_with_onednn_products(monkeypatch):
    # 10 gradient steps of a 128-wide SAC from one seed, the wide layer's products through oneDNN
    # and through torch: the same updates up to float32 rounding (the bench checks OG-MARL's width).
    config = SMALL_CONFIG.model_copy(update={"hidden_sizes": (128, 128), "learning_starts": 0, "random_steps": 0,
                                             "updates_per_step": 10, "batch_size": 64})
    products = []
    recorded = sac_module._onednn_product
    monkeypatch.setattr(sac_module, "_onednn_product", lambda *args: products.append(1) or recorded(*args))
    parameters = {}
    for use_onednn in (True, False):
        monkeypatch.setattr(sac_module, "_USE_ONEDNN", use_onednn)
        agent = SACAgent(config, OBS_SPACE, BANDIT_ACTION_SPACE, seed=4)
        rng = np.random.default_rng(1)
        agent.observe(bandit_transition(rng.uniform(-1, 1, (64, 1)).astype(np.float32), rng.uniform(0, 1, (64, 1)).astype(np.float32)))
        agent.gradient_steps = agent.gradient_steps_due()  # these rows are history: the next row owes 10 steps
        agent.observe(bandit_transition(np.zeros((1, 1), np.float32), np.full((1, 1), 0.5, np.float32)))
        agent.update()
        assert agent.gradient_steps_due() == 0
        parameters[use_onednn] = torch.cat([p.detach().flatten() for p in [*agent.actor.parameters(), *agent.q1.parameters(), *agent.q2.parameters()]])
    # Per step: forward 8 wide products (2 targets, 2 critics, 2 critics on new actions, actor twice),
    # backward 8 (critics: input and weight each; the frozen critics: input only; actor: both).
    assert len(products) == 10 * (8 + 2 * 2 + 2 + 2)
    torch.testing.assert_close(parameters[True], parameters[False], rtol=1e-4, atol=1e-4 * float(parameters[False].abs().max()))
