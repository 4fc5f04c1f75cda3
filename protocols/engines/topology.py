"""Communication topologies between agents, and the mixing weights consensus runs on.

A topology says which agents talk to each other: every edge is a pair of peers that exchange
consensus shares, negotiation proposals and hindsight reports. Its shape decides how fast
gossip averaging converges: after `k` synchronous rounds `x <- W x` the disagreement between
agents shrinks like `lambda_2(W)^k`, where `lambda_2` is the second largest eigenvalue modulus
of the mixing matrix `W`. A ring of `n` agents has `lambda_2 -> 1` quickly as `n` grows (slow),
a 2-D torus less so, and an exponential graph (links to nodes 1, 2, 4, ... away) stays fast
with only `O(log n)` neighbours per agent.

The standard graphs (ring, line, star, full, grid, torus) come from networkx's generators and
the graph questions (connected? diameter?) from its algorithms; what is Parley's own is what
networkx has no same graph for: the exponential graph, and the seeded random regular and small
world draws (their seeds name the graphs that runs, tests and benches replay), and the mixing
weights below. networkx is imported where it is used, so a node that only reads a topology
does not pay for its import.

Conventions:
- nodes are indexed `0..n-1`; `Topology.nodes[i]` is the node id the rest of Parley uses
  (by default `agent_i`);
- edges are undirected and stored once as `(i, j)` with `i < j`; no self-loops, no multi-edges.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator

from protocols.engines.proximity import PathLossConfig

# ------------------------------------------------------------------------------------------
# The graph
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Topology:
    """An undirected simple graph over named nodes."""

    nodes: tuple[str, ...]
    edges: frozenset[tuple[int, int]]

    def __post_init__(self) -> None:
        if len(set(self.nodes)) != len(self.nodes):
            duplicates = sorted({node for node in self.nodes if self.nodes.count(node) > 1})
            raise ValueError(f"topology node ids must be unique, got duplicates {duplicates}")
        n = len(self.nodes)
        for edge in self.edges:
            i, j = edge
            if not (0 <= i < j < n):
                raise ValueError(
                    f"topology edge {edge} must be a pair (i, j) with 0 <= i < j < {n} (number of nodes)"
                )

    @property
    def num_nodes(self) -> int:
        return len(self.nodes)

    def neighbours(self, i: int) -> list[int]:
        """Indices of the nodes sharing an edge with node `i`, in increasing order."""
        self._check_index(i)
        return sorted([b for a, b in self.edges if a == i] + [a for a, b in self.edges if b == i])

    def degree(self, i: int) -> int:
        return len(self.neighbours(i))

    def degrees(self) -> np.ndarray:
        return self.adjacency().sum(axis=1).astype(int)

    def adjacency(self) -> np.ndarray:
        """Symmetric 0/1 adjacency matrix, float64, zero diagonal."""
        n = self.num_nodes
        matrix = np.zeros((n, n))
        for i, j in self.edges:
            matrix[i, j] = matrix[j, i] = 1.0
        return matrix

    def to_networkx(self):
        """The graph as a networkx Graph over the indices 0..n-1 (node ids as attribute `id`)."""
        import networkx as nx

        graph = nx.Graph()
        graph.add_nodes_from((i, {"id": node}) for i, node in enumerate(self.nodes))
        graph.add_edges_from(self.edges)
        return graph

    def is_connected(self) -> bool:
        import networkx as nx

        return self.num_nodes == 0 or nx.is_connected(self.to_networkx())

    def diameter(self) -> int:
        """Largest shortest-path length between two nodes; raises if the graph is disconnected."""
        import networkx as nx

        if not self.is_connected():
            raise ValueError("the diameter of a disconnected topology is infinite")
        return nx.diameter(self.to_networkx()) if self.num_nodes > 1 else 0

    def edge_list(self) -> list[tuple[str, str]]:
        """Edges as pairs of node ids, sorted by index."""
        return [(self.nodes[i], self.nodes[j]) for i, j in sorted(self.edges)]

    def index_of(self, node_id: str) -> int:
        try:
            return self.nodes.index(node_id)
        except ValueError:
            raise ValueError(f"node {node_id!r} is not in the topology (nodes: {list(self.nodes)})") from None

    def _check_index(self, i: int) -> None:
        if not 0 <= i < self.num_nodes:
            raise IndexError(f"node index {i} out of range for a topology of {self.num_nodes} nodes")


# ------------------------------------------------------------------------------------------
# Builders
# ------------------------------------------------------------------------------------------


def _node_ids(n: int, node_ids: Sequence[str] | None) -> tuple[str, ...]:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"number of nodes must be an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"a topology needs at least 1 node, got n={n}")
    if node_ids is None:
        return tuple(f"agent_{i}" for i in range(n))
    ids = tuple(node_ids)
    if len(ids) != n:
        raise ValueError(f"expected {n} node ids, got {len(ids)}: {list(ids)}")
    return ids


def _make(n: int, pairs: Iterable[tuple[int, int]], node_ids: Sequence[str] | None) -> Topology:
    """Normalize pairs to `(min, max)`, dropping self-loops and repeats that wrap-around
    constructions produce on tiny graphs (e.g. a ring of 2 or a torus with 2 rows)."""
    edges = frozenset((min(i, j), max(i, j)) for i, j in pairs if i != j)
    return Topology(nodes=_node_ids(n, node_ids), edges=edges)


def _from_networkx(graph, n: int, node_ids: Sequence[str] | None) -> Topology:
    """A topology from a networkx graph whose nodes are the indices 0..n-1."""
    return _make(n, graph.edges, node_ids)


def ring(n: int, node_ids: Sequence[str] | None = None) -> Topology:
    """Node i linked to i-1 and i+1 (mod n)."""
    import networkx as nx

    _node_ids(n, node_ids)
    return _from_networkx(nx.cycle_graph(n), n, node_ids)


def line(n: int, node_ids: Sequence[str] | None = None) -> Topology:
    """A path 0 - 1 - ... - (n-1)."""
    import networkx as nx

    _node_ids(n, node_ids)
    return _from_networkx(nx.path_graph(n), n, node_ids)


def star(n: int, center: int = 0, node_ids: Sequence[str] | None = None) -> Topology:
    """Every node linked to `center` only."""
    import networkx as nx

    _node_ids(n, node_ids)
    if not 0 <= center < n:
        raise ValueError(f"star center must be a node index in [0, {n}), got {center}")
    # networkx's star has its hub at 0: swap labels 0 and `center`.
    hub_first = nx.star_graph(n - 1)
    return _from_networkx(nx.relabel_nodes(hub_first, {0: center, center: 0}), n, node_ids)


def full(n: int, node_ids: Sequence[str] | None = None) -> Topology:
    """Every pair of nodes linked."""
    import networkx as nx

    _node_ids(n, node_ids)
    return _from_networkx(nx.complete_graph(n), n, node_ids)


def grid(rows: int, cols: int, torus: bool = False, node_ids: Sequence[str] | None = None) -> Topology:
    """A `rows x cols` lattice, nodes numbered row-major; `torus=True` wraps both axes."""
    import networkx as nx

    if rows < 1 or cols < 1:
        raise ValueError(f"grid needs rows >= 1 and cols >= 1, got rows={rows}, cols={cols}")
    n = rows * cols
    _node_ids(n, node_ids)
    lattice = nx.grid_2d_graph(rows, cols, periodic=torus)  # nodes (r, c)
    return _make(n, [(r * cols + c, r2 * cols + c2) for (r, c), (r2, c2) in lattice.edges], node_ids)


def exponential(n: int, node_ids: Sequence[str] | None = None) -> Topology:
    """Node i linked to i + 2^k and i - 2^k (mod n) for every power of two 2^k < n.

    Degree is about 2 log2(n), and lambda_2 of its Metropolis weights stays far from 1 as n grows,
    which is why decentralized SGD work favours it over rings.
    """
    _node_ids(n, node_ids)
    pairs = []
    hop = 1
    while hop < n:
        for i in range(n):
            pairs.append((i, (i + hop) % n))
            pairs.append((i, (i - hop) % n))
        hop *= 2
    return _make(n, pairs, node_ids)


def random_regular(n: int, k: int, seed: int, node_ids: Sequence[str] | None = None) -> Topology:
    """A connected simple graph where every node has exactly `k` neighbours, drawn with `seed`.

    Degree 2 is a uniformly random Hamiltonian cycle (the only connected 2-regular graphs).
    Otherwise edges are drawn by pairing "stubs" one edge at a time among the pairs still allowed
    (no self-loop, no repeated edge), restarting when stuck or when the result is disconnected.
    Dense requests (k > (n-1)/2) draw the sparser complement and invert it.
    """
    _node_ids(n, node_ids)
    if k >= n:
        raise ValueError(f"random_regular needs degree k < n (a node has at most n-1 neighbours), got k={k}, n={n}")
    if k < 1:
        raise ValueError(f"random_regular needs degree k >= 1 to be connected, got k={k}")
    if (n * k) % 2 == 1:
        raise ValueError(f"random_regular needs n*k even (each edge uses two endpoints), got n={n}, k={k}")
    if k == 1 and n > 2:
        raise ValueError(f"a 1-regular graph on n={n} > 2 nodes is a matching and never connected")
    rng = np.random.default_rng(seed)
    if k == 2:
        order = rng.permutation(n)
        return _make(n, [(int(order[i]), int(order[(i + 1) % n])) for i in range(n)], node_ids)

    max_attempts = 1000
    for _ in range(max_attempts):
        if k > (n - 1) / 2:
            sparse_edges = _draw_regular_edges(n, n - 1 - k, rng)
            if sparse_edges is None:
                continue
            all_pairs = {(i, j) for i in range(n) for j in range(i + 1, n)}
            edges = all_pairs - sparse_edges
        else:
            edges = _draw_regular_edges(n, k, rng)
            if edges is None:
                continue
        candidate = _make(n, edges, node_ids)
        if candidate.is_connected():
            return candidate
    raise RuntimeError(f"random_regular(n={n}, k={k}, seed={seed}) found no connected graph in {max_attempts} draws")


def small_world(n: int, k: int, rewire: float, seed: int, node_ids: Sequence[str] | None = None) -> Topology:
    """A Watts-Strogatz small world, drawn with `seed`: a ring lattice where each node links to its
    `k/2` nearest nodes on either side, then each lattice edge `(i, i + j)` is moved with
    probability `rewire` to `(i, m)`, `m` uniform among the nodes `i` is not linked to yet.

    A few long-range shortcuts shrink the diameter of the lattice from `n/k` to about `log n` while
    most links stay local (Watts and Strogatz 1998). Draws that come out disconnected are redrawn.
    Not a `topology.kind` of a run config; a run replays one drawn graph as `kind: edges`.
    """
    _node_ids(n, node_ids)
    if k < 2 or k % 2 == 1 or k >= n:
        raise ValueError(f"small_world needs an even degree 2 <= k < n, got k={k}, n={n}")
    if not 0.0 <= rewire <= 1.0:
        raise ValueError(f"small_world rewire is a probability in [0, 1], got {rewire}")
    rng = np.random.default_rng(seed)
    max_attempts = 100
    for _ in range(max_attempts):
        linked = [set() for _ in range(n)]
        for i in range(n):
            for j in range(1, k // 2 + 1):
                linked[i].add((i + j) % n)
                linked[(i + j) % n].add(i)
        for j in range(1, k // 2 + 1):
            for i in range(n):
                other = (i + j) % n
                if other not in linked[i] or rng.random() >= rewire:
                    continue
                free = [m for m in range(n) if m != i and m not in linked[i]]
                if not free:
                    continue
                target = free[int(rng.integers(len(free)))]
                linked[i].discard(other)
                linked[other].discard(i)
                linked[i].add(target)
                linked[target].add(i)
        candidate = _make(n, [(i, m) for i in range(n) for m in linked[i]], node_ids)
        if candidate.is_connected():
            return candidate
    raise RuntimeError(f"small_world(n={n}, k={k}, rewire={rewire}, seed={seed}) found no connected graph in {max_attempts} draws")


def one_peer_hypercube(n: int, node_ids: Sequence[str] | None = None) -> list[Topology]:
    """The `log2 n` graphs of the one-peer hypercube schedule, `n` a power of two: in graph `k`
    node `i` has the single neighbour `i XOR 2^k`. Averaging with weights 1/2 over the graphs in
    turn gives every node the exact average after the last one (protocols/sim/conformance.py)."""
    _node_ids(n, node_ids)
    if n < 2 or n & (n - 1):
        raise ValueError(f"the one-peer hypercube schedule needs n a power of two >= 2, got n={n}")
    return [_make(n, [(i, i ^ (1 << k)) for i in range(n)], node_ids) for k in range(n.bit_length() - 1)]


def _draw_regular_edges(n: int, k: int, rng: np.random.Generator) -> set[tuple[int, int]] | None:
    """One attempt at a k-regular simple graph; None when the pairing got stuck."""
    if k == 0:
        return set()
    remaining = np.full(n, k)
    edges: set[tuple[int, int]] = set()
    while remaining.sum() > 0:
        # Pick the first endpoint proportional to its free stubs, then a second endpoint among
        # the nodes it may still connect to, again proportional to free stubs.
        first = int(rng.choice(n, p=remaining / remaining.sum()))
        allowed = remaining.copy().astype(float)
        allowed[first] = 0
        for other in range(n):
            if (min(first, other), max(first, other)) in edges:
                allowed[other] = 0
        if allowed.sum() == 0:
            return None
        second = int(rng.choice(n, p=allowed / allowed.sum()))
        edges.add((min(first, second), max(first, second)))
        remaining[first] -= 1
        remaining[second] -= 1
    return edges


def from_edges(n: int, edges: Iterable[Sequence[int]], node_ids: Sequence[str] | None = None) -> Topology:
    """A topology from explicit undirected index pairs; every problem is reported by position."""
    _node_ids(n, node_ids)
    seen: dict[tuple[int, int], int] = {}
    for position, edge in enumerate(edges):
        if len(edge) != 2:
            raise ValueError(f"edges[{position}] must be a pair of node indices, got {edge!r}")
        i, j = edge
        for endpoint in (i, j):
            if isinstance(endpoint, bool) or not isinstance(endpoint, (int, np.integer)):
                raise TypeError(f"edges[{position}] = {edge!r}: node indices must be ints, got {type(endpoint).__name__}")
            if not 0 <= endpoint < n:
                raise ValueError(f"edges[{position}] = {edge!r}: node index {endpoint} is out of range [0, {n})")
        if i == j:
            raise ValueError(f"edges[{position}] = {edge!r} is a self-loop; a node does not gossip with itself")
        key = (min(int(i), int(j)), max(int(i), int(j)))
        if key in seen:
            raise ValueError(f"edges[{position}] = {edge!r} repeats edges[{seen[key]}]; edges are undirected, list each once")
        seen[key] = position
    return _make(n, seen.keys(), node_ids)


# ------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------

TopologyKind = Literal["ring", "line", "star", "full", "grid", "torus", "exponential", "random_regular", "edges", "proximity"]

# Which optional fields each kind needs and which it accepts; any other field set is an error,
# so a typo such as `degree` on a ring does not pass silently.
_REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "grid": ("rows", "cols"),
    "torus": ("rows", "cols"),
    "random_regular": ("degree", "seed"),
    "edges": ("edges",),
    "proximity": ("radius",),
}
_ACCEPTED_FIELDS: dict[str, tuple[str, ...]] = {
    "ring": (),
    "line": (),
    "star": ("center",),
    "full": (),
    "grid": ("rows", "cols"),
    "torus": ("rows", "cols"),
    "exponential": (),
    "random_regular": ("degree", "seed"),
    "edges": ("edges",),
    "proximity": ("radius", "path_loss", "delay_steps_per_unit"),
}
_OPTIONAL_FIELDS = ("rows", "cols", "degree", "seed", "edges", "center", "radius", "path_loss", "delay_steps_per_unit")


class TopologyConfig(BaseModel):
    """The `topology` section of a run config. The agent count comes from the run, not from here."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: TopologyKind
    rows: int | None = None
    cols: int | None = None
    degree: int | None = None
    seed: int | None = None
    edges: list[tuple[int, int]] | None = None
    center: int | None = None
    # kind proximity (protocols/engines/proximity.py): a peer message sent at env step t from i to
    # j is delivered only if the distance between their positions at step t is <= radius (in the
    # env's units; MPE's world is about [-1, 1]^2). Every pair may talk; the env's positions decide
    # which pairs do. Needs protocols.talk: env_steps and an env with positions (env.positions).
    radius: float | None = None
    # kind proximity, optional: loss rising with distance within the radius (the log-distance
    # path-loss model, seeded per link; protocols/engines/proximity.py). None: no loss from distance.
    path_loss: PathLossConfig | None = None
    # kind proximity, optional: delay rising with distance. A message between agents d apart (at
    # the env step it was sent) is due round(delay_steps_per_unit * d) env steps (half up) later
    # than its link's own delay_steps says; a function of the positions, so it draws nothing.
    # With several env copies a message about copies waits for its farthest copy
    # (protocols/engines/proximity.py). Needs protocols.talk: env_steps. None: no delay from distance.
    delay_steps_per_unit: float | None = None

    @model_validator(mode="after")
    def _fields_match_kind(self) -> "TopologyConfig":
        for name in _REQUIRED_FIELDS.get(self.kind, ()):
            if getattr(self, name) is None:
                raise ValueError(f"topology.{name} is required for kind {self.kind!r}")
        for name in _OPTIONAL_FIELDS:
            if getattr(self, name) is not None and name not in _ACCEPTED_FIELDS[self.kind]:
                accepted = ", ".join(_ACCEPTED_FIELDS[self.kind]) or "none"
                raise ValueError(
                    f"topology.{name} does not apply to kind {self.kind!r} (fields it accepts: {accepted})"
                )
        for name in ("rows", "cols", "degree"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"topology.{name} must be >= 1, got {value}")
        if self.center is not None and self.center < 0:
            raise ValueError(f"topology.center must be a node index >= 0, got {self.center}")
        if self.radius is not None and not (self.radius > 0 and self.radius < float("inf")):
            raise ValueError(f"topology.radius must be a finite distance > 0, got {self.radius}")
        if self.delay_steps_per_unit is not None and not (0 < self.delay_steps_per_unit < float("inf")):
            raise ValueError(f"topology.delay_steps_per_unit must be a finite number of env steps per unit of "
                             f"distance > 0, got {self.delay_steps_per_unit}")
        return self


