"""A bare lockstep client for benchmarks: joins one env agent and answers with random actions.

`python bench/random_client.py ENDPOINT INDEX SEED [packed|messages]` — no learning, no
orchestrator: what is left is the cost of Parley's wire and the env server's barrier. It speaks
through `EnvClient`, as the agent node does, with packed lockstep bodies (protocols/codec/packed.py;
the default, as in a run) or msgpack messages (`messages`, for a side-by-side comparison). On
exit it prints one line,

    TIMING <answered> <defaulted> <seconds from the first observation to the last> <CPU seconds in that span> <p50 us> <p99 us> <transport>

(the two percentiles are of the round trip of a step: from sending an action to receiving the
next observation, which includes waiting for the other clients' actions and the env step;
`transport` is how the lockstep's bodies travelled: shm, zmq packed or zmq msgpack, with the
space written as `_`)

where `defaulted` counts observations that reported some agent's action as missing (the step
deadline passed): a throughput figure is only valid when it is 0. Timing from the first
observation leaves process start-up (imports, connecting) out of the figure.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from agent_node.env_client import EnvClient, use_lockstep_transport
from protocols.codec import messages as m
from protocols.net.transport import Hub

# Every network wait has a deadline: the server answers within its step deadline unless gone.
RECEIVE_TIMEOUT_S = 60.0


def main(endpoint: str, index: int, seed: int, bodies: str = "packed") -> None:
    if bodies not in ("packed", "messages"):
        raise SystemExit(f"bodies must be 'packed' or 'messages', got {bodies!r}")
    name = f"bench_{index}"
    hub = Hub(sender=name, run_id="bench")
    channel = hub.connect_dealer(endpoint, name="env", identity=name)
    client = EnvClient(name, agent_indices=[index], packed=bodies == "packed")
    channel.send(client.join())
    welcome = channel.wait_for(m.EnvWelcome, m.ErrorReply, timeout_s=RECEIVE_TIMEOUT_S)
    if welcome is None:
        raise SystemExit(f"{name}: no env.welcome from {endpoint} within {RECEIVE_TIMEOUT_S} s")
    client.on_welcome(welcome)
    transport = use_lockstep_transport(channel, client)
    (agent,) = client.agents
    space = client.action_spaces[agent]
    copies = client.num_copies
    rng = np.random.default_rng(seed)
    channel.send(client.reset())
    answered, defaulted, first_at, first_cpu = 0, 0, None, 0.0
    round_trips, sent_at = [], None
    while True:
        message = channel.wait_for(m.EnvObservation, m.ErrorReply, timeout_s=RECEIVE_TIMEOUT_S)
        if message is None:
            raise SystemExit(f"{name}: no env.observation within {RECEIVE_TIMEOUT_S} s")
        observation = client.on_message(message, time.monotonic())
        if sent_at is not None:
            round_trips.append(time.perf_counter() - sent_at)
        if first_at is None:
            first_at, first_cpu = time.perf_counter(), time.process_time()
        defaulted += bool(observation.missing)
        if observation.run_finished:
            break
        actions = rng.integers(0, space.n, size=copies, dtype=np.int64)
        sent_at = time.perf_counter()
        channel.send(client.answer(observation, {agent: actions}))
        answered += 1
    elapsed, cpu = time.perf_counter() - first_at, time.process_time() - first_cpu
    hub.close()
    p50, p99 = np.percentile(round_trips, [50, 99]) * 1e6 if round_trips else (float("nan"), float("nan"))
    print(f"TIMING {answered} {defaulted} {elapsed:.6f} {cpu:.6f} {p50:.1f} {p99:.1f} {transport.replace(' ', '_')}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:5])
