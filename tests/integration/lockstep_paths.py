"""The two paths of the lockstep's bodies, for tests that run an env server with bare clients:
`zmq` (msgpack bodies over the socket, what these tests always sent) and `shm` (packed bodies
through a shared-memory segment, protocols/shm_lockstep.py). The `lockstep_transport` fixture
(tests/conftest.py) runs a test once per path; the server is started with `--transport` of the
same name, so an shm test cannot pass over zmq (the server refuses a client it cannot give
shared memory)."""

from __future__ import annotations

from agent_node.env_client import EnvClient, use_lockstep_transport
from protocols import messages as m

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
