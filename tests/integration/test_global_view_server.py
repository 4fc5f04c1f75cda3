"""The env server publishes the global view to the clients that ask, and only to them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from protocols.codec import messages as m
from protocols.codec.spaces import decode_space

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def expect(channel, message_type, timeout_s=20.0):
    message = channel.wait_for(object, timeout_s=timeout_s)
    assert isinstance(message, message_type), message
    return message


def test_subscriber_gets_state_and_joint_action_others_get_none(env_server, hub):
    endpoint = env_server("--env", "mpe2.simple_spread_v3", "--kwargs", json.dumps({"N": 3, "max_cycles": 3}), "--copies", "2")
    channels = []
    for index in range(3):
        channel = hub.connect_dealer(endpoint, name=f"agent_{index}", identity=f"agent_{index}")
        channel.send(m.EnvJoin(client_id=f"agent_{index}", agent_indices=[index], global_view=index == 0))
        welcome = expect(channel, m.EnvWelcome)
        if index == 0:
            view = welcome.global_view
            assert decode_space(view["state_space"]).shape == (54,)
            assert view["joint_action_dim"] == 15
        else:
            assert welcome.global_view is None
        channels.append((channel, welcome.agents[0]))
    for channel, _ in channels:
        channel.send(m.EnvReset())
    first = [expect(channel, m.EnvObservation) for channel, _ in channels]
    assert first[0].global_state.shape == (2, 54) and first[0].joint_action is None
    assert all(obs.global_state is None for obs in first[1:])
    for step in range(3):
        for index, (channel, agent) in enumerate(channels):
            channel.send(m.EnvAction(step=step, actions={agent: np.full(2, index + 1, dtype=np.int64)}))
        replies = [expect(channel, m.EnvObservation) for channel, _ in channels]
        subscriber = replies[0]
        assert subscriber.joint_action.shape == (2, 15)
        # agent i sent action i + 1 in every copy: its one-hot slice says so
        assert [int(subscriber.joint_action[0, 5 * i : 5 * i + 5].argmax()) for i in range(3)] == [1, 2, 3]
        assert all(obs.global_state is None and obs.joint_action is None for obs in replies[1:])
    # The episode (3 cycles) ended: the final state is the final observations of agent_0 in its slice.
    assert subscriber.episode_start.all()
    np.testing.assert_allclose(subscriber.final_global_state[:, :18], subscriber.final_observations["agent_0"], rtol=1e-6)
    np.testing.assert_allclose(subscriber.global_state[:, :18], subscriber.observations["agent_0"], rtol=1e-6)
