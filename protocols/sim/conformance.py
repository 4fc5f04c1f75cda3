"""Does consensus do what the theory says? Three checks on the real engines, for a conformance sheet.

1. Per-round contraction of `SyncConsensus` against `|lambda_2(W)|` of its Metropolis matrix.
   On an ideal network `x_{k+1} = W x_k`, so the disagreement `d_k = ||X_k - mean(X_k)||` shrinks
   by a factor that tends to `|lambda_2(W)|` once the slowest mode dominates. `contraction` runs
   the engines in lockstep waves (every round-k share delivered before round k+1; the driver of
   `consensus.rounds_to_tolerance`) from seeded random values and estimates the factor as the
   geometric mean of `d_{k+1} / d_k` over the second half of the rounds run (stopping before `d`
   reaches the float floor, 1e-11 of its start).

2. An exact finite-time schedule: the one-peer hypercube. In round `k` (of `log2 n`) node `i`
   averages with node `i XOR 2^k` alone, weights 1/2 and 1/2. After round `k` every block of
   `2^(k+1)` nodes agreeing on the higher bits holds its own mean, so after `log2 n` rounds every
   node holds the exact average (to float rounding), and not one round earlier on generic values.
   It is the symmetric form of the one-peer exponential graph (Ying et al. 2021, "Exponential
   graph is provably efficient for decentralized deep training": node `i` sends to `i + 2^k mod
   n`), which `SyncConsensus` cannot run as such: its rows are symmetric (a node sends to and waits
   for the same neighbours). The engine's neighbours are fixed per instance, so each round of the
   schedule is one single-round run of a fresh engine with that round's peer
   (`topology.one_peer_hypercube`).

3. Push-sum's weight mass under loss: with 30% of the messages lost, the weight held by the nodes
   plus the weight in flight (cumulative totals sent minus absorbed) stays `n` to 1e-12 relative
   at every probe (the running-sums design of `PushSumConsensus`); measured by
   `simplan.run_plan`, which probes it every 10 push periods.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from protocols.engines.consensus import ConsensusRequest, SyncConsensus
from protocols.net.links import LinkConfig
from protocols.sim.simplan import PlanSettings, neighbour_lists, run_plan, standard_plan
from protocols.engines.topology import Topology, metropolis_weights, one_peer_hypercube, second_largest_eigenvalue_modulus

FLOAT_FLOOR = 1e-11  # relative disagreement below which rounding, not mixing, sets the ratio


@dataclass(frozen=True)
class Contraction:
    lambda_2: float
    measured: float  # geometric mean of d_{k+1} / d_k over the second half of the rounds used
    rounds_used: int

    @property
    def ratio(self) -> float:
        """measured / lambda_2: 1 when the engines contract exactly as the spectrum says."""
        return self.measured / self.lambda_2

    @property
    def rate_ratio(self) -> float:
        """ln(measured) / ln(lambda_2): how the convergence *rates* compare (1 = the same; above 1:
        faster than the worst case, the random start still had weight off the slowest mode)."""
        return math.log(self.measured) / math.log(self.lambda_2)


def _lockstep(engines: dict[str, SyncConsensus], starts: dict[str, list]) -> list[tuple[str, str, object]]:
    return [(node, destination, message) for node in engines for destination, message in starts[node]]


def contraction(topology: Topology, rounds: int, seed: int = 0, dim: int = 4) -> Contraction:
    """Measured per-round contraction of `SyncConsensus` with Metropolis weights; see module docstring."""
    if rounds < 4:
        raise ValueError(f"rounds must be >= 4 to measure a contraction over the second half, got {rounds}")
    weights = metropolis_weights(topology)
    neighbours = neighbour_lists(topology)
    nodes = topology.nodes
    engines = {
        node: SyncConsensus(node, {nodes[j]: float(weights[i, j]) for j in neighbours[i]}, float(weights[i, i]), rounds, 1.0)
        for i, node in enumerate(nodes)
    }
    values = np.random.default_rng(seed).normal(size=(len(nodes), dim))
    starts = {node: engines[node].start(ConsensusRequest({"x": values[i]}, 0), 0.0) for i, node in enumerate(nodes)}
    wave = _lockstep(engines, starts)

    def disagreement() -> float:
        stacked = np.stack([engines[node].values["x"] for node in nodes])
        return float(np.linalg.norm(stacked - stacked.mean(axis=0)))

    history = [disagreement()]
    for _ in range(rounds):
        next_wave = []
        for sender, destination, message in wave:
            next_wave += [(destination, d, m) for d, m in engines[destination].on_message(sender, message, 0.0)]
        wave = next_wave
        history.append(disagreement())
        if history[-1] < FLOAT_FLOOR * history[0]:
            history.pop()
            break
    used = len(history) - 1
    half = used // 2
    measured = (history[used] / history[half]) ** (1.0 / (used - half))
    return Contraction(second_largest_eigenvalue_modulus(weights), measured, used)


@dataclass(frozen=True)
class FiniteTime:
    n: int
    rounds: int  # log2 n
    disagreement: tuple[float, ...]  # relative to the start, after each round (index 0: the start)

    @property
    def exact_after(self) -> int | None:
        """The first round after which disagreement is at float rounding (1e-12), or None."""
        for k, value in enumerate(self.disagreement):
            if value <= 1e-12:
                return k
        return None


def one_peer_schedule(n: int, seed: int = 0, dim: int = 4) -> FiniteTime:
    """Run the one-peer hypercube schedule on the real engine; see the module docstring."""
    schedule = one_peer_hypercube(n)
    values = np.random.default_rng(seed).normal(size=(n, dim))
    start = float(np.linalg.norm(values - values.mean(axis=0)))
    history = [1.0]
    for k, graph in enumerate(schedule):
        nodes = graph.nodes
        neighbours = neighbour_lists(graph)
        engines = {node: SyncConsensus(node, {nodes[neighbours[i][0]]: 0.5}, 0.5, 1, 1.0) for i, node in enumerate(nodes)}
        starts = {node: engines[node].start(ConsensusRequest({"x": values[i]}, k), 0.0) for i, node in enumerate(nodes)}
        for sender, destination, message in _lockstep(engines, starts):
            engines[destination].on_message(sender, message, 0.0)
        if not all(engine.done for engine in engines.values()):
            raise AssertionError(f"round {k} of the one-peer schedule did not finish on an ideal network")
        values = np.stack([engines[node].result["x"] for node in nodes])
        history.append(float(np.linalg.norm(values - values.mean(axis=0))) / start)
    return FiniteTime(n, len(schedule), tuple(history))


def push_sum_weight_drift(topology: Topology, name: str, loss: float = 0.3, periods: int = 60, seed: int = 0) -> float:
    """Largest `|total weight - n| / n` over the probes of a push-sum run with `loss` on every link
    (Pareto delays, no crash or partition)."""
    link = LinkConfig(delay_s=0.01, delay_distribution="pareto", pareto_shape=1.5, loss=loss)
    plan = standard_plan(topology, name, "push_sum", seed=seed, crash_fraction=0.0, partitions=0, link=link,
                         settings=PlanSettings(push_sum_periods=periods))
    return run_plan(plan, stop_at=None).max_weight_drift
