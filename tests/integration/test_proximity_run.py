"""Links that follow where the agents are, on real processes (configs/tiny_proximity.yaml: 4 DQN
agents on simple_spread, the landmark agreement, hindsight and consensus of the policy, every
message gated by the range at the env step it was sent).

Run twice with `run.reproducible`, the second time with other timing (jittered env links, one
gradient step per look at the sockets): both exit 0, the graph changes over the run (edges come and
go, the team splits into components and joins again), messages are dropped for range, neighbours
leave the range and come back, and the two runs' metrics are the same row for row: the same seed
gives the same deliveries."""

from __future__ import annotations

import pytest

from orchestrator.report import summarize_run
from tests.integration.test_reproducible_runs import PATIENT, run_config, seeded_rows
from tests.integration.test_orchestrate import node_metrics

pytestmark = [pytest.mark.integration, pytest.mark.long, pytest.mark.timeout(300)]

AGENTS = [f"agent_{i}" for i in range(4)]
SETTINGS = (*PATIENT, "run.steps=200")
# Jittered env links and one gradient step per look at the sockets (peer links count env steps:
# wall-clock settings are refused there).
OTHER_TIMING = ("agents.gradient_steps_per_slice=1",
                "network.links=[{role: env_links, link: {delay_s: 0.003, jitter_s: 0.003}}]")


def test_a_graph_that_follows_positions_changes_during_a_run_and_the_same_seed_gives_the_same_deliveries(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    run_config("configs/tiny_proximity.yaml", first, *SETTINGS)
    run_config("configs/tiny_proximity.yaml", second, *SETTINGS, *OTHER_TIMING)

    graph = [(row["proximity/edges"], row["proximity/components"]) for row in node_metrics(first, "agent_0") if "proximity/edges" in row]
    assert len(graph) >= 30
    edges, components = [e for e, _ in graph], [c for _, c in graph]
    assert min(edges) < max(edges) and min(components) < max(components), graph  # the graph changed
    for agent in AGENTS:
        talk = [row for row in node_metrics(first, agent) if "talk/delivered" in row][-1]
        assert talk["proximity/range_changes"] >= 2, f"{agent}: no neighbour left the range and came back"
        assert talk["talk/delivered"] > 0 and talk["talk/marks_missed"] == 0
        assert not any("reproducibility/broken" in row for row in node_metrics(first, agent)), agent
        assert seeded_rows(second, agent) == seeded_rows(first, agent), f"{agent}: the two runs differ"
    dropped = sum(value for agent in AGENTS for key, value in [row for row in node_metrics(first, agent) if "talk/delivered" in row][-1].items()
                  if key.endswith("/dropped_range"))
    assert dropped > 0, "no message was ever out of range"
    summary = summarize_run(first)
    report = summary["proximity"]  # the report's graph over time
    assert len(report["series"]) == len(graph) and report["connected_fraction"] < 1.0 and report["range_changes"] > 0
    # and in the headline a sweep aggregates over seeds
    assert (summary["headline"]["graph_edges_mean"], summary["headline"]["graph_connected_share"],
            summary["headline"]["graph_range_changes"]) == (report["edges_mean"], report["connected_fraction"], report["range_changes"])
    assert summary["headline"]["graph_copy_edges_mean"] is None  # one env copy: no graph per copy


def test_several_env_copies_each_follow_their_own_graph_with_delay_rising_with_distance(tmp_path):
    """tiny_proximity with 4 env copies and a distance delay (2 steps per unit): messages about
    copies (the landmark tables, the hindsight rows) have the copies out of range cut out, each
    copy's landmark agreement knows only the rows of its own component (rows known per copy
    differ), the team's graph (the union) is denser than each copy's, and a second run with other
    timing repeats the first row for row."""
    settings = (*SETTINGS, "env.num_copies=4", "topology.delay_steps_per_unit=2")
    first, second = tmp_path / "first", tmp_path / "second"
    run_config("configs/tiny_proximity.yaml", first, *settings)
    run_config("configs/tiny_proximity.yaml", second, *settings, *OTHER_TIMING)

    cut = 0.0
    for agent in AGENTS:
        agent_rows = node_metrics(first, agent)
        talk = [row for row in agent_rows if "talk/delivered" in row][-1]
        assert talk["talk/delivered"] > 0 and talk["talk/marks_missed"] == 0, agent
        cut += sum(value for key, value in talk.items() if key.endswith("/copies_cut"))
        assert not any("reproducibility/broken" in row for row in agent_rows), agent
        assert seeded_rows(second, agent) == seeded_rows(first, agent), f"{agent}: the two runs differ"
    assert cut > 0, "no copy was ever cut out of a message"
    agent_rows = node_metrics(first, "agent_0")
    union = [row["proximity/edges"] for row in agent_rows if "proximity/edges" in row]
    per_copy = [row["proximity/edges_per_copy"] for row in agent_rows if "proximity/edges_per_copy" in row]
    assert len(per_copy) == len(union) >= 30 and sum(per_copy) < sum(union)
    known = [row["landmarks/rows_known"] for row in agent_rows if "landmarks/rows_known" in row]
    assert any(value != int(value) for value in known), known  # copies knew different rows
    summary = summarize_run(first)
    report = summary["proximity"]
    assert report["copies_cut"] > 0 and report["edges_per_copy_mean"] < report["edges_mean"]
    assert summary["headline"]["graph_copy_edges_mean"] == report["edges_per_copy_mean"]
