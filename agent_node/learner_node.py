"""`python -m agent_node.learner_node`: a centralized learner process (CTDE, issue 12).

A ROUTER that agent nodes connect DEALERs to. Each agent sends `ctde.transitions`; the node joins
them into joint rows, trains a VDN or QMIX mixer over all agents' Q networks and sends each agent
its Q-network parameters (`ctde.params`) every `--params-every` gradient steps, through the
routing id that agent's transitions came from. All the learning logic is in
agent_node/ctde_learner.py; this file is only the socket loop around it.

Only the standalone mode exists so far (tests, benchmarks): spaces and hyperparameters come from
the command line, it prints `READY <endpoint>` once bound, serves until SIGTERM / SIGINT, and
prints its final metrics as one JSON line (`METRICS {...}`) before it exits. Being planned and
launched by the orchestrator (a `learner` role in orchestrator/plan.py, its endpoint in the
Directory) is not built yet.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal

import gymnasium as gym
import numpy as np
import torch

from agent_node.algos.config import MixerConfig
from agent_node.algos.mixers import CentralizedMixerLearner
from agent_node.ctde_learner import CentralizedLearnerCore
from protocols.ctde import CTDETransitions
from protocols.seeds import derive_seed
from protocols.transport import Hub

log = logging.getLogger("learner_node")

# How often the loop wakes up with nothing to do, to notice SIGTERM / SIGINT promptly.
_WAKE_S = 0.2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent_node.learner_node", description=__doc__.split("\n")[0])
    parser.add_argument("--bind", default="tcp://127.0.0.1:0")
    parser.add_argument("--node-id", default="learner")
    parser.add_argument("--mixer", choices=("vdn", "qmix"), default="qmix")
    parser.add_argument("--num-agents", type=int, required=True)
    parser.add_argument("--obs-dim", type=int, required=True)
    parser.add_argument("--num-actions", type=int, required=True)
    parser.add_argument("--state-dim", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=MixerConfig.model_fields["batch_size"].default)
    parser.add_argument("--replay-capacity", type=int, default=100_000)
    parser.add_argument("--learning-starts", type=int, default=1_000)
    parser.add_argument("--gradient-steps-per-row", type=float, default=0.25)
    parser.add_argument("--params-every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(1)

    config = MixerConfig(mixer=args.mixer, batch_size=args.batch_size)
    learner = CentralizedMixerLearner(
        config,
        gym.spaces.Box(-np.inf, np.inf, (args.obs_dim,), np.float32),
        gym.spaces.Discrete(args.num_actions),
        gym.spaces.Box(-np.inf, np.inf, (args.state_dim,), np.float32),
        num_agents=args.num_agents,
        seed=derive_seed(args.seed, args.num_agents + 1, "learner"),
    )
    core = CentralizedLearnerCore(learner, args.replay_capacity, args.learning_starts, args.gradient_steps_per_row, args.params_every)

    stop = [False]

    def request_stop(signum, frame):
        stop[0] = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    hub = Hub(sender=args.node_id, run_id="standalone")
    try:
        inbox = hub.bind_router(args.bind, name="learner")
        print(f"READY {inbox.endpoint}", flush=True)
        routes: dict[int, bytes] = {}  # agent index -> the routing id its transitions came from
        while not stop[0]:
            hub.wait(_WAKE_S)
            for envelope in inbox.recv_all():
                message = envelope.message
                if not isinstance(message, CTDETransitions):
                    log.warning("ignored %s from %s: a learner node takes only ctde.transitions", type(message).__name__, envelope.header.sender)
                    continue
                routes[int(message.agent_index)] = envelope.identities[0]
                try:
                    outgoing = core.on_transitions(message)
                except ValueError as error:
                    log.warning("refused ctde.transitions from %s: %s", envelope.header.sender, error)
                    continue
                for agent, params in outgoing:
                    if agent in routes:
                        inbox.send(params, to=routes[agent])
            hub.flush_due()
    finally:
        print("METRICS " + json.dumps(core.metrics()), flush=True)
        hub.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
