"""PMICAgent: the superior / inferior buffer rules, shaping switched on at 500 superior pairs, the
shaped critic target, gradient steps, learning on a tiny team task, and an exact resume."""

from __future__ import annotations


import gymnasium as gym
import numpy as np
import pytest
import torch

from agent_node.algos import build_learner
from agent_node.algos.config import PMICConfig
from agent_node.algos.pmic import ExperienceSorter, InferiorBuffer, PMICAgent, SuperiorBuffer
from agent_node.roles import Actor, Learner, ParamSource, Transition
from tests.conftest import through_a_checkpoint

torch.set_num_threads(1)

NUM_AGENTS, ACTION_DIM, STATE_DIM = 2, 2, 4
EPISODE_LENGTH = 5
OBS_SPACE = gym.spaces.Box(-1.0, 1.0, (STATE_DIM,), np.float32)
ACTION_SPACE = gym.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
SMALL = dict(
    actor_hidden_sizes=(32, 32),
    critic_hidden_sizes=(32, 32),
    teammate_hidden_sizes=(32, 32),
    mi_hidden_sizes=(32,),
    batch_size=32,
    buffer_size=5_000,
    learning_starts=0,
    train_every=1,
)


def make_agent(index: int = 0, seed: int = 0, **overrides) -> PMICAgent:
    config = PMICConfig(**{**SMALL, **overrides})
    return PMICAgent(config, OBS_SPACE, ACTION_SPACE, seed, state_space=OBS_SPACE, num_agents=NUM_AGENTS, agent_index=index)


def team_transition(
    rng: np.random.Generator, joint: np.ndarray, index: int, reward: np.ndarray, truncated: np.ndarray, copies: np.ndarray
) -> Transition:
    """Rows for agent `index`: it observes the global state, which is random each step."""
    count = len(reward)
    state = rng.uniform(-1, 1, (count, STATE_DIM)).astype(np.float32)
    next_state = rng.uniform(-1, 1, (count, STATE_DIM)).astype(np.float32)
    return Transition(
        obs=state,
        action=joint[:, index * ACTION_DIM : (index + 1) * ACTION_DIM],
        reward=reward.astype(np.float32),
        next_obs=next_state,
        terminated=np.zeros(count, bool),
        truncated=truncated,
        global_state=state,
        next_global_state=next_state,
        joint_action=joint,
        copy_index=copies,
    )


def feed_episode(agent: PMICAgent, rng: np.random.Generator, episode_return: float, copy: int = 0) -> None:
    """One episode of EPISODE_LENGTH rows for one copy whose rewards sum to `episode_return`."""
    for t in range(EPISODE_LENGTH):
        joint = rng.uniform(-1, 1, (1, NUM_AGENTS * ACTION_DIM)).astype(np.float32)
        agent.observe(
            team_transition(
                rng, joint, agent.agent_index, np.array([episode_return / EPISODE_LENGTH]),
                np.array([t == EPISODE_LENGTH - 1]), np.array([copy]),
            )
        )


# ---------------------------------------------------------------------------------- buffers


def test_superior_buffer_keeps_the_highest_returns_and_prefers_new_pairs_on_ties():
    buffer = SuperiorBuffer(capacity=4, state_dim=1, action_dim=1)
    assert buffer.lowest_return is None
    buffer.add_episode(np.array([[1.0], [2.0]]), np.zeros((2, 1)), episode_return=5.0)
    buffer.add_episode(np.array([[3.0], [4.0]]), np.zeros((2, 1)), episode_return=1.0)
    assert len(buffer) == 4 and buffer.lowest_return == 1.0
    buffer.add_episode(np.array([[5.0]]), np.zeros((1, 1)), episode_return=3.0)  # evicts one 1.0 pair
    assert sorted(buffer.returns.tolist()) == [1.0, 3.0, 5.0, 5.0]
    buffer.add_episode(np.array([[6.0]]), np.zeros((1, 1)), episode_return=1.0)  # ties with the old 1.0 pair
    assert sorted(buffer.returns.tolist()) == [1.0, 3.0, 5.0, 5.0]
    assert 6.0 in buffer.states[buffer.returns == 1.0]  # the newer pair of equal return stayed
    assert list(buffer.returns) == sorted(buffer.returns, reverse=True)


