"""One process of the consensus integration test: a SyncConsensus engine over real sockets.

    python tests/integration/consensus_peer.py NODE_INDEX N SOCKET_DIR ROUNDS TIMEOUT_S [DIE_AFTER_ROUND]

Binds its inbox, prints `BOUND`, waits for `GO` on stdin (the parent's readiness handshake),
averages a vector that starts at [index, index**2, ...] with its ring neighbours, and prints
one JSON line with the result. With DIE_AFTER_ROUND it exits abruptly (no goodbye, sockets
left open) once that many rounds are done: a neighbour that dies mid-consensus.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from protocols.engines.consensus import ConsensusRequest, ConsensusShare, SyncConsensus
from protocols.engines.topology import metropolis_weights, ring
from protocols.net.transport import Hub


def main() -> None:
    index, n, socket_dir, rounds, timeout_s = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
    die_after = int(sys.argv[6]) if len(sys.argv) > 6 else None
    topology = ring(n)
    weights = metropolis_weights(topology)
    me = topology.nodes[index]
    hub = Hub(sender=me, run_id="consensus-test")
    inbox = hub.bind_router(f"ipc://{socket_dir}/{me}", name="inbox")
    out = {}
    for j in topology.neighbours(index):
        neighbour = topology.nodes[j]
        # Our last-round shares may still be queued when we finish: neighbours need them to
        # finish their own last round, so closing waits for them.
        out[neighbour] = hub.connect_dealer(f"ipc://{socket_dir}/{neighbour}", name=neighbour, identity=me, close_linger_s=2.0)
    print("BOUND", flush=True)
    assert sys.stdin.readline().strip() == "GO"

    engine = SyncConsensus(
        me,
        {topology.nodes[j]: float(weights[index, j]) for j in topology.neighbours(index)},
        float(weights[index, index]),
        rounds,
        timeout_s,
    )
    value = np.array([index, index**2, -index], dtype=np.float64)
    started = time.monotonic()
    outgoing = engine.start(ConsensusRequest({"x": value}, 1), started)
    while not engine.done:
        for destination, message in outgoing:
            out[destination].send(message)
        outgoing = []
        if die_after is not None and engine.round >= die_after:
            os._exit(3)
        deadline = engine.next_deadline()
        if inbox in hub.wait(max(0.0, deadline - time.monotonic()) if deadline else 1.0):
            for envelope in inbox.recv_all():
                assert isinstance(envelope.message, ConsensusShare)
                outgoing += engine.on_message(envelope.sender, envelope.message, time.monotonic())
        outgoing += engine.on_timer(time.monotonic())
    for destination, message in outgoing:
        out[destination].send(message)
    print(json.dumps({
        "node": me,
        "x": engine.result["x"].tolist(),
        "missing_by_round": [list(m) for m in engine.missing_by_round],
        "duration_s": time.monotonic() - started,
        "last_disagreement_max": engine.round_metrics[-1]["consensus/disagreement_max"],
    }), flush=True)
    hub.close()


if __name__ == "__main__":
    main()