def build_topology(spec: TopologyConfig, node_ids: Sequence[str]) -> Topology:
    """The topology a config describes, over the run's agents (in the given order)."""
    node_ids = tuple(node_ids)
    n = len(node_ids)
    if spec.kind in ("grid", "torus"):
        assert spec.rows is not None and spec.cols is not None  # guaranteed by the validator
        if spec.rows * spec.cols != n:
            raise ValueError(
                f"topology.rows * topology.cols must equal the number of agents: "
                f"{spec.rows} * {spec.cols} = {spec.rows * spec.cols}, but there are {n} agents"
            )
        return grid(spec.rows, spec.cols, torus=spec.kind == "torus", node_ids=node_ids)
    if spec.kind == "ring":
        return ring(n, node_ids)
    if spec.kind == "line":
        return line(n, node_ids)
    if spec.kind == "star":
        center = 0 if spec.center is None else spec.center
        if center >= n:
            raise ValueError(f"topology.center must be an agent index below {n}, got {center}")
        return star(n, center=center, node_ids=node_ids)
    if spec.kind in ("full", "proximity"):
        # proximity: every pair may talk; the positions of each step decide which pairs do
        # (protocols/engines/proximity.py), so the connections are those of the full graph.
        return full(n, node_ids)
    if spec.kind == "exponential":
        return exponential(n, node_ids)
    if spec.kind == "random_regular":
        assert spec.degree is not None and spec.seed is not None
        return random_regular(n, spec.degree, spec.seed, node_ids)
    if spec.kind == "edges":
        assert spec.edges is not None
        return from_edges(n, spec.edges, node_ids)
    raise AssertionError(f"unhandled topology kind {spec.kind!r}")  # Literal makes this unreachable


