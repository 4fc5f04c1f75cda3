"""`RemoteParallelEnv` against a standalone env server: `state()` computed only when the proxy
asks (`env.state`), an env whose `state()` raises answered with an error while the server goes
on, and a server that dies (SIGKILL) or freezes (SIGSTOP) noticed at once, not at the timeout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from pettingzoo.test.state_test import state_test
from pettingzoo.utils.conversions import parallel_to_aec

from agent_node.remote_env import RemoteEnvError, RemoteParallelEnv
from tests.conftest import read_line_with_deadline
from tests.integration.state_envs import STATE_ERROR

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SPREAD = json.dumps({"N": 2, "max_cycles": 25})


def test_state_is_computed_only_when_the_proxy_asks(env_server):
    env = RemoteParallelEnv(env_server("--env", "tests.integration.state_envs:counting", "--kwargs", SPREAD, "--no-autoreset"))
    try:
        env.reset(seed=0)
        calls = []
        for _ in range(5):
            infos = env.step({a: 0 for a in env.agents})[4]
            calls.append(infos["agent_0"]["state_calls"])
        assert calls == [0] * 5, "no client asked for the state: the server must not call state()"
        env.state()
        env.state()
        infos = env.step({a: 0 for a in env.agents})[4]
        assert infos["agent_0"]["state_calls"] == 2, "one state() per request, none per step"
    finally:
        env.close()


def test_the_proxys_state_follows_the_local_env_step_by_step(env_server, lockstep_transport):
    from env_server.registry import make_env

    kwargs = {"N": 3, "max_cycles": 10}
    # (with shm the observations come through shared memory and the state replies by zmq)
    env = RemoteParallelEnv(env_server("--env", "mpe2.simple_spread_v3", "--kwargs", json.dumps(kwargs), "--no-autoreset",
                                       "--transport", lockstep_transport))
    local = make_env("mpe2.simple_spread_v3", kwargs)
    try:
        env.reset(seed=11)
        local.reset(seed=11)
        assert env.state_space == local.state_space
        rng = np.random.default_rng(0)
        for _ in range(6):
            remote_state, local_state = env.state(), local.state()
            assert remote_state.dtype == local_state.dtype
            np.testing.assert_array_equal(remote_state, local_state)
            actions = {a: int(rng.integers(5)) for a in local.agents}
            env.step(actions)
            local.step(actions)
    finally:
        env.close()
        local.close()


def test_the_proxy_passes_pettingzoos_state_test(env_server):
    env = RemoteParallelEnv(env_server("--env", "mpe2.simple_spread_v3", "--kwargs", SPREAD, "--no-autoreset"))
    try:
        state_test(parallel_to_aec(env), env, num_cycles=10)
    finally:
        env.close()


def test_a_state_that_raises_gets_an_error_reply_and_the_next_step_works(env_server):
    env = RemoteParallelEnv(env_server("--env", "tests.integration.state_envs:raising", "--kwargs", SPREAD, "--no-autoreset"))
    try:
        env.reset(seed=0)
        with pytest.raises(RemoteEnvError, match=f"state_failed: the env's state\\(\\) raised RuntimeError: {STATE_ERROR}"):
            env.state()
        observations, *_ = env.step({a: 0 for a in env.agents})  # the server is still serving
        assert set(observations) == {"agent_0", "agent_1"}
        with pytest.raises(RemoteEnvError, match="state_failed"):
            env.state()
        env.reset(seed=1)
    finally:
        env.close()


@pytest.fixture
def standalone_server(spawn):
    """A standalone env server's process and endpoint (the test signals it; `spawn` reaps it)."""
    process = spawn([sys.executable, "-m", "env_server", "--env", "mpe2.simple_spread_v3", "--kwargs", SPREAD,
                     "--no-autoreset"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = read_line_with_deadline(process, 60)
    assert line.startswith("READY "), line
    yield process, line.split(" ", 1)[1]
    if process.poll() is None:
        os.kill(process.pid, signal.SIGCONT)  # a stopped server must be able to take the fixture's SIGTERM


def test_a_killed_server_is_noticed_at_once_not_at_the_timeout(standalone_server):
    process, endpoint = standalone_server
    env = RemoteParallelEnv(endpoint, timeout_s=60)
    try:
        env.reset(seed=0)
        env.step({a: 0 for a in env.agents})
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        killed_at = time.monotonic()
        with pytest.raises(RemoteEnvError, match=f"the env server at {endpoint} is gone: it was last heard .* s ago"):
            env.step({a: 0 for a in env.agents})
        assert time.monotonic() - killed_at < 2.0  # not the 60 s timeout
    finally:
        env.close()


def test_a_frozen_server_is_noticed_after_the_heartbeat_timeout(standalone_server):
    process, endpoint = standalone_server
    env = RemoteParallelEnv(endpoint, timeout_s=60, heartbeat_timeout_s=1.0)
    try:
        env.reset(seed=0)
        os.kill(process.pid, signal.SIGSTOP)  # alive to its kernel (the connection stays open), silent to zmq
        stopped_at = time.monotonic()
        with pytest.raises(RemoteEnvError, match="is gone: .*stopped answering zmq's heartbeats for 1 s"):
            env.step({a: 0 for a in env.agents})
        assert time.monotonic() - stopped_at < 10.0  # the heartbeat timeout, not the 60 s one
    finally:
        env.close()