def test_inferior_buffer_is_first_in_first_out():
    buffer = InferiorBuffer(capacity=3, state_dim=1, action_dim=1)
    buffer.add_episode(np.array([[1.0], [2.0]]), np.zeros((2, 1)))
    buffer.add_episode(np.array([[3.0], [4.0]]), np.zeros((2, 1)))
    assert len(buffer) == 3 and sorted(buffer.states[:, 0].tolist()) == [2.0, 3.0, 4.0]


def test_admission_needs_to_beat_the_lowest_superior_return_and_the_moving_average():
    config = PMICConfig(superior_capacity=10, shaping_starts_at=5, return_average_window=4, return_average_min_episodes=3)
    sorter = ExperienceSorter(config, state_dim=1, action_dim=1)
    pairs = np.zeros((2, 1)), np.zeros((2, 1))
    # Empty buffer, no average yet: any return is superior.
    assert sorter.threshold() == -np.inf
    assert sorter.add_episode(*pairs, episode_return=-100.0)
    # Now the lowest superior return (-100) is the bar; fewer than 3 returns, so no average yet.
    assert not sorter.add_episode(*pairs, episode_return=-100.0)  # must *beat* it
    assert sorter.add_episode(*pairs, episode_return=-50.0)
    # Three returns known (-100, -100, -50): the average -83.3 is the higher bar... and the lowest
    # superior return is still -100, so the average decides.
    assert sorter.threshold() == pytest.approx(-250.0 / 3)
    assert not sorter.add_episode(*pairs, episode_return=-90.0)
    assert sorter.add_episode(*pairs, episode_return=-80.0)
    # The window holds the last 4 returns only: -100, -50, -90, -80 -> -80; -79 beats it, and the
    # current episode is not part of its own bar.
    assert sorter.threshold() == pytest.approx(-80.0)
    assert sorter.add_episode(*pairs, episode_return=-79.0)
    assert len(sorter.superior) == 8 and len(sorter.inferior) == 4


def test_the_lowest_superior_return_is_the_bar_when_it_is_above_the_average():
    config = PMICConfig(superior_capacity=4, shaping_starts_at=2, return_average_min_episodes=1)
    sorter = ExperienceSorter(config, state_dim=1, action_dim=1)
    pairs = np.zeros((2, 1)), np.zeros((2, 1))
    sorter.add_episode(*pairs, episode_return=10.0)
    sorter.add_episode(*pairs, episode_return=20.0)  # beats lowest 10 and average 10
    for _ in range(5):
        sorter.add_episode(*pairs, episode_return=-50.0)  # drag the average down
    assert sorter.superior.lowest_return == 10.0 and np.mean(sorter.recent_returns) < 0
    assert sorter.threshold() == 10.0
    assert not sorter.add_episode(*pairs, episode_return=9.0)


def test_agent_groups_rows_into_episodes_by_copy_index():
    agent = make_agent(superior_capacity=100, shaping_starts_at=10)
    rng = np.random.default_rng(0)
    # Two copies interleaved in one transition, with different rewards and different lengths.
    for t in range(4):
        joint = rng.uniform(-1, 1, (2, NUM_AGENTS * ACTION_DIM)).astype(np.float32)
        ends = np.array([t in (1, 3), t == 3])  # copy 0 ends after 2 steps (twice), copy 1 after 4
        agent.observe(team_transition(rng, joint, 0, np.array([1.0, -1.0]), ends, np.array([0, 1])))
    assert agent.episodes_superior + agent.episodes_inferior == 3
    # Copy 0's two episodes returned 2.0 each (the second does not beat the first), copy 1's -4.0.
    assert sorted(set(agent.sorter.superior.returns.tolist())) == [2.0]
    assert len(agent.sorter.superior) == 2 and len(agent.sorter.inferior) == 6
    assert agent.rows_observed == 8


