"""Links that follow where the agents are (`topology.kind: proximity`). Pure functions and one
small sans-IO tracker; no I/O, no clock.

In a swarm, who hears whom follows positions. With `topology.kind: proximity` every pair of
agents may talk (the run's topology is the full graph: every agent has a connection to every
other), but the env server publishes every agent's position with each training observation
(env_server/positions.py) and a peer message is let through by one rule:

    a message sent from i to j while i handles step t of the env-step clock reaches j (at the
    start of step t + d, protocols/engines/step_links.py) only if dist_t(i, j) <= radius,
    where dist_t is the distance between the positions published with the observation of step t.

Every agent receives the same positions, so sender and receiver agree on the graph of each step
without a message about it; the rule is applied by the sender when it closes the step, beside the
link's loss and partitions (a message out of range is counted `dropped_range`, drawing nothing
from the link's random stream, so the seeded fates of the other messages do not depend on the
geometry). Distance is symmetric, so the graph of a step is undirected.

Several env copies (`env.num_copies` K > 1): each copy is a world of its own, with its own
positions, so each has its own graph at every step. Two kinds of message ride on them:

- a message about copies (`CopyContent`: the landmark agreement's tables and the hindsight rows,
  one slice or row per copy) follows each copy's graph: the sender cuts out of it every copy in
  which the receiver is out of range (or which that copy's path loss lost) and sends the rest; a
  message with nothing left is dropped. So a landmark table floods, copy by copy, over that
  copy's graph only, as it would in K separate one-copy runs.
- a message about no copy (consensus shares, a user's protocol, goal negotiation) follows the
  union of the copies' graphs: the edge i-j exists at a step when i and j are in range in at least
  one copy, and the message travels on the best of those copies' links (the nearest: its loss and
  its distance delay). Why the union and not, say, copy 0: the protocols' down and up notices
  must be one graph for every capability, and a per-copy message needs the edge as long as some
  copy has it (a flooding round waits for a neighbour's table exactly while some of its copies
  can reach us). The price: with many copies the union is dense (8 copies of random MPE starts
  join up most pairs), so consensus on a proximity graph is studied with one copy.

With one copy both rules are the one-copy rule above, and a run is bit for bit what it was.

During an evaluation the agents act in separate copies of the env; the links still follow the
training world, which stands still meanwhile: its last positions gate the evaluation's messages,
by the union rule (an evaluation's copies are not the training world's copies).

Delay rising with distance (`topology.delay_steps_per_unit`, optional): a message that passes
reaches its receiver `round(delay_steps_per_unit * d)` env steps later than its link's own delay
(`delay_steps`, at least 1) says, d the distance at the step it was sent (half up). It is a
function of the positions, so it draws nothing: seeded where the link's own delay is random. A
message about several copies travels at the delay of the farthest copy it carries (no copy's
content arrives sooner than its own world allows; the nearer copies' content waits with it).

Loss rising with distance (`PathLossConfig`, optional): inside the radius a message may still be
lost, the more likely the farther apart its agents are, by the log-distance path-loss model with
log-normal shadowing. The draw is the sender's, one uniform per message from a stream of its own
per link (`path_loss_seed`), so it is seeded and leaves the link's other draws alone. The graph
(edges, who is down to the protocols) is the range's alone: a neighbour within the radius is a
neighbour, however lossy.

What rides on it (`ProximityNeighbours`): a neighbour that leaves the range stops being heard, so
to the protocols it is down (`on_neighbour_down`) from the step it left, and up again from the step
it comes back; that is how consensus stops waiting for it, and how the landmark flooding decides
without its row. Synchronous consensus rounds mix with the Metropolis weights of the graph of the
step they mix at (`metropolis_from_adjacency`), which every agent computes from the same
positions. What each protocol keeps and loses: docs/guide/talk.md, "Links from positions".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from protocols.seeds import derive_seed


class PathLossConfig(BaseModel):
    """Loss rising with distance within the radius (`topology.path_loss`), the log-distance
    path-loss model with log-normal shadowing (Rappaport, *Wireless Communications*, 2nd ed.,
    section 4.9): a message's received power is `P_t - PL(d0) - 10 n log10(d / d0) + X`, X
    normal with std `shadowing_db` (dB), and it is lost when that falls below the receiver's
    sensitivity. Naming the distance at which the mean received power equals the sensitivity
    `half_loss_distance` (d50), a message between agents `d` apart is lost with probability
    `Phi(10 n log10(d / d50) / shadowing_db)`: one half at d50, less nearer, more farther."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Where half the messages are lost, in the env's units (a radius larger than it lets lossy
    # links through, a smaller one cuts them off first).
    half_loss_distance: float = Field(gt=0, allow_inf_nan=False)
    # The path-loss exponent n: 2 in free space, about 2.7-3.5 in a city, 4-6 indoors through
    # walls (Rappaport's table 4.2).
    exponent: float = Field(2.0, gt=0, allow_inf_nan=False)
    # The shadowing's standard deviation in dB (measurements give about 4-12): how gradually loss
    # rises with distance around half_loss_distance.
    shadowing_db: float = Field(4.0, gt=0, allow_inf_nan=False)

    def loss_probability(self, distance: float) -> float:
        if distance <= 0.0:
            return 0.0
        margin_db = 10.0 * self.exponent * math.log10(distance / self.half_loss_distance)
        return 0.5 * (1.0 + math.erf(margin_db / (self.shadowing_db * math.sqrt(2.0))))


