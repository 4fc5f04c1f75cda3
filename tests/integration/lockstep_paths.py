"""The two paths of the lockstep's bodies, for tests that run an env server with bare clients:
`zmq` (msgpack bodies over the socket, what these tests always sent) and `shm` (packed bodies
through a shared-memory segment, protocols/net/shm_lockstep.py). The `lockstep_transport` fixture
(tests/conftest.py) runs a test once per path; the server is started with `--transport` of the
same name, so an shm test cannot pass over zmq (the server refuses a client it cannot give
shared memory).

`LockstepClient` is such a bare client: it joins one env agent and acts on it."""

from __future__ import annotations

import numpy as np

from agent_node.env_client import EnvClient, use_lockstep_transport
from protocols.codec import messages as m

TRANSPORTS = ("zmq", "shm")


def env_client(transport: str, client_id: str, agent_indices: list[int]) -> EnvClient:
    """The client side of a join on `transport`: send its `join()`, then `take_welcome`."""
    if transport not in TRANSPORTS:
        raise ValueError(f"transport: expected one of {TRANSPORTS}, got {transport!r}")
    return EnvClient(client_id, agent_indices=agent_indices, packed=transport == "shm", shm=transport == "shm")


def take_welcome(channel, client: EnvClient, welcome: m.EnvWelcome, transport: str) -> None:
    """Apply the welcome to `channel`, and check the path is the one asked for."""
    client.on_welcome(welcome)
    path = use_lockstep_transport(channel, client)
    assert path == ("shm" if transport == "shm" else "zmq msgpack"), path


class LockstepClient:
    """A bare agent-side client: joins one env agent (index `index`) as `name` and talks
    lockstep over `transport`."""

    def __init__(self, hub, endpoint: str, name: str, index: int, transport: str = "zmq") -> None:
        self.channel = hub.connect_dealer(endpoint, name=name, identity=name)
        client = env_client(transport, name, [index])
        self.channel.send(client.join())
        self.welcome = self.expect(m.EnvWelcome)
        take_welcome(self.channel, client, self.welcome, transport)
        (self.agent,) = self.welcome.agents

    def expect(self, message_type: type, timeout_s: float = 20.0):
        message = self.channel.wait_for(object, timeout_s=timeout_s)  # the next message, whatever it is
        assert message is not None, f"no {message_type.MSG_TYPE} within {timeout_s} s"
        assert isinstance(message, message_type), message
        return message

    def act(self, step: int, value: int = 0) -> None:
        """Action `value` for every copy of the agent."""
        actions = np.full((self.welcome.num_copies,), value, dtype=np.int64)
        self.channel.send(m.EnvAction(step=step, actions={self.agent: actions}))

    def ready(self, step: int, goals: list[int] = ()) -> None:
        """The agent's goal is decided (the episode-start hold, env.episode_start); `goals`: the
        goal for the env to pay (`agents.goals.paid_by: env`), none by default."""
        self.channel.send(m.GoalReady(step=step, agents=[self.agent], goals=list(goals)))
