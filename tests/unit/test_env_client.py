"""The env client's bookkeeping, fed by hand with env-server messages (no sockets)."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest

from agent_node.env_client import EnvClient, EnvProtocolError, EnvRefused
from protocols.codec import messages as m
from protocols.codec.spaces import encode_space

BOX = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
DISCRETE = gym.spaces.Discrete(5)


def welcome(agents, *, num_copies=4, possible=("a0", "a1")):
    return m.EnvWelcome(
        env_name="test_env", num_copies=num_copies, agents=list(agents), possible_agents=list(possible),
        observation_spaces={a: encode_space(BOX) for a in possible},
        action_spaces={a: encode_space(DISCRETE) for a in possible},
        autoreset=True, max_steps=None,
    )


def observation(step, agents=("a1",), k=4, evaluation=False):
    rows = lambda dtype: {a: np.zeros(k, dtype) for a in agents}
    return m.EnvObservation(
        step=step, observations={a: np.zeros((k, 3), np.float32) for a in agents}, rewards=rows(np.float32),
        terminated=rows(bool), truncated=rows(bool), active={a: np.ones(k, bool) for a in agents},
        final_observations={}, episode_start=np.zeros(k, bool), evaluation=evaluation,
    )


def test_join_welcome_reset_observe_answer():
    client = EnvClient("agent_1", agent_indices=[1])
    assert client.join() == m.EnvJoin(client_id="agent_1", agents=[], agent_indices=[1])
    assert EnvClient("agent_1", agent_indices=[1], global_view=True).join().global_view
    client.on_welcome(welcome(["a1"]))
    assert client.agents == ["a1"] and client.num_copies == 4
    assert client.observation_spaces["a1"] == BOX and client.action_spaces["a1"] == DISCRETE
    assert client.reset(seed=3) == m.EnvReset(seed=3)

    assert client.silence_deadline(5.0) == math.inf
    received = client.on_message(observation(7), now=10.0)
    assert received.step == 7 and client.messages_received == 2
    assert client.silent_for(12.5) == 2.5 and client.silence_deadline(5.0) == 15.0
    action = client.answer(received, {"a1": np.zeros(4, np.int64)})
    assert action.step == 7 and not action.evaluation
    evaluation = client.on_message(observation(2, evaluation=True), now=11.0)
    assert client.answer(evaluation, {"a1": np.zeros(4, np.int64)}).evaluation


def test_refusals_and_protocol_errors_say_what_came():
    client = EnvClient("agent_0", agent_indices=[0])
    with pytest.raises(EnvRefused, match="env server refused: no_such_agent: index 9"):
        client.on_welcome(m.ErrorReply(code="no_such_agent", message="index 9"))
    with pytest.raises(EnvProtocolError, match="cannot reset before the env server's welcome"):
        client.reset()
    with pytest.raises(EnvProtocolError, match=r"expected the answer to env.join \(env.welcome\), got EnvObservation"):
        client.on_welcome(observation(0))
    with pytest.raises(EnvProtocolError, match=r"asked for agent indices \[0\], the env server granted \['a0', 'a1'\]"):
        client.on_welcome(welcome(["a0", "a1"]))

    client.on_welcome(welcome(["a0"]))
    with pytest.raises(EnvProtocolError, match=r"lacks this client's agents \['a0'\]"):
        client.on_message(observation(1, agents=("a1",)), now=0.0)
    with pytest.raises(EnvRefused, match="bad_action"):
        client.on_message(m.ErrorReply(code="bad_action", message="shape"), now=0.0)
    with pytest.raises(EnvProtocolError, match=r"agents this client does not drive: \['a1'\]; it drives \['a0'\]"):
        client.answer(observation(1, agents=("a0",)), {"a1": np.zeros(4)})


def test_a_client_that_names_its_agents_checks_the_grant():
    client = EnvClient("remote", agents=["a0", "a1"])
    client.on_welcome(welcome(["a1", "a0"]))
    assert client.agents == ["a1", "a0"]
    with pytest.raises(EnvProtocolError, match=r"asked for agents \['a0'\], the env server granted \['a1'\]"):
        EnvClient("x", agents=["a0"]).on_welcome(welcome(["a1"]))


def test_an_env_server_restart_stops_the_silence_clock_and_rejoins_the_same_agents():
    client = EnvClient("agent_1", agent_indices=[1])
    client.on_welcome(welcome(["a1"]))
    held = client.on_message(observation(7), now=10.0)

    client.server_restarting()
    client.heard(11.0)  # a network fault's "heard" does not restart the clock while it is down
    assert client.silent_for(500.0) == 0.0 and client.silence_deadline(5.0) == math.inf
    with pytest.raises(EnvProtocolError, match="cannot answer step 7: the env server is restarting"):
        client.answer(held, {"a1": np.zeros(4, np.int64)})
    with pytest.raises(EnvProtocolError, match="while the env server restarts"):
        client.on_message(observation(8), now=12.0)

    assert client.rejoin(now=20.0) == client.join()
    assert client.silence_deadline(5.0) == 25.0, "a new server that never answers is silent again"
    resumed = m.EnvWelcome(**{**welcome(["a1"]).__dict__, "step": 8})
    client.on_welcome(resumed)
    assert not client.restarting and client.rejoins == 1 and client.welcome.step == 8
    newer = client.on_message(observation(8), now=21.0)
    assert client.answer(newer, {"a1": np.zeros(4, np.int64)}).step == 8


def test_a_restarted_server_must_serve_the_same_run():
    client = EnvClient("agent_1", agent_indices=[1])
    with pytest.raises(EnvProtocolError, match="without server_restarting"):
        client.rejoin(now=0.0)
    client.on_welcome(welcome(["a1"]))
    client.server_restarting()
    client.rejoin(now=1.0)
    with pytest.raises(EnvProtocolError, match=r"changed \['num_copies'\]"):
        client.on_welcome(welcome(["a1"], num_copies=2))
    with pytest.raises(EnvRefused, match="agent_taken"):
        client.on_welcome(m.ErrorReply(code="agent_taken", message="taken"))
