"""Agent-count transfer pieces: the variable-count env wrapper (PettingZoo API test, seeded draws,
absent agents inactive in the env server's batching) and the shared DQN whose checkpoint moves
between runs with different agent counts."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from pettingzoo.test import parallel_api_test

from agent_node.algos import build_learner
from agent_node.algos.config import DQNConfig, SharedDQNConfig
from agent_node.algos.shared_dqn import AgentIndexEncoding, SharedDQNAgent
from agent_node.roles import Transition
from env_server.envs.variable_count import VariableCountEnv, parallel_env
from env_server.registry import make_env
from env_server.vector import VectorizedParallelEnv
from tests.conftest import through_a_checkpoint

torch.set_num_threads(1)

# The one warning parallel_api_test gives for a smaller episode: absent agents never terminate.
ABSENT_AGENTS_WARNING = "No agents present but not all possible_agents are terminated or truncated"


def pursuit(counts=(2, 4), max_cycles=40) -> VariableCountEnv:
    return parallel_env(
        "pettingzoo.pursuit_v5", "n_pursuers", list(counts), {"max_cycles": max_cycles},
        {2: {"n_evaders": 8}, 4: {"n_evaders": 15}},
    )


# ---------------------------------------------------------------------------------- the env wrapper


@pytest.mark.parametrize(
    "make",
    [
        lambda: pursuit(),
        lambda: parallel_env("mpe2.simple_spread_v3", "N", [2, 3], {"max_cycles": 25, "continuous_actions": True}),
        lambda: parallel_env("mpe2.simple_spread_v3", "N", [1, 2, 3],
                             {"max_cycles": 25, "num_agent_neighbors": 2, "num_landmark_neighbors": 3}),
    ],
    ids=["pursuit_2_4", "simple_spread_padded", "simple_spread_fixed_size"],
)
def test_passes_pettingzoo_parallel_api_test(make):
    env = make()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parallel_api_test(env, num_cycles=50)
    assert {str(warning.message) for warning in caught} <= {ABSENT_AGENTS_WARNING}


def test_possible_agents_stay_at_the_maximum_and_counts_are_drawn_per_reset_from_the_seed():
    env = pursuit()
    assert env.possible_agents == [f"pursuer_{i}" for i in range(4)]
    assert env.observation_space("pursuer_3").shape == (7, 7, 3) and env.state_space.shape == (16, 16, 3)

    def counts_after(seed: int) -> tuple[list[int], np.ndarray]:
        observations, _ = env.reset(seed=seed)
        first = observations["pursuer_0"].copy()
        counts = [len(env.agents)] + [len(env.reset()[0]) for _ in range(15)]
        return counts, first

    counts, first = counts_after(seed=7)
    assert set(counts) == {2, 4}
    again, first_again = counts_after(seed=7)
    assert again == counts and np.array_equal(first, first_again)
    assert counts_after(seed=8)[0] != counts

    observations, infos = env.reset(seed=0, options={"agent_count": 2})
    assert env.agents == ["pursuer_0", "pursuer_1"] == sorted(observations) and env.num_agents == 2
    assert env.max_num_agents == 4
    # Actions for the absent agents are dropped; the step reports only the present ones.
    actions = {agent: 0 for agent in env.possible_agents}
    observations, rewards, terminated, truncated, infos = env.step(actions)
    assert set(observations) == set(rewards) == set(terminated) == {"pursuer_0", "pursuer_1"}
    with pytest.raises(ValueError, match="unknown agents"):
        env.step({"pursuer_9": 0})
    with pytest.raises(ValueError, match="agent_count=3 is not one of the configured counts"):
        env.reset(options={"agent_count": 3})


def test_env_server_batching_marks_absent_agents_inactive():
    """The env server's K-copy batching (env_server/vector.py) over the wrapper, built by import
    path as the registry does for `env.name`."""
    kwargs = {"base": "pettingzoo.pursuit_v5", "count_kwarg": "n_pursuers", "counts": [2, 4],
              "base_kwargs": {"max_cycles": 5}, "per_count_kwargs": {"2": {"n_evaders": 8}}}
    vector = VectorizedParallelEnv(
        lambda: make_env("env_server.envs.variable_count:parallel_env", kwargs), num_copies=6, autoreset=True
    )
    step = vector.reset(seed=3)
    active_counts = sum(step.active[agent].astype(int) for agent in vector.possible_agents)
    assert set(active_counts.tolist()) == {2, 4}  # six copies, seeded 3..8: both counts occur
    assert np.array_equal(step.active["pursuer_2"], active_counts == 4)
    assert np.all(step.observations["pursuer_3"][~step.active["pursuer_3"]] == 0)
    for _ in range(12):  # through two autoresets of every copy
        actions = {agent: np.zeros(6, np.int64) for agent in vector.possible_agents}
        step = vector.step(actions)
        assert np.all(step.active["pursuer_0"])
        # Within an episode an absent agent gets nothing. (In a step that ends an episode and
        # autoresets, `active` describes the *new* episode while the rewards belong to the old one:
        # an agent of the old episode that sits out the new one shows a reward but is inactive.
        # The node's `last_active & active` rule (agent_node/transitions.py) then drops that
        # agent's final transition.)
        within = ~step.episode_start
        assert np.all(step.rewards["pursuer_3"][within & ~step.active["pursuer_3"]] == 0)


def test_flat_observations_and_states_are_zero_padded_to_the_largest_count():
    env = parallel_env("mpe2.simple_spread_v3", "N", [2, 3], {"max_cycles": 25})
    small = make_env("mpe2.simple_spread_v3", {"N": 2, "max_cycles": 25})
    assert env.observation_space("agent_0").shape == (18,) and small.observation_space("agent_0").shape == (12,)
    observations, _ = env.reset(seed=1, options={"agent_count": 2})
    expected, _ = small.reset(seed=1)
    np.testing.assert_array_equal(observations["agent_0"][:12], expected["agent_0"])
    assert np.all(observations["agent_0"][12:] == 0)
    assert env.state().shape == env.state_space.shape == (54,)
    np.testing.assert_array_equal(env.state()[:24], small.state())
    assert np.all(env.state()[24:] == 0)


def test_refuses_a_wrong_count_argument_and_unknown_per_count_kwargs():
    with pytest.raises(ValueError, match="is 'n_evaders' its agent-count argument"):
        parallel_env("pettingzoo.pursuit_v5", "n_evaders", [2, 4])
    with pytest.raises(ValueError, match=r"per_count_kwargs names counts \[3\]"):
        parallel_env("pettingzoo.pursuit_v5", "n_pursuers", [2, 4], per_count_kwargs={3: {}})
    with pytest.raises(ValueError, match="must not set 'n_pursuers'"):
        parallel_env("pettingzoo.pursuit_v5", "n_pursuers", [2], base_kwargs={"n_pursuers": 3})
    with pytest.raises(ValueError, match="non-empty list of positive ints"):
        parallel_env("pettingzoo.pursuit_v5", "n_pursuers", [])


# ---------------------------------------------------------------------------------- shared DQN

PURSUIT_OBS = gym.spaces.Box(0.0, 30.0, (7, 7, 3), np.float32)
SMALL_DQN = DQNConfig(hidden_sizes=(32,), batch_size=16, buffer_size=1_000, learning_starts=32, target_update_period=10)


def shared(agent_index: int, max_agents: int = 4, seed: int = 0, max_obs_dim: int = 147) -> SharedDQNAgent:
    config = SharedDQNConfig(dqn=SMALL_DQN, max_obs_dim=max_obs_dim, max_agents=max_agents)
    return SharedDQNAgent(config, PURSUIT_OBS, gym.spaces.Discrete(5), seed, agent_index=agent_index)


def test_encoding_pads_the_observation_and_appends_a_padded_one_hot_index():
    encoding = AgentIndexEncoding((2, 3), max_obs_dim=8, max_agents=4, agent_index=2)
    obs = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    encoded = encoding.encode(obs)
    assert encoded.shape == (2, 12)
    np.testing.assert_array_equal(encoded[:, :6], obs.reshape(2, 6))
    np.testing.assert_array_equal(encoded[:, 6:8], 0)
    np.testing.assert_array_equal(encoded[:, 8:], [[0, 0, 1, 0]] * 2)
    with pytest.raises(ValueError, match="more than max_obs_dim 5"):
        AgentIndexEncoding((2, 3), max_obs_dim=5, max_agents=4, agent_index=0)
    with pytest.raises(ValueError, match=r"agent_index must be in \[0, max_agents=4\)"):
        AgentIndexEncoding((2, 3), max_obs_dim=8, max_agents=4, agent_index=4)


def train_on_random_pursuit_rows(agent: SharedDQNAgent, rows: int = 200, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(rows // 8):
        obs = rng.integers(0, 3, (8, 7, 7, 3)).astype(np.float32)
        agent.observe(Transition(obs, rng.integers(0, 5, 8), rng.normal(size=8).astype(np.float32),
                                 rng.integers(0, 3, (8, 7, 7, 3)).astype(np.float32), np.zeros(8, bool), np.zeros(8, bool)))
        agent.update()


def test_index_weights_of_agents_never_seen_stay_zero_through_training():
    agent = shared(agent_index=1)
    train_on_random_pursuit_rows(agent)
    assert agent.dqn.gradient_steps > 100
    for network in (agent.dqn.q_network, agent.dqn.target_network):
        index_weights = network.layers[0].weight[:, 147:].detach()
        assert torch.all(index_weights[:, [0, 2, 3]] == 0)
    assert torch.any(agent.dqn.q_network.layers[0].weight[:, 147 + 1] != 0)  # its own index was trained


def test_a_checkpoint_trained_with_two_agents_runs_as_agent_three_of_four():
    trained = shared(agent_index=1)  # agent 1 of a 2-pursuer run, network sized for up to 4
    train_on_random_pursuit_rows(trained)
    checkpoint = through_a_checkpoint(trained.state_dict())

    newcomer = shared(agent_index=3, seed=5)  # agent 3 of a 4-pursuer run
    newcomer.load_state_dict(checkpoint)
    obs = np.random.default_rng(1).integers(0, 3, (10, 7, 7, 3)).astype(np.float32)
    # Index 3 was never trained, so it behaves as "no index": Q of the padded observation alone.
    no_index = np.zeros((10, 147 + 4), np.float32)
    no_index[:, :147] = obs.reshape(10, -1)
    np.testing.assert_allclose(newcomer.q_values(obs), trained.dqn.q_values(no_index), rtol=1e-6, atol=1e-6)
    assert newcomer.act(obs, explore=False).shape == (10,)

    other_layout = shared(agent_index=0, max_agents=8)
    with pytest.raises(ValueError, match="max_agents 4, this agent has 147 and 8"):
        other_layout.load_state_dict(checkpoint)


def test_builder_and_parameter_names_match_plain_dqn():
    config = SharedDQNConfig(dqn=SMALL_DQN, max_obs_dim=147, max_agents=4)
    agent = build_learner(config, PURSUIT_OBS, gym.spaces.Discrete(5), seed=0, agent_index=2)
    assert isinstance(agent, SharedDQNAgent) and agent.agent_index == 2
    assert all(name.startswith("q_network.") for name in agent.get_params())
    with pytest.raises(ValueError, match="needs agent_index"):
        build_learner(config, PURSUIT_OBS, gym.spaces.Discrete(5), seed=0)


# ---------------------------------------------------------------------------------- one policy from the copies


def save_as_node_checkpoint(agent, path):
    from agent_node.persistence import save_checkpoint

    save_checkpoint(path, {"learner": agent.state_dict(), "step": 100, "episodes": 3})


def test_the_average_of_the_copies_is_the_mean_of_their_policy_networks(tmp_path):
    from agent_node.consensus.shared_policy import average_policy_checkpoints, main

    copies = [shared(agent_index=i, seed=i) for i in range(3)]
    for i, copy in enumerate(copies):
        train_on_random_pursuit_rows(copy, seed=i)  # three copies that drifted apart
        save_as_node_checkpoint(copy, tmp_path / f"agent_{i}.pt")
    paths = [tmp_path / f"agent_{i}.pt" for i in range(3)]
    assert main([*map(str, paths), "--out", str(tmp_path / "average.pt")]) == 0

    loaded = shared(agent_index=3, seed=9)  # a fourth pursuer of another run takes the average
    from agent_node.persistence import NodePersistence

    assert NodePersistence(tmp_path, checkpoint_every_steps=1, replay_save_every_steps=1).load_initial_checkpoint(
        loaded, tmp_path / "average.pt"
    )
    params = [copy.get_params() for copy in copies]
    for name, value in loaded.get_params().items():
        np.testing.assert_allclose(value, np.mean([p[name] for p in params], axis=0), rtol=1e-6, atol=1e-7)
        assert not np.allclose(params[0][name], params[1][name])  # the copies did differ
    # Everything else is the first copy's: its target network and counters.
    for name, value in loaded.dqn.target_network.state_dict().items():
        torch.testing.assert_close(value, copies[0].dqn.target_network.state_dict()[name])
    assert loaded.dqn.gradient_steps == copies[0].dqn.gradient_steps
    # The same input files in another order give the same average (to float32 rounding).
    state = average_policy_checkpoints(paths[::-1], tmp_path / "reversed.pt")
    for name, value in state["learner"]["dqn"]["q_network"].items():
        np.testing.assert_allclose(value.numpy(), loaded.get_params()[f"q_network.{name}"], rtol=1e-6, atol=1e-7)


def test_checkpoints_that_cannot_be_averaged_are_refused_by_name(tmp_path, capsys):
    from agent_node.persistence import save_checkpoint
    from agent_node.consensus.shared_policy import CheckpointMismatch, average_policy_checkpoints, main

    save_as_node_checkpoint(shared(agent_index=0), tmp_path / "four.pt")
    save_as_node_checkpoint(shared(agent_index=0, max_agents=8), tmp_path / "eight.pt")
    save_as_node_checkpoint(shared(agent_index=0).dqn, tmp_path / "plain.pt")
    save_checkpoint(tmp_path / "sac.pt", {"learner": {"algorithm": "sac"}, "step": 1, "episodes": 0})
    with pytest.raises(CheckpointMismatch, match=r"input layout .* = \(147, 8\), .* has \(147, 4\)"):
        average_policy_checkpoints([tmp_path / "four.pt", tmp_path / "eight.pt"], tmp_path / "out.pt")
    with pytest.raises(CheckpointMismatch, match="a 'dqn' checkpoint, .* is 'shared_dqn'"):
        average_policy_checkpoints([tmp_path / "four.pt", tmp_path / "plain.pt"], tmp_path / "out.pt")
    with pytest.raises(CheckpointMismatch, match=r"knows the policy networks of \['dqn', 'shared_dqn'\] learners, not 'sac'"):
        average_policy_checkpoints([tmp_path / "sac.pt"], tmp_path / "out.pt")
    assert main([str(tmp_path / "four.pt"), str(tmp_path / "missing.pt"), "--out", str(tmp_path / "out.pt")]) == 2
    assert "cannot average: no checkpoint at" in capsys.readouterr().err
    assert not (tmp_path / "out.pt").exists()
