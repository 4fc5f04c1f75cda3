"""Link emulation on a real `orchestrate up` run: configured delays show in the measured message
ages and consensus round times, a configured partition shows in the dropped counts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.integration.test_orchestrate import node_metrics

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

DELAY_S = 0.04


def up(run_dir: Path, *overrides: str) -> None:
    sets = [arg for override in overrides for arg in ("--set", override)]
    process = subprocess.run(
        [sys.executable, "-m", "orchestrator", "up", "configs/tiny_ring.yaml", "--run-dir", str(run_dir), *sets],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, timeout=200,
    )
    assert process.returncode == 0, process.stderr.decode()[-3000:]


def last_link_row(run_dir: Path, node: str) -> dict:
    rows = node_metrics(run_dir, node)
    link_rows = [row for row in rows if any(key.startswith("link/") for key in row)]
    assert link_rows, f"{node} wrote no link metrics"
    return link_rows[-1]


def consensus_durations(run_dir: Path, node: str) -> list[float]:
    rows = node_metrics(run_dir, node)
    return [row["consensus/duration_s"] for row in rows if "consensus/duration_s" in row]


def test_peer_link_delay_shows_in_message_ages_and_consensus_rounds(tmp_path):
    run_dir = tmp_path / "delayed"
    up(
        run_dir,
        "protocols.consensus={enabled: true, what: policy_parameters, period_steps: 20, rounds: 3}",
        f"network.links=[{{role: peer_links, link: {{delay_s: {DELAY_S}}}}}]",
    )
    for agent, neighbours in {"agent_0": ("agent_1", "agent_2"), "agent_1": ("agent_0", "agent_2")}.items():
        row = last_link_row(run_dir, agent)
        for neighbour in neighbours:
            # Heartbeats and consensus shares from the neighbour were at least DELAY_S old on arrival.
            assert row[f"link/{neighbour}_to_{agent}/received"] > 0
            assert row[f"link/{neighbour}_to_{agent}/age_p50_ms"] >= DELAY_S * 1000
            assert row[f"link/{agent}_to_{neighbour}/delivered"] == row[f"link/{agent}_to_{neighbour}/sent"] - row[f"link/{agent}_to_{neighbour}/in_flight"]
            assert row[f"link/{agent}_to_{neighbour}/dropped"] == 0
        # The env links were left ideal: their messages are far younger than the peer delay.
        assert row[f"link/env_to_{agent}/age_p50_ms"] < DELAY_S * 1000
        # Each of the 3 synchronous rounds waits for the neighbours' shares: >= 3 one-way delays.
        durations = consensus_durations(run_dir, agent)
        assert durations and min(durations) >= 3 * DELAY_S


@pytest.mark.long
def test_partition_between_two_agents_drops_their_messages(tmp_path):
    run_dir = tmp_path / "partitioned"
    up(run_dir, "network.partitions=[[agent_0], [agent_1]]")
    row = last_link_row(run_dir, "agent_0")
    assert row["link/agent_0_to_agent_1/dropped_partition"] > 0
    assert row["link/agent_0_to_agent_1/delivered"] == 0
    assert "link/agent_1_to_agent_0/received" not in row  # nothing from across the cut
    assert row["link/agent_0_to_agent_2/dropped"] == 0 and row["link/agent_0_to_agent_2/delivered"] > 0
    assert row["link/agent_2_to_agent_0/received"] > 0