# ---------------------------------------------------------------------------------- shaping


def test_shaping_switches_on_at_500_superior_pairs():
    agent = make_agent()  # the default superior_capacity 1,000 and shaping_starts_at 500
    assert agent.config.shaping_starts_at == 500
    rng = np.random.default_rng(1)
    # Strictly rising returns: every episode is superior; 99 episodes of 5 rows are 495 pairs.
    for episode in range(99):
        feed_episode(agent, rng, episode_return=float(episode))
    assert len(agent.sorter.superior) == 495 and not agent.shaping_active
    metrics = agent.update(max_gradient_steps=2)
    assert metrics["pmic/shaping_active"] == 0.0 and "pmic/i_superior_on_batch" not in metrics
    feed_episode(agent, rng, episode_return=-1000.0)  # an inferior episode, for CLUB's data
    feed_episode(agent, rng, episode_return=1000.0)
    assert len(agent.sorter.superior) == 500 and agent.shaping_active
    metrics = agent.update(max_gradient_steps=2)
    assert metrics["pmic/shaping_active"] == 1.0
    assert {"pmic/i_superior_on_batch", "pmic/i_inferior_on_batch", "pmic/club_nll", "pmic/jsd_superior_estimate"} <= set(metrics)


def test_shaped_target_adds_alpha_times_the_lower_bound_and_subtracts_beta_times_the_upper_bound():
    agent = make_agent(seed=3)
    torch.manual_seed(0)
    batch = 16
    state, next_state = torch.randn(batch, STATE_DIM), torch.randn(batch, STATE_DIM)
    joint = torch.rand(batch, NUM_AGENTS * ACTION_DIM) * 2 - 1
    reward, terminated = torch.randn(batch), (torch.rand(batch) < 0.3).float()
    plain, _ = agent.critic_target_values(state, joint, reward, next_state, next_state, terminated, use_jsd=False, use_club=False)
    shaped, metrics = agent.critic_target_values(state, joint, reward, next_state, next_state, terminated, use_jsd=True, use_club=True)
    with torch.no_grad():
        expected = plain + 0.01 * agent.jsd.pointwise(state, joint) - 0.1 * agent.club.pointwise(state, joint)
        # The unshaped target itself: r + gamma (1 - terminated) Q'(s', [m(s')_0, mu'(o')]).
        next_joint = torch.cat([agent.actor_target(next_state), agent.teammates(next_state)], dim=1)  # agent 0 first
        by_hand = reward + 0.95 * (1 - terminated) * agent.critic_target(next_state, next_joint)
    torch.testing.assert_close(shaped, expected)
    torch.testing.assert_close(plain, by_hand)
    assert metrics["pmic/i_superior_on_batch"] == pytest.approx(agent.jsd.pointwise(state, joint).mean().item())


def test_without_pmic_no_buffers_are_kept_and_no_estimator_is_used():
    agent = make_agent(pmic=False)
    rng = np.random.default_rng(2)
    for episode in range(120):
        feed_episode(agent, rng, episode_return=float(episode))
    assert len(agent.sorter.superior) == 0 and not agent.shaping_active
    jsd_before = [p.clone() for p in agent.jsd.parameters()]
    metrics = agent.update(max_gradient_steps=3)
    assert metrics["pmic/gradient_steps"] == 3 and "pmic/i_superior_on_batch" not in metrics
    assert all(torch.equal(a, b) for a, b in zip(jsd_before, agent.jsd.parameters()))


# ---------------------------------------------------------------------------------- learning