def path_loss_seed(run_seed: int, src: str, dst: str) -> int:
    """The seed of the path-loss draws on the link src -> dst: the same in every process and in the simulator."""
    return derive_seed(run_seed, 0, f"path_loss/{src}->{dst}")


def distances(positions: np.ndarray) -> np.ndarray:
    """The (n, n) Euclidean distances between the rows of `positions` (n, dim). A row with a NaN
    (an agent the env has no position for, e.g. one that left its episode) is at infinity."""
    positions = np.asarray(positions, dtype=float)
    if positions.ndim != 2:
        raise ValueError(f"positions must be an (agents, dims) array, got shape {positions.shape}")
    difference = positions[:, None, :] - positions[None, :, :]
    result = np.sqrt(np.sum(difference * difference, axis=-1))
    return np.where(np.isnan(result), np.inf, result)


def in_range_matrix(positions: np.ndarray, radius: float) -> np.ndarray:
    """(n, n) booleans: i and j are within `radius` of each other (never an agent and itself)."""
    within = distances(positions) <= radius
    np.fill_diagonal(within, False)
    return within


def in_range(positions: np.ndarray, i: int, j: int, radius: float) -> bool:
    """The gating rule for one message: i and j (indices into `positions`) are within `radius`."""
    if i == j:
        return False
    difference = np.asarray(positions[i], dtype=float) - np.asarray(positions[j], dtype=float)
    distance = float(np.sqrt(np.sum(difference * difference)))
    return distance <= radius  # (a NaN compares False: no position, no link)


def distance_delay_steps(steps_per_unit: float | None, distance: float) -> int:
    """The env steps a distance adds to a message's delay: `steps_per_unit * distance`, rounded
    half up (0 without a distance delay)."""
    if steps_per_unit is None:
        return 0
    return int(math.floor(steps_per_unit * distance + 0.5))


def metropolis_from_adjacency(adjacency: np.ndarray) -> np.ndarray:
    """Metropolis-Hastings weights on a step's graph, `1 / (1 + max(deg_i, deg_j))` on its edges
    and the rest on the diagonal (protocols/engines/topology.py's `metropolis_weights`, from an
    adjacency matrix): symmetric and doubly stochastic on any undirected graph, so consensus
    rounds that mix with the graph of their step keep the team's mean, and mix as fast as that
    graph allows (a component of two agents averages in one round)."""
    adjacency = np.asarray(adjacency, dtype=bool)
    degrees = adjacency.sum(axis=1)
    weights = np.where(adjacency, 1.0 / (1.0 + np.maximum(degrees[:, None], degrees[None, :])), 0.0)
    weights[np.diag_indices_from(weights)] = 1.0 - weights.sum(axis=1)
    return weights


