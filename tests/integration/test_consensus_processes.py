"""Consensus over real sockets between real processes (the engine is tested alone in tests/unit)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import read_line_with_deadline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
PEER = Path(__file__).with_name("consensus_peer.py")


def start_peers(spawn, n: int, rounds: int, timeout_s: float, die: dict[int, int] | None = None):
    socket_dir = tempfile.mkdtemp(prefix="parley-test-")  # short: unix socket paths are limited
    peers = []
    for i in range(n):
        extra = [str(die[i])] if die and i in die else []
        peers.append(
            spawn(
                [sys.executable, str(PEER), str(i), str(n), socket_dir, str(rounds), str(timeout_s), *extra],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )
        )
    for peer in peers:
        assert read_line_with_deadline(peer, 60) == "BOUND"
    for peer in peers:  # everyone is bound: start together
        peer.stdin.write(b"GO\n")
        peer.stdin.flush()
    return peers


@pytest.mark.parametrize("n", [3, 5])
def test_agent_processes_agree_on_the_average(spawn, n):
    peers = start_peers(spawn, n, rounds=60, timeout_s=5.0)
    results = [json.loads(read_line_with_deadline(peer, 60)) for peer in peers]
    true_average = np.mean([[i, i**2, -i] for i in range(n)], axis=0)
    for result in results:
        np.testing.assert_allclose(result["x"], true_average, rtol=1e-6, atol=1e-6)
        assert not any(result["missing_by_round"]), "no neighbour should be missing on loopback"


def test_a_neighbour_killed_mid_consensus_does_not_hang_the_others(spawn):
    rounds, timeout_s = 10, 0.5
    peers = start_peers(spawn, 5, rounds=rounds, timeout_s=timeout_s, die={2: 3})
    survivors = [peer for i, peer in enumerate(peers) if i != 2]
    results = [json.loads(read_line_with_deadline(peer, 30)) for peer in survivors]
    assert peers[2].wait(timeout=10) == 3
    for result in results:
        # Every survivor finished within the engine's overall deadline, rounds x timeout.
        assert result["duration_s"] <= rounds * timeout_s + 1.0
        missing = {node for missing in result["missing_by_round"] for node in missing}
        if result["node"] in ("agent_1", "agent_3"):  # agent_2's ring neighbours report it
            assert missing == {"agent_2"}
        else:
            assert missing == set()
