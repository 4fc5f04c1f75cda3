"""A bare lockstep client for benchmarks: joins one env agent and answers with random actions.

`python bench/random_client.py ENDPOINT INDEX SEED` — no learning, no orchestrator: what is
left is the cost of Parley's wire and the env server's barrier. On exit it prints one line,

    TIMING <answered> <defaulted> <seconds from the first observation to the last> <CPU seconds in that span>

where `defaulted` counts observations that reported some agent's action as missing (the step
deadline passed): a throughput figure is only valid when it is 0. Timing from the first
observation leaves process start-up (imports, connecting) out of the figure.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from protocols import messages as m
from protocols.spaces import decode_space
from protocols.transport import Hub

# Every network wait has a deadline: the server answers within its step deadline unless gone.
RECEIVE_TIMEOUT_S = 60.0


def main(endpoint: str, index: int, seed: int) -> None:
    name = f"bench_{index}"
    hub = Hub(sender=name, run_id="bench")
    channel = hub.connect_dealer(endpoint, name="env", identity=name)
    channel.send(m.EnvJoin(client_id=name, agent_indices=[index]))
    welcome = channel.wait_for(m.EnvWelcome, timeout_s=RECEIVE_TIMEOUT_S)
    if welcome is None:
        raise SystemExit(f"{name}: no env.welcome from {endpoint} within {RECEIVE_TIMEOUT_S} s")
    (agent,) = welcome.agents
    space = decode_space(welcome.action_spaces[agent])
    copies = welcome.num_copies
    rng = np.random.default_rng(seed)
    channel.send(m.EnvReset())
    answered, defaulted, first_at, first_cpu = 0, 0, None, 0.0
    while True:
        message = channel.wait_for(m.EnvObservation, timeout_s=RECEIVE_TIMEOUT_S)
        if message is None:
            raise SystemExit(f"{name}: no env.observation within {RECEIVE_TIMEOUT_S} s")
        if first_at is None:
            first_at, first_cpu = time.perf_counter(), time.process_time()
        defaulted += bool(message.missing)
        if message.run_finished:
            break
        actions = rng.integers(0, space.n, size=copies, dtype=np.int64)
        channel.send(m.EnvAction(step=message.step, actions={agent: actions}))
        answered += 1
    elapsed, cpu = time.perf_counter() - first_at, time.process_time() - first_cpu
    hub.close()
    print(f"TIMING {answered} {defaulted} {elapsed:.6f} {cpu:.6f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
