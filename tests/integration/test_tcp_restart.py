"""A restarted agent over tcp: it listens at a new port, and its neighbours are told.

Over ipc a restarted node binds the same socket file and the others find it where it was. Over
tcp it gets a free port, so the orchestrator sends each running neighbour
`control.neighbour_moved`; without it the neighbours' links would point at the dead port and the
restarted agent would never hear them again (its sends to them still arrive: it connects afresh).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.rundir import read_jsonl
from tests.integration.test_orchestrate import finished_ok, orchestrate, read_events

pytestmark = [pytest.mark.integration, pytest.mark.long, pytest.mark.timeout(330)]


def restart_over_tcp(run_dir: Path, node: str, steps: int) -> list[dict]:
    """tiny_ring over tcp with `node` restarted at step 200; the run's events."""
    process = orchestrate(
        "up", "configs/tiny_ring.yaml", "--run-dir", str(run_dir), "--set", f"run.steps={steps}",
        "--set", "network={transport: tcp, bind_host: 127.0.0.1}",
        "--set", f"faults.schedule=[{{at_step: 200, kind: restart, nodes: [{node}]}}]",
    )  # fmt: skip
    finished_ok(process, timeout_s=300)
    return read_events(run_dir)


def test_a_restarted_agent_over_tcp_hears_its_neighbours_at_its_new_port(tmp_path):
    run_dir = tmp_path / "run"
    steps = 1500  # long enough that the restarted agent (a fresh python + torch) rejoins well before the end
    events = restart_over_tcp(run_dir, "agent_1", steps)
    peer_endpoints = [e["endpoints"]["peer"] for e in events if e["event"] == "registered" and e["node"] == "agent_1"]
    assert len(peer_endpoints) == 2 and peer_endpoints[0] != peer_endpoints[1], peer_endpoints
    told = next(e for e in events if e["event"] == "neighbours_told")
    assert told["node"] == "agent_1" and told["endpoint"] == peer_endpoints[1]
    assert sorted(told["told"]) == ["agent_0", "agent_2"]
    rejoined = next(e for e in events if e["event"] == "rejoined" and e["node"] == "agent_1")
    # The restarted agent hears both neighbours again: they send to its new port.
    after = [r for r in read_jsonl(run_dir / "nodes/agent_1/metrics.jsonl") if r["t"] > rejoined["t"]]
    alive = [r["membership/peers_alive"] for r in after if "membership/peers_alive" in r]
    assert alive and max(alive) == 2, alive
    assert after[-1]["step"] == steps, "stepping to the end of the budget"
    for neighbour in ("agent_0", "agent_2"):
        log = (run_dir / "nodes" / neighbour / "log").read_text()
        assert f"neighbour agent_1 moved: sending to {peer_endpoints[1]}" in log, log[-2000:]


def test_a_restarted_env_server_over_tcp_is_joined_at_its_new_port(tmp_path):
    run_dir = tmp_path / "run"
    steps = 1200
    events = restart_over_tcp(run_dir, "env", steps)
    env_endpoints = [e["endpoints"]["env"] for e in events if e["event"] == "registered" and e["node"] == "env"]
    assert len(env_endpoints) == 2 and env_endpoints[0] != env_endpoints[1], env_endpoints
    resumed = next(e for e in events if e["event"] == "env_server_resumed")
    assert resumed["step"] == 200 and sorted(resumed["agents_told"]) == ["agent_0", "agent_1", "agent_2"]
    assert next(e for e in events if e["event"] == "run_complete")["steps"] == steps
    for agent in ("agent_0", "agent_1", "agent_2"):
        rows = read_jsonl(run_dir / "nodes" / agent / "metrics.jsonl")
        assert rows[-1]["step"] == steps and any("env/server_downtime_s" in r for r in rows), agent
