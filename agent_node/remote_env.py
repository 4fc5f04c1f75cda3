"""A PettingZoo `ParallelEnv` whose environment runs in an env server.

`RemoteParallelEnv` claims every agent of a remote environment and drives it like a local one:
`reset` and `step` become `env.reset` / `env.action` messages and block (with a deadline) for
the `env.observation` answer. It exists so code written against PettingZoo's API can run
against Parley's env server unchanged, and so the server's semantics are checked by
PettingZoo's own `parallel_api_test`.

The protocol bookkeeping (requests, checking answers, decoding the welcome's spaces) is
`agent_node.env_client.EnvClient`, shared with the agent node; this class adds the socket, the
blocking waits and PettingZoo's dict-per-agent shapes.

It needs a server that does not autoreset and hosts one copy (K = 1): a PettingZoo env is one
environment whose episodes end until `reset` is called.

Like a local env: `reset()` without a seed starts a new episode from a fresh start (the server
derives a new seed for each seedless reset, env_server/server.py), and `state()` returns the
env's global state: it asks the server (`env.state`), which calls the env's `state()` then, for
this request only; a server whose clients never ask never computes it. The state space comes
with the welcome (`EnvWelcome.state_space`); where the remote env has no `state()`, `state()`
raises NotImplementedError saying why (as the local one would), and where the env's `state()`
raises on the server, it raises `RemoteEnvError` naming the exception (the server goes on).
The infos are those the server forwards: the standalone server
(`python -m env_server --no-autoreset`, the server it needs) forwards every numeric info key by
default (`--forward-infos all`), so
`step` and `reset` return the infos a local env would, less any value that is not a number or a
numeric array (named in the server's log).

A server that dies is noticed at once: the proxy's connection is watched (protocols/net/transport.py
`PeerWatch`), so a server killed even by SIGKILL (its kernel closes the connection) or frozen for
`heartbeat_timeout_s` (zmq's heartbeats go unanswered) makes the waiting call raise
`RemoteEnvError` naming the endpoint and how long ago the server was last heard, instead of
waiting out `timeout_s`; a server that fails on an error says so itself (`env_server_stopped`).

Rewards come back as Python floats of float32 values: the lockstep carries rewards as float32
(protocols/codec/packed.py, env_server/vector.py), which is what the learners train on, so a float64
env's reward is rounded (a relative difference under 6e-8), not passed bit for bit.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from pettingzoo import ParallelEnv

from agent_node.env_client import EnvClient, EnvProtocolError, EnvRefused, use_lockstep_transport
from protocols.codec import messages as m
from protocols.codec.spaces import decode_space
from protocols.net.transport import Hub, SocketOptions


class RemoteEnvError(RuntimeError):
    pass


class RemoteParallelEnv(ParallelEnv):
    """`timeout_s`: the longest wait for an answer of a server that is still there.
    `heartbeat_timeout_s`: how long a server may stay silent at the zmq level (it answers zmq's
    heartbeats from its I/O thread, busy or not) before it counts as gone."""

    def __init__(self, endpoint: str, *, client_id: str = "remote-env", timeout_s: float = 10.0,
                 heartbeat_timeout_s: float = 1.0) -> None:
        if not heartbeat_timeout_s > 0:
            raise ValueError(f"heartbeat_timeout_s: expected a positive number of seconds, got {heartbeat_timeout_s}")
        options = SocketOptions(heartbeat_ivl_s=heartbeat_timeout_s / 4, heartbeat_timeout_s=heartbeat_timeout_s)
        self._hub = Hub(sender=client_id, run_id="remote", options=options)
        self._endpoint = endpoint
        self._channel = self._hub.connect_dealer(endpoint, name="env", identity=client_id, watch_peer=True)
        self._timeout_s = timeout_s
        self._last_heard = time.monotonic()
        self._client = EnvClient(client_id, packed=True)  # no agents named: claim them all
        try:
            self._channel.send(self._client.join())
            welcome = self._wait(m.EnvWelcome, self._client.on_welcome)
            use_lockstep_transport(self._channel, self._client)  # packed bodies, shared memory on this host
            if welcome.num_copies != 1 or welcome.autoreset:
                raise RemoteEnvError(
                    "RemoteParallelEnv needs a server with one copy and no autoreset, got "
                    f"num_copies={welcome.num_copies}, autoreset={welcome.autoreset}"
                )
        except BaseException:
            self.close()
            raise
        self.metadata = {"name": welcome.env_name, "render_modes": [], "is_parallelizable": True}
        self.possible_agents = list(welcome.possible_agents)
        self.agents: list[str] = []
        self.observation_spaces = self._client.observation_spaces
        self.action_spaces = self._client.action_spaces
        self._last: m.EnvObservation | None = None  # the observation the next step answers
        self._no_state = f"the env server cannot compute it: {welcome.state_unavailable}"
        if welcome.state_space is not None:
            self.state_space = decode_space(welcome.state_space, "env.welcome.state_space")
            self._no_state = None

    def state(self) -> np.ndarray:
        """The env's global state now (after the last reset or step), as the remote env's
        `state()` gives it, computed by the server for this call."""
        if self._no_state is not None:
            raise NotImplementedError(f"state(): {self._no_state}")
        if self._last is None:
            raise RemoteEnvError("state() before reset()")
        self._send(m.EnvStateRequest())
        reply = self._wait(m.EnvStateReply, lambda message: message)
        if isinstance(reply, m.ErrorReply):
            raise RemoteEnvError(f"state(): the env server answered {reply.code}: {reply.message}")
        return np.array(reply.state[0])  # a writable copy: received buffers are read-only

    def observation_space(self, agent: str):
        return self.observation_spaces[agent]

    def action_space(self, agent: str):
        return self.action_spaces[agent]

    def reset(self, seed: int | None = None, options: dict | None = None):
        self._send(self._client.reset(seed))
        reply = self._wait_observation()
        participants = [a for a in self.possible_agents if reply.active[a][0]]
        self.agents = participants
        observations = {a: _first_row(reply.observations[a]) for a in participants}
        return observations, _first_infos(reply, participants)

    def step(self, actions: dict[str, Any]):
        unknown = set(actions) - set(self.agents)
        if unknown:
            raise ValueError(f"actions for agents that are not live: {sorted(unknown)}; live: {self.agents}")
        if self._last is None:
            raise RemoteEnvError("step() before reset()")
        batched = {agent: _as_batch(action) for agent, action in actions.items()}
        self._send(self._client.answer(self._last, batched))
        reply = self._wait_observation()
        participants = [a for a in self.possible_agents if reply.active[a][0]]
        observations = {a: _first_row(reply.observations[a]) for a in participants}
        rewards = {a: float(reply.rewards[a][0]) for a in participants}
        terminated = {a: bool(reply.terminated[a][0]) for a in participants}
        truncated = {a: bool(reply.truncated[a][0]) for a in participants}
        self.agents = [a for a in participants if not (terminated[a] or truncated[a])]
        return observations, rewards, terminated, truncated, _first_infos(reply, participants)

    def close(self) -> None:
        self._hub.close()

    def _wait_observation(self) -> m.EnvObservation:
        self._last = self._wait(m.EnvObservation, lambda message: self._client.on_message(message, time.monotonic()))
        return self._last

    def _send(self, message: Any) -> None:
        self._raise_if_server_gone()
        self._channel.send(message)

    def _wait(self, message_type: type, take: Any) -> Any:
        """The server's answer of `message_type` (or its error reply), through `take`."""
        message = self._channel.wait_for(message_type, m.ErrorReply, timeout_s=self._timeout_s)
        if message is None:
            self._raise_if_server_gone()
            raise RemoteEnvError(f"no {message_type.MSG_TYPE} from the env server at {self._endpoint} within {self._timeout_s} s")
        self._last_heard = time.monotonic()
        try:
            return take(message)
        except (EnvRefused, EnvProtocolError) as error:
            raise RemoteEnvError(str(error)) from error

    def _raise_if_server_gone(self) -> None:
        lost_at = self._channel.peer_lost()
        if lost_at is not None:
            now = time.monotonic()
            raise RemoteEnvError(
                f"the env server at {self._endpoint} is gone: it was last heard {now - self._last_heard:.2f} s ago, and "
                f"its connection dropped {now - lost_at:.2f} s ago (the process died, or stopped answering zmq's "
                f"heartbeats for {self._hub.options.heartbeat_timeout_s:g} s)"
            )


def _first_row(batched: Any) -> Any:
    if isinstance(batched, dict):
        return {key: _first_row(value) for key, value in batched.items()}
    return np.array(batched[0])  # a writable copy: received buffers are read-only


def _first_infos(reply: m.EnvObservation, agents: list[str]) -> dict[str, dict[str, Any]]:
    """Copy 0's forwarded infos (the server's `forward_infos`): a Python number for a scalar,
    else a writable array."""
    infos: dict[str, dict[str, Any]] = {a: {} for a in agents}
    for agent in agents:
        for key, batched in reply.infos.get(agent, {}).items():
            value = batched[0]
            if value is not None:
                value = np.array(value)
                infos[agent][key] = value.item() if value.ndim == 0 else value
    return infos


def _as_batch(action: Any) -> Any:
    if isinstance(action, dict):
        return {key: _as_batch(value) for key, value in action.items()}
    return np.asarray(action)[None, ...]