@dataclass(frozen=True)
class GraphSummary:
    """The graph of one step, as the report shows it over time."""

    edges: int
    components: int


def summarize(positions: np.ndarray, radius: float) -> GraphSummary:
    """Edges and connected components (an isolated agent is a component) of a step's graph."""
    return summarize_adjacency(in_range_matrix(positions, radius))


def summarize_adjacency(within: np.ndarray) -> GraphSummary:
    """Edges and connected components of the undirected graph `within` ((n, n) booleans)."""
    n = within.shape[0]
    label = list(range(n))

    def root(a: int) -> int:
        while label[a] != a:
            label[a] = label[label[a]]
            a = label[a]
        return a

    for i, j in zip(*np.nonzero(np.triu(within))):
        label[root(int(i))] = root(int(j))
    return GraphSummary(edges=int(np.triu(within).sum()), components=len({root(a) for a in range(n)}))


class CopyContent(Protocol):
    """A peer message whose content is about env copies (one slice or row per copy): with
    several copies it follows each copy's graph (module docstring)."""

    def is_about_copies(self) -> bool:
        """False when this instance carries nothing per copy (it then follows the union rule)."""

    def restricted_to_copies(self, keep: np.ndarray) -> Any | None:
        """The message with only the content of the copies `keep` ((K,) booleans) names; None
        when nothing is left. All of `keep` True gives the message itself."""


@dataclass(frozen=True)
class RangeLink:
    """The link to one neighbour in range, at the step being closed, as the positions make it.

    `loss` and `extra_delay_steps` are those of a message about no copy (the best copy in range);
    with several copies, `copy_loss` and `copy_extra_delay_steps` are each copy's ((K,) arrays,
    loss NaN where that copy is out of range), for a message about copies."""

    loss: float  # the probability that the path loss loses the message (0 without a path-loss model)
    extra_delay_steps: int  # env steps the distance adds to the link's delay (0 without a distance delay)
    copy_loss: np.ndarray | None = None
    copy_extra_delay_steps: np.ndarray | None = None


