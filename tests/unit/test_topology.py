"""Topology builders, the topology config, and mixing weights."""

from __future__ import annotations

import math

import numpy as np
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.engines.topology import (
    Topology,
    TopologyConfig,
    build_topology,
    exponential,
    from_edges,
    full,
    grid,
    line,
    metropolis_weights,
    random_regular,
    ring,
    second_largest_eigenvalue_modulus,
    star,
    uniform_neighbour_weights,
)


def degrees(topology: Topology) -> list[int]:
    return [topology.degree(i) for i in range(topology.num_nodes)]


# -- builders --------------------------------------------------------------------------------


def test_ring():
    topology = ring(6)
    assert len(topology.edges) == 6
    assert degrees(topology) == [2] * 6
    assert topology.neighbours(0) == [1, 5]
    assert topology.is_connected() and topology.diameter() == 3
    assert topology.nodes == tuple(f"agent_{i}" for i in range(6))


def test_tiny_rings_have_no_self_loops_or_repeats():
    assert ring(1).edges == frozenset()
    assert ring(2).edges == frozenset({(0, 1)})


def test_line():
    topology = line(5)
    assert len(topology.edges) == 4
    assert degrees(topology) == [1, 2, 2, 2, 1]
    assert topology.diameter() == 4


def test_star():
    topology = star(5, center=2)
    assert len(topology.edges) == 4
    assert degrees(topology) == [1, 1, 4, 1, 1]
    assert topology.diameter() == 2
    with pytest.raises(ValueError, match="center"):
        star(5, center=5)


def test_full():
    topology = full(6)
    assert len(topology.edges) == 15
    assert degrees(topology) == [5] * 6
    assert topology.diameter() == 1


def test_grid_and_torus():
    lattice = grid(3, 4)
    assert len(lattice.edges) == 3 * 3 + 2 * 4  # horizontal + vertical
    assert sorted(set(degrees(lattice))) == [2, 3, 4]
    assert lattice.neighbours(5) == [1, 4, 6, 9]  # row 1, col 1
    assert lattice.diameter() == 2 + 3
    torus = grid(3, 4, torus=True)
    assert len(torus.edges) == 2 * 12
    assert degrees(torus) == [4] * 12
    assert torus.neighbours(0) == [1, 3, 4, 8]
    assert torus.diameter() == 1 + 2


def test_exponential():
    topology = exponential(16)  # hops 1, 2, 4, 8; +8 and -8 coincide
    assert degrees(topology) == [7] * 16
    assert topology.neighbours(0) == [1, 2, 4, 8, 12, 14, 15]
    assert len(topology.edges) == 16 * 7 // 2
    assert topology.diameter() == 2
    wrapped = exponential(10)  # +8 is -2 mod 10, so the offsets are +-1, +-2, +-4
    assert degrees(wrapped) == [6] * 10
    odd = exponential(11)  # +-1, +-2, +-4, +-8 (= -+3): eight distinct offsets
    assert degrees(odd) == [8] * 11


def test_random_regular_is_regular_connected_simple_and_seeded():
    for n, k in [(10, 3), (12, 4), (9, 2), (8, 6), (20, 5)]:
        topology = random_regular(n, k, seed=7)
        assert degrees(topology) == [k] * n, (n, k)
        assert topology.is_connected(), (n, k)
        assert len(topology.edges) == n * k // 2
    assert random_regular(12, 3, seed=1) == random_regular(12, 3, seed=1)
    assert len({random_regular(12, 3, seed=s).edges for s in range(5)}) > 1


@pytest.mark.parametrize(
    "n, k, message",
    [(5, 3, "n\\*k even"), (4, 4, "k < n"), (6, 0, "k >= 1"), (6, 1, "never connected")],
)
def test_random_regular_rejects_impossible_requests(n, k, message):
    with pytest.raises(ValueError, match=message):
        random_regular(n, k, seed=0)


