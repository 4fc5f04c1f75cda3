"""The centralized learner's core: CTDE messages survive the wire, agents' pieces join into joint
rows on (env_step, copy), bad pieces are refused with what was expected, parameters go out on
schedule and load into a DQN agent, and a one-step cooperative game is learned from messages."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from agent_node.algos.config import DQNConfig, MixerConfig
from agent_node.algos.dqn import DQNAgent
from agent_node.algos.mixers import CentralizedMixerLearner
from agent_node.ctde.learner import CentralizedLearnerCore, JointRowAssembler
from protocols.codec import wire
from protocols.codec.ctde import CTDEParams, CTDETransitions

torch.set_num_threads(1)


def piece(agent, step, copies, obs_dim=2, state_dim=3, reward=1.0, terminated=False, state=None, action=0):
    copies = np.asarray(copies, np.int64)
    k = len(copies)
    state = np.tile(np.arange(state_dim, dtype=np.float32), (k, 1)) if state is None else state
    return CTDETransitions(
        agent_index=agent,
        env_step=step,
        copy_index=copies,
        obs=np.full((k, obs_dim), agent, np.float32),
        action=np.full(k, action, np.int64),
        reward=np.full(k, reward, np.float32),
        next_obs=np.full((k, obs_dim), agent + 10, np.float32),
        terminated=np.full(k, terminated, bool),
        global_state=state,
        next_global_state=state + 1,
        rows_sent=(step + 1) * k,
    )


def test_ctde_messages_survive_the_wire():
    messages = [piece(1, 7, [0, 2]), CTDEParams(gradient_step=5, params={"q_network.layers.0.weight": np.ones((2, 3), np.float32)})]
    for message in messages:
        decoded = wire.decode([bytes(f) for f in wire.encode(message, sender="agent_1", run_id="run", seq=1)]).message
        assert type(decoded) is type(message)
        for name, sent in vars(message).items():
            received = getattr(decoded, name)
            if isinstance(sent, dict):
                assert sent.keys() == received.keys()
                for key in sent:
                    np.testing.assert_array_equal(sent[key], received[key])
            else:
                np.testing.assert_array_equal(sent, received)


def test_rows_complete_only_when_every_agent_sent_its_piece():
    assembler = JointRowAssembler(num_agents=3)
    assert assembler.add(piece(2, 5, [0, 1], reward=1.0)) is None
    assert assembler.add(piece(0, 5, [1], reward=2.0, terminated=True)) is None
    rows = assembler.add(piece(1, 5, [1, 0], reward=3.0))
    # copy 1 has all three agents; copy 0 still misses agent 0.
    assert rows is not None and len(rows["reward"]) == 1
    np.testing.assert_array_equal(rows["obs"][0, :, 0], [0, 1, 2])  # agent-index order
    np.testing.assert_array_equal(rows["next_obs"][0, :, 0], [10, 11, 12])
    assert rows["reward"][0] == pytest.approx(6.0)  # team reward: the sum
    assert bool(rows["terminated"][0])  # any agent's episode ended
    np.testing.assert_array_equal(rows["state"][0], [0, 1, 2])
    np.testing.assert_array_equal(rows["next_state"][0], [1, 2, 3])
    assert list(assembler.pending) == [(5, 0)]
    rows = assembler.add(piece(0, 5, [0]))
    assert len(rows["reward"]) == 1 and not bool(rows["terminated"][0])
    assert assembler.rows_completed == 2 and not assembler.pending


def test_bad_pieces_are_refused_with_what_was_expected():
    assembler = JointRowAssembler(num_agents=2)
    with pytest.raises(ValueError, match=r"agent_index must lie in \[0, 1\], got 2"):
        assembler.add(piece(2, 0, [0]))
    assembler.add(piece(0, 0, [0]))
    with pytest.raises(ValueError, match="sent env step 0 copy 0 twice"):
        assembler.add(piece(0, 0, [0]))
    with pytest.raises(ValueError, match="global_state differs"):
        assembler.add(piece(1, 0, [0], state=np.full((1, 3), 9, np.float32)))
    bad = piece(1, 1, [0, 1])
    bad = CTDETransitions(**{**vars(bad), "reward": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="'reward' has 3 rows, copy_index has 2"):
        assembler.add(bad)


def test_incomplete_rows_are_evicted_oldest_first():
    assembler = JointRowAssembler(num_agents=2, max_pending=3)
    for step in range(5):
        assembler.add(piece(0, step, [0]))
    assert assembler.rows_evicted == 2 and list(assembler.pending) == [(2, 0), (3, 0), (4, 0)]


def one_step_game_core(params_every=10, learning_starts=32, mixer="vdn"):
    """Two agents see a one-hot bit; the team gets 1 for each agent whose action equals the bit."""
    config = MixerConfig(mixer=mixer, agent_hidden_sizes=(16,), batch_size=32, learning_rate=1e-2, gamma=0.0,
                         mixing_embed_dim=8, hypernet_hidden=8, target_update_period=20)
    box = gym.spaces.Box(0, 1, (2,), np.float32)
    learner = CentralizedMixerLearner(config, box, gym.spaces.Discrete(2), box, num_agents=2, seed=0)
    return CentralizedLearnerCore(learner, replay_capacity=1_000, learning_starts=learning_starts,
                                  gradient_steps_per_row=1.0, params_every=params_every)


def play(core, steps, seed=0):
    rng = np.random.default_rng(seed)
    sent = []
    for step in range(steps):
        bit = int(rng.integers(2))
        onehot = np.eye(2, dtype=np.float32)[bit][None]
        actions = rng.integers(2, size=2)
        for agent in (1, 0):
            message = CTDETransitions(agent_index=agent, env_step=step, copy_index=np.array([0]), obs=onehot,
                                      action=actions[agent : agent + 1], reward=np.array([float(actions[agent] == bit)], np.float32),
                                      next_obs=onehot, terminated=np.array([True]), global_state=onehot, next_global_state=onehot,
                                      rows_sent=step + 1)
            sent.extend(core.on_transitions(message))
    return sent


def test_no_training_before_learning_starts_then_params_every_n_steps():
    core = one_step_game_core(params_every=10, learning_starts=32)
    assert play(core, 31) == [] and core.learner.gradient_steps == 0
    sent = play(core, 60, seed=1)
    # rows 32..91 each trigger one gradient step: 60 in all, params at steps 10, 20, ..., 60.
    assert core.learner.gradient_steps == 60
    assert [(agent, m.gradient_step) for agent, m in sent] == [(a, s) for s in range(10, 61, 10) for a in (0, 1)]
    assert core.metrics()["learner/params_broadcasts"] == 6.0


@pytest.mark.parametrize("mixer", ["vdn", "qmix"])
def test_agents_loading_the_sent_params_play_the_learned_game(mixer):
    core = one_step_game_core(params_every=50, mixer=mixer)
    sent = play(core, 431)  # training starts at the 32nd row: 400 gradient steps
    assert core.learner.gradient_steps == 400
    final = {agent: message for agent, message in sent if message.gradient_step == 400}
    box = gym.spaces.Box(0, 1, (2,), np.float32)
    for agent in (0, 1):
        dqn = DQNAgent(DQNConfig(hidden_sizes=(16,)), box, gym.spaces.Discrete(2), seed=3)
        dqn.set_params(final[agent].params)
        # Greedy with the learner's parameters: the action equals the bit it sees.
        np.testing.assert_array_equal(dqn.act(np.eye(2, dtype=np.float32), explore=False), [0, 1])


def test_an_agent_transition_becomes_a_message_and_params_load_newest_first():
    from agent_node.ctde.client import ParamsReceiver, transitions_message
    from agent_node.roles import Transition

    without_view = Transition(obs=np.zeros((2, 2)), action=np.zeros(2), reward=np.zeros(2), next_obs=np.zeros((2, 2)),
                              terminated=np.zeros(2, bool), truncated=np.zeros(2, bool))
    with pytest.raises(ValueError, match="global_state, next_global_state, copy_index.*global_view=True"):
        transitions_message(0, 3, without_view)
    state = np.arange(6, dtype=np.float32).reshape(2, 3)
    transition = Transition(obs=np.ones((2, 2)), action=np.array([1, 0]), reward=np.array([0.5, -1.0]), next_obs=np.ones((2, 2)),
                            terminated=np.array([False, True]), truncated=np.zeros(2, bool), global_state=state,
                            next_global_state=state + 1, copy_index=np.array([3, 0]))
    message = transitions_message(1, 3, transition)
    assert JointRowAssembler(num_agents=2).add(message) is None  # a well-formed piece, waiting for agent 0
    np.testing.assert_array_equal(message.copy_index, [3, 0])

    box = gym.spaces.Box(0, 1, (2,), np.float32)
    core = one_step_game_core(params_every=10)
    sent = play(core, 51)  # 20 gradient steps: params at 10 and 20
    dqn = DQNAgent(DQNConfig(hidden_sizes=(16,)), box, gym.spaces.Discrete(2), seed=3)
    receiver = ParamsReceiver(dqn)
    newest, older = [m for agent, m in sent if agent == 0 and m.gradient_step == 20][0], [m for agent, m in sent if agent == 0][0]
    assert receiver.on_params(newest) and not receiver.on_params(older)
    assert receiver.metrics() == {"ctde/params_updates": 1.0, "ctde/params_stale": 1.0, "ctde/params_gradient_step": 20.0}
    for name, value in dqn.get_params().items():
        np.testing.assert_array_equal(value, newest.params[name])
