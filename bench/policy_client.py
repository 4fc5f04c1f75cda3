"""A lockstep client for benchmarks that acts with a small neural policy: joins one env agent and,
for every observation, runs one forward pass of a 64x64 MLP over its K copies and samples the
actions from the resulting categorical distribution.

    python bench/policy_client.py ENDPOINT INDEX SEED [--hidden 64]

No learning and no orchestrator: what is measured is Parley's wire, the env server's barrier and
the forward pass an acting agent pays anyway, which is what an RL library's sampler pays too
(see bench/vs_rllib.py). On exit it prints one line on stdout,

    TIMING <answered> <defaulted> <seconds from the first observation to the last>

where `defaulted` counts steps in which the server stepped without some agent's action (its
step deadline passed): a throughput figure is only valid when it is 0.

so a benchmark can leave out process start-up (imports, torch's first call, connecting).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from agent_node.env_client import EnvClient, use_lockstep_transport
from protocols.codec import messages as m
from protocols.net.transport import Hub

# Every network wait has a deadline; the env server answers within its step deadline (5 s by
# default) unless it is gone, and start-up on a loaded 2-core machine can take a while.
RECEIVE_TIMEOUT_S = 60.0


def mlp_policy(observation_size: int, num_actions: int, hidden: int) -> nn.Module:
    """The benches' policy: two tanh hidden layers, logits out (the shape of RLlib's default
    PPO actor with fcnet_hiddens=[hidden, hidden])."""
    return nn.Sequential(
        nn.Linear(observation_size, hidden),
        nn.Tanh(),
        nn.Linear(hidden, hidden),
        nn.Tanh(),
        nn.Linear(hidden, num_actions),
    )


def sample_actions(policy: nn.Module, observations: np.ndarray) -> np.ndarray:
    """One batched forward pass over the K rows of `observations`, one sampled action per row."""
    # torch.tensor copies: received arrays are read-only views of the zmq frame.
    logits = policy(torch.tensor(observations, dtype=torch.float32))
    return torch.multinomial(torch.softmax(logits, dim=-1), num_samples=1).squeeze(1).numpy()


def main(endpoint: str, index: int, seed: int, hidden: int) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    name = f"bench_{index}"
    hub = Hub(sender=name, run_id="bench")
    channel = hub.connect_dealer(endpoint, name="env", identity=name)
    client = EnvClient(name, agent_indices=[index], packed=True)  # as an agent node joins
    channel.send(client.join())
    welcome = channel.wait_for(m.EnvWelcome, m.ErrorReply, timeout_s=RECEIVE_TIMEOUT_S)
    if welcome is None:
        raise SystemExit(f"{name}: no env.welcome from {endpoint} within {RECEIVE_TIMEOUT_S} s")
    client.on_welcome(welcome)
    use_lockstep_transport(channel, client)
    (agent,) = client.agents
    observation_space, action_space = client.observation_spaces[agent], client.action_spaces[agent]
    if not hasattr(action_space, "n") or len(observation_space.shape) != 1:
        raise SystemExit(
            f"{name}: the bench policy needs a flat Box observation and a Discrete action; "
            f"agent {agent!r} has {observation_space} and {action_space}"
        )
    policy = mlp_policy(observation_space.shape[0], int(action_space.n), hidden)
    with torch.inference_mode():
        # torch's first call allocates and initialises; keep it out of the timed loop.
        sample_actions(policy, np.zeros((welcome.num_copies, observation_space.shape[0]), np.float32))
        channel.send(client.reset())
        answered, defaulted, first_at = 0, 0, None
        while True:
            # Blocking (with a deadline): the client has nothing else to do.
            message = channel.wait_for(m.EnvObservation, m.ErrorReply, timeout_s=RECEIVE_TIMEOUT_S)
            if message is None:
                raise SystemExit(f"{name}: no env.observation within {RECEIVE_TIMEOUT_S} s")
            message = client.on_message(message, time.monotonic())
            if first_at is None:
                first_at = time.perf_counter()
            defaulted += bool(message.missing)
            if message.run_finished:
                break
            actions = sample_actions(policy, message.observations[agent])
            channel.send(client.answer(message, {agent: actions.astype(np.int64)}))
            answered += 1
    elapsed = time.perf_counter() - first_at
    hub.close()
    print(f"TIMING {answered} {defaulted} {elapsed:.6f}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("endpoint")
    parser.add_argument("index", type=int, help="index of the env agent to drive")
    parser.add_argument("seed", type=int)
    parser.add_argument("--hidden", type=int, default=64, help="width of both hidden layers")
    args = parser.parse_args()
    main(args.endpoint, args.index, args.seed, args.hidden)