class ProximityNeighbours:
    """One node's view of which of its neighbours are in range, step by step.

    `update(positions)` takes the positions of the step the node now handles (one world's
    (agents, dims), or K copies' (K, agents, dims)) and returns the neighbours that left the range
    and those that came back since the last update; the node tells its protocols they went down
    or came up. With several copies a neighbour is in range while it is in range in at least one
    copy (the union rule, module docstring). A neighbour starts in range (before the first
    positions nothing is known, and the run's topology says every pair may talk)."""

    def __init__(self, node_ids: Sequence[str], me: str, radius: float, path_loss: PathLossConfig | None = None,
                 delay_steps_per_unit: float | None = None) -> None:
        if not radius > 0:
            raise ValueError(f"radius must be > 0, got {radius}")
        if delay_steps_per_unit is not None and not (delay_steps_per_unit > 0 and math.isfinite(delay_steps_per_unit)):
            raise ValueError(f"delay_steps_per_unit must be a finite number > 0, got {delay_steps_per_unit}")
        self.node_ids = list(node_ids)
        self.me = me
        self.index = self.node_ids.index(me)
        self.radius = radius
        self.path_loss = path_loss
        self.delay_steps_per_unit = delay_steps_per_unit
        self.positions: np.ndarray | None = None  # (K, agents, dims) of the last update
        self._in_range_copies: dict[str, np.ndarray] = {}  # neighbour -> (K,) in range in each copy
        self._out_of_range: set[str] = set()
        self.changes = 0  # neighbours that left or came back, over the run

    @property
    def num_copies(self) -> int:
        return 1 if self.positions is None else self.positions.shape[0]

    def update(self, positions: np.ndarray) -> tuple[list[str], list[str]]:
        positions = np.asarray(positions, dtype=float)
        if positions.ndim == 2:  # one world
            positions = positions[None]
        if positions.ndim != 3 or positions.shape[1] != len(self.node_ids):
            raise ValueError(f"expected the positions of {len(self.node_ids)} agents ((agents, dims) or "
                             f"(copies, agents, dims)), got shape {positions.shape}")
        self.positions = positions
        self._in_range_copies = {
            node: np.array([in_range(world, self.index, j, self.radius) for world in positions])
            for j, node in enumerate(self.node_ids) if j != self.index}
        now_out = {node for node, copies in self._in_range_copies.items() if not copies.any()}
        left, back = sorted(now_out - self._out_of_range), sorted(self._out_of_range - now_out)
        self._out_of_range = now_out
        self.changes += len(left) + len(back)
        return left, back

    def reachable(self, dst: str) -> bool:
        """Whether a message to `dst` sent now passes the range rule (in range at the last update)."""
        return dst not in self._out_of_range

    def out_of_range(self, peer: str) -> bool:
        return peer in self._out_of_range

    def _distance(self, world: np.ndarray, dst: str) -> float:
        j = self.node_ids.index(dst)
        return float(np.linalg.norm(world[self.index] - world[j]))

    def range_loss(self, dst: str) -> float | None:
        """For a message about no copy to `dst` sent now: None when it is out of range, else the
        probability that the path loss loses it (0 without a path-loss model)."""
        link = self.link(dst)
        return None if link is None else link.loss

    def link(self, dst: str) -> RangeLink | None:
        """The link to `dst` for a message sent now: None when it is out of range in every copy."""
        if dst in self._out_of_range:
            return None
        if self.positions is None:
            return RangeLink(loss=0.0, extra_delay_steps=0)
        if self.path_loss is None and self.delay_steps_per_unit is None and self.num_copies == 1:
            return RangeLink(loss=0.0, extra_delay_steps=0)
        within = self._in_range_copies[dst]
        distance = np.array([self._distance(world, dst) if inside else np.inf
                             for world, inside in zip(self.positions, within)])
        nearest = float(distance.min())  # (finite: dst is in range in some copy)
        loss = 0.0 if self.path_loss is None else self.path_loss.loss_probability(nearest)
        link = RangeLink(loss=loss, extra_delay_steps=distance_delay_steps(self.delay_steps_per_unit, nearest))
        if self.num_copies == 1:
            return link
        copy_loss = np.array([np.nan if not inside else 0.0 if self.path_loss is None else self.path_loss.loss_probability(d)
                              for d, inside in zip(distance, within)])
        copy_delay = np.array([distance_delay_steps(self.delay_steps_per_unit, d) if inside else 0
                               for d, inside in zip(distance, within)], dtype=np.int64)
        return RangeLink(link.loss, link.extra_delay_steps, copy_loss=copy_loss, copy_extra_delay_steps=copy_delay)

    def adjacency(self) -> np.ndarray | None:
        """The team's in-range graph at the last update ((n, n) booleans, the union over the
        copies), None before positions."""
        if self.positions is None:
            return None
        return np.logical_or.reduce([in_range_matrix(world, self.radius) for world in self.positions])

    def summary(self) -> GraphSummary | None:
        """The graph of the last update (the union over the copies), None before positions."""
        return None if self.positions is None else summarize_adjacency(self.adjacency())

    def edges_per_copy(self) -> float | None:
        """The mean over the copies of each copy's own edges (None before positions)."""
        if self.positions is None:
            return None
        return float(np.mean([summarize(world, self.radius).edges for world in self.positions]))
