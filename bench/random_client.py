"""A bare lockstep client for benchmarks: joins one env agent and answers with random actions.

`python bench/random_client.py ENDPOINT INDEX SEED` — no learning, no orchestrator: what is
left is the cost of Parley's wire and the env server's barrier.
"""

from __future__ import annotations

import sys

import numpy as np

from protocols import messages as m
from protocols import wire
from protocols.spaces import decode_space
from protocols.transport import Hub


def main(endpoint: str, index: int, seed: int) -> None:
    name = f"bench_{index}"
    hub = Hub(sender=name, run_id="bench")
    channel = hub.connect_dealer(endpoint, name="env", identity=name)
    channel.send(m.EnvJoin(client_id=name, agent_indices=[index]))
    rng = np.random.default_rng(seed)
    agent, space, copies = None, None, 1
    while True:
        # Blocking: the client has nothing else to do; it stops at the run_finished observation.
        frames = channel.socket.recv_multipart(copy=False)
        message = wire.decode([f.buffer for f in frames]).message
        if isinstance(message, m.EnvWelcome):
            (agent,) = message.agents
            space = decode_space(message.action_spaces[agent])
            copies = message.num_copies
            channel.send(m.EnvReset())
        elif isinstance(message, m.EnvObservation):
            if message.run_finished:
                break
            actions = rng.integers(0, space.n, size=copies, dtype=np.int64)
            channel.send(m.EnvAction(step=message.step, actions={agent: actions}))
    hub.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
