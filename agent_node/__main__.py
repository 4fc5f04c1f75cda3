"""`python -m agent_node --config RUN_DIR/resolved.yaml --node-id agent_0 --control ENDPOINT`.

Started by the orchestrator's launcher, one process per agent. Logs go to stderr (the launcher
points it at `nodes/<id>/log`); the exit code is 0 after a clean stop, 1 after a failure.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent_node", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="resolved.yaml of the run")
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--control", required=True, help="the orchestrator's control endpoint")
    args = parser.parse_args(argv)

    from agent_node.config import load_agent_side_config

    if (loaded := load_agent_side_config(args.config, args.node_id, "agent")) is None:
        return 2
    node_config, identity = loaded
    config = node_config.agents
    # Many agents share few cores: one intra-op thread each (set before torch does any work).
    import torch

    torch.set_num_threads(config.torch_threads)
    if node_config.run.reproducible:
        # A kernel with no deterministic version then fails loudly instead of drifting.
        torch.use_deterministic_algorithms(True)
        # Parley's own draws use seeded generators; library code that draws from the global
        # generators (torch, numpy's legacy one, random) gets this node's stream too.
        import random

        import numpy as np

        global_seed = identity.seed("global_rng")
        torch.manual_seed(global_seed)
        np.random.seed(global_seed)
        random.seed(global_seed)

    from agent_node.node import AgentNode, NodeState
    from protocols.run.control import ShutdownRequested

    node = AgentNode(identity, node_config, args.control)

    def request_stop(signum, frame):
        reason = f"signal {signal.Signals(signum).name}"
        if node.state in (NodeState.BOOTING, NodeState.CONNECTING, NodeState.READY):
            # Start-up waits block with long deadlines: interrupt them.
            raise ShutdownRequested(reason)
        # Drain at the next loop iteration; the loop never blocks longer than a timer period.
        node.begin_draining(reason)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    logging.getLogger("agent_node").info("agent %s starting, run seed %d, index %d", args.node_id, identity.run_seed, identity.index)
    return node.run()


if __name__ == "__main__":
    sys.exit(main())
