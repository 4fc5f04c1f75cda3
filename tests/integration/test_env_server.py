"""The env server over real sockets: PettingZoo's API test through the proxy, and lockstep."""

from __future__ import annotations

import json
from contextlib import closing

import numpy as np
import pytest
from pettingzoo.test import parallel_api_test

from agent_node.remote_env import RemoteEnvError, RemoteParallelEnv
from protocols.codec import messages as m
from protocols.net.transport import Hub
from tests.integration.lockstep_paths import LockstepClient, env_client
from tests.integration.remote_envs import seed_test_through_the_proxy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.mark.parametrize(
    "env_name, kwargs",
    [
        ("mpe2.simple_spread_v3", {"N": 3, "max_cycles": 15}),
        ("reward_collection_v0", {"max_cycles": 20}),
        ("pettingzoo.pursuit_v5", {"max_cycles": 20, "n_pursuers": 3, "n_evaders": 4}),
        ("pettingzoo.multiwalker_v9", {"max_cycles": 20}),
    ],
)
def test_remote_env_passes_pettingzoo_parallel_api_test(env_server, env_name, kwargs, lockstep_transport):
    endpoint = env_server("--env", env_name, "--kwargs", json.dumps(kwargs), "--no-autoreset", "--transport", lockstep_transport)
    with closing(RemoteParallelEnv(endpoint)) as env:
        parallel_api_test(env, num_cycles=40)


def test_remote_env_passes_pettingzoo_parallel_seed_test(env_server):
    kwargs = json.dumps({"N": 3, "max_cycles": 15})
    seed_test_through_the_proxy(lambda: env_server("--env", "mpe2.simple_spread_v3", "--kwargs", kwargs, "--no-autoreset"))


def test_remote_env_seedless_resets_start_new_episodes_and_a_seed_replays_them(env_server):
    endpoint = env_server("--env", "mpe2.simple_spread_v3", "--kwargs", json.dumps({"N": 2, "max_cycles": 5}), "--no-autoreset")
    with closing(RemoteParallelEnv(endpoint)) as env:
        def starts(first_seed: int) -> list[bytes]:
            observations = [env.reset(seed=first_seed)[0]] + [env.reset()[0] for _ in range(5)]
            return [obs["agent_0"].tobytes() for obs in observations]

        sequence = starts(3)
        assert len(set(sequence)) == 6  # every seedless reset a new start, as a local env's
        assert starts(3) == sequence  # and the seed fixes the whole sequence


def test_remote_env_state_says_why_there_is_none(env_server):
    # (its values: tests/integration/test_remote_env.py)
    with closing(RemoteParallelEnv(env_server("--env", "treasure_room_v0", "--no-autoreset"))) as no_state:
        no_state.reset(seed=0)
        with pytest.raises(NotImplementedError, match="treasure_room_v0 has no state"):
            no_state.state()


def test_a_standalone_server_that_fails_tells_its_client_at_once(env_server):
    endpoint = env_server("--env", "tests.integration.failing_env:parallel_env", "--kwargs", json.dumps({"N": 2}),
                          "--no-autoreset")
    with closing(RemoteParallelEnv(endpoint, timeout_s=60)) as env:  # what it hears comes from the server, not its timeout
        env.reset(seed=0)
        env.step({a: 0 for a in env.agents})
        with pytest.raises(RemoteEnvError, match="env_server_stopped: .*RuntimeError: the env broke on step 3"):
            for _ in range(2):
                env.step({a: 0 for a in env.agents})


def test_an_env_whose_state_raises_leaves_the_server_serving_and_says_so(env_server):
    # multiwalker_v9's state() raises AttributeError once a walker has fallen (its bodies are gone);
    # its episodes end when one falls, so an episode of random actions ends there.
    with closing(RemoteParallelEnv(env_server("--env", "pettingzoo.sisl.multiwalker_v9:parallel_env", "--no-autoreset"))) as env:
        env.reset(seed=0)
        assert np.isfinite(env.state()).all()
        for _ in range(500):
            _, _, terminated, _, _ = env.step({a: env.action_space(a).sample() for a in env.agents})
            if any(terminated.values()):
                break
        assert any(terminated.values())
        with pytest.raises(RemoteEnvError, match="state_failed: the env's state\\(\\) raised AttributeError"):
            env.state()
        env.reset(seed=1)  # and the server is still there
        assert np.isfinite(env.state()).all()


