"""Flooding (protocols/engines/flooding.py) and the landmark assignment built on it (agent_node/landmarks/session.py),
driven by hand and through the deterministic simulator, with and without loss."""

from __future__ import annotations

import numpy as np
import pytest

from agent_node.landmarks.session import assign
from protocols.codec import wire
from protocols.engines.flooding import FloodEngine, FloodRequest, FloodTable
from protocols.net.links import LinkConfig
from protocols.sim.netsim import NetworkSimulator, same_link_everywhere
from protocols.engines.topology import Topology, grid, ring


def flood(topology: Topology, values: dict[str, np.ndarray], *, link: LinkConfig, seed: int,
          round_timeout_s: float = 0.5, stagger_s: float = 0.0, crashed=()) -> tuple[dict[str, FloodEngine], NetworkSimulator]:
    engines = {node: FloodEngine(node, round_timeout_s=round_timeout_s) for node in topology.nodes}
    sim = NetworkSimulator(engines, same_link_everywhere(link), seed=seed)
    rounds = topology.diameter()
    for node in crashed:
        sim.crash(node)
    for i, node in enumerate(topology.nodes):
        if node in crashed:
            continue
        neighbours = [topology.nodes[j] for j in topology.neighbours(i)]
        request = FloodRequest("train:0", values[node], neighbours, team_size=topology.num_nodes, rounds=rounds)
        sim.schedule(i * stagger_s, lambda node=node, request=request: sim.call(node, lambda engine, now: engine.start(request, now)))
    sim.run()
    return engines, sim


def cost_rows(topology: Topology, seed: int, copies: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {node: rng.uniform(0, 3, size=(copies, topology.num_nodes)).astype(np.float32) for node in topology.nodes}


@pytest.mark.parametrize("topology", [ring(4), ring(6), grid(3, 3, torus=True), grid(4, 4, torus=True)], ids=["ring4", "ring6", "torus9", "torus16"])
def test_lossless_flooding_gives_every_node_every_value_in_diameter_rounds(topology):
    values = cost_rows(topology, seed=1)
    engines, sim = flood(topology, values, link=LinkConfig(delay_s=0.01), seed=0)
    rounds = topology.diameter()
    for node, engine in engines.items():
        result = engine.result
        assert result.complete and set(result.values) == set(topology.nodes)
        assert result.rounds_closed_by_deadline == 0
        np.testing.assert_array_equal(result.values[topology.nodes[0]], values[topology.nodes[0]])
        assert result.duration_s == pytest.approx(rounds * 0.01)  # one link delay per round, no timeout
    degree_sum = sum(len(topology.neighbours(i)) for i in range(topology.num_nodes))
    assert sim.stats["sent"] == rounds * degree_sum


@pytest.mark.parametrize("topology", [ring(4), ring(6), grid(3, 3, torus=True)], ids=["ring4", "ring6", "torus9"])
def test_every_node_that_heard_the_whole_team_takes_its_part_of_one_distinct_assignment_under_loss(topology):
    complete_runs = 0
    for seed in range(60):
        values = cost_rows(topology, seed)
        engines, sim = flood(topology, values, link=LinkConfig(delay_s=0.005, jitter_s=0.003, loss=0.2), seed=seed,
                             stagger_s=0.002)
        assert all(engine.done for engine in engines.values())  # loss costs time, never a hang
        goals = {node: assign(engine.result.values, node) for node, engine in engines.items()}
        if all(engine.result.complete for engine in engines.values()):
            complete_runs += 1
            chosen = np.stack([goals[node] for node in sorted(goals)])  # (n, copies)
            for copy in range(chosen.shape[1]):
                assert sorted(chosen[:, copy]) == list(range(topology.num_nodes)), f"seed {seed}: landmarks shared"
            centralized = assign(values, topology.nodes[0])
            np.testing.assert_array_equal(goals[topology.nodes[0]], centralized)
        for engine in engines.values():
            assert engine.result.complete == (len(engine.result.values) == topology.num_nodes)
    assert complete_runs >= 20  # most runs recover the whole table within the diameter's rounds
    assert complete_runs < 60  # and 20% loss does cost some: the test sees both cases


def test_a_dead_neighbour_is_not_waited_for_and_the_table_says_it_is_incomplete():
    topology = ring(4)
    values = cost_rows(topology, seed=3)
    engines, sim = flood(topology, values, link=LinkConfig(delay_s=0.01), seed=0, crashed=["agent_2"])
    for node in ("agent_1", "agent_3"):  # agent_2's neighbours time out their rounds
        assert engines[node].result.rounds_closed_by_deadline > 0
    for node in ("agent_0", "agent_1", "agent_3"):
        result = engines[node].result
        assert not result.complete and set(result.values) == {"agent_0", "agent_1", "agent_3"}
    engine = engines["agent_1"]
    engine.start(FloodRequest("train:25", values["agent_1"], ["agent_0", "agent_2"], team_size=4, rounds=2), 10.0)
    engine.on_neighbour_down("agent_2", 10.0)
    engine.on_message("agent_0", FloodTable("train:25", 1, ["agent_0"], values["agent_0"][None]), 10.001)
    engine.on_message("agent_0", FloodTable("train:25", 2, ["agent_0", "agent_3"], np.stack([values["agent_0"], values["agent_3"]])), 10.002)
    assert engine.done and engine.result.rounds_closed_by_deadline == 0 and set(engine.result.values) == {"agent_0", "agent_1", "agent_3"}


def test_a_table_for_a_run_not_started_waits_and_one_for_a_finished_run_is_dropped():
    a = FloodEngine("agent_0")
    early = FloodTable("train:25", 1, ["agent_1"], np.ones((1, 2, 3), np.float32))
    assert a.on_message("agent_1", early, 0.0) == []
    out = a.start(FloodRequest("train:25", np.zeros((2, 3)), ["agent_1"], team_size=2, rounds=1), 0.1)
    assert [destination for destination, _ in out] == ["agent_1"]
    assert a.done and a.result.complete  # the early table closed round 1 at once
    a.on_message("agent_1", early, 0.2)  # a duplicate after the end: nothing changes
    a.start(FloodRequest("train:50", np.zeros((2, 3)), ["agent_1"], team_size=2, rounds=1), 0.3)
    a.on_message("agent_1", early, 0.4)
    assert a.late_dropped == 1 and not a.done
    with pytest.raises(ValueError, match="shape"):
        a.on_message("agent_1", FloodTable("train:50", 1, ["agent_1"], np.ones((1, 4), np.float32)), 0.5)


def test_a_flood_table_survives_the_wire():
    table = FloodTable("eval:3:0", 2, ["agent_0", "agent_1"], np.arange(12, dtype=np.float32).reshape(2, 2, 3))
    frames = wire.encode(table, sender="agent_0", run_id="r", seq=1, key=b"k" * 32)
    decoded = wire.decode([bytes(memoryview(frame)) for frame in frames], key=b"k" * 32).message
    assert decoded.key == table.key and decoded.nodes == table.nodes
    np.testing.assert_array_equal(decoded.values, table.values)
