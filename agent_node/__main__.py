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

    from protocols.node_context import load_resolved, node_context

    resolved = load_resolved(args.config)
    context = node_context(resolved, args.config, args.node_id)

    from agent_node.config import AgentsConfig

    config = AgentsConfig.model_validate(resolved["agents"])
    logging.basicConfig(
        level=config.log_level,
        format=f"%(asctime)s {args.node_id} %(name)s %(levelname)s %(message)s",
    )
    # Many agents share few cores: one intra-op thread each (set before torch does any work).
    import torch

    torch.set_num_threads(config.torch_threads)

    from agent_node.node import AgentNode, NodeState
    from protocols.control import ShutdownRequested

    node = AgentNode(context, config, resolved, args.control)

    def request_stop(signum, frame):
        reason = f"signal {signal.Signals(signum).name}"
        if node.state in (NodeState.BOOTING, NodeState.CONNECTING, NodeState.READY):
            # Start-up waits block with long deadlines: interrupt them.
            raise ShutdownRequested(reason)
        # Drain at the next loop iteration; the loop never blocks longer than a timer period.
        node.begin_draining(reason)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    logging.getLogger("agent_node").info("agent %s starting, seed %d", args.node_id, context.seed)
    return node.run()


if __name__ == "__main__":
    sys.exit(main())