@pytest.mark.timeout(60)
def test_gradient_steps_follow_rows_and_change_every_trained_network():
    agent = make_agent(learning_starts=40, train_every=2, superior_capacity=20, shaping_starts_at=10,
                       return_average_min_episodes=2)
    rng = np.random.default_rng(4)
    for episode in range(20):  # 100 rows -> (100 - 40) // 2 = 30 steps due
        feed_episode(agent, rng, episode_return=float(rng.normal()), copy=episode % 3)
    assert agent.gradient_steps_due() == 30 and agent.shaping_active
    before = {name: [p.clone() for p in module.parameters()] for name, module in agent._modules_by_name().items()}
    metrics = agent.update()
    assert metrics["pmic/gradient_steps"] == 30 and agent.gradient_steps_due() == 0
    assert all(np.isfinite(value) for value in metrics.values()), metrics
    for name, module in agent._modules_by_name().items():
        changed = any(not torch.equal(a, b) for a, b in zip(before[name], module.parameters()))
        assert changed, f"{name} did not change"


@pytest.mark.timeout(300)  # ~10 s idle; 100 s seen at load 20
def test_two_decentralized_agents_learn_a_team_task():
    """Shared reward -(|u_0 - s[:2]/2|^2 + |u_1 - s[2:]/2|^2): each agent must learn its own part.

    Each agent has its own critic, teammate model and PMIC buffers, and learns only from its own
    rows (which carry the published global state and joint action).
    """
    agents = [make_agent(index=i, seed=10 + i, gamma=0.5, actor_lr=1e-3, noise_start=0.3, noise_end=0.3,
                         superior_capacity=100, inferior_capacity=100, shaping_starts_at=50, learning_starts=100)
              for i in range(NUM_AGENTS)]
    rng = np.random.default_rng(5)

    def team_reward(state: np.ndarray, joint: np.ndarray) -> np.ndarray:
        wanted = 0.5 * state.reshape(len(state), NUM_AGENTS, ACTION_DIM)
        return -((joint.reshape(len(state), NUM_AGENTS, ACTION_DIM) - wanted) ** 2).sum(axis=(1, 2))

    def greedy_error() -> float:
        state = np.random.default_rng(99).uniform(-1, 1, (512, STATE_DIM)).astype(np.float32)
        joint = np.concatenate([agent.act(state, explore=False) for agent in agents], axis=1)
        return float(-team_reward(state, joint).mean())

    untrained = greedy_error()
    copies, elapsed = 4, np.zeros(4, int)
    state = rng.uniform(-1, 1, (copies, STATE_DIM)).astype(np.float32)
    for _ in range(200):
        actions = [agent.act(state) for agent in agents]
        joint = np.concatenate(actions, axis=1)
        reward = team_reward(state, joint).astype(np.float32)
        next_state = rng.uniform(-1, 1, (copies, STATE_DIM)).astype(np.float32)
        elapsed += 1
        truncated = elapsed >= EPISODE_LENGTH
        for index, agent in enumerate(agents):
            agent.observe(Transition(state, actions[index], reward, next_state, np.zeros(copies, bool), truncated,
                                     global_state=state, next_global_state=next_state, joint_action=joint,
                                     copy_index=np.arange(copies)))
            agent.update()
        elapsed[truncated] = 0
        state = next_state
    assert all(agent.shaping_active for agent in agents)
    trained = greedy_error()
    assert trained < 0.5 * untrained, (untrained, trained)


# ---------------------------------------------------------------------------------- interface, errors, resume


def test_roles_and_builder():
    agent = build_learner(PMICConfig(**SMALL), OBS_SPACE, ACTION_SPACE, seed=0, state_space=OBS_SPACE,
                          num_agents=NUM_AGENTS, agent_index=1)
    assert isinstance(agent, PMICAgent) and agent.agent_index == 1
    assert isinstance(agent, Actor) and isinstance(agent, Learner) and isinstance(agent, ParamSource)
    actions = agent.act(np.zeros((3, STATE_DIM), np.float32))
    assert actions.shape == (3, ACTION_DIM) and np.all(np.abs(actions) <= 1.0)
    with pytest.raises(ValueError, match="state_space"):
        build_learner(PMICConfig(), OBS_SPACE, ACTION_SPACE, seed=0)
    params = agent.get_params()
    agent.set_params({name: np.zeros_like(value) for name, value in params.items()})
    assert np.all(agent.act(np.ones((2, STATE_DIM), np.float32), explore=False) == 0.0)