def test_from_edges_and_its_errors():
    topology = from_edges(4, [(0, 1), (2, 1), [3, 2]])
    assert topology.edges == frozenset({(0, 1), (1, 2), (2, 3)})
    assert topology.edge_list() == [("agent_0", "agent_1"), ("agent_1", "agent_2"), ("agent_2", "agent_3")]
    with pytest.raises(ValueError, match=r"edges\[1\].*out of range \[0, 4\)"):
        from_edges(4, [(0, 1), (1, 4)])
    with pytest.raises(ValueError, match=r"edges\[0\].*self-loop"):
        from_edges(4, [(2, 2)])
    with pytest.raises(ValueError, match=r"edges\[2\].*repeats edges\[0\]"):
        from_edges(4, [(0, 1), (1, 2), (1, 0)])
    with pytest.raises(ValueError, match=r"edges\[0\] must be a pair"):
        from_edges(4, [(0, 1, 2)])
    with pytest.raises(TypeError, match="must be ints"):
        from_edges(4, [(0, "1")])


def test_disconnected_topology():
    topology = from_edges(4, [(0, 1), (2, 3)])
    assert not topology.is_connected()
    with pytest.raises(ValueError, match="disconnected"):
        topology.diameter()


def test_custom_node_ids_and_their_validation():
    topology = ring(3, node_ids=["a", "b", "c"])
    assert topology.edge_list() == [("a", "b"), ("a", "c"), ("b", "c")]
    assert topology.index_of("c") == 2
    with pytest.raises(ValueError, match="expected 3 node ids, got 2"):
        ring(3, node_ids=["a", "b"])
    with pytest.raises(ValueError, match="unique"):
        Topology(nodes=("a", "a"), edges=frozenset())
    with pytest.raises(ValueError, match="0 <= i < j"):
        Topology(nodes=("a", "b"), edges=frozenset({(1, 0)}))


def test_adjacency_matches_edges():
    topology = grid(2, 3)
    adjacency = topology.adjacency()
    assert np.array_equal(adjacency, adjacency.T)
    assert adjacency.sum() == 2 * len(topology.edges)
    assert np.all(np.diag(adjacency) == 0)


# -- config ----------------------------------------------------------------------------------

AGENTS = [f"agent_{i}" for i in range(16)]


def test_build_topology_from_config():
    assert build_topology(TopologyConfig(kind="ring"), AGENTS) == ring(16, AGENTS)
    assert build_topology(TopologyConfig(kind="torus", rows=4, cols=4), AGENTS) == grid(4, 4, torus=True, node_ids=AGENTS)
    assert build_topology(TopologyConfig(kind="grid", rows=2, cols=8), AGENTS) == grid(2, 8, node_ids=AGENTS)
    assert build_topology(TopologyConfig(kind="exponential"), AGENTS) == exponential(16, AGENTS)
    assert build_topology(TopologyConfig(kind="star", center=3), AGENTS) == star(16, 3, AGENTS)
    assert build_topology(TopologyConfig(kind="random_regular", degree=3, seed=5), AGENTS) == random_regular(16, 3, 5, AGENTS)
    edges_config = TopologyConfig(kind="edges", edges=[(0, 1), (1, 2)])
    assert build_topology(edges_config, AGENTS[:3]) == line(3, AGENTS[:3])


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"kind": "grid", "cols": 4}, "topology.rows is required for kind 'grid'"),
        ({"kind": "torus", "rows": 4}, "topology.cols is required for kind 'torus'"),
        ({"kind": "random_regular", "degree": 3}, "topology.seed is required for kind 'random_regular'"),
        ({"kind": "edges"}, "topology.edges is required for kind 'edges'"),
        ({"kind": "ring", "degree": 3}, "topology.degree does not apply to kind 'ring'"),
        ({"kind": "grid", "rows": 0, "cols": 4}, "topology.rows must be >= 1"),
        ({"kind": "hypercube"}, "kind"),
        ({"kind": "ring", "size": 4}, "size"),
    ],
)
def test_config_errors_name_the_field(fields, message):
    with pytest.raises(pydantic.ValidationError, match=message):
        TopologyConfig(**fields)