def test_remote_env_refuses_a_vectorized_server(env_server):
    endpoint = env_server("--env", "mpe2.simple_spread_v3", "--copies", "2")
    with pytest.raises(RemoteEnvError, match="one copy and no autoreset"):
        RemoteParallelEnv(endpoint)


Client = LockstepClient  # (tests/integration/lockstep_paths.py)


def test_lockstep_steps_without_a_missing_agent_and_records_it(env_server, hub, lockstep_transport):
    endpoint = env_server(
        "--env", "mpe2.simple_spread_v3", "--kwargs", json.dumps({"N": 3, "max_cycles": 10}),
        "--copies", "2", "--step-deadline", "0.3", "--transport", lockstep_transport,
    )
    alive = [Client(hub, endpoint, f"agent_{i}", i, lockstep_transport) for i in range(2)]
    silent = Client(hub, endpoint, "agent_2", 2, lockstep_transport)  # joins, then never acts
    for client in alive:
        client.channel.send(m.EnvReset())
    first = [client.expect(m.EnvObservation) for client in alive]
    silent.expect(m.EnvObservation)
    assert all(obs.step == 0 for obs in first)
    assert first[0].observations["agent_0"].shape == (2, 18)

    for step in range(3):
        for client in alive:
            client.act(step)
        replies = [client.expect(m.EnvObservation) for client in alive]
        silent.expect(m.EnvObservation)
        for reply in replies:
            assert reply.step == step + 1
            assert reply.missing == ["agent_2"], "the silent agent's action is defaulted and recorded"


def test_bad_actions_get_an_error_reply_and_the_step_still_happens(env_server, hub, lockstep_transport):
    endpoint = env_server(
        "--env", "mpe2.simple_spread_v3", "--kwargs", json.dumps({"N": 2, "max_cycles": 10}),
        "--step-deadline", "0.3", "--transport", lockstep_transport,
    )
    good, bad = Client(hub, endpoint, "agent_0", 0, lockstep_transport), Client(hub, endpoint, "agent_1", 1, lockstep_transport)
    for client in (good, bad):
        client.channel.send(m.EnvReset())
        client.expect(m.EnvObservation)
    good.act(0)
    bad.act(0, value=99)  # Discrete(5): out of range
    error = bad.expect(m.ErrorReply)
    assert error.code == "bad_action" and "outside" in error.message
    reply = good.expect(m.EnvObservation)
    assert reply.step == 1 and reply.missing == ["agent_1"]


def test_joining_an_unknown_agent_is_refused(env_server, hub, lockstep_transport):
    endpoint = env_server("--env", "mpe2.simple_spread_v3", "--kwargs", json.dumps({"N": 2}), "--transport", lockstep_transport)
    channel = hub.connect_dealer(endpoint, name="x", identity="x")
    channel.send(env_client(lockstep_transport, "x", [7]).join())
    reply = channel.wait_for(object, timeout_s=20)
    assert isinstance(reply, m.ErrorReply) and reply.code == "unknown_agent" and "out of range" in reply.message


def test_a_request_before_joining_is_refused_as_not_joined(env_server, hub):
    endpoint = env_server("--env", "mpe2.simple_spread_v3", "--kwargs", json.dumps({"N": 2}))
    channel = hub.connect_dealer(endpoint, name="x", identity="x")
    channel.send(m.EnvAction(step=0, actions={"agent_0": np.zeros(1, np.int64)}))
    reply = channel.wait_for(object, timeout_s=20)
    assert isinstance(reply, m.ErrorReply) and reply.code == "not_joined"
    assert reply.message == "send env.join before env.action"