def test_refuses_what_it_cannot_learn_from():
    with pytest.raises(TypeError, match="continuous_actions=True"):
        PMICAgent(PMICConfig(), OBS_SPACE, gym.spaces.Discrete(5), 0, state_space=OBS_SPACE, num_agents=2, agent_index=0)
    with pytest.raises(ValueError, match="agent_index"):
        make_agent(index=2)
    agent = make_agent()
    rng = np.random.default_rng(0)
    joint = rng.uniform(-1, 1, (1, NUM_AGENTS * ACTION_DIM)).astype(np.float32)
    plain = Transition(np.zeros((1, STATE_DIM), np.float32), joint[:, :2], np.zeros(1, np.float32),
                       np.zeros((1, STATE_DIM), np.float32), np.zeros(1, bool), np.zeros(1, bool))
    with pytest.raises(ValueError, match=r"global view.*global_state.*joint_action"):
        agent.observe(plain)
    wrong_slice = team_transition(rng, joint, 1, np.zeros(1), np.zeros(1, bool), np.array([0]))  # agent 1's action
    with pytest.raises(ValueError, match="slice 0:2 of the joint action"):
        agent.observe(wrong_slice)
    short_joint = team_transition(rng, joint[:, :3], 0, np.zeros(1), np.zeros(1, bool), np.array([0]))
    with pytest.raises(ValueError, match=r"joint_action must have shape \(1, 4\)"):
        agent.observe(short_joint)


def test_state_dict_round_trip_resumes_identically(tmp_path):
    agent = make_agent(superior_capacity=30, shaping_starts_at=10, return_average_min_episodes=2)
    rng = np.random.default_rng(6)
    for episode in range(12):
        feed_episode(agent, rng, episode_return=float(rng.normal()), copy=0)
    agent.update(max_gradient_steps=5)
    state = through_a_checkpoint(agent.state_dict())  # no arbitrary pickle needed to resume
    agent.replay.save(tmp_path / "replay.npz")

    resumed = make_agent(seed=123, superior_capacity=30, shaping_starts_at=10, return_average_min_episodes=2)
    resumed.load_state_dict(state)
    resumed.replay.restore(tmp_path / "replay.npz")
    obs = rng.uniform(-1, 1, (8, STATE_DIM)).astype(np.float32)
    np.testing.assert_array_equal(resumed.act(obs, explore=False), agent.act(obs, explore=False))
    np.testing.assert_array_equal(resumed.act(obs), agent.act(obs))  # same exploration noise stream
    np.testing.assert_array_equal(resumed.sorter.superior.returns, agent.sorter.superior.returns)
    np.testing.assert_array_equal(resumed.sorter.inferior.states, agent.sorter.inferior.states)
    assert list(resumed.sorter.recent_returns) == list(agent.sorter.recent_returns)
    # The same next gradient steps: identical metrics from identical state and RNGs.
    assert resumed.update(max_gradient_steps=3) == agent.update(max_gradient_steps=3)

    # After a restore, the first episode end of each copy closes a partial episode: kept out.
    superior_before, inferior_before = len(resumed.sorter.superior), len(resumed.sorter.inferior)
    joint = rng.uniform(-1, 1, (1, NUM_AGENTS * ACTION_DIM)).astype(np.float32)
    resumed.observe(team_transition(rng, joint, 0, np.array([100.0]), np.array([True]), np.array([0])))
    assert (len(resumed.sorter.superior), len(resumed.sorter.inferior)) == (superior_before, inferior_before)
    feed_episode(resumed, rng, episode_return=1000.0, copy=0)  # a whole episode afterwards counts
    assert resumed.sorter.superior.returns.max() == 1000.0


def test_config_rejects_unreachable_shaping_start():
    with pytest.raises(ValueError, match="shaping_starts_at"):
        PMICConfig(superior_capacity=100, shaping_starts_at=500)