def test_build_topology_checks_grid_size_against_agent_count():
    with pytest.raises(ValueError, match=r"rows \* topology.cols must equal the number of agents: 3 \* 4 = 12, but there are 16"):
        build_topology(TopologyConfig(kind="grid", rows=3, cols=4), AGENTS)
    with pytest.raises(ValueError, match="center"):
        build_topology(TopologyConfig(kind="star", center=20), AGENTS)


def test_config_is_frozen():
    config = TopologyConfig(kind="ring")
    with pytest.raises(pydantic.ValidationError):
        config.kind = "line"


# -- weights ---------------------------------------------------------------------------------


def every_builder(n: int) -> list[Topology]:
    topologies = [ring(n), line(n), star(n), full(n), exponential(n)]
    for rows in range(1, n + 1):
        if n % rows == 0:
            topologies += [grid(rows, n // rows), grid(rows, n // rows, torus=True)]
    for k in range(2, n):
        if n * k % 2 == 0:
            topologies.append(random_regular(n, k, seed=n + k))
            break
    return topologies


@settings(max_examples=25, deadline=None)
@given(n=st.integers(min_value=1, max_value=14))
def test_metropolis_weights_are_symmetric_doubly_stochastic_for_every_builder(n):
    for topology in every_builder(n):
        weights = metropolis_weights(topology)
        assert np.allclose(weights, weights.T)
        assert np.allclose(weights.sum(axis=0), 1.0) and np.allclose(weights.sum(axis=1), 1.0)
        assert np.all(weights >= -1e-15)
        off_diagonal = weights - np.diag(np.diag(weights))
        assert np.array_equal(off_diagonal > 0, topology.adjacency() > 0)  # weights only on edges
        if topology.is_connected() and n > 1:
            assert second_largest_eigenvalue_modulus(weights) < 1.0 - 1e-9


@settings(max_examples=15, deadline=None)
@given(n=st.integers(min_value=3, max_value=14), self_weight=st.floats(min_value=0.05, max_value=0.95))
def test_uniform_weights_doubly_stochastic_on_regular_graphs(n, self_weight):
    for topology in [ring(n), full(n), exponential(n)]:
        if len(set(degrees(topology))) != 1:
            continue
        weights = uniform_neighbour_weights(topology, self_weight)
        assert np.allclose(weights, weights.T)
        assert np.allclose(weights.sum(axis=1), 1.0) and np.allclose(weights.sum(axis=0), 1.0)
        assert np.allclose(np.diag(weights), self_weight)


def test_uniform_weights_refuse_non_uniform_degrees():
    with pytest.raises(ValueError, match=r"same degree.*\[1, 2, 2, 1\]"):
        uniform_neighbour_weights(line(4), 0.5)
    with pytest.raises(ValueError, match="self_weight"):
        uniform_neighbour_weights(ring(4), 1.5)


def test_ring_of_five_reference_weights_and_lambda_2():
    weights = uniform_neighbour_weights(ring(5), 0.5)
    assert weights[0, 0] == 0.5 and weights[0, 1] == 0.25 and weights[0, 4] == 0.25 and weights[0, 2] == 0.0
    assert second_largest_eigenvalue_modulus(weights) == pytest.approx(0.5 + 0.5 * math.cos(2 * math.pi / 5), abs=1e-12)


def test_metropolis_values_on_a_star():
    weights = metropolis_weights(star(4))  # center degree 3, leaves degree 1
    assert weights[0, 1] == pytest.approx(1 / 4)
    assert weights[1, 1] == pytest.approx(3 / 4)
    assert weights[0, 0] == pytest.approx(1 / 4)


def test_lambda_2_orders_topologies_as_expected():
    slem = {name: second_largest_eigenvalue_modulus(metropolis_weights(t)) for name, t in
            [("ring", ring(16)), ("torus", grid(4, 4, torus=True)), ("exponential", exponential(16)), ("full", full(16))]}
    assert slem["full"] < slem["exponential"] < slem["torus"] < slem["ring"] < 1.0
    assert slem["full"] == pytest.approx(0.0, abs=1e-12)  # one round of full averaging is exact