# ------------------------------------------------------------------------------------------
# Mixing weights
# ------------------------------------------------------------------------------------------


def metropolis_weights(topology: Topology) -> np.ndarray:
    """Metropolis-Hastings weights: `W_ij = 1 / (1 + max(deg_i, deg_j))` on edges, rest on self.

    Symmetric by construction and each row sums to 1, so W is doubly stochastic on any undirected
    graph: averaging with it preserves the mean, and on a connected graph every agent converges
    to that mean. Each agent computes its row from its own and its neighbours' degrees only.
    """
    n = topology.num_nodes
    degrees = topology.degrees()
    weights = np.zeros((n, n))
    for i, j in topology.edges:
        weights[i, j] = weights[j, i] = 1.0 / (1.0 + max(degrees[i], degrees[j]))
    weights[np.diag_indices(n)] = 1.0 - weights.sum(axis=1)
    return weights


def uniform_neighbour_weights(topology: Topology, self_weight: float) -> np.ndarray:
    """`self_weight` on the diagonal, the rest split equally among neighbours.

    Doubly stochastic only when every node has the same degree, so other graphs are refused
    (use Metropolis weights there). The ring reference of OG-MARL is `self_weight=0.5`.
    """
    if not 0.0 <= self_weight <= 1.0:
        raise ValueError(f"self_weight must be in [0, 1], got {self_weight}")
    n = topology.num_nodes
    degrees = topology.degrees()
    if n > 1 and len(set(degrees.tolist())) != 1:
        raise ValueError(
            "uniform neighbour weights need every node to have the same degree (else W is not doubly "
            f"stochastic); degrees are {degrees.tolist()} — use Metropolis weights for this topology"
        )
    if n > 1 and degrees[0] == 0:
        raise ValueError("uniform neighbour weights need at least one neighbour per node")
    weights = np.zeros((n, n))
    for i, j in topology.edges:
        weights[i, j] = weights[j, i] = (1.0 - self_weight) / degrees[i]
    weights[np.diag_indices(n)] = self_weight if n > 1 else 1.0
    return weights


def second_largest_eigenvalue_modulus(weights: np.ndarray) -> float:
    """`lambda_2`: the rate at which disagreement shrinks per synchronous averaging round.

    For a doubly stochastic W the largest eigenvalue is 1 (the consensus direction); the
    second largest modulus bounds the contraction of everything orthogonal to it.
    """
    weights = np.asarray(weights, dtype=float)
    if weights.ndim != 2 or weights.shape[0] != weights.shape[1]:
        raise ValueError(f"expected a square matrix, got shape {weights.shape}")
    if weights.shape[0] == 1:
        return 0.0
    if np.allclose(weights, weights.T):
        moduli = np.abs(np.linalg.eigvalsh(weights))
    else:
        moduli = np.abs(np.linalg.eigvals(weights))
    return float(np.sort(moduli)[-2])
